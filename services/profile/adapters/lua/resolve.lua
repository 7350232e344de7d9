-- Identity resolution for a batch of events, atomically (one round trip).
-- ARGV[1]: key prefix; ARGV[2]: JSON config {max = {type = n}, blocked = {"t:v" = true},
--          salt = "..."}; ARGV[3]: JSON list of {e = event id, t = ts ms, s = source,
--          ids = {{type, value}, ...}} with types c (customer), e (email), p (phone),
--          a (anonymous).
-- Returns JSON: per event {p = profile id} or {x = reason}; merges as {m = {losers}}.
-- Layout: see services/profile/adapters/store.py.
local config = cjson.decode(ARGV[2])
local events = cjson.decode(ARGV[3])
local PRIORITY = {c = 1, e = 2, p = 3, a = 4}

local function id_key(t, v) return prefix .. 'id:' .. t .. ':' .. v end
local function customer_id_of(pid)
  local members = redis.call('HKEYS', pkey(pid) .. ':ids')
  for _, m in ipairs(members) do
    if string.sub(m, 1, 2) == 'c:' then return string.sub(m, 3) end
  end
  return nil
end

local function count_of(pid, t)
  return tonumber(redis.call('HGET', pkey(pid), 'c:ids.' .. t) or '0')
end

-- The identity key names the owner; the profile's ids hash keeps the lineage of the link
-- (event, time, source), which moves with the identifier on merges and splits.
local function link(pid, t, v, ev)
  redis.call('SET', id_key(t, v), pid)
  local lineage = ev.e .. '|' .. ev.t .. '|' .. (ev.s or '')
  if redis.call('HSETNX', pkey(pid) .. ':ids', t .. ':' .. v, lineage) == 1 then
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
      for seg in string.gmatch(value, '[^,]+') do
        redis.call('ZREM', prefix .. 'seg:' .. seg, loser)
      end
    end
  end
  for _, sub in ipairs({'traits', 'consent', 'complaints'}) do
    merge_latest_hash(from .. ':' .. sub, to .. ':' .. sub)
  end
  local counts = redis.call('HGETALL', from .. ':touchpoints')
  for i = 1, #counts, 2 do redis.call('HINCRBY', to .. ':touchpoints', counts[i], counts[i + 1]) end
  for _, sub in ipairs({'contacts', 'events'}) do
    redis.call('ZUNIONSTORE', to .. ':' .. sub, 2, to .. ':' .. sub, from .. ':' .. sub,
      'AGGREGATE', 'MAX')
  end
  redis.call('SUNIONSTORE', to .. ':apart', to .. ':apart', from .. ':apart')
  local loser_links = redis.call('HGETALL', from .. ':ids')
  local loser_ids = {}
  for i = 1, #loser_links, 2 do
    local m = loser_links[i]
    local t, v = string.match(m, '^(%a):(.*)$')
    redis.call('SET', id_key(t, v), survivor)
    redis.call('HSET', to .. ':ids', m, loser_links[i + 1])
    table.insert(loser_ids, m)
  end
  local outbox = redis.call('LRANGE', from .. ':outbox', 0, -1)
  for _, item in ipairs(outbox) do redis.call('RPUSH', to .. ':outbox', item) end
  redis.call('RPUSH', to .. ':outbox',
    cjson.encode({k = 'merged', e = ev.e, t = ev.t, loser = loser}))
  redis.call('RPUSH', to .. ':merges',
    cjson.encode({loser = loser, e = ev.e, t = ev.t, ids = loser_ids}))
  redis.call('HSET', prefix .. 'alias', loser, survivor)
  redis.call('DEL', from, from .. ':ids', from .. ':traits', from .. ':consent',
    from .. ':complaints', from .. ':contacts', from .. ':events', from .. ':outbox',
    from .. ':merges', from .. ':apart', from .. ':touchpoints')
end

local function suppressed(t, v)
  if config.salt == nil or config.salt == '' then return false end
  return redis.call('EXISTS', prefix .. 'erased:' .. redis.sha1hex(config.salt .. t .. ':' .. v)) == 1
end

local results = {}
for i, ev in ipairs(events) do
  local ids, owners, order = {}, {}, {}
  local erased = false
  for _, pair in ipairs(ev.ids) do
    local t, v = pair[1], pair[2]
    if not config.blocked[t .. ':' .. v] then
      if suppressed(t, v) then erased = true end
      table.insert(ids, {t, v})
    end
  end
  table.sort(ids, function(x, y) return PRIORITY[x[1]] < PRIORITY[y[1]] end)
  if erased then
    results[i] = {x = 'erased'}
    redis.call('HINCRBY', prefix .. 'stats', 'suppressed', 1)
  elseif #ids == 0 then
    results[i] = {x = 'blocked'}
    redis.call('HINCRBY', prefix .. 'stats', 'blocked', 1)
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
      pid = 'p_' .. string.sub(redis.sha1hex(ev.e .. '|' .. ids[1][1] .. ':' .. ids[1][2]), 1, 20)
      redis.call('HSET', pkey(pid), 'mn:created', ev.t)
      redis.call('HINCRBY', prefix .. 'stats', 'profiles_created', 1)
    end
    -- Candidates are ordered by the priority of the identifier that found them, so the
    -- survivor is the profile of the event's strongest identifier.
    local survivor_customer = customer_id_of(pid)
    for j = 2, #order do
      local other = order[j]
      local other_customer = customer_id_of(other)
      local conflict = (survivor_customer and other_customer and survivor_customer ~= other_customer)
        or redis.call('SISMEMBER', pkey(pid) .. ':apart', other) == 1
        or redis.call('SISMEMBER', pkey(other) .. ':apart', pid) == 1
      local too_many = false
      for t, limit in pairs(config.max) do
        if count_of(pid, t) + count_of(other, t) > limit then too_many = true end
      end
      if not conflict and not too_many then
        merge(other, pid, ev)
        table.insert(merged, other)
        redis.call('HINCRBY', prefix .. 'stats', 'merges', 1)
        survivor_customer = survivor_customer or other_customer
      end
    end
    for _, id in ipairs(ids) do
      local owner = redis.call('GET', id_key(id[1], id[2]))
      if not owner then
        local has_customer = id[1] == 'c' and customer_id_of(pid)
        if not has_customer and count_of(pid, id[1]) < (config.max[id[1]] or 1000000) then
          link(pid, id[1], id[2], ev)
          -- A new identifier of someone already known: identity stitching.
          if existing then redis.call('HINCRBY', prefix .. 'stats', 'stitched', 1) end
        end
      end
    end
    results[i] = {p = pid, m = merged}
  end
end
return cjson.encode(results)
