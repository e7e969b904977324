#!lua
-- commit.lua: compare-and-set one Burr step, fenced by the lease when a token is given.
-- KEYS[1] meta   hash   head, pos, status, wid, fence; oldest (lowest loadable sequence) and
--                       base (lowest stored: the keyframe the oldest step's chain needs); tlo
--                       (a copy of the track hash's 'lo', so that a tracked commit reads it here);
--                       cancel: "1" once a cancel of the running app was asked for (control.lua)
-- KEYS[2] snaps  hash   seq -> snapshot entry (starts with {"w":"<16-hex write id>", ...);
--                       k<seq> -> keyframe sequence of a delta entry (codec.py, format 2)
-- KEYS[3] lease  string current lease token (absent when nobody holds the app)
-- KEYS[4] index  zset   the partition's index in this bucket: app id -> first commit (server ms)
-- KEYS[5] job    hash   fleet record: its 'cancel' field is read when meta's hint is set or with
--                       a settle (absent outside a fleet), and a settle (below) writes it
-- KEYS[6] counts hash   the bucket's status counters (given, and written, only with a settle)
-- KEYS[#KEYS] track hash tracking records, given only with ARGV[15]: then it is the
--                       last key (KEYS[7] with a settle, KEYS[6] without). Not declared otherwise:
--                       a declared key that is absent during a slot migration gets TRYAGAIN.
-- ARGV[1] seq     sequence id of the step being committed
-- ARGV[2] blob    snapshot entry: format 1 (full JSON) or format 2 (74-byte header: base write id
--                 at bytes 30..45, "----------------" for a keyframe; keyframe seq at 53..72)
-- ARGV[3] pos     action name (Burr "position")
-- ARGV[4] status  "completed" | "failed"
-- ARGV[5] wid     16-hex write id of this call; a retry sends the same one
-- ARGV[6] keep    number of snapshots to retain (>= 1)
-- ARGV[7] token   lease token, or "" for an unfenced commit
-- ARGV[8] app_id  member for the partition index
-- ARGV[9..14]     a settle to apply once the step is committed (the claim's last step), as
--                 settle.lua's ARGV[2..7] (status ... consumed), or ARGV[9] = "": no settle
--                 (then ARGV[10..14] are absent, or "" when tracking follows)
-- ARGV[15] track  this step's Burr tracking records (JSON list, tracking.py), absent or "": none
-- ARGV[16] app    the app's graph and metadata (JSON) to store with them, or "" (sent once a build)
-- ARGV[17] accepts  with a waiting settle: settle.lua's ARGV[8] (then ARGV[15..16] are "" when
--                 nothing is tracked)
-- Returns {1, seq, cancel, settled...} committed (cancel is "1" when a cancel was requested;
-- settled is {status, run_at, attempts} when a settle was asked for); {2, seq, cancel, settled...}
-- this very write was already committed (retry after a lost reply, also when that first send
-- settled and so released the lease); {-1, head} conflict, head is the stored head sequence;
-- {-2, holder} fenced out, holder is the current lease token or "";
-- {-3, head} a delta whose base is not the stored head (the caller re-sends a keyframe).
local seq = tonumber(ARGV[1])
local token = ARGV[7]
local settle = ARGV[9] ~= nil and ARGV[9] ~= ''
local function mine()
  local stored = redis.call('HGET', KEYS[2], ARGV[1])
  return stored and string.sub(stored, 7, 22) == ARGV[5]
end
local function reply(code, cancel, settled)
  local out = {code, seq, cancel}
  if settled then
    out[4], out[5], out[6] = settled[1], settled[2], settled[3]
  end
  return out
end
if token ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder ~= token then
    if settle and mine() then
      local before = settled_before(KEYS[5], token)
      if before then
        return reply(2, '', before)
      end
    end
    return {-2, holder or ''}
  end
end
-- The server's clock, read at most once (TIME is one of the dearer calls of a script).
local clock = nil
local function now()
  clock = clock or now_str()
  return clock
end
-- The job record's cancel flag (the reply's), and the settle when one was asked for: one read.
-- Without a settle the record is read only when the meta hash's hint says a cancel was asked
-- for (control.lua sets both): a step that nobody cancels costs no read of the job record.
local meta = redis.call('HMGET', KEYS[1], 'head', 'oldest', 'wid', 'base', 'tlo', 'cancel')
local function finish(code)
  if not settle then
    local cancel = ''
    if meta[6] == '1' then
      cancel = redis.call('HGET', KEYS[5], 'cancel') or ''
    end
    return reply(code, cancel, nil)
  end
  local cur = redis.call('HMGET', KEYS[5], 'cancel', 'status', 'attempts')
  return reply(code, cur[1] or '', settle_job(KEYS[3], KEYS[5], KEYS[6], {token = token,
    status = ARGV[9], delay_ms = ARGV[10], attempts = ARGV[11], error = ARGV[12],
    waiting_for = ARGV[13], consumed = ARGV[14], accepts = ARGV[17]}, now(), cur))
end
-- meta[5], 'tlo', mirrors the tracking hash's 'lo' (the lowest record kept).
local head = meta[1]
if head then
  local h = tonumber(head)
  if h ~= seq - 1 then
    if h >= seq and mine() then
      return finish(2)
    end
    return {-1, h}
  end
end
local blob = ARGV[2]
local kf = seq
if string.sub(blob, 23, 29) == '","b":"' then
  local base = string.sub(blob, 30, 45)
  if base ~= '----------------' then
    -- A delta: only on top of the very step it was computed from.
    if not head or meta[3] ~= base then
      return {-3, head or ''}
    end
    kf = tonumber(string.sub(blob, 53, 72))
    redis.call('HSET', KEYS[2], 'k' .. ARGV[1], kf)
  end
end
redis.call('HSET', KEYS[2], ARGV[1], blob)
-- Numbers stay the strings they were read as unless they change (see now_str).
local oldest_s = meta[2] or ARGV[1]
local low_s = meta[4] or oldest_s
local oldest = tonumber(oldest_s)
local low = tonumber(low_s)
local floor = seq - tonumber(ARGV[6]) + 1
if floor > oldest then
  oldest, oldest_s = floor, tostring(floor)
  -- Keep the keyframe (and deltas) the new oldest step is built from; drop what is below it.
  local need = kf
  if floor < seq then
    need = tonumber(redis.call('HGET', KEYS[2], 'k' .. floor) or floor)
  end
  while low < need do
    local l = tostring(low)
    redis.call('HDEL', KEYS[2], l, 'k' .. l)
    low, low_s = low + 1, nil
  end
  low_s = low_s or tostring(low)
end
local set = {'head', ARGV[1], 'pos', ARGV[3], 'status', ARGV[4], 'oldest', oldest_s,
  'base', low_s, 'wid', ARGV[5]}
-- Tracking: stored only here, after every check passed (a refused commit stores
-- nothing; a replayed write id returned above), trimmed to the same retention as the snapshots.
if ARGV[15] ~= nil and ARGV[15] ~= '' then
  local track, keep = KEYS[#KEYS], tonumber(ARGV[6])
  local first = seq - keep + 1
  local lo_s = meta[5]
  if not lo_s and head then  -- tracked before 'tlo' existed
    lo_s = redis.call('HGET', track, 'lo') or nil
  end
  lo_s = lo_s or ARGV[1]
  local lo = tonumber(lo_s)
  if lo < first - keep then
    lo, lo_s = first - keep, nil
  end
  while lo < first do
    redis.call('HDEL', track, tostring(lo))
    lo, lo_s = lo + 1, nil
  end
  lo_s = lo_s or tostring(lo)
  if ARGV[16] ~= '' then
    redis.call('HSET', track, ARGV[1], ARGV[15], 'lo', lo_s, 'app', ARGV[16])
  else
    redis.call('HSET', track, ARGV[1], ARGV[15], 'lo', lo_s)
  end
  set[#set + 1], set[#set + 2] = 'tlo', lo_s
end
redis.call('HSET', KEYS[1], unpack(set))
if not head then
  -- First commit of the app: index it once, by creation time on the server's clock.
  redis.call('ZADD', KEYS[4], 'NX', now(), ARGV[8])
end
return finish(1)
