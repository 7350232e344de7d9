-- What a trigger's outcome depends on (services/alerts/domain/incidents.py TriggerView),
-- in one round trip. Rendered in front of it: KEY (key name parts, layout.py).
--
-- KEYS: 1 the (rule, event id) marker, 2 the dedup key's open pointer, 3 its pending SLA
-- trigger, 4 the open touchpoint incidents of the trigger's touchpoint (or any key that
-- does not exist), 5 the silences by end, then the open pointers of the `groups_with`
-- rules for the person.
-- ARGV: 1 the key prefix, 2 now (ms).
-- Reply: {seen or false, open id or false, open incident (flat hash), pending 1/0,
-- inhibitors {{id, flat hash}, ...}, silences {json, ...}, groups {{id, flat hash}, ...}}.
local prefix, now = ARGV[1], ARGV[2]

local function incident(id)
  return redis.call('HGETALL', prefix .. KEY.incident .. id)
end

local seen = redis.call('GET', KEYS[1])
local open_id = redis.call('GET', KEYS[2])
local open = {}
if open_id then open = incident(open_id) end
local pending = redis.call('EXISTS', KEYS[3])

local inhibitors = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  inhibitors[#inhibitors + 1] = {id, incident(id)}
end

local silences = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. now, '+inf')) do
  local s = redis.call('GET', prefix .. KEY.silence .. id)
  if s then silences[#silences + 1] = s end
end

local groups = {}
for i = 6, #KEYS do
  local id = redis.call('GET', KEYS[i])
  if id then groups[#groups + 1] = {id, incident(id)} else groups[#groups + 1] = {'', {}} end
end

return {seen, open_id, open, pending, inhibitors, silences, groups}
