-- _prelude.lua: inserted after the first line of every script (scripts/__init__.py).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Keep the bucket's status counters in step with a fleet record's status change.
local function move_status(counts, from, to)
  if from == to then
    return
  end
  if from then
    redis.call('HINCRBY', counts, from, -1)
  end
  if to then
    redis.call('HINCRBY', counts, to, 1)
  end
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
  local pk = string.match(member, '^([^:]*):')
  local pending = tonumber(redis.call('HGET', vt, 'n:' .. pk) or '0')
  local score = now
  if pending > 0 then
    score = math.max(now, tonumber(redis.call('HGET', vt, 'l:' .. pk) or '0') + quantum)
  end
  redis.call('HSET', vt, 'l:' .. pk, score, 'n:' .. pk, pending + 1)
  redis.call('ZADD', ready, score, member)
  return 1
end
-- The other side: an entry of P left ready (claimed or cancelled).
local function fair_remove(vt, member)
  local pk = string.match(member, '^([^:]*):')
  if redis.call('HINCRBY', vt, 'n:' .. pk, -1) <= 0 then
    redis.call('HDEL', vt, 'n:' .. pk, 'l:' .. pk)
  end
end
