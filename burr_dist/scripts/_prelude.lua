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
