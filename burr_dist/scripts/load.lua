#!lua flags=no-writes
-- load.lua: read the head (or a given sequence) of an app in one round trip: the keyframe and
-- the deltas after it (see read_chain in _prelude.lua).
-- KEYS[1] meta   hash   head, oldest (lowest loadable sequence)
-- KEYS[2] snaps  hash   seq -> snapshot entry; k<seq> -> keyframe of a delta entry
-- ARGV[1] seq    sequence id to read, or "" for the head
-- Returns {head_or_"", oldest_or_"", chain}; chain is {first_seq, blob...}, or {} when the step
-- is not retained (below oldest, or not stored).
local meta = redis.call('HMGET', KEYS[1], 'head', 'oldest')
local head, oldest = meta[1], meta[2]
local target = ARGV[1]
if target == '' then
  target = head
end
local chain = {}
if target and not (oldest and tonumber(target) < tonumber(oldest)) then
  chain = read_chain(KEYS[2], target)
end
return {head or '', oldest or '', chain}
