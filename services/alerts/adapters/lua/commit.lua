-- Commits one planned change of the incidents (services/alerts/adapters/incidents.py):
-- checks that nothing the plan was made from has changed, then writes the incident, its
-- indexes, timers and markers and appends the outbox entry, all in this one call, so the
-- change is durable before any receiver can hear of it, and never half made.
--
-- KEYS: every key the plan checks or writes; ARGV[1] a JSON object of
--   g: guards {kind, key index, ...}: 'absent' (the key does not exist), 'present',
--      'eq' value (a string key's value), 'hf' field value (a hash field's value, ''
--      for a missing one), 'zm' member (a sorted set holds the member);
--   w: writes {command, key index, args...}, commands from WRITES below;
--   x: the outbox: {key index, how long entries are kept (ms)} or absent (the stream is
--      trimmed, approximately, to entries younger than that by the server's clock);
-- ARGV[2..]: the outbox entry's field/value pairs (binary safe: not in the JSON).
-- Reply: {1, outbox entry id or ''} when committed, {0, number of the failed guard}.
local spec = cjson.decode(ARGV[1])

for i, g in ipairs(spec.g) do
  local kind, key = g[1], KEYS[g[2]]
  local ok
  if kind == 'absent' then
    ok = redis.call('EXISTS', key) == 0
  elseif kind == 'present' then
    ok = redis.call('EXISTS', key) == 1
  elseif kind == 'eq' then
    ok = redis.call('GET', key) == g[3]
  elseif kind == 'hf' then
    ok = (redis.call('HGET', key, g[3]) or '') == g[4]
  elseif kind == 'zm' then
    ok = redis.call('ZSCORE', key, g[3]) ~= false
  else
    return redis.error_reply('unknown guard ' .. tostring(kind))
  end
  if not ok then return {0, i} end
end

local WRITES = {HSET = 1, SET = 1, DEL = 1, SADD = 1, SREM = 1, ZADD = 1, ZREM = 1, PEXPIRE = 1}
for _, w in ipairs(spec.w) do
  local command = w[1]
  if not WRITES[command] then return redis.error_reply('write not allowed: ' .. tostring(command)) end
  local args = {command, KEYS[w[2]]}
  for j = 3, #w do args[#args + 1] = w[j] end
  redis.call(unpack(args))
end

local entry = ''
if spec.x then
  local t = redis.call('TIME')
  local min_id = math.max(tonumber(t[1]) * 1000 - tonumber(spec.x[2]), 0)
  local args = {'XADD', KEYS[spec.x[1]], 'MINID', '~', string.format('%d', min_id), '*'}
  for j = 2, #ARGV do args[#args + 1] = ARGV[j] end
  entry = redis.call(unpack(args))
end
return {1, entry}
