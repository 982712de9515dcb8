-- Merge one upstream observation into a budget's shared feedback state (see feedback.py).
--
-- The rate factor only ever drops here (to the lower of its current value and the target);
-- it climbs back by itself, linearly with time from `at`, as read by acquire.lua. Several
-- replicas reporting the same shortage therefore lower it once, not once each.
-- A 429 (`learned` >= 0) sets the factor to what it measured, never above the current
-- value and never below the floor of its hold period (the factor at the period's start x the
-- multiplier), and holds it: `at`, where recovery starts, moves to the end of the hold.
-- The first 429 of a hold period measures; each later one in the same period lowers that
-- measure by one call (`step`): it is a call of ours the provider refused, while a fresh
-- measure would count the pause of our own cooldown as room taken by someone else.
-- Each 429 is counted in the usage ring ('x'), so the share we got through leaves it out.
--
-- KEYS: 1 feedback hash, 2 usage ring hash
-- ARGV: 1 target factor (<0: none), 2 decrease multiplier (1: none), 3 cooldown us (0: none),
--       4 recovery per us, 5 min factor, 6 hold us, 7 learned factor (<0: not a 429),
--       8 step: one call as a share of the limit
-- Returns: {factor, cooldown_remaining_us}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local target = tonumber(ARGV[1])
local multiplier = tonumber(ARGV[2])
local cooldown = tonumber(ARGV[3])
local recovery = tonumber(ARGV[4])
local min_factor = tonumber(ARGV[5])
local hold = tonumber(ARGV[6])
local learned = tonumber(ARGV[7])
local step = tonumber(ARGV[8] or '0')

local fb = redis.call('HMGET', KEYS[1], 'factor', 'at', 'cooldown_until', 'hold_until', 'floor', 'learned0', 'refused')
local current = 1
local at = now
if fb[1] then
  at = tonumber(fb[2])
  current = math.min(1, math.max(min_factor, tonumber(fb[1]) + math.max(0, now - at) * recovery))
end
local cooldown_until = tonumber(fb[3] or '0')
local hold_until = tonumber(fb[4] or '0')
local floor = tonumber(fb[5] or '0')
local learned0 = tonumber(fb[6] or '-1')
local refused = tonumber(fb[7] or '0')

local new = current
if multiplier < 1 then
  local fresh = now >= hold_until
  if fresh then floor = current * multiplier end
  if learned >= 0 then
    if fresh or learned0 < 0 then
      learned0, refused = learned, 0
    else
      refused = refused + 1
    end
    new = math.min(current, math.max(learned0 - refused * step, floor))
    hold_until = now + hold
  elseif now >= hold_until then
    new = floor
    hold_until = now + hold
  end
end
if target >= 0 and target < new then new = target end
new = math.max(min_factor, new)
if learned >= 0 then
  -- Held where the 429 put it until the hold ends, then recovering.
  at = hold_until
  redis.call('HSET', KEYS[1], 'factor', tostring(new), 'at', string.format('%.0f', at), 'floor', tostring(floor),
    'learned0', tostring(learned0), 'refused', tostring(refused))
elseif new < current then
  if at < now then at = now end
  redis.call('HSET', KEYS[1], 'factor', tostring(new), 'at', string.format('%.0f', at), 'floor', tostring(floor))
else
  new = current
end
if now + cooldown > cooldown_until then cooldown_until = now + cooldown end
redis.call('HSET', KEYS[1], 'cooldown_until', string.format('%.0f', cooldown_until),
  'hold_until', string.format('%.0f', hold_until))
-- Forget the state once it has fully recovered and every cooldown has passed.
local alive = math.max(math.max(0, at - now) + (1 - new) / recovery, cooldown_until - now, hold_until - now)
redis.call('PEXPIRE', KEYS[1], math.ceil(alive / 1000) + 60000)

if learned >= 0 then
  local sec = math.floor(now / 1000000)
  local slot = sec % 64
  if redis.call('HGET', KEYS[2], 's' .. slot) ~= tostring(sec) then
    redis.call('HSET', KEYS[2], 's' .. slot, tostring(sec), 'r' .. slot, 0, 't' .. slot, 0, 'd' .. slot, 0, 'x' .. slot, 0)
    redis.call('PEXPIRE', KEYS[2], 120000)
  end
  redis.call('HINCRBY', KEYS[2], 'x' .. slot, 1)
end
return {tostring(new), math.max(0, cooldown_until - now)}
