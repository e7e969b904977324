#!lua
-- claim.lua: move up to N apps of a queue shard to active (a visibility timeout), fairest first.
-- Scheduled apps that fell due enter ready first (at their fair position).
-- KEYS[1] ready      zset   member -> fair time
-- KEYS[2] scheduled  zset   member -> due time (server ms)
-- KEYS[3] active     zset   member -> claim deadline (server ms)
-- KEYS[4] vt         hash   fair-queuing state of the shard
-- ARGV[1] n          most members to claim
-- ARGV[2] claim_ms   claim deadline = server now + claim_ms (extended by touch.lua)
-- ARGV[3] quantum_ms
-- Returns {deadline, next_head, member...}: next_head is the fair time of the shard's new head
-- ("" when ready is empty), so the claimer can order shards without reading them again. A claimer that dies leaves them in active; sweep.lua returns
-- them to ready once the deadline passes, on the server's clock.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[2], member)
  fair_add(KEYS[1], KEYS[4], member, now, tonumber(ARGV[3]))
end
local deadline = now + tonumber(ARGV[2])
local got = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local out = {deadline, ''}
for _, member in ipairs(got) do
  redis.call('ZREM', KEYS[1], member)
  fair_remove(KEYS[4], member)
  redis.call('ZADD', KEYS[3], deadline, member)
  out[#out + 1] = member
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  out[2] = head[2]
end
return out
