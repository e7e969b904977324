-- control.lua: operator transitions of an app's fleet record: resume, cancel, retry.
-- KEYS[1] job    hash   fleet record
-- KEYS[2] meta   hash   the app's head (resume records which head its inputs are for)
-- ARGV[1] op      "resume" | "cancel" | "retry"
-- ARGV[2] inputs  JSON object for resume ("" otherwise)
-- Returns {1, new_status, run_at_ms_or_"", queue} applied; {2, "running"} cancel requested of a running
-- app (it stops before its next step); {0, status} not allowed in this status; {-1} no such app.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {-1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
if op == 'resume' then
  if status ~= 'waiting' then
    return {0, status}
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'inputs', ARGV[2], 'run_at', now,
    'inputs_at', redis.call('HGET', KEYS[2], 'head') or '', 'waiting_for', '', 'updated_at', now)
  return {1, 'queued', now, redis.call('HGET', KEYS[1], 'queue')}
elseif op == 'cancel' then
  if status == 'queued' or status == 'waiting' or status == 'failed' then
    redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', now)
    return {1, 'cancelled', '', redis.call('HGET', KEYS[1], 'queue')}
  elseif status == 'running' then
    redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_at', now)
    return {2, 'running'}
  end
  return {0, status}
elseif op == 'retry' then
  if status ~= 'failed' and status ~= 'cancelled' then
    return {0, status}
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'cancel', '', 'run_at', now,
    'updated_at', now)
  return {1, 'queued', now, redis.call('HGET', KEYS[1], 'queue')}
end
return redis.error_reply('control.lua: unknown op ' .. op)
