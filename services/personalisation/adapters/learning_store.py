"""The learner's state in Redis: decisions waiting for their outcomes, the settled
examples, the model checkpoints the learner and every Decide server read, and who trains.

Keys (prefix `PERSONALISATION_KEY_PREFIX`, `cx:` by default; `{id}` a decision id):
  nba:learn:pending:{id}   hash: a decision waiting for its outcomes, as a training example:
                           shared (the VW context line), arms (JSON [[action id, kind],
                           ...] in logged order), chosen (index of the first chosen action
                           in arms), p (its probability), value (its business value),
                           action (its id), decided_ms, due_ms, group, placement, policy,
                           model (the model version that decided, or empty); and one field
                           `o:{outcome}` per outcome of that action seen so far (when it
                           was first seen, ms). Expires PENDING_GRACE_MS after it is due.
  nba:learn:due            sorted set: pending decision ids by when their window ends (ms)
  nba:learn:early:{id}     hash `{action id}|{outcome}` -> ms: outcomes read before their
                           decision, joined when it comes; expires after `early_ttl_ms`
  nba:learn:settled:{id}   string: why the decision was settled (accept, dismiss, timeout);
                           while it exists (`marker_ttl_ms`, a few windows) the decision's
                           redelivered records and outcomes change nothing
  nba:learn:rewards        stream: one entry per settled decision (every pending field, plus
                           decision_id, reason, reward, settled_ms, outcomes); the trainer
                           reads it from the checkpoint's cursor; trimmed at each
                           checkpoint to REWARDS_HISTORY_MS before the cursor
  nba:model:current        hash: version, sequence, cursor (the last rewards entry trained
                           into it), trained (examples in its lineage), created_ms
  nba:model:blob:{version} the model's bytes (learning.Model.to_bytes)
  nba:model:versions       list: the versions that have a blob, newest first (the current
                           one and `checkpoint.keep_versions` older ones)
  nba:learner:lease        string: the learner that trains (its name and a nonce); SET NX
                           PX, renewed while it lives
  nba:learner:workers      sorted set: learner heartbeats (services/common/heartbeat.py)

Every change is one Lua call, so redelivery (a worker killed before its offsets were
committed) is harmless: a stored decision is not stored again, an outcome is recorded
once per (decision, outcome), and a decision is settled once: its settled marker, its
rewards entry and the removal of its pending state are one script. A checkpoint (blob,
`current`, the versions list, old blobs deleted, the stream trimmed) is one script too,
that writes only while the caller holds the lease and `current` is still the checkpoint
its model grew from, so `current` never names a missing blob and no example is trained
twice into one lineage.

Decide servers read only `model_current_key` and `model_blob_key` (`current_version`,
`load_current`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from services.common.redis_values import as_text, lua_constants, text_map
from services.personalisation.domain.learning import ArmSpec, TrainingExample

LEARN = "nba:learn:"
PENDING = LEARN + "pending:"
DUE = LEARN + "due"
EARLY = LEARN + "early:"
SETTLED = LEARN + "settled:"
REWARDS = LEARN + "rewards"
MODEL_CURRENT = "nba:model:current"
MODEL_BLOB = "nba:model:blob:"
MODEL_VERSIONS = "nba:model:versions"
LEARNER_LEASE = "nba:learner:lease"
LEARNER_WORKERS = "nba:learner:workers"

# Outcome fields of a pending decision are `o:{outcome}`.
OUTCOME_FIELD = "o:"
# A pending decision no learner settled (none ran) is dropped this long after it was due.
PENDING_GRACE_MS = 7 * 86400 * 1000
# Settled entries kept before the checkpoint's cursor (inspection, tests): ten minutes
# (an entry is about 0.6 KB; a pending decision about 1.7 KB).
REWARDS_HISTORY_MS = 600 * 1000
# Safety cap of the rewards stream (approximate), for a learner that settles while no
# learner trains: beyond it the oldest untrained examples are lost.
REWARDS_MAX_LEN = 1_000_000
# The shortest lifetimes of early outcomes and settled markers, whatever the window.
MIN_EARLY_TTL_MS = 3600 * 1000
MIN_MARKER_TTL_MS = 3600 * 1000
# Settlement reasons.
TIMEOUT = "timeout"
NOT_TRAINED = "0-0"

# What the decision scripts share with this module.
_PRELUDE = lua_constants(
    {"OUTCOME_FIELD": OUTCOME_FIELD}, "services/personalisation/adapters/learning_store.py"
)

# KEYS: pending, settled, due, early. ARGV: decision id, due ms, ttl ms, first action id,
# then the pending hash's field/value pairs.
# Returns {'stored', outcomes...} (outcomes that were waiting), {'duplicate'} or {'settled'}.
_STORE = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'settled'} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate'} end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local out = {'stored'}
local early = redis.call('HGETALL', KEYS[4])
if #early > 0 then
  local prefix = ARGV[4] .. '|'
  for i = 1, #early, 2 do
    if string.sub(early[i], 1, #prefix) == prefix then
      local outcome = string.sub(early[i], #prefix + 1)
      if redis.call('HSETNX', KEYS[1], OUTCOME_FIELD .. outcome, early[i + 1]) == 1 then
        out[#out + 1] = outcome
      end
    end
  end
  redis.call('DEL', KEYS[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return out
"""
)

