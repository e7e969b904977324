#!lua
-- control.lua: operator transitions of an app's fleet record: resume, cancel, retry.
-- KEYS[1] job    hash   fleet record ('op' keeps the id of the last operation applied)
-- KEYS[2] meta   hash   the app's head (resume records which head its inputs are for); its
--                       'cancel' is a hint for commit.lua (the job record's flag is the truth)
-- KEYS[3] counts hash   the bucket's status counters
-- ARGV[1] op      "resume" | "cancel" | "retry"
-- ARGV[2] inputs  JSON object for resume ("" otherwise)
-- ARGV[3] op_id   random id of this request, the same on a retry
-- Returns {1, new_status, run_at_ms_or_"", queue} applied (also to a retry of an applied
-- request); {2, "running"} cancel requested of a running app (it stops before its next step);
-- {0, status} not allowed in this status; {-1} no such app; {-3, unknown, accepts} a resume
-- naming inputs no action of the parked app declares (JSON lists; the worker that parked it
-- recorded 'accepts'), nothing written.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {-1}
end
if redis.call('HGET', KEYS[1], 'op') == ARGV[3] then
  local j = redis.call('HMGET', KEYS[1], 'status', 'run_at', 'queue')
  if j[1] == 'running' then
    return {2, 'running'}
  end
  return {1, j[1], j[2] or '', j[3] or ''}
end
local now = now_ms()
local op = ARGV[1]
if op == 'resume' then
  if status ~= 'waiting' then
    return {0, status}
  end
  local accepts = redis.call('HGET', KEYS[1], 'accepts')
  if accepts and accepts ~= '' and ARGV[2] ~= '' then
    local known, unknown = {}, {}
    for _, name in ipairs(cjson.decode(accepts)) do
      known[name] = true
    end
    for name in pairs(cjson.decode(ARGV[2])) do
      if not known[name] then
        unknown[#unknown + 1] = name
      end
    end
    if #unknown > 0 then
      table.sort(unknown)
      return {-3, cjson.encode(unknown), accepts}
    end
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'inputs', ARGV[2], 'run_at', now,
    'inputs_at', redis.call('HGET', KEYS[2], 'head') or '', 'waiting_for', '', 'updated_at', now,
    'op', ARGV[3])
  move_status(KEYS[3], status, 'queued')
  return {1, 'queued', now, redis.call('HGET', KEYS[1], 'queue')}
elseif op == 'cancel' then
  if status == 'queued' or status == 'waiting' or status == 'failed' then
    redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', now, 'op', ARGV[3])
    move_status(KEYS[3], status, 'cancelled')
    return {1, 'cancelled', '', redis.call('HGET', KEYS[1], 'queue')}
  elseif status == 'running' then
    redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_at', now, 'op', ARGV[3])
    redis.call('HSET', KEYS[2], 'cancel', '1')  -- the hint commit.lua reads with the head
    return {2, 'running'}
  end
  return {0, status}
elseif op == 'retry' then
  if status ~= 'failed' and status ~= 'cancelled' then
    return {0, status}
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'cancel', '', 'run_at', now,
    'updated_at', now, 'op', ARGV[3])
  redis.call('HDEL', KEYS[2], 'cancel')
  move_status(KEYS[3], status, 'queued')
  return {1, 'queued', now, redis.call('HGET', KEYS[1], 'queue')}
end
return redis.error_reply('control.lua: unknown op ' .. op)
