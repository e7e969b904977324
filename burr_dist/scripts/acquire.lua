-- acquire.lua: take the lease on an app and read its head snapshot in the same round trip.
-- KEYS[1] meta   hash   'fence' is a counter that only grows; 'head' is the head sequence
-- KEYS[2] snaps  hash   seq -> snapshot JSON
-- KEYS[3] lease  string lease token; expiry is kept by the server's clock (PX)
-- ARGV[1] nonce   random string from the caller
-- ARGV[2] ttl_ms  lease time to live in milliseconds
-- Returns {1, token, fence, head_or_"", snapshot_or_""} when acquired;
--         {0, holder_token, pttl_ms} when someone else holds it.
local holder = redis.call('GET', KEYS[3])
if holder then
  return {0, holder, redis.call('PTTL', KEYS[3])}
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
local token = tostring(fence) .. '.' .. ARGV[1]
redis.call('SET', KEYS[3], token, 'PX', ARGV[2])
local head = redis.call('HGET', KEYS[1], 'head')
local snap = ''
if head then
  snap = redis.call('HGET', KEYS[2], head) or ''
end
return {1, token, fence, head or '', snap}
