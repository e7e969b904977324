#!lua
-- enqueue.lua: create an app's fleet record, once. Idempotent: an existing record is returned.
-- KEYS[1] job    hash   fleet record of the app
-- KEYS[2] counts hash   the bucket's status counters
-- ARGV[1] delay_ms   run no earlier than server time + delay
-- ARGV[2..] field, value pairs of the new record (name, queue, state, inputs, entrypoint, fork_*)
-- Returns {1, run_at_ms} created; {0, status, run_at_ms_or_"", queue} the record already existed.
local existing = redis.call('HMGET', KEYS[1], 'status', 'run_at', 'queue')
if existing[1] then
  return {0, existing[1], existing[2] or '', existing[3] or ''}
end
local now = now_str()
local run_at = after(now, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', '0', 'claims', '0',
  'created_at', now, 'updated_at', now, 'run_at', run_at, 'inputs_at', '', unpack(ARGV, 2))
move_status(KEYS[2], nil, 'queued')
return {1, run_at}
