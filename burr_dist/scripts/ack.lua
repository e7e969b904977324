#!lua
-- ack.lua: the queue side of a settle: drop the app's active entry, and make it runnable again
-- when it is to run again. Only the claim this worker holds is dropped. Another worker's claim of
-- the same app can only exist after this worker's claim expired (touch.lua never revives one) and
-- was swept, so its deadline is later than this worker's last known deadline plus a whole claim
-- time; this worker's own entry is at most a few touches past what it knows (a touch may be in
-- flight). This is what lets settle and ack go out in one round trip: a refused settle cannot
-- take another worker's claim with it.
-- KEYS[1] active     zset   of the app's queue shard
-- KEYS[2] ready      zset   of the same shard
-- KEYS[3] scheduled  zset   of the same shard
-- KEYS[4] vt         hash   fair-queuing state of the shard
-- ARGV[1] member     "P:A"
-- ARGV[2] deadline   the claim deadline this worker last saw set (claim or touch reply)
-- ARGV[3] run_at     due time in server ms, or "" (then ARGV[5] decides)
-- ARGV[4] quantum_ms
-- ARGV[5] delay_ms   run again at server now + delay_ms, or "": the app does not run again
-- ARGV[6] claim_ms   the claim time: entries with a deadline beyond deadline + claim_ms are not ours
-- Returns 1 when the entry was this worker's and was handled, 0 when it was left alone.
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) + tonumber(ARGV[6]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '' and ARGV[5] == '' then
  return 1  -- the app does not run again (the server's clock is not needed)
end
local now = now_ms()
local run_at = tonumber(ARGV[3])
if ARGV[3] == '' then
  run_at = now + tonumber(ARGV[5])
end
if run_at > now then
  if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    redis.call('ZADD', KEYS[3], 'NX', run_at, ARGV[1])
  end
elseif not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  fair_add(KEYS[2], KEYS[4], ARGV[1], now, tonumber(ARGV[4]))
end
return 1
