-- Records what the worker published as change events, for a batch of profiles.
-- Keys: see services/profile/adapters/layout.py.
-- ARGV[1]: key prefix; ARGV[2]: JSON list of {p = profile id, s = {snapshot fields},
-- in = {segments entered}, out = {segments left}, done = outbox entries published,
-- t = ts ms}. Profiles merged or erased meanwhile are skipped, so nothing is recreated.
for _, u in ipairs(cjson.decode(ARGV[2])) do
  local main = pkey(u.p)
  if redis.call('EXISTS', main .. SUB.ids) == 1 then
    for name, value in pairs(u.s) do redis.call('HSET', main, 's:' .. name, value) end
    for _, seg in ipairs(u['in']) do redis.call('ZADD', seg_key(seg), u.t, u.p) end
    for _, seg in ipairs(u.out) do redis.call('ZREM', seg_key(seg), u.p) end
    if u.done > 0 then redis.call('LTRIM', main .. SUB.outbox, u.done, -1) end
  end
end
return 1
