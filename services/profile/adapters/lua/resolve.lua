-- Identity resolution for a batch of events, atomically (one round trip).
-- ARGV[1]: key prefix; ARGV[2]: JSON config {max = {type = n}, blocked = {"t:v" = true},
--          salt = "...", priority = {type = rank, 1 strongest}, customer = type of the
--          customer id}; ARGV[3]: JSON list of {e = event id, t = ts ms, s = source,
--          ids = {{type, value}, ...}}. Types are the identifier codes of
--          services/common/identifiers.py, which also gives their priority.
-- Returns JSON: per event {p = profile id} or {x = reason}; merges as {m = {losers}}.
-- Layout: see services/profile/adapters/layout.py.
local config = cjson.decode(ARGV[2])
local events = cjson.decode(ARGV[3])

local function customer_id_of(pid)
  local members = redis.call('HKEYS', pkey(pid) .. SUB.ids)
  for _, m in ipairs(members) do
    local t, v = split_member(m)
    if t == config.customer then return v end
  end
  return nil
end

-- The sum counting a profile's identifiers of a type (layout.id_count_field).
local function count_of(pid, t)
  return tonumber(redis.call('HGET', pkey(pid), 'c:ids.' .. t) or '0')
end

-- The identity key names the owner; the profile's ids hash keeps the lineage of the link
-- (event, time, source), which moves with the identifier on merges and splits.
local function link(pid, t, v, ev)
  redis.call('SET', id_key(t, v), pid)
  -- layout.encode_lineage / decode_lineage
  local lineage = ev.e .. '|' .. ev.t .. '|' .. (ev.s or '')
  if redis.call('HSETNX', pkey(pid) .. SUB.ids, member(t, v), lineage) == 1 then
    redis.call('HINCRBY', pkey(pid), 'c:ids.' .. t, 1)
  end
  local main = pkey(pid)
  set_latest(main, 'l:u.identity', ev.t, ev.e)
end

local function merge_latest_hash(from, to)
  local flat = redis.call('HGETALL', from)
  for i = 1, #flat, 2 do
    local ts, val = unpack_latest(flat[i + 1])
    set_latest(to, flat[i], ts, val)
  end
end

-- Moves everything of `loser` into `survivor`, by each field's combining rule.
local function merge(loser, survivor, ev)
  local from, to = pkey(loser), pkey(survivor)
  local flat = redis.call('HGETALL', from)
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  for field, value in pairs(fields) do
    local kind, name = string.match(field, '^([^:]+):(.*)$')
    if kind == 'c' then
      redis.call('HINCRBYFLOAT', to, field, value)
    elseif kind == 'mn' or kind == 'mx' then
      local cur = redis.call('HGET', to, field)
      if not cur or (kind == 'mn' and tonumber(value) < tonumber(cur))
          or (kind == 'mx' and tonumber(value) > tonumber(cur)) then
        redis.call('HSET', to, field, value)
      end
    elseif kind == 'l' then
      local ts, val = unpack_latest(value)
      set_latest(to, field, ts, val)
    elseif kind == 's' and name == 'segments' then
      -- layout.decode_segment_list
      for seg in string.gmatch(value, '[^,]+') do
        redis.call('ZREM', seg_key(seg), loser)
      end
    end
  end
  for _, name in ipairs(LATEST_HASHES) do
    merge_latest_hash(from .. SUB[name], to .. SUB[name])
  end
  local counts = redis.call('HGETALL', from .. SUB.touchpoints)
  for i = 1, #counts, 2 do redis.call('HINCRBY', to .. SUB.touchpoints, counts[i], counts[i + 1]) end
  for _, sub in ipairs({SUB.contacts, SUB.events}) do
    redis.call('ZUNIONSTORE', to .. sub, 2, to .. sub, from .. sub, 'AGGREGATE', 'MAX')
  end
  redis.call('SUNIONSTORE', to .. SUB.apart, to .. SUB.apart, from .. SUB.apart)
  local loser_links = redis.call('HGETALL', from .. SUB.ids)
  local loser_ids = {}
  for i = 1, #loser_links, 2 do
    local m = loser_links[i]
    local t, v = split_member(m)
    redis.call('SET', id_key(t, v), survivor)
    redis.call('HSET', to .. SUB.ids, m, loser_links[i + 1])
    table.insert(loser_ids, m)
  end
  local outbox = redis.call('LRANGE', from .. SUB.outbox, 0, -1)
  for _, item in ipairs(outbox) do redis.call('RPUSH', to .. SUB.outbox, item) end
  redis.call('RPUSH', to .. SUB.outbox,
    cjson.encode({k = 'merged', e = ev.e, t = ev.t, loser = loser}))
  -- layout.decode_merge
  redis.call('RPUSH', to .. SUB.merges,
    cjson.encode({loser = loser, e = ev.e, t = ev.t, ids = loser_ids}))
  redis.call('HSET', prefix .. KEY.alias, loser, survivor)
  local doomed = {from}
  for _, name in ipairs(SUBKEYS) do table.insert(doomed, from .. SUB[name]) end
  redis.call('DEL', unpack(doomed))
