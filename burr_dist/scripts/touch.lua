#!lua
-- touch.lua: extend the claim deadlines of apps a live worker still runs.
-- KEYS[1] active  zset   member -> claim deadline (server ms)
-- ARGV[1] claim_ms  new deadline = server now + claim_ms
-- ARGV[2..] pairs: member, the deadline this worker last saw set for it (claim or touch reply)
-- Returns {deadline, extended...}: the new deadline and, per member, 1 when extended. Only live
-- claims are: a touch that arrives late (a slow network) must not revive a claim whose deadline
-- passed, or the sweep would wait for it. Only this worker's: another worker's claim of the app
-- exists only after this one expired and was swept, so its deadline is at least the one this
-- worker knows plus a whole claim time (the rule ack.lua uses), and a stale worker's touch must
-- not keep it from being swept when that worker dies.
local now = now_ms()
local claim_ms = tonumber(ARGV[1])
local deadline = now + claim_ms
local out = {deadline}
for i = 2, #ARGV, 2 do
  local current = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  local n = 0
  if current and current > now and current < tonumber(ARGV[i + 1]) + claim_ms then
    n = redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
  end
  out[#out + 1] = n
end
return out
