-- Decide a queue of Acquires of one budget, in order, atomically: each against every dimension.
--
-- GCRA per dimension: a key holds the theoretical arrival time (TAT, microseconds of Redis
-- TIME). A dimension with emission interval T and burst b admits grant k (1-based) now when
--   requests: max(TAT, now) + k*T - now <= b*T        (charge, then check)
--   tokens:   max(TAT, now) + (k-1)*c*T - now <= b*T  (check, then charge: a call larger than
--             the burst still passes on an idle budget, the debt delays the next ones)
-- The grant count is the minimum over all dimensions, so nothing is charged that is not granted.
--
-- Several Acquires share one script call when they arrive while the previous call of their
-- budget is in flight (see coalesce.py). Each is decided exactly as if it ran alone, after
-- the ones before it: state is read once, carried from one Acquire to the next in Lua
-- locals, and written once, so the Redis work per Acquire shrinks as the queue grows.
--
-- Tokens have a second, exact check: the token window log (see close.lua), which keeps every
-- rolling window within the limit; the token GCRA only paces. Its TAT may therefore lag the
-- clock: by up to `carry` (one provider second) after a pause, further when refunds left
-- credit (close.lua). A token TAT key expires `carry` after its TAT, so a stored TAT more than
-- `carry` behind is credit, and no key means a pause longer than `carry`.
--
-- KEYS: 1 request TAT, 2 token TAT, 3 feedback hash, 4 budget in-flight zset,
--       5 budget caps hash, 6 global caps hash, 7 usage ring hash, 8 token window log zset,
--       9 token window sum,
--       then per tenant j (1-based): 8+2j tenant request TAT, 9+2j tenant in-flight zset
-- ARGV: 1 request interval us, 2 burst, 3 token interval us (0: none), 4 token burst,
--       5 max in flight (0: none), 6 lease us, 7 factor recovery per us, 8 min factor,
--       9 time scale, 10 burst fraction, 11 window us, 12 tokens per window,
--       13 number of tenants J, 14..13+J tenant names,
--       then per Acquire: count, tokens each, all-or-nothing (0/1), tenant index j, serial prefix
-- Returns: {now_us, factor, then per Acquire: granted, retry_after_us, limited_by, remaining}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local carry = tonumber(ARGV[11]) / 60
local lease = tonumber(ARGV[6])
local ntenants = tonumber(ARGV[13])
local first = 14 + ntenants

