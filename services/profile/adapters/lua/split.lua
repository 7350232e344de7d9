-- Splits identifiers (and the events that are theirs alone) off a profile, atomically.
-- ARGV[1]: prefix; ARGV[2]: source profile; ARGV[3]: target profile (must not exist);
-- ARGV[4]: the source's c:events when the caller read it (optimistic check);
-- ARGV[5]: JSON {source = side, target = side, ids = {"t:v", ...}, record = merge record
--          to drop or ""}, side = {main = {}, traits = {}, consent = {}, complaints = {},
--          contacts = {{member, score}, ...}}; ARGV[6..]: event bytes moving to the target.
-- Returns 'ok', or 'conflict' when the source changed since it was read.
local source, target, expected = ARGV[2], ARGV[3], ARGV[4]
local plan = cjson.decode(ARGV[5])

if redis.call('EXISTS', pkey(source) .. ':ids') == 0 then return 'gone' end
if (redis.call('HGET', pkey(source), 'c:events') or '') ~= expected then return 'conflict' end
if redis.call('EXISTS', pkey(target) .. ':ids') == 1 then return 'exists' end

local function write(pid, side)
  local main = pkey(pid)
  redis.call('DEL', main, main .. ':traits', main .. ':consent', main .. ':complaints',
    main .. ':contacts', main .. ':touchpoints')
  for field, value in pairs(side.main) do redis.call('HSET', main, field, value) end
  for _, sub in ipairs({'traits', 'consent', 'complaints'}) do
    for field, value in pairs(side[sub]) do redis.call('HSET', main .. ':' .. sub, field, value) end
  end
  for field, n in pairs(side.touchpoints) do redis.call('HSET', main .. ':touchpoints', field, n) end
  for _, pair in ipairs(side.contacts) do
    redis.call('ZADD', main .. ':contacts', pair[2], pair[1])
  end
end

write(source, plan.source)
write(target, plan.target)
for _, m in ipairs(plan.ids) do
  local t, v = string.match(m, '^(%a):(.*)$')
  local lineage = redis.call('HGET', pkey(source) .. ':ids', m) or ''
  redis.call('HDEL', pkey(source) .. ':ids', m)
  redis.call('HSET', pkey(target) .. ':ids', m, lineage)
  redis.call('SET', prefix .. 'id:' .. t .. ':' .. v, target)
end
for i = 6, #ARGV do
  local score = redis.call('ZSCORE', pkey(source) .. ':events', ARGV[i])
  if score then
    redis.call('ZREM', pkey(source) .. ':events', ARGV[i])
    redis.call('ZADD', pkey(target) .. ':events', score, ARGV[i])
  end
end
redis.call('SADD', pkey(source) .. ':apart', target)
redis.call('SADD', pkey(target) .. ':apart', source)
redis.call('HDEL', prefix .. 'alias', target)
if plan.record ~= '' then redis.call('LREM', pkey(source) .. ':merges', 1, plan.record) end
return 'ok'
