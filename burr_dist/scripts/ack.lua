#!lua
-- ack.lua: the queue side of a settle: drop the app's active entry; re-add it to ready when it
-- is to run again. One script so that a crash cannot leave it in neither set.
-- KEYS[1] active  zset   of the app's queue shard
-- KEYS[2] ready   zset   of the same shard
-- ARGV[1] member  "P:A"
-- ARGV[2] run_at  due time in server ms, or "" when the app does not run again
-- Returns 1.
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
end
return 1
