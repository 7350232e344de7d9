-- The contact ledger of one person (services/common/contact_ledger.py), one script for
-- both writes so that each is atomic. Rendered in front of it from the module: SEP, TAG
-- (the index's entry tags), FIELD (the outcomes hash's field prefixes), POLICY,
-- TS_FORMAT, GLOBAL_WINDOW_MS and RESULT_TTL_MS.
--
-- KEYS: 1 the index (sorted set, every score 0, read by lex ranges), 2 the outcomes
-- hash, 3 the decisions hash; all the person's, under one hash tag.
-- ARGV[1] the operation ('reserve' or 'outcome'), ARGV[2] the retention in ms; the rest
-- are the operation's (below). Ids never hold SEP (the module checks).
--
-- Index entries of one impression at time ts (ts as TS_FORMAT, so that lex order is
-- time order), written and removed together:
--   t|ts|decision|action|kind|m    time order, and everything the others are made of
--   d|decision|action              the impression's identity: one per decision and action
--   a|action|ts|decision           counted per action
--   k|kind|ts|decision|action      counted per kind
--   m|ts|decision|action           counted for the global cap (marketing only, m = 1)
-- and of one reserve: q|ts|decision, while its result is kept in the decisions hash.
local index, outcomes, decisions = KEYS[1], KEYS[2], KEYS[3]
local op, retention = ARGV[1], tonumber(ARGV[2])
-- Above every byte of UTF-8 text: the top of the range of members that start with a head.
local HIGH = '\255'

