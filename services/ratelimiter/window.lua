-- What the budget used in the last `window` (the provider's rolling minute), for feedback.
--
-- Tokens come from the token window log (exact, settles corrected at the grant's time);
-- the usage ring is returned whole, for the requests (see store.window_usage).
--
-- KEYS: 1 usage ring hash, 2 token window log zset, 3 token window sum
-- ARGV: 1 window us
-- Returns: {now_us, tokens in the window, ring as field, value, ...}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tokens = tonumber(redis.call('GET', KEYS[3]) or '0')
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))) do
  tokens = tokens - tonumber(string.match(m, '|(-?%d+)$'))
end
local out = {string.format('%.0f', now), tokens}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
