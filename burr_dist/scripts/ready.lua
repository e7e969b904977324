#!lua
-- ready.lua: make an app runnable in its queue shard: into `scheduled` when it is not due yet,
-- else into `ready` at its fair position (see fair_add). Nothing changes for an app the shard
-- already lists as ready or scheduled (like ZADD NX: enqueue repairs and retries are idempotent).
-- KEYS[1] ready      zset   member -> fair time (ms)
-- KEYS[2] scheduled  zset   member -> due time (server ms)
-- KEYS[3] vt         hash   fair-queuing state of the shard (see _prelude.lua)
-- ARGV[1] member     "P:A"
-- ARGV[2] run_at_ms  due time (server ms)
-- ARGV[3] quantum_ms spacing of one partition's pending entries
-- Returns 1 when added, 0 when already listed.
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
local now = now_ms()
if tonumber(ARGV[2]) > now then
  if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return 0
  end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  return 1
end
return fair_add(KEYS[1], KEYS[3], ARGV[1], now, tonumber(ARGV[3]))
