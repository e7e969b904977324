#!lua
-- claim.lua: move up to N due apps of a queue from ready to active (a visibility timeout).
-- KEYS[1] ready   zset   member -> due time (server ms)
-- KEYS[2] active  zset   member -> claim deadline (server ms)
-- ARGV[1] n         most members to claim
-- ARGV[2] claim_ms  claim deadline = server now + claim_ms (extended by touch.lua)
-- Returns the claimed members. A claimer that dies leaves them in active; sweep.lua returns
-- them to ready once the deadline passes, on the server's clock.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), member)
end
return due
