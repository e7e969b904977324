#!lua
-- epoch.lua: bump the store epoch of one primary (every worker heartbeat, on every primary).
-- KEYS[1] epoch  hash   id: random, set by the first bump into an empty store; n: bumped by
--                       every call. Workers remember both per key: another id means this
--                       primary came back empty; an n at or below the highest seen means it lost
--                       writes (an old backup, a failover to a lagging replica).
-- ARGV[1] epoch id to set if there is none
-- Returns {epoch id, n}.
redis.call('HSETNX', KEYS[1], 'id', ARGV[1])
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
return {redis.call('HGET', KEYS[1], 'id'), n}
