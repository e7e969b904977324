#!lua
-- settle.lua: end a worker's claim on an app: record the new status and release the lease, only
-- if the lease is still this worker's (a worker that lost its lease changes nothing).
-- KEYS[1] lease  string lease token
-- KEYS[2] job    hash   fleet record ('settled' keeps the token of the last settle, for retries)
-- KEYS[3] counts hash   the bucket's status counters
-- ARGV[1] token        the worker's lease token
-- ARGV[2] status       queued | waiting | completed | failed | cancelled
-- ARGV[3] delay_ms     for queued: run again no earlier than server time + delay
-- ARGV[4] attempts     "reset" | "incr" | "keep" | a count to store (consecutive failed attempts)
-- ARGV[5] error        last error text ("" leaves it)
-- ARGV[6] waiting_for  action awaiting input, for waiting
-- ARGV[7] consumed     "1" when the pending inputs were used by a committed step
-- Returns {1, status, run_at_ms, attempts} settled, also to a retry whose first send settled
-- (its lost reply); {0} the lease was not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if redis.call('HGET', KEYS[2], 'settled') == ARGV[1] then
    local j = redis.call('HMGET', KEYS[2], 'status', 'run_at', 'attempts')
    return {1, j[1], j[2], j[3]}
  end
  return {0}
end
local now = now_ms()
local status = ARGV[2]
if status ~= 'completed' and redis.call('HGET', KEYS[2], 'cancel') == '1' then
  status = 'cancelled'
end
local run_at = now + tonumber(ARGV[3])
move_status(KEYS[3], redis.call('HGET', KEYS[2], 'status'), status)
redis.call('HSET', KEYS[2], 'status', status, 'worker', '', 'updated_at', now, 'run_at', run_at,
  'waiting_for', ARGV[6], 'settled', ARGV[1])
if ARGV[4] == 'reset' then
  redis.call('HSET', KEYS[2], 'attempts', 0)
elseif ARGV[4] == 'incr' then
  redis.call('HINCRBY', KEYS[2], 'attempts', 1)
elseif tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], 'attempts', tonumber(ARGV[4]))
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'last_error', ARGV[5])
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[2], 'inputs', '', 'inputs_at', '-')
end
if status == 'completed' or status == 'cancelled' then
  redis.call('HDEL', KEYS[2], 'cancel')
end
redis.call('DEL', KEYS[1])
return {1, status, run_at, redis.call('HGET', KEYS[2], 'attempts')}
