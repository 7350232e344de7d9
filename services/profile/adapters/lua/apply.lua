-- Applies a batch of events to their profiles, atomically (one round trip).
-- Keys: see services/profile/adapters/layout.py.
-- ARGV[1]: key prefix; ARGV[2]: dedup window in seconds; ARGV[3]: most events kept per
-- profile; then per event two arguments: a JSON header {e = event id, p = profile id,
-- t = ts ms, o = ops, g = outbox signals} and the event's protobuf bytes.
-- An event id already applied within the window changes nothing (idempotent).
-- Returns {statuses, profiles}: a status per event (applied, duplicate, gone) and, per
-- touched profile, its stored structures for derivations and change events.
local window, keep = tonumber(ARGV[2]), tonumber(ARGV[3])

local statuses, touched, order = {}, {}, {}
for i = 4, #ARGV, 2 do
  local head = cjson.decode(ARGV[i])
  local pid = follow(head.p)
  local main = pkey(pid)
  local status
  if redis.call('EXISTS', main .. SUB.ids) == 0 then
    status = 'gone'
  elseif not redis.call('SET', prefix .. KEY.seen .. head.e, '1', 'NX', 'EX', window) then
    status = 'duplicate'
  else
    status = 'applied'
    local ts = head.t
    for _, op in ipairs(head.o) do
      local kind = op[1]
      if kind == 'c' then
        redis.call('HINCRBYFLOAT', main, 'c:' .. op[2], fmt(op[3]))
      elseif kind == 'mn' or kind == 'mx' then
        local field = kind .. ':' .. op[2]
        local cur = redis.call('HGET', main, field)
        if not cur or (kind == 'mn' and op[3] < tonumber(cur))
            or (kind == 'mx' and op[3] > tonumber(cur)) then
          redis.call('HSET', main, field, fmt(op[3]))
        end
      elseif kind == 'l' then
        set_latest(main, 'l:' .. op[2], ts, op[3])
      elseif kind == 'h' then
        set_latest(main .. SUB_SEP .. op[2], op[3], ts, op[4])
      elseif kind == 'hc' then
        redis.call('HINCRBY', main .. SUB_SEP .. op[2], op[3], op[4])
      elseif kind == 'z' then
        redis.call('ZADD', main .. SUB_SEP .. op[2], 'GT', ts, op[3])
      end
    end
    for _, signal in ipairs(head.g) do
      redis.call('RPUSH', main .. SUB.outbox, signal)
    end
    redis.call('ZADD', main .. SUB.events, ts, ARGV[i + 1])
  end
  table.insert(statuses, status)
  if status ~= 'gone' and not touched[pid] then
    touched[pid] = true
    table.insert(order, pid)
  end
end

local applied = 0
for _, status in ipairs(statuses) do
  if status == 'applied' then applied = applied + 1 end
end
if applied > 0 then count(STAT.applied, applied) end

-- One JSON document: a large nested reply costs the client far more to parse.
local profiles = {}
for _, pid in ipairs(order) do
  local main = pkey(pid)
  -- The archive is trimmed once per profile and batch, keeping the newest events.
  if redis.call('ZCARD', main .. SUB.events) > keep then
    redis.call('ZREMRANGEBYRANK', main .. SUB.events, 0, -(keep + 1))
  end
  -- layout.StoredProfile.from_reply reads this.
  table.insert(profiles, {
    pid,
    redis.call('HGETALL', main),
    redis.call('HKEYS', main .. SUB.ids),
    redis.call('HGETALL', main .. SUB.traits),
    redis.call('HGETALL', main .. SUB.consent),
    redis.call('HGETALL', main .. SUB.complaints),
    redis.call('ZRANGE', main .. SUB.contacts, 0, -1, 'WITHSCORES'),
    redis.call('LRANGE', main .. SUB.outbox, 0, -1),
    redis.call('HGETALL', main .. SUB.incidents),
  })
end
return cjson.encode({statuses, profiles})