local function stamp(ms) return string.format(TS_FORMAT, ms) end
local function join(...) return table.concat({...}, SEP) end
local function split(text)
  local parts = {}
  for part in string.gmatch(text .. SEP, '(.-)' .. SEP) do parts[#parts + 1] = part end
  return parts
end

local function entries(ts, decision, action, kind, m)
  local s = stamp(ts)
  local list = {
    TAG.time .. join(s, decision, action, kind, m),
    TAG.seen .. join(decision, action),
    TAG.action .. join(action, s, decision),
    TAG.kind .. join(kind, s, decision, action),
  }
  if m == '1' then list[#list + 1] = TAG.marketing .. join(s, decision, action) end
  return list
end

-- Once per decision and action, whoever records it first (reserve or an outcome).
local function add_impression(ts, decision, action, kind, m)
  if redis.call('ZSCORE', index, TAG.seen .. join(decision, action)) then return end
  local args = {}
  for _, member in ipairs(entries(ts, decision, action, kind, m)) do
    args[#args + 1] = 0
    args[#args + 1] = member
  end
  redis.call('ZADD', index, unpack(args))
end

-- Impressions at or before `cutoff` go, each with all its entries.
local function trim_impressions(cutoff)
  if cutoff < 0 then return end
  local old = redis.call('ZRANGEBYLEX', index, '[' .. TAG.time, '(' .. TAG.time .. stamp(cutoff + 1))
  for _, member in ipairs(old) do
    local p = split(string.sub(member, #TAG.time + 1))
    redis.call('ZREM', index, unpack(entries(tonumber(p[1]), p[2], p[3], p[4], p[5])))
  end
end

-- Reserve results kept at or before `cutoff` go.
local function trim_decisions(cutoff)
  if cutoff < 0 then return end
  local old = redis.call('ZRANGEBYLEX', index, '[' .. TAG.decision, '(' .. TAG.decision .. stamp(cutoff + 1))
  local skip = #TAG.decision + #stamp(0) + #SEP
  for _, member in ipairs(old) do
    redis.call('HDEL', decisions, string.sub(member, skip + 1))
    redis.call('ZREM', index, member)
  end
end

-- Outcomes at or before `cutoff` go.
local function trim_outcomes(cutoff)
  local all = redis.call('HGETALL', outcomes)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) <= cutoff then redis.call('HDEL', outcomes, all[i]) end
  end
end

-- Entries starting with `head` whose time (right after the head) is after `cutoff`.
local function count_after(head, cutoff)
  return redis.call('ZLEXCOUNT', index, '[' .. head .. stamp(math.max(cutoff + 1, 0)), '[' .. head .. HIGH)
end

-- The first part of one rule (of an action, or of its kind) that refuses it at `now`:
-- policy, observed (impressions, or ms since the outcome), limit, span (ms); or nil.
local function check_rule(now, scope, head, dismissed_field, accepted_field, rule)
  local horizon = now - retention
  local got = redis.call('HMGET', outcomes, dismissed_field, accepted_field)
  local dismissed, accepted = tonumber(got[1]), tonumber(got[2])
  if accepted and accepted <= horizon then accepted = nil end
  if dismissed and dismissed <= horizon then dismissed = nil end
  if rule.stop and accepted then
    return POLICY[scope].accepted, now - accepted, 0, 0
  end
  if rule.cooloff > 0 and dismissed and dismissed > now - rule.cooloff then
    return POLICY[scope].dismiss_cooloff, now - dismissed, rule.cooloff, 0
  end
  if rule.max > 0 then
    local span = rule.window
    if span <= 0 or span > retention then span = retention end
    local shown = count_after(head, now - span)
    if shown >= rule.max then return POLICY[scope].max_impressions, shown, rule.max, span end
  end
  return nil
end

local function rule_at(base)
  return {
    max = tonumber(ARGV[base]),
    window = tonumber(ARGV[base + 1]),
    cooloff = tonumber(ARGV[base + 2]),
    stop = ARGV[base + 3] == '1',
  }
end

local function fmt(n) return string.format('%d', n) end

-- ARGV[3] now (ms), ARGV[4] decision id, ARGV[5] how many to choose, ARGV[6] the global
-- cap of marketing impressions a day (0: none), ARGV[7] the number of candidates, then
-- per candidate (best first): action, kind, marketing (1/0), the action's rule and the
-- kind's rule (max impressions, window ms, dismiss cool-off ms, stop after accept 1/0).
-- Reply: a flat list of text: the number chosen, the chosen actions, then six per
-- refused candidate: action, policy, observed, limit, span, kind. A repeated decision
-- id gets the reply it got first, while that is kept (RESULT_TTL_MS).
local function reserve()
  local now, decision = tonumber(ARGV[3]), ARGV[4]
  local want, per_day, n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  trim_impressions(now - retention)
  trim_decisions(now - RESULT_TTL_MS)
  local kept = redis.call('HGET', decisions, decision)
  if kept then return split(kept) end
  local chosen, refused = {}, {}
  for i = 0, n - 1 do
    local base = 8 + i * 11
    local action, kind, m = ARGV[base], ARGV[base + 1], ARGV[base + 2]
    local policy, observed, limit, span = check_rule(
      now, 'action', TAG.action .. action .. SEP,
      FIELD.dismissed_action .. action, FIELD.accepted_action .. action, rule_at(base + 3))
    if not policy then
      policy, observed, limit, span = check_rule(
        now, 'kind', TAG.kind .. kind .. SEP,
        FIELD.dismissed_kind .. kind, FIELD.accepted_kind .. kind, rule_at(base + 7))
    end
    if not policy and m == '1' and per_day > 0 then
      local shown = count_after(TAG.marketing, now - GLOBAL_WINDOW_MS)
      if shown >= per_day then
        policy, observed, limit, span = POLICY.global, shown, per_day, GLOBAL_WINDOW_MS
      end
    end
    if policy then
      for _, part in ipairs({action, policy, fmt(observed), fmt(limit), fmt(span), kind}) do
        refused[#refused + 1] = part
      end
    elseif #chosen < want then
      chosen[#chosen + 1] = action
      add_impression(now, decision, action, kind, m)
    end
  end
  local reply = {fmt(#chosen)}
  for _, action in ipairs(chosen) do reply[#reply + 1] = action end
  for _, part in ipairs(refused) do reply[#reply + 1] = part end
  redis.call('HSET', decisions, decision, table.concat(reply, SEP))
  redis.call('ZADD', index, 0, TAG.decision .. join(stamp(now), decision))
  return reply
end

-- ARGV[3] when (ms), ARGV[4] decision id, ARGV[5] action, ARGV[6] kind, ARGV[7]
-- marketing (1/0), ARGV[8] 'impression', 'dismiss' or 'accept' (a click changes nothing
-- and does not come here). Dismisses and accepts keep the latest time per action and
-- per kind.
local function outcome()
  local ts, decision, action, kind, m, what = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  trim_impressions(ts - retention)
  if what == 'impression' then
    add_impression(ts, decision, action, kind, m)
  else
    local fields
    if what == 'dismiss' then
      fields = {FIELD.dismissed_action .. action, FIELD.dismissed_kind .. kind}
    else
      fields = {FIELD.accepted_action .. action, FIELD.accepted_kind .. kind}
    end
    for _, field in ipairs(fields) do
      local current = tonumber(redis.call('HGET', outcomes, field))
      if not current or current < ts then redis.call('HSET', outcomes, field, fmt(ts)) end
    end
    trim_outcomes(ts - retention)
  end
  return 1
end

local reply
if op == 'reserve' then
  reply = reserve()
elseif op == 'outcome' then
  reply = outcome()
else
  return redis.error_reply('unknown contact ledger operation ' .. tostring(op))
end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, retention) end
return reply
