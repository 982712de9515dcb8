-- Decide one Acquire of up to `count` grants against every dimension of one budget, atomically.
--
-- GCRA per dimension: a key holds the theoretical arrival time (TAT, microseconds of Redis
-- TIME). A dimension with emission interval T and burst b admits grant k (1-based) now when
--   requests: max(TAT, now) + k*T - now <= b*T        (charge, then check)
--   tokens:   max(TAT, now) + (k-1)*c*T - now <= b*T  (check, then charge: a call larger than
--             the burst still passes on an idle budget, the debt delays the next ones)
-- The grant count is the minimum over all dimensions, so nothing is charged that is not granted.
--
-- KEYS: 1 request TAT, 2 token TAT, 3 feedback hash, 4 budget in-flight zset,
--       5 tenant request TAT, 6 tenant in-flight zset, 7 budget caps hash, 8 global caps hash,
--       9 usage ring hash
-- ARGV: 1 count, 2 tokens each, 3 all-or-nothing (0/1), 4 request interval us, 5 burst,
--       6 token interval us (0: none), 7 token burst, 8 max in flight (0: none), 9 tenant,
--       10 lease us, 11 serial prefix, 12 factor recovery per us, 13 min factor,
--       14 time scale, 15 burst fraction
-- Returns: {granted, now_us, retry_after_us, limited_by, remaining, factor}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local count = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local all_or_nothing = ARGV[3] == '1'
local tenant = ARGV[9]
local lease = tonumber(ARGV[10])

-- Upstream feedback: a shared cooldown and a rate factor that recovers linearly.
local fb = redis.call('HMGET', KEYS[3], 'factor', 'at', 'cooldown_until')
local factor = 1
if fb[1] then
  factor = math.min(1, math.max(tonumber(ARGV[13]), tonumber(fb[1]) + (now - tonumber(fb[2])) * tonumber(ARGV[12])))
end
local cooldown_until = tonumber(fb[3] or '0')
if cooldown_until > now then
  return {0, now, cooldown_until - now, 'cooldown', 0, tostring(factor)}
end

-- Microsecond times exceed tostring's 14 significant digits: write them whole, rounded up
-- (rounding down would hand out a sliver of budget at every write).
local function us(x) return string.format('%.0f', math.ceil(x)) end

-- Each dimension: {name, key, T, burst_time, per-grant cost in time, check_then_charge}
local dims = {}
local req_T = tonumber(ARGV[4]) / factor
dims[#dims + 1] = {'requests', KEYS[1], req_T, tonumber(ARGV[5]) * req_T, req_T, false}
local tok_T = tonumber(ARGV[6]) / factor
if tok_T > 0 and cost > 0 then
  dims[#dims + 1] = {'tokens', KEYS[2], tok_T, tonumber(ARGV[7]) * tok_T, cost * tok_T, true}
end

local tenant_max = 0
if tenant ~= '' then
  local cap = redis.call('HGET', KEYS[7], tenant) or redis.call('HGET', KEYS[8], tenant)
  if cap then
    local sep = string.find(cap, ',', 1, true)
    local rpm = tonumber(string.sub(cap, 1, sep - 1))
    tenant_max = tonumber(string.sub(cap, sep + 1))
    if rpm > 0 then
      local tb = math.max(1, math.floor(rpm * tonumber(ARGV[15])))
      local tT = 60000000 / (math.max(rpm - tb, rpm * 0.5) * tonumber(ARGV[14]))
      dims[#dims + 1] = {'tenant', KEYS[5], tT, tb * tT, tT, false}
    end
  end
end

local n = count
local limited_by = ''
local bases = {}
for i, d in ipairs(dims) do
  local tat = tonumber(redis.call('GET', d[2]) or '0')
  local base = math.max(tat, now)
  bases[i] = base
  local fit
  if d[6] then
    if base - now > d[4] then fit = 0 else fit = math.floor((now + d[4] - base) / d[5] + 1e-9) + 1 end
  else
    fit = math.floor((now + d[4] - base) / d[5] + 1e-9)
  end
  if fit < n then
    n = math.max(fit, 0)
    limited_by = d[1]
  end
end

-- Concurrency: leases in a zset scored by expiry, so a lost grant frees its slot in time.
local max_in_flight = tonumber(ARGV[8])
local in_flight = 0
if max_in_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  in_flight = redis.call('ZCARD', KEYS[4])
  if max_in_flight - in_flight < n then
    n = math.max(max_in_flight - in_flight, 0)
    limited_by = 'concurrency'
  end
end
if tenant_max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  local held = redis.call('ZCARD', KEYS[6])
  if tenant_max - held < n then
    n = math.max(tenant_max - held, 0)
    limited_by = 'tenant'
  end
end

if all_or_nothing and n < count then n = 0 end

if n > 0 then
  for i, d in ipairs(dims) do
    local tat = bases[i] + n * d[5]
    redis.call('SET', d[2], us(tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  if max_in_flight > 0 or tenant_max > 0 then
    local members = {}
    for k = 1, n do
      members[#members + 1] = now + lease
      members[#members + 1] = ARGV[11] .. '.' .. k
    end
    if max_in_flight > 0 then
      redis.call('ZADD', KEYS[4], unpack(members))
      redis.call('PEXPIRE', KEYS[4], math.ceil(lease / 1000) + 1000)
    end
    if tenant_max > 0 then
      redis.call('ZADD', KEYS[6], unpack(members))
      redis.call('PEXPIRE', KEYS[6], math.ceil(lease / 1000) + 1000)
    end
  end
end

-- Usage ring: one slot per second (64 slots), for requests/tokens/denials in the last minute.
local sec = math.floor(now / 1000000)
local slot = sec % 64
local stamp = redis.call('HGET', KEYS[9], 's' .. slot)
if stamp ~= tostring(sec) then
  redis.call('HSET', KEYS[9], 's' .. slot, tostring(sec), 'r' .. slot, 0, 't' .. slot, 0, 'd' .. slot, 0)
  redis.call('PEXPIRE', KEYS[9], 120000)
end
if n > 0 then
  redis.call('HINCRBY', KEYS[9], 'r' .. slot, n)
  if cost > 0 then redis.call('HINCRBY', KEYS[9], 't' .. slot, n * cost) end
end
if n < count then redis.call('HINCRBY', KEYS[9], 'd' .. slot, count - n) end

-- Retry advice: when the next grant (all `count` for all-or-nothing, capped at each burst)
-- fits every rate dimension, given what was just charged.
local retry = 0
if n < count then
  for i, d in ipairs(dims) do
    local base = bases[i] + n * d[5]
    local need
    if all_or_nothing then need = count else need = 1 end
    local wait
    if d[6] then
      need = math.min(need, math.max(1, math.floor(d[4] / d[5]) + 1))
      wait = base + (need - 1) * d[5] - d[4] - now
    else
      need = math.min(need, math.max(1, math.floor(d[4] / d[5] + 1e-9)))
      wait = base + need * d[5] - d[4] - now
    end
    if wait > retry then retry = wait end
  end
  if retry <= 0 then
    -- Held back by concurrency only: no schedule to compute, suggest one request interval.
    retry = req_T
  end
end

-- Requests that would still fit right now (for Envoy's limit_remaining).
local d1 = dims[1]
local remaining = math.max(0, math.floor((now + d1[4] - (bases[1] + n * d1[5])) / d1[5] + 1e-9))
return {n, now, math.ceil(retry), limited_by, remaining, tostring(factor)}
