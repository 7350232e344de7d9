"""The contact ledger: how often, and how lately, a person was shown or turned down each
action, kept in Redis per person, so that contact policy and fatigue caps hold across
decisions, placements, channels and services (personalisation now, alerts' outreach
later).

`ContactLedger.reserve` is one atomic script: it walks a decision's candidate actions
(best first), checks each against its caps and the global cap of marketing impressions
a day, chooses the first `want` that pass and records their impressions at once, so
concurrent decisions for one person cannot exceed a cap. `record_outcome` records what
the person did. `LedgerModel` is the same semantics in memory (the tests' oracle, and a
stand-in where there is no Redis).

Rules (`CapRule`, 0 = no limit for each part), for an action and for its kind:
  max_impressions    refused when shown this many times within `window_ms` (rolling;
                     0 = the whole retention)
  dismiss_cooloff_ms refused while the last dismiss is more recent than this
  stop_after_accept  refused once accepted
and for marketing actions, refused when the person got `marketing_per_day` marketing
impressions in the last 24 hours, across actions. Checks run in that order (action,
then kind, then global); the first that refuses names the policy. Times are the
callers' (`now_ms`, `ts_ms`); an impression or outcome counts when it is later than
`now - window`, later than now included. Nothing older than the retention counts (an
accept included: after the retention the action may be shown again). A click changes
nothing.

Idempotency: one impression per (decision, action), whether `reserve` or an impression
outcome records it first; a repeated `reserve` of a decision id returns the first
result while it is kept (RESULT_TTL_MS), whatever it is given; dismisses and accepts
keep the latest time per action and per kind, so a repeated report changes nothing.

Keys (`{key_prefix}ledger:{<person>}:...`, the person as the hash tag so that a person's
keys share a Redis Cluster slot; all three expire after the retention, in real time,
refreshed by every write to the person's ledger):
  ledger:{person}:idx  sorted set, every score 0, read by lex range (entries in
                       contact_ledger.lua): impressions by time, by (decision, action),
                       per action, per kind, marketing; kept reserve results by time
  ledger:{person}:out  hash: "da:"/"aa:" + action, "dk:"/"ak:" + kind -> latest
                       dismiss/accept time (ms)
  ledger:{person}:dec  hash: decision id -> its reserve reply, "|"-joined
Old impressions and results are trimmed on each write; counts are O(log n) (ZLEXCOUNT).
Action ids, kinds and decision ids must not contain "|".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from services.common.redis_values import as_text, lua_constants

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# The global cap's window: the last 24 hours.
GLOBAL_WINDOW_MS = DAY_MS
# How long a reserve's result is kept for a repeated reserve of the same decision id.
RESULT_TTL_MS = DAY_MS
DEFAULT_RETENTION_DAYS = 90

OUTCOMES = ("impression", "click", "accept", "dismiss")

# Policy codes of refusals (stable: explanations and metrics carry them).
ACTION_MAX_IMPRESSIONS = "contact:action.max_impressions"
ACTION_DISMISS_COOLOFF = "contact:action.dismiss_cooloff"
ACTION_ACCEPTED = "contact:action.accepted"
KIND_MAX_IMPRESSIONS = "contact:kind.max_impressions"
KIND_DISMISS_COOLOFF = "contact:kind.dismiss_cooloff"
KIND_ACCEPTED = "contact:kind.accepted"
GLOBAL_MARKETING_PER_DAY = "contact:global.marketing_per_day"
POLICIES = (
    ACTION_MAX_IMPRESSIONS,
    ACTION_DISMISS_COOLOFF,
    ACTION_ACCEPTED,
    KIND_MAX_IMPRESSIONS,
    KIND_DISMISS_COOLOFF,
    KIND_ACCEPTED,
    GLOBAL_MARKETING_PER_DAY,
)

# The layout (see the module's docstring and contact_ledger.lua).
LEDGER = "ledger:"
INDEX, OUTCOME_TIMES, DECISIONS = "idx", "out", "dec"
SUBKEYS = (INDEX, OUTCOME_TIMES, DECISIONS)
SEP = "|"
TAG = {
    "time": "t|",
    "seen": "d|",
    "action": "a|",
    "kind": "k|",
    "marketing": "m|",
    "decision": "q|",
}
FIELD = {
    "dismissed_action": "da:",
    "accepted_action": "aa:",
    "dismissed_kind": "dk:",
    "accepted_kind": "ak:",
}
# Times in index entries: zero-padded, so lex order is time order (to year 33658).
TS_DIGITS = 15
TS_FORMAT = f"%0{TS_DIGITS}d"
MAX_TS = 10**TS_DIGITS
# Above every byte of UTF-8 text (contact_ledger.lua's HIGH).
HIGH = b"\xff"


class LedgerKeys:
    """A person's key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def of(self, person: str, sub: str) -> str:
        return f"{self.prefix}{LEDGER}{{{person}}}:{sub}"

    def all_of(self, person: str) -> list[str]:
        """The script's KEYS, in its order."""
        return [self.of(person, sub) for sub in SUBKEYS]


