-- The notifier's record of one target's delivery of one outbox entry, in one call: the
-- idempotency marker (set once the delivery is over: delivered, or failed for good) and
-- the incident's delivery history field (services/alerts/domain/incidents.py
-- delivery_field / delivery_json). A history field already saying "delivered" is never
-- overwritten by a later, lesser record (a late retry of a claimed entry).
--
-- KEYS: 1 the marker (al:delivered:{entry id}:{target}), 2 the incident's hash.
-- ARGV: 1 the marker's value ('' while the delivery goes on: no marker), 2 its TTL (ms),
--       3 the history field ('' for none), 4 its JSON, 5 the record's status,
--       6 '1' to write the field only when it is missing (pending at dispatch).
-- Reply: 1 when the history was written, 0 when not (no such incident, or kept).
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if ARGV[3] == '' or redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
local old = redis.call('HGET', KEYS[2], ARGV[3])
if old then
  if ARGV[6] == '1' then return 0 end
  if ARGV[5] ~= 'delivered' and string.find(old, '"status":"delivered"', 1, true) then
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
