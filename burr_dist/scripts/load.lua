#!lua flags=no-writes
-- load.lua: read the head (or a given sequence) of an app in one round trip.
-- KEYS[1] meta   hash   head, oldest
-- KEYS[2] snaps  hash   seq -> snapshot JSON
-- ARGV[1] seq    sequence id to read, or "" for the head
-- Returns {head_or_"", snapshot_or_"", oldest_or_""}.
local head = redis.call('HGET', KEYS[1], 'head')
local target = ARGV[1]
if target == '' then
  target = head
end
local snap = ''
if target then
  snap = redis.call('HGET', KEYS[2], target) or ''
end
return {head or '', snap, redis.call('HGET', KEYS[1], 'oldest') or ''}
