#!lua
-- touch.lua: extend the claim deadlines of apps a live worker still runs.
-- KEYS[1] active  zset   member -> claim deadline (server ms)
-- ARGV[1] claim_ms  new deadline = server now + claim_ms
-- ARGV[2..] members
-- Returns {deadline, extended...}: the new deadline and, per member, 1 when extended. Only live
-- claims are: a touch that arrives late (a slow network) must not revive a claim whose deadline
-- passed, or the sweep would wait for it.
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local out = {deadline}
for i = 2, #ARGV do
  local current = redis.call('ZSCORE', KEYS[1], ARGV[i])
  local n = 0
  if current and tonumber(current) > now then
    n = redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
  end
  out[#out + 1] = n
end
return out
