-- Shared by every profile script: prepended to each one when it is loaded, after the
-- key names KEY, SUB_SEP, SUB (sub-key suffixes), SUBKEYS, LATEST_HASHES, STATE_SUBKEYS,
-- STAT (stats fields) and FOLLOW_HOPS rendered from services/profile/adapters/layout.py.
-- ARGV[1] is always the key prefix.
local prefix = ARGV[1]

local function pkey(pid) return prefix .. KEY.profile .. pid end
local function seg_key(name) return prefix .. KEY.segment .. name end
local function count(stat, n) redis.call('HINCRBY', prefix .. KEY.stats, stat, n) end

-- An identifier as a member of the ids hash, "t:v" (layout.identifier_member), and back.
local function member(t, v) return t .. ':' .. v end
local function split_member(m) return string.match(m, '^(%a):(.*)$') end
local function id_key(t, v) return prefix .. KEY.identity .. member(t, v) end

-- The surviving profile of a merged one.
local function follow(pid)
  for _ = 1, FOLLOW_HOPS do
    local next_pid = redis.call('HGET', prefix .. KEY.alias, pid)
    if not next_pid then return pid end
    pid = next_pid
  end
  return pid
end

-- Whether (ts, v) wins over the current (cur_ts, cur_v): the newer event, then the
-- greater value, so any order of the same events agrees.
local function newer(ts, v, cur_ts, cur_v)
  if not cur_ts then return true end
  ts, cur_ts = tonumber(ts), tonumber(cur_ts)
  return ts > cur_ts or (ts == cur_ts and v > (cur_v or ''))
end

local function fmt(x) return string.format('%.17g', x) end

-- Latest-value fields hold "<ts>|<value>" (layout.encode_latest / decode_latest).
local function unpack_latest(packed)
  if not packed then return nil, nil end
  return string.match(packed, '^([^|]*)|(.*)$')
end

local function set_latest(key, field, ts, value)
  local cur_ts, cur_val = unpack_latest(redis.call('HGET', key, field))
  if newer(ts, value, cur_ts, cur_val) then redis.call('HSET', key, field, ts .. '|' .. value) end
end