end

-- layout.erased_digest
local function suppressed(t, v)
  if config.salt == nil or config.salt == '' then return false end
  return redis.call('EXISTS', prefix .. KEY.erased .. redis.sha1hex(config.salt .. member(t, v))) == 1
end

local results = {}
for i, ev in ipairs(events) do
  local ids, owners, order = {}, {}, {}
  local erased = false
  for _, pair in ipairs(ev.ids) do
    local t, v = pair[1], pair[2]
    if not config.blocked[member(t, v)] then
      if suppressed(t, v) then erased = true end
      table.insert(ids, {t, v})
    end
  end
  table.sort(ids, function(x, y) return config.priority[x[1]] < config.priority[y[1]] end)
  if erased then
    results[i] = {x = 'erased'}
    count(STAT.suppressed, 1)
  elseif #ids == 0 then
    results[i] = {x = 'blocked'}
    count(STAT.blocked, 1)
  else
    for _, id in ipairs(ids) do
      local pid = redis.call('GET', id_key(id[1], id[2]))
      if pid then
        pid = follow(pid)
        if not owners[pid] then owners[pid] = true; table.insert(order, pid) end
      end
    end
    local pid = order[1]
    local existing = pid ~= nil
    local merged = {}
    if not pid then
      pid = 'p_' .. string.sub(redis.sha1hex(ev.e .. '|' .. member(ids[1][1], ids[1][2])), 1, 20)
      redis.call('HSET', pkey(pid), 'mn:created', ev.t)
      count(STAT.profiles_created, 1)
    end
    -- Candidates are ordered by the priority of the identifier that found them, so the
    -- survivor is the profile of the event's strongest identifier.
    local survivor_customer = customer_id_of(pid)
    for j = 2, #order do
      local other = order[j]
      local other_customer = customer_id_of(other)
      local conflict = (survivor_customer and other_customer and survivor_customer ~= other_customer)
        or redis.call('SISMEMBER', pkey(pid) .. SUB.apart, other) == 1
        or redis.call('SISMEMBER', pkey(other) .. SUB.apart, pid) == 1
      local too_many = false
      for t, limit in pairs(config.max) do
        if count_of(pid, t) + count_of(other, t) > limit then too_many = true end
      end
      if not conflict and not too_many then
        merge(other, pid, ev)
        table.insert(merged, other)
        count(STAT.merges, 1)
        survivor_customer = survivor_customer or other_customer
      end
    end
    for _, id in ipairs(ids) do
      local owner = redis.call('GET', id_key(id[1], id[2]))
      if not owner then
        local has_customer = id[1] == config.customer and customer_id_of(pid)
        if not has_customer and count_of(pid, id[1]) < (config.max[id[1]] or 1000000) then
          link(pid, id[1], id[2], ev)
          -- A new identifier of someone already known: identity stitching.
          if existing then count(STAT.stitched, 1) end
        end
      end
    end
    results[i] = {p = pid, m = merged}
  end
end
return cjson.encode(results)
