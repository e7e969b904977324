-- touch.lua: extend the claim deadlines of apps a live worker still runs.
-- KEYS[1] active  zset   member -> claim deadline (server ms)
-- ARGV[1] claim_ms  new deadline = server now + claim_ms
-- ARGV[2..] members
-- Returns how many members were still present (XX: a swept member is not re-added).
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
end
return n
