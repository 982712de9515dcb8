-- Close grants of one (budget, tenant): settle with the actual tokens, or release unused;
-- or adjust open grants to a new reservation (mode 'adjust').
--
-- Closing moves the GCRA theoretical arrival times back (refund) or forward (charge):
--   release: requests TAT -= T, tokens TAT -= reserved * T_tok, tenant TAT -= T_tenant
--   settle:  tokens TAT += (used - reserved) * T_tok
-- Request TATs never go below now. A token refund may take the token TAT below now, down to
-- the grant's issue time (and at most one window back): the tokens the call did not use never
-- reached the provider's window, so they are granted again (credit). A token TAT key lives
-- `carry` (one provider second) past its TAT, a credit one window past the time it reaches
-- back to (see acquire.lua). Every rolling window stays within the limit by the token window
-- log, corrected here at the grant's issue time (docs/design/ratelimiter.md).
-- A grant closes once (a zset of closed serials, pruned after the grant TTL); grants older
-- than the TTL are ignored, their effect on the budget has long expired.
-- Adjust corrects the tokens as a settle with `used` = the new reservation does, then
-- reopens the grant under serial .. 'a' (its concurrency slots move to the new serial), so
-- the old id can be neither adjusted nor closed again.
--
-- KEYS: 1 request TAT, 2 token TAT, 3 budget in-flight zset, 4 tenant in-flight zset,
--       5 budget caps hash, 6 global caps hash, 7 usage ring hash, 8 closed zset,
--       9 tenant request TAT, 10 token window log zset, 11 token window sum
-- ARGV: 1 request interval us, 2 token interval us, 3 grant ttl us, 4 tenant, 5 time scale,
--       6 burst fraction, 7 window us, 8 mode ('close' or 'adjust'),
--       then per grant: serial, reserved tokens, issued us, used (-1: release; adjust: new tokens)
-- Returns: {closed, tokens_adjusted, then 1 or 0 per grant: closed (adjusted) now}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local req_T = tonumber(ARGV[1])
local tok_T = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local tenant = ARGV[4]
local win_us = tonumber(ARGV[7])
local adjust = ARGV[8] == 'adjust'
local carry = win_us / 60

local function shift(key, delta)
  local tat = redis.call('GET', key)
  if not tat and delta < 0 then return end
  local base = tonumber(tat or '0')
  if delta > 0 then base = math.max(base, now) end
  local new = base + delta
  if new <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.0f', math.ceil(new)), 'PX', math.max(1, math.ceil((new - now) / 1000)))
  end
end

-- Token TAT: no key means a pause longer than `carry` (as in acquire.lua).
local function shift_tokens(key, delta, issued)
  local tat = redis.call('GET', key)
  local base = now - carry
  if tat then base = tonumber(tat) end
  local new = base + delta
  if delta < 0 then
    new = math.min(base, math.max(new, issued, now - win_us))
  end
  local expiry = new + carry
  if new < now - carry then expiry = new + win_us end
  redis.call('SET', key, string.format('%.0f', math.ceil(new)), 'PX', math.max(1, math.ceil((expiry - now) / 1000)))
end

local tenant_T = 0
if tenant ~= '' then
  local cap = redis.call('HGET', KEYS[5], tenant) or redis.call('HGET', KEYS[6], tenant)
  if cap then
    local rpm = tonumber(string.sub(cap, 1, string.find(cap, ',', 1, true) - 1))
    if rpm > 0 then
      local tb = math.max(1, math.floor(rpm * tonumber(ARGV[6])))
      tenant_T = 60000000 / (math.max(rpm - tb, rpm * 0.5) * tonumber(ARGV[5]))
    end
  end
end

redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - ttl)
local closed = 0
local adjusted = 0
local win_delta = 0
local done = {}

local function move_slot(key, serial, new_serial)
  local score = redis.call('ZSCORE', key, serial)
  if score then
    redis.call('ZREM', key, serial)
    redis.call('ZADD', key, score, new_serial)
  end
end

for i = 9, #ARGV, 4 do
  local serial = ARGV[i]
  local reserved = tonumber(ARGV[i + 1])
  local issued = tonumber(ARGV[i + 2])
  local used = tonumber(ARGV[i + 3])
  if now - issued > ttl or redis.call('ZADD', KEYS[8], 'NX', now, serial) == 0 then
    done[#done + 1] = 0
  else
    done[#done + 1] = 1
    closed = closed + 1
    if adjust then
      move_slot(KEYS[3], serial, serial .. 'a')
      if tenant ~= '' then move_slot(KEYS[4], serial, serial .. 'a') end
    else
      redis.call('ZREM', KEYS[3], serial)
      if tenant ~= '' then redis.call('ZREM', KEYS[4], serial) end
    end
    local delta
    if used < 0 and not adjust then
      shift(KEYS[1], -req_T)
      if tenant_T > 0 then shift(KEYS[9], -tenant_T) end
      delta = -reserved
    else
      delta = used - reserved
    end
    if tok_T > 0 and delta ~= 0 then
      shift_tokens(KEYS[2], delta * tok_T, issued)
      -- The window log counts the grant at its issue time: correct it there while it is in.
      if issued > now - win_us then
        redis.call('ZADD', KEYS[10], issued, serial .. '|' .. string.format('%.0f', delta))
        win_delta = win_delta + delta
      end
    end
    adjusted = adjusted + delta
    -- Correct the usage ring in the second the grant was counted, if still in the ring.
    local sec = math.floor(issued / 1000000)
    local slot = sec % 64
    if redis.call('HGET', KEYS[7], 's' .. slot) == tostring(sec) then
      if used < 0 and not adjust then redis.call('HINCRBY', KEYS[7], 'r' .. slot, -1) end
      if delta ~= 0 then redis.call('HINCRBY', KEYS[7], 't' .. slot, delta) end
    end
  end
end
redis.call('PEXPIRE', KEYS[8], math.ceil(ttl / 1000) + 1000)
if win_delta ~= 0 then
  redis.call('INCRBY', KEYS[11], win_delta)
  redis.call('PEXPIRE', KEYS[11], math.ceil(win_us / 1000) + 1000)
  redis.call('PEXPIRE', KEYS[10], math.ceil(win_us / 1000) + 1000)
end
local out = {closed, adjusted}
for _, d in ipairs(done) do out[#out + 1] = d end
return out
