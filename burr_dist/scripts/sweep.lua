#!lua
-- sweep.lua: return apps whose claim deadline passed (their worker died or stalled) to ready.
-- KEYS[1] ready   zset
-- KEYS[2] active  zset
-- KEYS[3] vt      hash   fair-queuing state of the shard
-- ARGV[1] max         most members to move
-- ARGV[2] quantum_ms
-- Returns the members moved. Safe to run from every worker at once: each move is ZREM-guarded.
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = {}
for _, member in ipairs(expired) do
  if redis.call('ZREM', KEYS[2], member) == 1 then
    fair_add(KEYS[1], KEYS[3], member, now, tonumber(ARGV[2]))
    moved[#moved + 1] = member
  end
end
return moved
