-- Merge one upstream observation into a budget's shared feedback state (see feedback.py).
--
-- The rate factor only ever drops here (to the lower of its current value and the target);
-- it climbs back by itself, linearly with time, as read by acquire.lua. Several replicas
-- reporting the same shortage therefore lower it once, not once each. A multiplicative
-- decrease (a 429) applies at most once per hold period for the same reason.
--
-- KEYS: 1 feedback hash
-- ARGV: 1 target factor (<0: none), 2 decrease multiplier (1: none), 3 cooldown us (0: none),
--       4 recovery per us, 5 min factor, 6 hold us
-- Returns: {factor, cooldown_remaining_us}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local target = tonumber(ARGV[1])
local multiplier = tonumber(ARGV[2])
local cooldown = tonumber(ARGV[3])
local recovery = tonumber(ARGV[4])
local min_factor = tonumber(ARGV[5])

local fb = redis.call('HMGET', KEYS[1], 'factor', 'at', 'cooldown_until', 'hold_until')
local current = 1
if fb[1] then
  current = math.min(1, math.max(min_factor, tonumber(fb[1]) + (now - tonumber(fb[2])) * recovery))
end
local cooldown_until = tonumber(fb[3] or '0')
local hold_until = tonumber(fb[4] or '0')

local new = current
if multiplier < 1 and now >= hold_until then
  new = current * multiplier
  hold_until = now + tonumber(ARGV[6])
end
if target >= 0 and target < new then new = target end
new = math.max(min_factor, new)
if new < current then
  redis.call('HSET', KEYS[1], 'factor', tostring(new), 'at', string.format('%.0f', now))
else
  new = current
end
if now + cooldown > cooldown_until then cooldown_until = now + cooldown end
redis.call('HSET', KEYS[1], 'cooldown_until', string.format('%.0f', cooldown_until),
  'hold_until', string.format('%.0f', hold_until))
-- Forget the state once it has fully recovered and every cooldown has passed.
local alive = math.max((1 - new) / recovery, cooldown_until - now, hold_until - now)
redis.call('PEXPIRE', KEYS[1], math.ceil(alive / 1000) + 60000)
return {tostring(new), math.max(0, cooldown_until - now)}
