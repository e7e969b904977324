#!lua
-- touch.lua: extend the claim deadlines of apps a live worker still runs.
-- KEYS[1] active  zset   member -> claim deadline (server ms)
-- ARGV[1] claim_ms  new deadline = server now + claim_ms
-- ARGV[2..] members
-- Returns how many deadlines were extended. Only live claims are: a touch that arrives late (a
-- slow network) must not revive a claim whose deadline passed, or the sweep would wait for it.
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  local current = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if current and tonumber(current) > now then
    n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
  end
end
return n