# KEYS: pending, settled, early. ARGV: action id, outcome, occurred ms, early ttl ms.
# Returns {'recorded', business value, outcomes...}, {'early'}, {'other_action'} or
# {'settled'}.
_RECORD = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'settled'} end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSETNX', KEYS[3], ARGV[1] .. '|' .. ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  return {'early'}
end
if redis.call('HGET', KEYS[1], 'action') ~= ARGV[1] then return {'other_action'} end
redis.call('HSETNX', KEYS[1], OUTCOME_FIELD .. ARGV[2], ARGV[3])
local out = {'recorded', redis.call('HGET', KEYS[1], 'value')}
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, #OUTCOME_FIELD) == OUTCOME_FIELD then
    out[#out + 1] = string.sub(name, #OUTCOME_FIELD + 1)
  end
end
return out
"""
)

# KEYS: pending, settled, due, rewards. ARGV: decision id, reason, reward, settled ms,
# marker ttl ms, the outcomes the reward was computed from (sorted, comma-separated),
# the stream's cap. Returns 'settled', 'already' (settled before), 'missing' (no pending
# state: expired) or 'changed' (an outcome came in since: compute the reward again).
_SETTLE = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'already' end
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 'missing'
end
local outcomes = {}
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, #OUTCOME_FIELD) == OUTCOME_FIELD then
    outcomes[#outcomes + 1] = string.sub(flat[i], #OUTCOME_FIELD + 1)
  end
end
table.sort(outcomes)
if table.concat(outcomes, ',') ~= ARGV[6] then return 'changed' end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'decision_id', ARGV[1],
  'reason', ARGV[2], 'reward', ARGV[3], 'settled_ms', ARGV[4], 'outcomes', ARGV[6],
  unpack(flat))
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 'settled'
"""
)

# KEYS: lease. ARGV: token, ttl ms. 1 when the caller holds the lease (taken or renewed).
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, current, new blob, versions, rewards, then old blobs to delete.
# ARGV: token, version, sequence, cursor, trained, created ms, versions kept (current
# included), trim min id ('' for none), blob.
_CHECKPOINT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'not_leader' end
local sequence = tonumber(redis.call('HGET', KEYS[2], 'sequence') or '0')
if sequence ~= tonumber(ARGV[3]) - 1 then return 'lineage' end
redis.call('SET', KEYS[3], ARGV[9])
redis.call('HSET', KEYS[2], 'version', ARGV[2], 'sequence', ARGV[3], 'cursor', ARGV[4],
  'trained', ARGV[5], 'created_ms', ARGV[6])
redis.call('LPUSH', KEYS[4], ARGV[2])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[7]) - 1)
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
if ARGV[8] ~= '' then redis.call('XTRIM', KEYS[5], 'MINID', ARGV[8]) end
return 'ok'
"""

# KEYS: current. ARGV: the blob key prefix. {current's flat fields..., blob} or {}.
_LOAD = """
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then return {} end
local version
for i = 1, #flat, 2 do
  if flat[i] == 'version' then version = flat[i + 1] end
