-- _prelude.lua: inserted after the first line of every script (scripts/__init__.py).
-- The server's clock in ms, as a string made without number formatting: a Lua number passed to
-- redis.call or tostring() goes through sprintf, about 1 us each, a large share of a short script.
local function now_str()
  local t = redis.call('TIME')
  local us = t[2]
  if #us < 6 then
    us = string.rep('0', 6 - #us) .. us
  end
  return t[1] .. string.sub(us, 1, 3)
end
local function now_ms()
  return tonumber(now_str())
end
-- ms (a string) + delay_ms (a string), as a string.
local function after(ms, delay_ms)
  if delay_ms == '0' then
    return ms
  end
  return tostring(tonumber(ms) + tonumber(delay_ms))
end
-- Keep the bucket's status counters in step with a fleet record's status change: one HINCRBY of
-- the transition's own field "<from>><to>" (a new record: "<to>"). The count of a status is its
-- field plus the transitions into it minus those out of it (FleetClient.read_counts); one
-- increment per transition instead of two, and plain per-status fields still add up.
local function move_status(counts, from, to)
  if from == to then
    return
  end
  if from then
    redis.call('HINCRBY', counts, from .. '>' .. to, '1')
  elseif to then
    redis.call('HINCRBY', counts, to, '1')
  end
end
-- The partition key part of a queue member "<P>:<A>" (encoded ids hold no ':').
local function partition_of(member)
  return string.match(member, '^([^:]*):')
end
-- Fair queuing across partitions within one queue shard. KEYS of the shard: ready (zset, scored
-- by fair time), vt (hash: 'l:<P>' fair time of P's last entry, 'n:<P>' P's entries in ready).
-- A partition with nothing pending enters at the server's now; each further pending entry of the
-- same partition lands `quantum` ms after its previous one. Claims take the lowest score, so a
-- quiet partition's app goes ahead of a flood that another partition queued before it, and a
-- partition alone is never held back (the scores are an order, not a schedule).
local function fair_add(ready, vt, member, now, quantum)
  if redis.call('ZSCORE', ready, member) then
    return 0
  end
  local pk = partition_of(member)
  local state = redis.call('HMGET', vt, 'n:' .. pk, 'l:' .. pk)
  local pending = tonumber(state[1] or '0')
  local score = now
  if pending > 0 then
    score = math.max(now, tonumber(state[2] or '0') + quantum)
  end
  redis.call('HSET', vt, 'l:' .. pk, score, 'n:' .. pk, pending + 1)
  redis.call('ZADD', ready, score, member)
  return 1
end
-- The other side: `count` entries of partition `pk` left ready (claimed or cancelled).
local function fair_remove(vt, pk, count)
  if redis.call('HINCRBY', vt, 'n:' .. pk, -count) <= 0 then
    redis.call('HDEL', vt, 'n:' .. pk, 'l:' .. pk)
  end
end
-- End a worker's claim on an app: record the new status in its fleet record and delete its
-- lease (the caller checked the lease is this worker's). Shared by settle.lua and commit.lua (a
-- claim's last step commits and settles in one script). `a` holds the settle arguments:
-- token, status, delay_ms, attempts ("reset" | "incr" | "keep" | a count), error, waiting_for,
-- consumed ("1" when pending inputs were used), accepts (for waiting: the JSON list of input names
-- the app's actions declare, which control.lua checks a resume against; "" or nil: no check). `cur` is the record's {cancel, status, attempts}
-- as read by the caller (one HMGET serves both); `now` is now_str(). One write of the record;
-- returns {status, run_at, attempts} (strings).
local function settle_job(lease, job, counts, a, now, cur)
  local status = a.status
  if status ~= 'completed' and cur[1] == '1' then
    status = 'cancelled'
  end
  local run_at = after(now, a.delay_ms)
  move_status(counts, cur[2], status)
  local attempts = cur[3]
  if a.attempts == 'reset' then
    attempts = '0'
  elseif a.attempts == 'incr' then
    attempts = tostring((tonumber(attempts) or 0) + 1)
  elseif tonumber(a.attempts) then
    attempts = a.attempts
  end
  local set = {'status', status, 'worker', '', 'updated_at', now, 'run_at', run_at,
    'waiting_for', a.waiting_for, 'settled', a.token, 'accepts', a.accepts or ''}
  if attempts then
    set[#set + 1], set[#set + 2] = 'attempts', attempts
  end
  if a.error ~= '' then
    set[#set + 1], set[#set + 2] = 'last_error', a.error
  end
  if a.consumed == '1' then
    set[#set + 1], set[#set + 2], set[#set + 3], set[#set + 4] = 'inputs', '', 'inputs_at', '-'
  end
  redis.call('HSET', job, unpack(set))
  if cur[1] and (status == 'completed' or status == 'cancelled') then
    redis.call('HDEL', job, 'cancel')
  end
  redis.call('DEL', lease)
  return {status, run_at, attempts}
end
-- The result of the settle a retry's first send already applied (its reply was lost), or nil.
local function settled_before(job, token)
  if redis.call('HGET', job, 'settled') == token then
    local j = redis.call('HMGET', job, 'status', 'run_at', 'attempts')
    return {j[1], j[2], j[3]}
  end
  return nil
end
-- Snapshot chains (codec.py, format 2): a delta entry `<seq>` has a field `k<seq>` naming the
-- keyframe its chain starts from; a keyframe (or a format 1 entry) has none. Returns
-- {first_seq, blob, ...} from the keyframe up to `target`, or {} when `target` is not stored.
local function read_chain(snaps, target)
  local kf = redis.call('HGET', snaps, 'k' .. target)
  if not kf then
    local blob = redis.call('HGET', snaps, target)
    if not blob then
      return {}
    end
    return {target, blob}
  end
  local fields = {}
  for s = tonumber(kf), tonumber(target) do
    fields[#fields + 1] = tostring(s)
  end
  local out = redis.call('HMGET', snaps, unpack(fields))
  table.insert(out, 1, kf)
  return out
end
