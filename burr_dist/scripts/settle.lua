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
-- ARGV[8] accepts      for waiting: JSON list of the input names the app declares (absent: none)
-- Returns {1, status, run_at_ms, attempts} settled, also to a retry whose first send settled
-- (its lost reply); {0} the lease was not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  local before = settled_before(KEYS[2], ARGV[1])
  if before then
    return {1, before[1], before[2], before[3]}
  end
  return {0}
end
local r = settle_job(KEYS[1], KEYS[2], KEYS[3], {token = ARGV[1], status = ARGV[2], delay_ms = ARGV[3],
  attempts = ARGV[4], error = ARGV[5], waiting_for = ARGV[6], consumed = ARGV[7], accepts = ARGV[8]}, now_str(),
  redis.call('HMGET', KEYS[2], 'cancel', 'status', 'attempts'))
return {1, r[1], r[2], r[3]}
