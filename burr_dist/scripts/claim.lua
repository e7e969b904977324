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
-- Taken in one pop and moved in one ZADD; the fair-queuing counts change once per partition.
local got = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
local out = {deadline, ''}
local add, left, order = {}, {}, {}
for i = 1, #got, 2 do
  local member = got[i]
  out[#out + 1] = member
  add[#add + 1], add[#add + 2] = deadline, member
  if #add >= 2000 then  -- unpack() has a stack limit
    redis.call('ZADD', KEYS[3], unpack(add))
    add = {}
  end
  local pk = partition_of(member)
  if not left[pk] then
    order[#order + 1] = pk
  end
  left[pk] = (left[pk] or 0) + 1
end
if #add > 0 then
  redis.call('ZADD', KEYS[3], unpack(add))
end
for _, pk in ipairs(order) do
  fair_remove(KEYS[4], pk, left[pk])
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  out[2] = head[2]
end
return out