@dataclass(frozen=True)
class CapRule:
    """How often an action (or any action of a kind) may be shown; 0 = no limit for each
    part (a window of 0: the whole retention)."""

    max_impressions: int = 0
    window_ms: int = 7 * DAY_MS
    dismiss_cooloff_ms: int = 0
    stop_after_accept: bool = False


@dataclass(frozen=True)
class Candidate:
    action_id: str
    kind: str
    marketing: bool
    action_rule: CapRule
    kind_rule: CapRule


@dataclass(frozen=True)
class Refusal:
    action_id: str
    # One of POLICIES.
    policy: str
    detail: str
    # The count (or age, in ms) the cap saw, its limit, and the refused action's kind: what
    # the learner's probabilities need (not part of a refusal's identity).
    observed: int = field(default=0, compare=False)
    limit: int = field(default=0, compare=False)
    kind: str = field(default="", compare=False)


@dataclass(frozen=True)
class Reservation:
    # Best first, at most `want`.
    chosen: tuple[str, ...]
    # The candidates a cap refused, in candidate order (those neither chosen nor refused
    # ranked below `want`).
    refused: tuple[Refusal, ...]


@dataclass(frozen=True)
class Impression:
    ts_ms: int
    decision_id: str
    action_id: str
    kind: str
    marketing: bool


@dataclass(frozen=True)
class LedgerView:
    """A person's ledger within the retention: impressions oldest first (then by
    decision and action id), and the latest dismiss and accept per action and kind."""

    impressions: tuple[Impression, ...] = ()
    last_dismiss_by_action: Mapping[str, int] = field(default_factory=dict)
    last_dismiss_by_kind: Mapping[str, int] = field(default_factory=dict)
    last_accept_by_action: Mapping[str, int] = field(default_factory=dict)
    last_accept_by_kind: Mapping[str, int] = field(default_factory=dict)


# Checking the arguments (the script trusts them).


def _check_text(what: str, value: str) -> None:
    if not value or SEP in value:
        raise ValueError(f"{what} {value!r}: must be non-empty without {SEP!r}")


def _check_ts(what: str, value: int) -> None:
    if not 0 <= value < MAX_TS:
        raise ValueError(f"{what} {value}: must be ms since the epoch, from 0 to {MAX_TS}")


def _check_rule(rule: CapRule, where: str) -> None:
    parts = (rule.max_impressions, rule.window_ms, rule.dismiss_cooloff_ms)
    if any(part < 0 for part in parts):
        raise ValueError(f"{where}: {rule} has a negative part")


def _check_reserve(
    person: str,
    decision_id: str,
    now_ms: int,
    candidates: Sequence[Candidate],
    want: int,
    marketing_per_day: int,
) -> None:
    if not person:
        raise ValueError("person must be non-empty")
    _check_text("decision_id", decision_id)
    _check_ts("now_ms", now_ms)
    if want < 0 or marketing_per_day < 0:
        raise ValueError(f"want ({want}) and marketing_per_day ({marketing_per_day}) must be >= 0")
    seen: set[str] = set()
    for c in candidates:
        _check_text("action_id", c.action_id)
        _check_text("kind", c.kind)
        if c.action_id in seen:
            raise ValueError(f"action {c.action_id!r} is a candidate twice")
        seen.add(c.action_id)
        _check_rule(c.action_rule, f"action {c.action_id}")
        _check_rule(c.kind_rule, f"kind {c.kind} of {c.action_id}")


