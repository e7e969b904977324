#!lua
-- renew.lua: extend a lease we still hold.
-- KEYS[1] lease   string lease token
-- ARGV[1] token   the token acquire.lua returned
-- ARGV[2] ttl_ms  new time to live in milliseconds
-- Returns 1 when extended, 0 when the lease is gone or held by another token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
