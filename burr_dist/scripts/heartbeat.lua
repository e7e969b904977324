-- heartbeat.lua: a worker says it is alive; workers silent for longer than ttl are dropped.
-- KEYS[1] workers zset   worker id -> last heartbeat (server ms)
-- KEYS[2] worker  hash   this worker's description (host, pid, queues, concurrency, running)
-- KEYS[3] epoch   hash   id: random, set by the first heartbeat into an empty store;
--                        n: bumped by every heartbeat. Workers remember both: another id means
--                        Redis came back empty, an n at or below the highest seen means it lost
--                        writes (an old backup, a lagging replica).
-- ARGV[1] worker_id
-- ARGV[2] ttl_ms     the description expires after this; registry entries older than it go
-- ARGV[3] epoch id to set if the store has none
-- ARGV[4..] field, value pairs of the description
-- Returns {server time in ms, epoch id, epoch n}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], 'seen_at', now)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('HSETNX', KEYS[3], 'id', ARGV[3])
local n = redis.call('HINCRBY', KEYS[3], 'n', 1)
return {now, redis.call('HGET', KEYS[3], 'id'), n}
