#!lua
-- acquire.lua: take the lease on an app and read its head snapshot in the same round trip.
-- In fleet mode (ARGV[3] is a worker id) the job record decides first whether the app may run.
-- KEYS[1] meta   hash   'fence' is a counter that only grows; 'head' is the head sequence
-- KEYS[2] snaps  hash   seq -> snapshot entry (chain: see read_chain in _prelude.lua)
-- KEYS[3] lease  string lease token "<fence>.<nonce>"; expiry is kept by the server's clock (PX)
-- KEYS[4] job    hash   fleet record (status, run_at, cancel...); read only in fleet mode
-- KEYS[5] counts hash   the bucket's status counters (fleet mode)
-- ARGV[1] nonce   random string from the caller, the same on a retry of this acquire
-- ARGV[2] ttl_ms  lease time to live in milliseconds
-- ARGV[3] worker  worker id for fleet mode, or "" for a plain lease
-- ARGV[4..] fields of the job record the caller wants back (fleet mode)
-- Returns {1, token, fence, head_or_"", chain, values} when acquired: values of ARGV[4..] in
--         their order (false where absent; {} outside fleet mode) (also
--         when a retry finds the lease its lost reply took: the token ends with the nonce);
--         {0, holder_token, pttl_ms} when someone else holds it;
--         {-1, status} fleet mode: the job is missing ("missing") or not runnable;
--         {-2, run_at_ms} fleet mode: the job is not due yet.
local now = now_str()
local fleet = ARGV[3] ~= ''
local holder = redis.call('GET', KEYS[3])
local mine = holder and string.sub(holder, -(#ARGV[1] + 1)) == '.' .. ARGV[1]
-- One read of the job record: what decides the claim, then what the caller asked for.
local job = {}
if fleet then
  job = redis.call('HMGET', KEYS[4], 'status', 'run_at', 'cancel', 'claims', unpack(ARGV, 4))
end
local status = job[1]
if fleet and not mine then
  if not status then
    return {-1, 'missing'}
  end
  if status ~= 'queued' and status ~= 'running' then
    return {-1, status}
  end
  if job[3] == '1' and not holder then
    redis.call('HSET', KEYS[4], 'status', 'cancelled', 'updated_at', now, 'worker', '')
    move_status(KEYS[5], status, 'cancelled')
    return {-1, 'cancelled'}
  end
  if job[2] and tonumber(job[2]) > tonumber(now) then
    return {-2, job[2]}
  end
end
local token
local fence
if mine then
  token = holder
  fence = tonumber(string.match(holder, '^(%d+)%.'))
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
else
  if holder then
    return {0, holder, redis.call('PTTL', KEYS[3])}
  end
  fence = redis.call('HINCRBY', KEYS[1], 'fence', '1')
  token = tostring(fence) .. '.' .. ARGV[1]
  redis.call('SET', KEYS[3], token, 'PX', ARGV[2])
end
local head = redis.call('HGET', KEYS[1], 'head')
local chain = {}
if head then
  chain = read_chain(KEYS[2], head)
end
local values = {}
if fleet then
  if not mine then
    move_status(KEYS[5], status, 'running')
    redis.call('HSET', KEYS[4], 'status', 'running', 'worker', ARGV[3], 'updated_at', now,
      'claims', tostring((tonumber(job[4]) or 0) + 1))
  end
  values = {unpack(job, 5, #ARGV + 1)}
end
return {1, token, fence, head or '', chain, values}