def _check_outcome(
    person: str, decision_id: str, action_id: str, kind: str, outcome: str, ts_ms: int
) -> None:
    if not person:
        raise ValueError("person must be non-empty")
    _check_text("decision_id", decision_id)
    _check_text("action_id", action_id)
    _check_text("kind", kind)
    _check_ts("ts_ms", ts_ms)
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r}: must be one of {', '.join(OUTCOMES)}")


# What a refusal says.


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def span_text(ms: int) -> str:
    """A configured duration: "14 days", "24 hours", "36 hours", "2.5 days"."""
    if ms % DAY_MS == 0 and ms > DAY_MS:
        return _plural(ms // DAY_MS, "day")
    if ms % HOUR_MS == 0 and ms <= 2 * DAY_MS:
        return _plural(ms // HOUR_MS, "hour")
    if ms >= DAY_MS:
        return f"{ms / DAY_MS:g} days"
    return f"{ms / HOUR_MS:g} hours"


def ago_text(ms: int) -> str:
    """How long ago: "2.0 days ago", "5.5 hours ago", "12 minutes ago", "just now"."""
    if ms >= DAY_MS:
        return f"{ms / DAY_MS:.1f} days ago"
    if ms >= HOUR_MS:
        return f"{ms / HOUR_MS:.1f} hours ago"
    if ms >= 60_000:
        return f"{_plural(ms // 60_000, 'minute')} ago"
    return "just now"


def refusal(
    action_id: str, policy: str, observed: int, limit: int, span: int, kind: str
) -> Refusal:
    """A refusal from what the check found: impressions within `span` (ms) and the cap
    (`limit`), or the time since the outcome (ms) and the cool-off (`limit`)."""
    if policy == ACTION_MAX_IMPRESSIONS:
        text = f"shown {_plural(observed, 'time')} in the last {span_text(span)} (at most {limit})"
    elif policy == KIND_MAX_IMPRESSIONS:
        text = (
            f"{kind} actions shown {_plural(observed, 'time')} in the last {span_text(span)}"
            f" (at most {limit})"
        )
    elif policy == GLOBAL_MARKETING_PER_DAY:
        text = (
            f"{_plural(observed, 'marketing impression')} in the last {span_text(span)}"
            f" (at most {limit} a day)"
        )
    elif policy == ACTION_DISMISS_COOLOFF:
        text = f"dismissed {ago_text(observed)} (none for {span_text(limit)} after a dismiss)"
    elif policy == KIND_DISMISS_COOLOFF:
        text = (
            f"a {kind} action was dismissed {ago_text(observed)}"
            f" (no {kind} action for {span_text(limit)} after a dismiss)"
        )
    elif policy == ACTION_ACCEPTED:
        text = f"accepted {ago_text(observed)} (none after an accept)"
    elif policy == KIND_ACCEPTED:
        text = (
            f"a {kind} action was accepted {ago_text(observed)} (no {kind} action after an accept)"
        )
    else:
        raise ValueError(f"unknown contact policy {policy!r}")
    return Refusal(action_id, policy, text, observed, limit, kind)


def decode_reply(reply: Sequence[Any]) -> Reservation:
    """The reserve script's reply (or the model's, in the same form)."""
    parts = [as_text(p) for p in reply]
    n = int(parts[0])
    chosen = tuple(parts[1 : 1 + n])
    rest = parts[1 + n :]
    refused = tuple(
        refusal(a, policy, int(observed), int(limit), int(span), kind)
        for a, policy, observed, limit, span, kind in (
            rest[i : i + 6] for i in range(0, len(rest), 6)
        )
    )
    return Reservation(chosen, refused)


# The script.

LUA_PATH = Path(__file__).with_suffix(".lua")
LUA_CONSTANTS: dict[str, object] = {
    "SEP": SEP,
    "TAG": TAG,
    "FIELD": FIELD,
    "POLICY": {
        "action": {
            "max_impressions": ACTION_MAX_IMPRESSIONS,
            "dismiss_cooloff": ACTION_DISMISS_COOLOFF,
            "accepted": ACTION_ACCEPTED,
        },
        "kind": {
            "max_impressions": KIND_MAX_IMPRESSIONS,
            "dismiss_cooloff": KIND_DISMISS_COOLOFF,
            "accepted": KIND_ACCEPTED,
        },
        "global": GLOBAL_MARKETING_PER_DAY,
    },
    "TS_FORMAT": TS_FORMAT,
    "GLOBAL_WINDOW_MS": GLOBAL_WINDOW_MS,
    "RESULT_TTL_MS": RESULT_TTL_MS,
}


def lua_script() -> str:
    """contact_ledger.lua with the layout's constants in front."""
    return lua_constants(LUA_CONSTANTS, "services/common/contact_ledger.py") + LUA_PATH.read_text()


def _rule_args(rule: CapRule) -> list[int]:
    return [
        rule.max_impressions,
        rule.window_ms,
        rule.dismiss_cooloff_ms,
        int(rule.stop_after_accept),
    ]


def reserve_args(
    retention_ms: int,
    decision_id: str,
    now_ms: int,
    candidates: Sequence[Candidate],
    want: int,
    marketing_per_day: int,
) -> list[str | int]:
    args: list[str | int] = [
        "reserve",
        retention_ms,
        now_ms,
        decision_id,
        want,
        marketing_per_day,
        len(candidates),
    ]
    for c in candidates:
        args += [c.action_id, c.kind, int(c.marketing)]
        args += _rule_args(c.action_rule) + _rule_args(c.kind_rule)
    return args


def outcome_args(
    retention_ms: int,
    decision_id: str,
    action_id: str,
    kind: str,
    marketing: bool,
    outcome: str,
    ts_ms: int,
) -> list[str | int]:
    return ["outcome", retention_ms, ts_ms, decision_id, action_id, kind, int(marketing), outcome]


def _history_bounds(now_ms: int, retention_ms: int) -> tuple[bytes, bytes]:
    low = TS_FORMAT % max(now_ms - retention_ms + 1, 0)
    return f"[{TAG['time']}{low}".encode(), f"[{TAG['time']}".encode() + HIGH


def decode_history(
    members: Sequence[bytes | str], outcome_times: Mapping[Any, Any], now_ms: int, retention_ms: int
) -> LedgerView:
    """A view from the index's time entries (already within the retention) and the
    outcomes hash."""
    impressions = []
    for member in members:
        ts, decision, action, kind, marketing = as_text(member)[len(TAG["time"]) :].split(SEP)
        impressions.append(Impression(int(ts), decision, action, kind, marketing == "1"))
    views: dict[str, dict[str, int]] = {prefix: {} for prefix in FIELD.values()}
    for raw_field, raw_ts in outcome_times.items():
        # FIELD's prefixes end at the first ":".
        head, _, name = as_text(raw_field).partition(":")
        when = int(as_text(raw_ts))
        if when > now_ms - retention_ms:
            views[head + ":"][name] = when
    return LedgerView(
        impressions=tuple(sorted(impressions, key=_impression_order)),
        last_dismiss_by_action=views[FIELD["dismissed_action"]],
        last_dismiss_by_kind=views[FIELD["dismissed_kind"]],
        last_accept_by_action=views[FIELD["accepted_action"]],
        last_accept_by_kind=views[FIELD["accepted_kind"]],
    )


def _impression_order(i: Impression) -> tuple[int, str, str]:
    return i.ts_ms, i.decision_id, i.action_id


class ContactLedger:
    """The ledger in Redis (sync client)."""

    def __init__(
        self, client: redis.Redis, key_prefix: str, retention_days: int = DEFAULT_RETENTION_DAYS
    ) -> None:
        if retention_days < 1:
            raise ValueError(f"retention_days {retention_days}: must be at least 1")
        self.client = client
        self.keys = LedgerKeys(key_prefix)
        self.retention_ms = retention_days * DAY_MS
        self._script = client.register_script(lua_script())

    def reserve(
        self,
        person: str,
        decision_id: str,
        now_ms: int,
        candidates: Sequence[Candidate],
        want: int,
        marketing_per_day: int,
    ) -> Reservation:
        """Chooses the first `want` candidates no cap refuses and records their
        impressions at `now_ms`, atomically; says why each refused one was refused."""
        _check_reserve(person, decision_id, now_ms, candidates, want, marketing_per_day)
        args = reserve_args(
            self.retention_ms, decision_id, now_ms, candidates, want, marketing_per_day
        )
        return decode_reply(self._script(keys=self.keys.all_of(person), args=args))

    def record_outcome(
        self,
        person: str,
        decision_id: str,
        action_id: str,
        kind: str,
        marketing: bool,
        outcome: str,
        ts_ms: int,
    ) -> None:
        """Records an impression (once per decision and action), a dismiss or an accept;
        a click changes nothing."""
        _check_outcome(person, decision_id, action_id, kind, outcome, ts_ms)
        if outcome == "click":
            return
        args = outcome_args(
            self.retention_ms, decision_id, action_id, kind, marketing, outcome, ts_ms
        )
        self._script(keys=self.keys.all_of(person), args=args)

    def history(self, person: str, now_ms: int) -> LedgerView:
        low, high = _history_bounds(now_ms, self.retention_ms)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrangebylex(self.keys.of(person, INDEX), low, high)
            pipe.hgetall(self.keys.of(person, OUTCOME_TIMES))
            members, outcome_times = pipe.execute()
        return decode_history(members, outcome_times, now_ms, self.retention_ms)

    def forget(self, person: str) -> None:
        """Erasure: the person's ledger goes."""
        self.client.delete(*self.keys.all_of(person))


class AsyncContactLedger:
    """The same ledger through redis.asyncio."""

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        if retention_days < 1:
            raise ValueError(f"retention_days {retention_days}: must be at least 1")
        self.client = client
        self.keys = LedgerKeys(key_prefix)
        self.retention_ms = retention_days * DAY_MS
        self._script = client.register_script(lua_script())

    async def reserve(
        self,
        person: str,
        decision_id: str,
        now_ms: int,
        candidates: Sequence[Candidate],
        want: int,
        marketing_per_day: int,
    ) -> Reservation:
        _check_reserve(person, decision_id, now_ms, candidates, want, marketing_per_day)
        args = reserve_args(
            self.retention_ms, decision_id, now_ms, candidates, want, marketing_per_day
        )
        return decode_reply(await self._script(keys=self.keys.all_of(person), args=args))

    async def record_outcome(
        self,
        person: str,
        decision_id: str,
        action_id: str,
        kind: str,
        marketing: bool,
        outcome: str,
        ts_ms: int,
    ) -> None:
        _check_outcome(person, decision_id, action_id, kind, outcome, ts_ms)
        if outcome == "click":
            return
        args = outcome_args(
            self.retention_ms, decision_id, action_id, kind, marketing, outcome, ts_ms
        )
        await self._script(keys=self.keys.all_of(person), args=args)

    async def history(self, person: str, now_ms: int) -> LedgerView:
        low, high = _history_bounds(now_ms, self.retention_ms)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrangebylex(self.keys.of(person, INDEX), low, high)
            pipe.hgetall(self.keys.of(person, OUTCOME_TIMES))
            members, outcome_times = await pipe.execute()
        return decode_history(members, outcome_times, now_ms, self.retention_ms)

    async def forget(self, person: str) -> None:
        await self.client.delete(*self.keys.all_of(person))


# The model.


@dataclass
class _Person:
    # (decision, action) -> the impression.
    impressions: dict[tuple[str, str], Impression] = field(default_factory=dict)
    # FIELD prefix + action or kind -> latest time.
    outcome_times: dict[str, int] = field(default_factory=dict)
    # decision -> (when reserved, the reply).
    results: dict[str, tuple[int, list[str]]] = field(default_factory=dict)


class LedgerModel:
    """The ledger's semantics in memory, step for step as the script does them (the
    same trimming, so a repeated impression after its original was trimmed agrees)."""

    def __init__(self, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        if retention_days < 1:
            raise ValueError(f"retention_days {retention_days}: must be at least 1")
        self.retention_ms = retention_days * DAY_MS
        self.people: dict[str, _Person] = {}

    def _trim(self, p: _Person, cutoff: int) -> None:
        for key in [k for k, i in p.impressions.items() if i.ts_ms <= cutoff]:
            del p.impressions[key]

    def _latest(self, p: _Person, name: str, now_ms: int) -> int | None:
        ts = p.outcome_times.get(name)
        return ts if ts is not None and ts > now_ms - self.retention_ms else None

    def _check_rule(
        self,
        p: _Person,
        now_ms: int,
        scope: str,
        name: str,
        rule: CapRule,
    ) -> tuple[str, int, int, int] | None:
        dismissed = self._latest(p, FIELD[f"dismissed_{scope}"] + name, now_ms)
        accepted = self._latest(p, FIELD[f"accepted_{scope}"] + name, now_ms)
        policies = {
            "action": (ACTION_ACCEPTED, ACTION_DISMISS_COOLOFF, ACTION_MAX_IMPRESSIONS),
            "kind": (KIND_ACCEPTED, KIND_DISMISS_COOLOFF, KIND_MAX_IMPRESSIONS),
        }[scope]
        if rule.stop_after_accept and accepted is not None:
            return policies[0], now_ms - accepted, 0, 0
        cooloff = rule.dismiss_cooloff_ms
        if cooloff > 0 and dismissed is not None and dismissed > now_ms - cooloff:
            return policies[1], now_ms - dismissed, cooloff, 0
        if rule.max_impressions > 0:
            span = rule.window_ms
            if span <= 0 or span > self.retention_ms:
                span = self.retention_ms
            shown = sum(
                1
                for i in p.impressions.values()
                if (i.action_id if scope == "action" else i.kind) == name
                and i.ts_ms > now_ms - span
            )
            if shown >= rule.max_impressions:
                return policies[2], shown, rule.max_impressions, span
        return None

    def reserve(
        self,
        person: str,
        decision_id: str,
        now_ms: int,
        candidates: Sequence[Candidate],
        want: int,
        marketing_per_day: int,
    ) -> Reservation:
        _check_reserve(person, decision_id, now_ms, candidates, want, marketing_per_day)
        p = self.people.setdefault(person, _Person())
        self._trim(p, now_ms - self.retention_ms)
        for d in [d for d, (ts, _) in p.results.items() if ts <= now_ms - RESULT_TTL_MS]:
            del p.results[d]
        if decision_id in p.results:
            return decode_reply(p.results[decision_id][1])
        chosen: list[str] = []
        refused: list[str] = []
        for c in candidates:
            found = self._check_rule(p, now_ms, "action", c.action_id, c.action_rule)
            if found is None:
                found = self._check_rule(p, now_ms, "kind", c.kind, c.kind_rule)
            if found is None and c.marketing and marketing_per_day > 0:
                shown = sum(
                    1
                    for i in p.impressions.values()
                    if i.marketing and i.ts_ms > now_ms - GLOBAL_WINDOW_MS
                )
                if shown >= marketing_per_day:
                    found = (GLOBAL_MARKETING_PER_DAY, shown, marketing_per_day, GLOBAL_WINDOW_MS)
            if found is not None:
                policy, observed, limit, span = found
                refused += [c.action_id, policy, str(observed), str(limit), str(span), c.kind]
            elif len(chosen) < want:
                chosen.append(c.action_id)
                p.impressions.setdefault(
                    (decision_id, c.action_id),
                    Impression(now_ms, decision_id, c.action_id, c.kind, c.marketing),
                )
        reply = [str(len(chosen)), *chosen, *refused]
        p.results[decision_id] = (now_ms, reply)
        return decode_reply(reply)

    def record_outcome(
        self,
        person: str,
        decision_id: str,
        action_id: str,
        kind: str,
        marketing: bool,
        outcome: str,
        ts_ms: int,
    ) -> None:
        _check_outcome(person, decision_id, action_id, kind, outcome, ts_ms)
        if outcome == "click":
            return
        p = self.people.setdefault(person, _Person())
        self._trim(p, ts_ms - self.retention_ms)
        if outcome == "impression":
            p.impressions.setdefault(
                (decision_id, action_id), Impression(ts_ms, decision_id, action_id, kind, marketing)
            )
            return
        scope = "dismissed" if outcome == "dismiss" else "accepted"
        for name in (FIELD[f"{scope}_action"] + action_id, FIELD[f"{scope}_kind"] + kind):
            if p.outcome_times.get(name, -1) < ts_ms:
                p.outcome_times[name] = ts_ms
        cutoff = ts_ms - self.retention_ms
        for name in [n for n, ts in p.outcome_times.items() if ts <= cutoff]:
            del p.outcome_times[name]

    def history(self, person: str, now_ms: int) -> LedgerView:
        p = self.people.get(person, _Person())
        members = [
            TAG["time"]
            + SEP.join(
                (TS_FORMAT % i.ts_ms, i.decision_id, i.action_id, i.kind, str(int(i.marketing)))
            )
            for i in p.impressions.values()
            if i.ts_ms > now_ms - self.retention_ms
        ]
        times = {name: str(ts) for name, ts in p.outcome_times.items()}
        return decode_history(members, times, now_ms, self.retention_ms)

    def forget(self, person: str) -> None:
        self.people.pop(person, None)
