#!lua
-- release.lua: give a lease back, only if we still hold it.
-- KEYS[1] lease   string lease token
-- ARGV[1] token   the token acquire.lua returned
-- Returns 1 when released, 0 when the lease was already gone or held by another token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