-- Upstream feedback: a shared cooldown and a rate factor that recovers linearly from `at`
-- (which a 429's hold puts in the future).
local fb = redis.call('HMGET', KEYS[3], 'factor', 'at', 'cooldown_until')
local factor = 1
if fb[1] then
  factor = math.min(1, math.max(tonumber(ARGV[8]), tonumber(fb[1]) + math.max(0, now - tonumber(fb[2])) * tonumber(ARGV[7])))
end
local out = {now, tostring(factor)}
local cooldown_until = tonumber(fb[3] or '0')
if cooldown_until > now then
  for _ = first, #ARGV, 5 do
    out[#out + 1] = 0
    out[#out + 1] = cooldown_until - now
    out[#out + 1] = 'cooldown'
    out[#out + 1] = 0
  end
  return out
end

-- Microsecond times exceed tostring's 14 significant digits: write them whole, rounded up
-- (rounding down would hand out a sliver of budget at every write).
local function us(x) return string.format('%.0f', math.ceil(x)) end

-- TATs are read on first use and written once at the end, in the order first written.
local tats, written = {}, {}
local function tat_of(key)
  local v = tats[key]
  if v == nil then
    v = tonumber(redis.call('GET', key) or '0')
    tats[key] = v
  end
  return v
end
-- The base of a charge: the TAT, or now if it has passed; for tokens, see above.
local function base_of(d)
  local tat = tat_of(d[2])
  if d[1] == 'tokens' then
    if tat > 0 then return tat end
    return now - carry
  end
  return math.max(tat, now)
end
local function set_tat(key, v)
  if not written[key] then written[#written + 1] = key; written[key] = true end
  tats[key] = v
end

-- Each dimension: {name, key, T, burst_time, per-grant cost in time, check_then_charge}
local req_T = tonumber(ARGV[1]) / factor
local req_dim = {'requests', KEYS[1], req_T, tonumber(ARGV[2]) * req_T, req_T, false}
local tok_T = tonumber(ARGV[3]) / factor
local tok_burst = tonumber(ARGV[4]) * tok_T

-- Token window log: tokens granted in the last window (settles corrected at the grant's
-- time), as entries `id|tokens` scored by time, and their sum.
local win_us = tonumber(ARGV[11])
local win_cap = tonumber(ARGV[12]) * factor
local win_used = 0
local win_log = {}
local win_dirty = false
if tok_T > 0 then
  win_used = tonumber(redis.call('GET', KEYS[9]) or '0')
  local old = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now - win_us)
  if #old > 0 then
    for _, m in ipairs(old) do win_used = win_used - tonumber(string.match(m, '|(-?%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - win_us)
    win_dirty = true
  end
end
-- Grants of `cost` tokens that fit the window now (one on an empty window, as the GCRA
-- lets one call larger than its burst start on an idle budget).
local function window_fit(cost)
  local room = win_cap - win_used
  if room >= cost then return math.floor(room / cost + 1e-9) end
  if win_used <= 0 then return 1 end
  return 0
end
-- Microseconds until `excess` tokens have left the window (entries leave in time order).
-- The scan stops after 2,000 entries, so that a denial costs little however busy the window:
-- the advice is then the time the last entry scanned leaves, and the caller asks again.
local function window_wait(excess)
  local freed = 0
  local page = redis.call('ZRANGE', KEYS[8], 0, 1999, 'WITHSCORES')
  for k = 1, #page, 2 do
    freed = freed + tonumber(string.match(page[k], '|(-?%d+)$'))
    if freed >= excess or k + 1 == #page and #page == 4000 then
      return tonumber(page[k + 1]) + win_us - now
    end
  end
  -- The rest was granted in this very call (not yet in the log): it leaves a window from now.
  return win_us
end

-- Concurrency: leases in a zset scored by expiry, so a lost grant frees its slot in time.
local function held(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end
local max_in_flight = tonumber(ARGV[5])
local budget = {max = max_in_flight, held = 0, key = KEYS[4], leases = {}}
if max_in_flight > 0 then budget.held = held(KEYS[4]) end

-- Tenants, each with its caps read once.
local tenants = {}
for j = 1, ntenants do
  local name = ARGV[13 + j]
  local ten = {max = 0, held = 0, key = KEYS[9 + 2 * j], leases = {}}
  if name ~= '' then
    local cap = redis.call('HGET', KEYS[5], name) or redis.call('HGET', KEYS[6], name)
    if cap then
      local sep = string.find(cap, ',', 1, true)
      local rpm = tonumber(string.sub(cap, 1, sep - 1))
      ten.max = tonumber(string.sub(cap, sep + 1))
      if rpm > 0 then
        local tb = math.max(1, math.floor(rpm * tonumber(ARGV[10])))
        local tT = 60000000 / (math.max(rpm - tb, rpm * 0.5) * tonumber(ARGV[9]))
        ten.dim = {'tenant', KEYS[8 + 2 * j], tT, tb * tT, tT, false}
      end
    end
    if ten.max > 0 then ten.held = held(ten.key) end
  end
  tenants[j] = ten
end

local function lease_out(slots, serial, n)
  for k = 1, n do
    slots.leases[#slots.leases + 1] = now + lease
    slots.leases[#slots.leases + 1] = serial .. '.' .. k
  end
  slots.held = slots.held + n
end

local ring_r, ring_t, ring_d = 0, 0, 0
for i = first, #ARGV, 5 do
  local count = tonumber(ARGV[i])
  local cost = tonumber(ARGV[i + 1])
  local all_or_nothing = ARGV[i + 2] == '1'
  local ten = tenants[tonumber(ARGV[i + 3])]
  local dims = {req_dim}
  if tok_T > 0 and cost > 0 then
    dims[#dims + 1] = {'tokens', KEYS[2], tok_T, tok_burst, cost * tok_T, true}
  end
  if ten.dim then dims[#dims + 1] = ten.dim end

  local n = count
  local limited_by = ''
  local bases = {}
  for k, d in ipairs(dims) do
    local base = base_of(d)
    bases[k] = base
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
  local win_limited = false
  if tok_T > 0 and cost > 0 then
    local fit = window_fit(cost)
    if fit < n then
      n = fit
      limited_by = 'tokens'
      win_limited = true
    end
  end
  if budget.max > 0 and budget.max - budget.held < n then
    n = math.max(budget.max - budget.held, 0)
    limited_by = 'concurrency'
  end
  if ten.max > 0 and ten.max - ten.held < n then
    n = math.max(ten.max - ten.held, 0)
    limited_by = 'tenant'
  end
  if all_or_nothing and n < count then n = 0 end

  if n > 0 then
    for k, d in ipairs(dims) do set_tat(d[2], bases[k] + n * d[5]) end
    if budget.max > 0 then lease_out(budget, ARGV[i + 4], n) end
    if ten.max > 0 then lease_out(ten, ARGV[i + 4], n) end
    ring_r = ring_r + n
    ring_t = ring_t + n * cost
    if tok_T > 0 and cost > 0 then
      win_used = win_used + n * cost
      win_log[#win_log + 1] = now
      win_log[#win_log + 1] = ARGV[i + 4] .. '|' .. string.format('%.0f', n * cost)
    end
  end
  if n < count then ring_d = ring_d + count - n end

  -- Retry advice: when the next grant (all `count` for all-or-nothing, capped at each burst)
  -- fits every rate dimension, given what was just charged.
  local retry = 0
  if n < count then
    for k, d in ipairs(dims) do
      local base = bases[k] + n * d[5]
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
    if win_limited then
      local need = cost
      if all_or_nothing then need = count * cost end
      local wait = window_wait(win_used + need - win_cap)
      if wait > retry then retry = wait end
    end
    if retry <= 0 then
      -- Held back by concurrency only: no schedule to compute, suggest one request interval.
      retry = req_T
    end
  end

  -- Requests that would still fit right now (for Envoy's limit_remaining).
  local remaining = math.max(0, math.floor((now + req_dim[4] - (bases[1] + n * req_T)) / req_T + 1e-9))
  out[#out + 1] = n
  out[#out + 1] = math.ceil(retry)
  out[#out + 1] = limited_by
  out[#out + 1] = remaining
end

-- A TAT expires when it passes, a token TAT `carry` later; a token TAT still more than `carry`
-- behind after this call is what is left of a credit, which keeps its expiry.
for _, key in ipairs(written) do
  local tat = tats[key]
  local keep = 0
  if key == KEYS[2] then keep = carry end
  if tat >= now - keep then
    redis.call('SET', key, us(tat), 'PX', math.max(1, math.ceil((tat + keep - now) / 1000)))
  else
    redis.call('SET', key, us(tat), 'KEEPTTL')
  end
end
for s = 1, #win_log, 2000 do
  redis.call('ZADD', KEYS[8], unpack(win_log, s, math.min(s + 1999, #win_log)))
end
if #win_log > 0 or win_dirty then
  redis.call('SET', KEYS[9], string.format('%.0f', win_used), 'PX', math.ceil(win_us / 1000) + 1000)
  redis.call('PEXPIRE', KEYS[8], math.ceil(win_us / 1000) + 1000)
end
-- ZADD in slices: unpack() of a whole large batch would exceed Lua's stack.
local function add_leases(slots)
  local m = slots.leases
  for s = 1, #m, 2000 do
    redis.call('ZADD', slots.key, unpack(m, s, math.min(s + 1999, #m)))
  end
  if #m > 0 then redis.call('PEXPIRE', slots.key, math.ceil(lease / 1000) + 1000) end
end
add_leases(budget)
for j = 1, ntenants do add_leases(tenants[j]) end

-- Usage ring: one slot per second (64 slots), for requests/tokens/denials in the last minute.
local sec = math.floor(now / 1000000)
local slot = sec % 64
local stamp = redis.call('HGET', KEYS[7], 's' .. slot)
if stamp ~= tostring(sec) then
  redis.call('HSET', KEYS[7], 's' .. slot, tostring(sec), 'r' .. slot, 0, 't' .. slot, 0, 'd' .. slot, 0, 'x' .. slot, 0)
  redis.call('PEXPIRE', KEYS[7], 120000)
end
if ring_r > 0 then redis.call('HINCRBY', KEYS[7], 'r' .. slot, ring_r) end
if ring_t > 0 then redis.call('HINCRBY', KEYS[7], 't' .. slot, ring_t) end
if ring_d > 0 then redis.call('HINCRBY', KEYS[7], 'd' .. slot, ring_d) end
return out
