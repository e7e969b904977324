#!lua
-- heartbeat.lua: a worker says it is alive; workers silent for longer than ttl are dropped.
-- KEYS[1] workers zset   worker id -> last heartbeat (server ms)
-- KEYS[2] worker  hash   this worker's description (host, pid, queues, concurrency, running)
-- ARGV[1] worker_id
-- ARGV[2] ttl_ms     the description expires after this; registry entries older than it go
-- ARGV[3..] field, value pairs of the description
-- Returns the server time in ms. (The store epoch is bumped per primary by epoch.lua.)
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], 'seen_at', now)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