end
if not version then return {} end
flat[#flat + 1] = redis.call('GET', ARGV[1] .. version) or ''
return flat
"""


# --- key names (the only place they are spelled) -----------------------------------------


def model_current_key(prefix: str) -> str:
    """The hash naming the current model version (version, sequence, cursor, trained,
    created_ms)."""
    return f"{prefix}{MODEL_CURRENT}"


def model_blob_key(prefix: str, version: str) -> str:
    """The bytes of one model version."""
    return f"{prefix}{MODEL_BLOB}{version}"


def learner_lease_key(prefix: str) -> str:
    return f"{prefix}{LEARNER_LEASE}"


def learner_workers_key(prefix: str) -> str:
    return f"{prefix}{LEARNER_WORKERS}"


def learner_leader(client: redis.Redis, prefix: str) -> str | None:
    """The name of the learner that trains now, if any (for health and the CLI)."""
    raw = client.get(learner_lease_key(prefix))
    return None if raw is None else as_text(raw).rsplit("#", 1)[0]


# --- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """`nba:model:current`: a model version and where its training stopped."""

    version: str
    sequence: int
    # The last rewards-stream entry trained into this version.
    cursor: str
    # Examples trained into its lineage (every version before it included).
    trained: int
    created_ms: int

    @staticmethod
    def of(fields: Mapping[str, str]) -> CheckpointInfo:
        return CheckpointInfo(
            version=fields["version"],
            sequence=int(fields.get("sequence", "0")),
            cursor=fields.get("cursor", NOT_TRAINED),
            trained=int(fields.get("trained", "0")),
            created_ms=int(fields.get("created_ms", "0")),
        )


@dataclass(frozen=True)
class Checkpoint:
    info: CheckpointInfo
    model_bytes: bytes


def current_version(client: redis.Redis, prefix: str) -> str | None:
    """The current model version (one HGET: what a server polls)."""
    raw = client.hget(model_current_key(prefix), "version")
    return None if raw is None else as_text(raw)


def current_info(client: redis.Redis, prefix: str) -> CheckpointInfo | None:
    raw = client.hgetall(model_current_key(prefix))
    return CheckpointInfo.of(text_map(raw)) if raw else None


def load_current(client: redis.Redis, prefix: str) -> Checkpoint | None:
    """The current checkpoint with its model's bytes, read in one script (so the blob
    is the one `current` names); None before the first checkpoint."""
    reply: list[Any] = client.eval(_LOAD, 1, model_current_key(prefix), model_blob_key(prefix, ""))
    if not reply:
        return None
    blob = reply.pop()
    if not isinstance(blob, bytes):
        raise TypeError("load_current needs a client that returns bytes (no decode_responses)")
    fields = {as_text(reply[i]): as_text(reply[i + 1]) for i in range(0, len(reply), 2)}
    info = CheckpointInfo.of(fields)
    if not blob:
        raise LookupError(f"model {info.version} has no blob")
    return Checkpoint(info, blob)


# --- what the store holds ------------------------------------------------------------------


@dataclass(frozen=True)
class PendingDecision:
    """A decision the learner waits on: its training example but for the reward."""

    decision_id: str
    shared: str
    arms: tuple[ArmSpec, ...]
    chosen: int
    probability: float
    business_value: float
    decided_ms: int
    group: str
    placement: str
    policy: str = ""
    model_version: str = ""

    @property
    def action_id(self) -> str:
        return self.arms[self.chosen].action_id

    def fields(self, due_ms: int) -> dict[str, str]:
        return {
            "shared": self.shared,
            "arms": json.dumps([[a.action_id, a.kind] for a in self.arms]),
            "chosen": str(self.chosen),
            "p": repr(self.probability),
            "value": repr(self.business_value),
            "action": self.action_id,
            "decided_ms": str(self.decided_ms),
            "due_ms": str(due_ms),
            "group": self.group,
            "placement": self.placement,
            "policy": self.policy,
            "model": self.model_version,
        }


@dataclass(frozen=True)
class Outcome:
    decision_id: str
    action_id: str
    outcome: str
    occurred_ms: int


@dataclass(frozen=True)
class Stored:
    """What storing a decision did: `stored` (with the outcomes that were waiting for
    it), `duplicate` (stored before) or `settled` (settled before)."""

    status: str
    outcomes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Recorded:
    """What recording an outcome did: `recorded` (with the decision's outcomes so far and
    its business value), `early` (no decision yet: kept for it), `other_action` (not the
    first chosen action: not learned from) or `settled` (too late: settled before)."""

    status: str
    outcomes: frozenset[str] = frozenset()
    business_value: float = 0.0


@dataclass(frozen=True)
class Due:
    """A pending decision to settle (its window ended, or a final outcome came): what
    its reward is computed from."""

    decision_id: str
    outcomes: frozenset[str]
    business_value: float


@dataclass(frozen=True)
class Settlement:
    decision_id: str
    # accept, dismiss or timeout
    reason: str
    reward: float
    # The outcomes the reward was computed from: the script settles only if they are
    # still all there are.
    outcomes: frozenset[str]


@dataclass(frozen=True)
class RewardEntry:
    """One entry of the rewards stream."""

    entry_id: str
    fields: dict[str, str]

    def example(self) -> TrainingExample:
        """The training example; ValueError/KeyError when the entry is not one."""
        f = self.fields
        arms = tuple(ArmSpec(str(a), str(k)) for a, k in json.loads(f["arms"]))
        chosen = int(f["chosen"])
        if not 0 <= chosen < len(arms):
            raise ValueError(f"chosen {chosen} is not one of {len(arms)} arms")
        return TrainingExample(
            decision_id=f["decision_id"],
            shared=f["shared"],
            arms=arms,
            chosen=chosen,
            probability=float(f["p"]),
            reward=float(f["reward"]),
        )


def stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class LearningStore:
    """The learner's Redis state (see the module doc) on a synchronous client: every
    method is one round trip (a pipeline of script calls for a batch), but `due` and
    `write_checkpoint`, two."""

    def __init__(self, client: redis.Redis, prefix: str, settle_after_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.settle_after_ms = int(settle_after_s * 1000)
        self.early_ttl_ms = max(2 * self.settle_after_ms, MIN_EARLY_TTL_MS)
        self.marker_ttl_ms = max(4 * self.settle_after_ms, MIN_MARKER_TTL_MS)
        self._store = client.register_script(_STORE)
        self._record = client.register_script(_RECORD)
        self._settle = client.register_script(_SETTLE)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)
        self._checkpoint = client.register_script(_CHECKPOINT)

    # --- key names ---------------------------------------------------------------------

    def pending_key(self, decision_id: str) -> str:
        return f"{self.prefix}{PENDING}{decision_id}"

    def early_key(self, decision_id: str) -> str:
        return f"{self.prefix}{EARLY}{decision_id}"

    def settled_key(self, decision_id: str) -> str:
        return f"{self.prefix}{SETTLED}{decision_id}"

    @property
    def due_key(self) -> str:
        return f"{self.prefix}{DUE}"

    @property
    def rewards_key(self) -> str:
        return f"{self.prefix}{REWARDS}"

    @property
    def versions_key(self) -> str:
        return f"{self.prefix}{MODEL_VERSIONS}"

    @property
    def lease_key(self) -> str:
        return learner_lease_key(self.prefix)

    @property
    def workers_key(self) -> str:
        return learner_workers_key(self.prefix)

    def decision_keys(self, decision_id: str) -> list[str]:
        """Every key the store may hold for one decision (for tests' cleanup)."""
        return [
            self.pending_key(decision_id),
            self.early_key(decision_id),
            self.settled_key(decision_id),
        ]

    def shared_keys(self) -> list[str]:
        """The keys that are not per decision or per model version (for tests' cleanup)."""
        return [
            self.due_key,
            self.rewards_key,
            model_current_key(self.prefix),
            self.versions_key,
            self.lease_key,
            self.workers_key,
        ]

    # --- decisions and outcomes --------------------------------------------------------

    def store(self, decisions: Sequence[PendingDecision], now_ms: int) -> list[Stored]:
        """Stores each decision as pending, due `settle_after_ms` after it was made."""
        if not decisions:
            return []
        pipe = self.client.pipeline(transaction=False)
        for d in decisions:
            due_ms = d.decided_ms + self.settle_after_ms
            ttl_ms = max(due_ms - now_ms, 0) + PENDING_GRACE_MS
            pairs = [x for item in d.fields(due_ms).items() for x in item]
            self._store(
                keys=[
                    self.pending_key(d.decision_id),
                    self.settled_key(d.decision_id),
                    self.due_key,
                    self.early_key(d.decision_id),
                ],
                args=[d.decision_id, due_ms, ttl_ms, d.action_id, *pairs],
                client=pipe,
            )
        replies: list[list[Any]] = pipe.execute()
        return [Stored(as_text(r[0]), frozenset(as_text(o) for o in r[1:])) for r in replies]

    def record(self, outcomes: Sequence[Outcome]) -> list[Recorded]:
        if not outcomes:
            return []
        pipe = self.client.pipeline(transaction=False)
        for o in outcomes:
            self._record(
                keys=[
                    self.pending_key(o.decision_id),
                    self.settled_key(o.decision_id),
                    self.early_key(o.decision_id),
                ],
                args=[o.action_id, o.outcome, o.occurred_ms, self.early_ttl_ms],
                client=pipe,
            )
        out: list[Recorded] = []
        for reply in pipe.execute():
            status = as_text(reply[0])
            if status == "recorded":
                value = float(as_text(reply[1]) or 0)
                out.append(Recorded(status, frozenset(as_text(x) for x in reply[2:]), value))
            else:
                out.append(Recorded(status))
        return out

    def due(self, horizon_ms: int, limit: int) -> list[Due]:
        """Up to `limit` pending decisions due by `horizon_ms`, with their outcomes."""
        raw: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            self.due_key, "-inf", horizon_ms, start=0, num=limit
        )
        # An expired pending decision reads as no outcomes; settling it says `missing`
        # and drops its due entry.
        return self.pending([as_text(r) for r in raw])

    def pending(self, decision_ids: Sequence[str]) -> list[Due]:
        """The outcomes so far and business value of pending decisions."""
        if not decision_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for decision_id in decision_ids:
            pipe.hgetall(self.pending_key(decision_id))
        out: list[Due] = []
        for decision_id, flat in zip(decision_ids, pipe.execute(), strict=True):
            fields = text_map(flat)
            outcomes = frozenset(
                k.removeprefix(OUTCOME_FIELD) for k in fields if k.startswith(OUTCOME_FIELD)
            )
            out.append(Due(decision_id, outcomes, float(fields.get("value", "0") or 0)))
        return out

    def settle(self, settlements: Sequence[Settlement], now_ms: int) -> list[str]:
        """Settles each decision once: 'settled', 'already', 'missing' or 'changed'."""
        if not settlements:
            return []
        pipe = self.client.pipeline(transaction=False)
        for s in settlements:
            self._settle(
                keys=[
                    self.pending_key(s.decision_id),
                    self.settled_key(s.decision_id),
                    self.due_key,
                    self.rewards_key,
                ],
                args=[
                    s.decision_id,
                    s.reason,
                    repr(float(s.reward)),
                    now_ms,
                    self.marker_ttl_ms,
                    ",".join(sorted(s.outcomes)),
                    REWARDS_MAX_LEN,
                ],
                client=pipe,
            )
        return [as_text(r) for r in pipe.execute()]

    def pending_count(self) -> int:
        return int(self.client.zcard(self.due_key))

    def settled_reason(self, decision_id: str) -> str | None:
        raw = self.client.get(self.settled_key(decision_id))
        return None if raw is None else as_text(raw)

    # --- the rewards stream and checkpoints --------------------------------------------

    def read_rewards(self, after: str, count: int) -> list[RewardEntry]:
        """Entries after `after` (exclusive), oldest first."""
        start = "-" if after == NOT_TRAINED else f"({after}"
        raw: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrange(  # type: ignore[assignment]
            self.rewards_key, min=start, max="+", count=count
        )
        return [RewardEntry(as_text(i), text_map(f)) for i, f in raw]

    def rewards(self) -> list[RewardEntry]:
        """The whole rewards stream (tests, inspection)."""
        return self.read_rewards(NOT_TRAINED, 1_000_000)

    def write_checkpoint(
        self, token: str, info: CheckpointInfo, model_bytes: bytes, keep_versions: int
    ) -> str:
        """'ok', 'not_leader' (the lease is someone else's) or 'lineage' (`current` is not
        the checkpoint this one follows). Keeps `keep_versions` blobs besides this one
        and trims the rewards stream to REWARDS_HISTORY_MS before the cursor."""
        raw: list[bytes] = self.client.lrange(self.versions_key, 0, -1)  # type: ignore[assignment]
        older = [as_text(v) for v in raw]
        drop = [model_blob_key(self.prefix, v) for v in older[keep_versions:] if v != info.version]
        trim = ""
        if info.cursor != NOT_TRAINED:
            trim = f"{max(stream_ms(info.cursor) - REWARDS_HISTORY_MS, 0)}-0"
        reply = self._checkpoint(
            keys=[
                self.lease_key,
                model_current_key(self.prefix),
                model_blob_key(self.prefix, info.version),
                self.versions_key,
                self.rewards_key,
                *drop,
            ],
            args=[
                token,
                info.version,
                info.sequence,
                info.cursor,
                info.trained,
                info.created_ms,
                keep_versions + 1,
                trim,
                model_bytes,
            ],
        )
        return as_text(reply)

    # --- the lease -----------------------------------------------------------------------

    def hold_lease(self, token: str, ttl_ms: int) -> bool:
        """Takes the lease, or renews it when the caller holds it; False when another
        learner holds it."""
        return bool(self._lease(keys=[self.lease_key], args=[token, ttl_ms]))

    def release_lease(self, token: str) -> None:
        self._release(keys=[self.lease_key], args=[token])


__all__ = [
    "Checkpoint",
    "CheckpointInfo",
    "Due",
    "LearningStore",
    "Outcome",
    "PendingDecision",
    "Recorded",
    "RewardEntry",
    "Settlement",
    "Stored",
    "current_info",
    "current_version",
    "learner_leader",
    "learner_lease_key",
    "learner_workers_key",
    "load_current",
    "model_blob_key",
    "model_current_key",
]
