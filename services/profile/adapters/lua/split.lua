-- Splits identifiers (and the events that are theirs alone) off a profile, atomically.
-- Keys: see services/profile/adapters/layout.py.
-- ARGV[1]: prefix; ARGV[2]: source profile; ARGV[3]: target profile (must not exist);
-- ARGV[4]: the source's c:events when the caller read it (optimistic check);
-- ARGV[5]: JSON {source = side, target = side, ids = {"t:v", ...}, record = merge record
--          to drop or ""}, side = layout.state_to_redis: {main = {}, traits = {},
--          consent = {}, complaints = {}, touchpoints = {}, contacts = {{member, score}, ...}};
--          ARGV[6..]: event bytes moving to the target.
-- Returns 'ok', or 'conflict' when the source changed since it was read.
local source, target, expected = ARGV[2], ARGV[3], ARGV[4]
local plan = cjson.decode(ARGV[5])

if redis.call('EXISTS', pkey(source) .. SUB.ids) == 0 then return 'gone' end
if (redis.call('HGET', pkey(source), 'c:events') or '') ~= expected then return 'conflict' end
if redis.call('EXISTS', pkey(target) .. SUB.ids) == 1 then return 'exists' end

local function write(pid, side)
  local main = pkey(pid)
  local rebuilt = {main}
  for _, name in ipairs(STATE_SUBKEYS) do table.insert(rebuilt, main .. SUB[name]) end
  redis.call('DEL', unpack(rebuilt))
  for field, value in pairs(side.main) do redis.call('HSET', main, field, value) end
  for _, name in ipairs(LATEST_HASHES) do
    for field, value in pairs(side[name]) do redis.call('HSET', main .. SUB[name], field, value) end
  end
  for field, n in pairs(side.touchpoints) do redis.call('HSET', main .. SUB.touchpoints, field, n) end
  for _, pair in ipairs(side.contacts) do
    redis.call('ZADD', main .. SUB.contacts, pair[2], pair[1])
  end
end

write(source, plan.source)
write(target, plan.target)
for _, m in ipairs(plan.ids) do
  local t, v = split_member(m)
  local lineage = redis.call('HGET', pkey(source) .. SUB.ids, m) or ''
  redis.call('HDEL', pkey(source) .. SUB.ids, m)
  redis.call('HSET', pkey(target) .. SUB.ids, m, lineage)
  redis.call('SET', id_key(t, v), target)
end
for i = 6, #ARGV do
  local score = redis.call('ZSCORE', pkey(source) .. SUB.events, ARGV[i])
  if score then
    redis.call('ZREM', pkey(source) .. SUB.events, ARGV[i])
    redis.call('ZADD', pkey(target) .. SUB.events, score, ARGV[i])
  end
end
redis.call('SADD', pkey(source) .. SUB.apart, target)
redis.call('SADD', pkey(target) .. SUB.apart, source)
redis.call('HDEL', prefix .. KEY.alias, target)
if plan.record ~= '' then redis.call('LREM', pkey(source) .. SUB.merges, 1, plan.record) end
return 'ok'
