#!lua
-- unready.lua: take an app out of its queue shard's ready and scheduled sets (cancel).
-- KEYS[1] ready  KEYS[2] scheduled  KEYS[3] vt   ARGV[1] member
-- Returns 1 when an entry was removed.
local n = redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  fair_remove(KEYS[3], partition_of(ARGV[1]), 1)
  n = 1
end
return n
