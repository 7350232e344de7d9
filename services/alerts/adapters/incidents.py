"""The incident store: incidents, timers, silences and the outbox in Redis.

Every change is decided by the pure plans of services/alerts/domain/incidents.py on what
one read script returned, and committed by one Lua call (lua/commit.lua) that first checks
that what the plan was made from is unchanged (the (rule, event id) marker still absent,
the dedup key's open incident the same, the incident's version the same), then writes the
incident and its indexes and XADDs the outbox entry: durable before any notification,
never half made. A check that fails (another writer got there first) makes the store read
again and plan again, so twenty writers racing on one dedup key open it exactly once.

Not checked at commit: inhibitors and silences (a touchpoint incident or a silence that
appears between the read and the commit of a page applies from the next trigger on).

`MemoryIncidentStore` runs the same plans on dictionaries: for unit tests of whatever
calls the store (detection, the service, the CLI's server fake), with the same methods.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis
from cx.alerts.v1 import alerts_pb2 as pb

from services.alerts.adapters.layout import (
    OUTBOX_GROUP,
    OUTBOX_KEEP_MS,
    SEEN_TTL_MS,
    AlertKeys,
    OutboxEntry,
    as_text,
    decode_outbox_entry,
    encode_outbox_fields,
    lua_script,
    text_map,
)
from services.alerts.domain.incidents import (
    AUTO,
    ESCALATION,
    RESOLVED,
    SLA,
    STATES,
    Delivery,
    IncidentRecord,
    Plan,
    SilenceRecord,
    Trigger,
    TriggerResult,
    TriggerView,
    UnknownIncident,
    UnknownSilence,
    change_message,
    check_silence,
    check_trigger,
    delivery_field,
    delivery_json,
    incident_from_hash,
    incident_message,
    incident_to_hash,
    new_incident_id,
    new_silence_id,
    person_key,
    plan_acknowledge,
    plan_escalate,
    plan_resolve,
    plan_trigger,
    silence_from_json,
    silence_json,
    split_timer,
    timer_member,
    trigger_from_json,
    trigger_json,
)

# Reads and plans again this many times when other writers keep getting there first.
MAX_ATTEMPTS = 200
# Timers handled per fire_due call (the rest on the next).
FIRE_BATCH = 200
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
# Expired silences are kept this long for ListSilences(include_expired).
EXPIRED_SILENCE_KEEP_MS = 30 * 24 * 3600 * 1000


class ConcurrentChange(Exception):
    """Other writers kept changing what a change depends on (ABORTED: retry)."""


@dataclass(frozen=True)
class IncidentPage:
    incidents: list[pb.Incident]
    next_page_token: str
    total: int


class InvalidPageToken(ValueError):
    pass


def _page_token(score: float, incident_id: str) -> str:
    return f"{int(score)}:{incident_id}"


def _parse_token(token: str) -> tuple[int, str]:
    score, sep, incident_id = token.partition(":")
    if not sep or not score.isdigit() or not incident_id:
        raise InvalidPageToken(f"{token[:40]!r} is not a page token this service gave")
    return int(score), incident_id


def _after_cursor(items: Iterable[tuple[str, float]], cursor: tuple[int, str] | None) -> list[str]:
    """Ids newest first (score, then id, descending), after the cursor."""
    ordered = sorted(items, key=lambda x: (x[1], x[0]), reverse=True)
    if cursor is None:
        return [i for i, _ in ordered]
    cs, cid = cursor
    return [i for i, s in ordered if (s, i) < (cs, cid)]


class IncidentStoreLike(Protocol):
    """What callers of the store use (the Redis store and the in-memory one)."""

    def trigger(self, t: Trigger) -> TriggerResult: ...
    def resolve_key(self, dedup_key: str, why: str, now_ms: int) -> str | None: ...
    def acknowledge(self, incident_id: str, by: str, now_ms: int) -> pb.Incident: ...
    def resolve(self, incident_id: str, by: str, note: str, now_ms: int) -> pb.Incident: ...
    def fire_due(self, now_ms: int) -> list[str]: ...
    def get(self, incident_id: str) -> pb.Incident | None: ...
    def list_incidents(
        self,
        states: Sequence[str] = (),
        team: str = "",
        rule: str = "",
        profile_id: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
    ) -> IncidentPage: ...
    def create_silence(self, silence: SilenceRecord, now_ms: int) -> SilenceRecord: ...
    def list_silences(self, include_expired: bool, now_ms: int) -> list[SilenceRecord]: ...
    def get_silence(self, silence_id: str) -> SilenceRecord | None: ...
    def expire_silence(self, silence_id: str, now_ms: int) -> SilenceRecord: ...
    def record_delivery(self, incident_id: str, delivery: Delivery) -> bool: ...
    def purge_resolved(self, before_ms: int, limit: int = 500) -> int: ...
    def outbox_tail(self) -> str: ...
    def read_outbox(self, after: str, block_ms: int, count: int = 100) -> list[OutboxEntry]: ...


class _Commit:
    """The keys, guards, writes and outbox entry of one commit.lua call."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.guards: list[list[Any]] = []
        self.writes: list[list[Any]] = []
        self.outbox: list[Any] | None = None
        self.fields: list[bytes] = []

    def k(self, key: str) -> int:
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]

    def guard(self, kind: str, key: str, *args: str) -> None:
        self.guards.append([kind, self.k(key), *args])

    def write(self, command: str, key: str, *args: object) -> None:
        self.writes.append([command, self.k(key), *(str(a) for a in args)])

    def append(self, key: str, keep_ms: int, fields: dict[str, bytes]) -> None:
        self.outbox = [self.k(key), str(keep_ms)]
        self.fields = [b for pair in fields.items() for b in (pair[0].encode(), pair[1])]

    def args(self) -> list[Any]:
        spec: dict[str, Any] = {"g": self.guards, "w": self.writes}
        if self.outbox is not None:
            spec["x"] = self.outbox
        return [json.dumps(spec, separators=(",", ":")), *self.fields]


class IncidentStore:
    """Incidents in Redis (see the module doc). Thread-safe: no state but the client."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        new_id: Callable[[int], str] = new_incident_id,
        new_silence: Callable[[int], str] = new_silence_id,
    ) -> None:
        self.client = client
        self.new_id = new_id
        self.new_silence = new_silence
        self.keys = AlertKeys(key_prefix)
        self._read = client.register_script(lua_script("read.lua"))
        self._commit = client.register_script(lua_script("commit.lua"))
        self._record = client.register_script(
            "if redis.call('EXISTS', KEYS[1]) == 1 then"
            " redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end return 0"
        )

    # --- reading ----------------------------------------------------------------------

    def _record_of(self, incident_id: str) -> IncidentRecord | None:
        raw = self.client.hgetall(self.keys.incident(incident_id))
        return incident_from_hash(text_map(raw)) if raw else None

    @staticmethod
    def _flat(raw: Sequence[Any] | dict[str, Any]) -> dict[str, str]:
        items = [] if isinstance(raw, dict) else list(raw)
        return {as_text(items[i]): as_text(items[i + 1]) for i in range(0, len(items), 2)}

    def _view(self, t: Trigger, c: _Commit) -> TriggerView:
        """Reads the trigger's view and adds the guards that keep it true to `c`."""
        k = self.keys
        group_keys = [k.open(person_key(rule, t.profile_id)) for rule in t.groups_with]
        if not t.profile_id:
            group_keys = []
        seen_key = k.seen(t.rule, t.evidence.event_id)
        tp_key = k.touchpoint(t.touchpoint) if t.profile_id and t.touchpoint else k.root
        keys = [seen_key, k.open(t.dedup_key), k.pending(t.dedup_key), tp_key, k.silences]
        raw = self._read(keys=[*keys, *group_keys], args=[k.prefix, t.now_ms])
        seen = as_text(raw[0]) if raw[0] is not None else None
        open_record = None
        if raw[1] is not None:
            open_hash = self._flat(raw[2])
            open_record = incident_from_hash(open_hash) if open_hash else None
            c.guard("eq", k.open(t.dedup_key), as_text(raw[1]))
            if open_record is not None:
                c.guard(
                    "hf", k.incident(open_record.incident_id), "version", str(open_record.version)
                )
        else:
            c.guard("absent", k.open(t.dedup_key))
        scheduled = int(raw[3]) == 1
        c.guard("present" if scheduled else "absent", k.pending(t.dedup_key))
        if seen is None:
            c.guard("absent", seen_key)
        inhibitors = [incident_from_hash(self._flat(h)) for _, h in (raw[4] or []) if self._flat(h)]
        silences = [silence_from_json(s) for s in (raw[5] or [])]
        groups = []
        for key, (gid, h) in zip(group_keys, raw[6] or [], strict=True):
            flat = self._flat(h)
            if not as_text(gid):
                c.guard("absent", key)
                continue
            c.guard("eq", key, as_text(gid))
            if flat:
                record = incident_from_hash(flat)
                groups.append(record)
                c.guard("hf", k.incident(record.incident_id), "version", str(record.version))
        return TriggerView(
            seen=seen,
            open=open_record,
            groups=groups,
            inhibitors=inhibitors,
            silences=silences,
            scheduled=scheduled,
        )

    # --- writing ----------------------------------------------------------------------

    def _add_writes(self, plan: Plan, c: _Commit, now_ms: int) -> None:
        k = self.keys
        before, after = plan.before, plan.after
        if after is not None:
            ikey = k.incident(after.incident_id)
            fields = incident_to_hash(after)
            c.write("HSET", ikey, *[x for pair in fields.items() for x in pair])
            c.write("ZADD", k.incidents, after.updated_at_ms, after.incident_id)
            if before is None:
                c.write("SADD", k.state(after.state), after.incident_id)
                c.write("SADD", k.team(after.team), after.incident_id)
                c.write("SADD", k.rule(after.rule), after.incident_id)
                if after.profile_id:
                    c.write("SADD", k.pid(after.profile_id), after.incident_id)
                elif after.touchpoint:
                    c.write("SADD", k.touchpoint(after.touchpoint), after.incident_id)
                c.write("SET", k.open(after.dedup_key), after.incident_id)
            elif before.state != after.state:
                c.write("SREM", k.state(before.state), after.incident_id)
                c.write("SADD", k.state(after.state), after.incident_id)
                if after.state == RESOLVED:
                    c.write("DEL", k.open(after.dedup_key))
                    if not after.profile_id and after.touchpoint:
                        c.write("SREM", k.touchpoint(after.touchpoint), after.incident_id)
            if plan.change:
                message = change_message(after, plan.change, now_ms)
                c.append(
                    k.outbox,
                    OUTBOX_KEEP_MS,
                    encode_outbox_fields(
                        plan.change, plan.page, message, after.incident_id, after.version
                    ),
                )
        for member, due in plan.schedule:
            c.write("ZADD", k.timers, due, member)
        for member in plan.unschedule:
            c.write("ZREM", k.timers, member)
        if plan.pending is not None:
            c.write("SET", k.pending(plan.pending.dedup_key), trigger_json(plan.pending))
        if plan.drop_pending:
            c.write("DEL", k.pending(plan.drop_pending))
            c.write("ZREM", k.timers, timer_member(SLA, plan.drop_pending))

    def _run(self, c: _Commit) -> bool:
        reply = self._commit(keys=c.keys, args=c.args())
        return int(reply[0]) == 1

    def _retrying(self, attempt: int) -> None:
        if attempt + 1 >= MAX_ATTEMPTS:
            raise ConcurrentChange("the incident kept changing; retry")
        time.sleep(random.uniform(0, min(0.001 * (attempt + 1), 0.02)))

    # --- the interface ----------------------------------------------------------------

    def trigger(self, t: Trigger) -> TriggerResult:
        """Opens, updates or joins the incident of `t` (or schedules its SLA timer), in
        one Lua call with its outbox entry; a repeated (rule, event id) is a DUPLICATE."""
        check_trigger(t)
        for attempt in range(MAX_ATTEMPTS):
            c = _Commit()
            view = self._view(t, c)
            plan = plan_trigger(t, view, self.new_id(t.now_ms))
            assert plan.result is not None
            if plan.result.change == "DUPLICATE":
                return plan.result
            self._add_writes(plan, c, t.now_ms)
            if plan.seen:
                c.write("SET", self.keys.seen(t.rule, t.evidence.event_id), plan.seen)
                c.write("PEXPIRE", self.keys.seen(t.rule, t.evidence.event_id), SEEN_TTL_MS)
            if self._run(c):
                return plan.result
            self._retrying(attempt)
        raise ConcurrentChange("unreachable")

    def _change(self, incident_id: str, make: Any, now_ms: int) -> pb.Incident:
        for attempt in range(MAX_ATTEMPTS):
            record = self._record_of(incident_id)
            if record is None:
                raise UnknownIncident(f"no incident {incident_id!r}")
            plan: Plan = make(record)
            c = _Commit()
            c.guard("hf", self.keys.incident(incident_id), "version", str(record.version))
            self._add_writes(plan, c, now_ms)
            if self._run(c):
                assert plan.after is not None
                return incident_message(plan.after)
            self._retrying(attempt)
        raise ConcurrentChange("unreachable")

    def acknowledge(self, incident_id: str, by: str, now_ms: int) -> pb.Incident:
        """triggered -> acknowledged (stops its escalation); InvalidTransition otherwise."""
        return self._change(incident_id, lambda r: plan_acknowledge(r, by, now_ms), now_ms)

    def resolve(self, incident_id: str, by: str, note: str, now_ms: int) -> pb.Incident:
        """-> resolved; InvalidTransition when it already is."""
        return self._change(incident_id, lambda r: plan_resolve(r, by, note, now_ms), now_ms)

    def resolve_key(self, dedup_key: str, why: str, now_ms: int) -> str | None:
        """Resolves the open incident of `dedup_key` automatically (`auto: <why>`) and
        cancels its SLA timer; the incident's id, or None when none was open."""
        k = self.keys
        for attempt in range(MAX_ATTEMPTS):
            pipe = self.client.pipeline(transaction=False)
            pipe.get(k.open(dedup_key))
            pipe.exists(k.pending(dedup_key))
            open_id, pending = pipe.execute()
            c = _Commit()
            plan = Plan()
            if open_id is not None:
                record = self._record_of(as_text(open_id))
                c.guard("eq", k.open(dedup_key), as_text(open_id))
                if record is not None and record.is_open:
                    c.guard("hf", k.incident(record.incident_id), "version", str(record.version))
                    plan = plan_resolve(record, AUTO, why, now_ms)
            if pending:
                plan = replace(plan, drop_pending=dedup_key)
            if plan.after is None and not plan.drop_pending:
                return None
            self._add_writes(plan, c, now_ms)
            if self._run(c):
                return plan.after.incident_id if plan.after is not None else None
            self._retrying(attempt)
        raise ConcurrentChange("unreachable")

    def fire_due(self, now_ms: int) -> list[str]:
        """Runs the timers due by `now_ms`: escalations (ESCALATED when still triggered)
        and SLA timers (the scheduled incident opens). The ids of incidents changed."""
        k = self.keys
        due: Any = self.client.zrangebyscore(k.timers, "-inf", now_ms, start=0, num=FIRE_BATCH)
        changed = []
        for raw_member in due:
            member = as_text(raw_member)
            kind, subject = split_timer(member)
            incident_id = (
                self._fire_escalation(member, subject, now_ms)
                if kind == ESCALATION
                else self._fire_sla(member, subject, now_ms)
                if kind == SLA
                else None
            )
            if kind not in (ESCALATION, SLA):
                self.client.zrem(k.timers, member)
            if incident_id:
                changed.append(incident_id)
        return changed

    def _fire_escalation(self, member: str, incident_id: str, now_ms: int) -> str | None:
        for attempt in range(MAX_ATTEMPTS):
            record = self._record_of(incident_id)
            c = _Commit()
            c.guard("zm", self.keys.timers, member)
            if record is None:
                plan = Plan(unschedule=(member,))
            else:
                c.guard("hf", self.keys.incident(incident_id), "version", str(record.version))
                plan = plan_escalate(record, now_ms)
            self._add_writes(plan, c, now_ms)
            if self._run(c):
                return incident_id if plan.after is not None else None
            if self.client.zscore(self.keys.timers, member) is None:
                return None  # another worker fired it
            self._retrying(attempt)
        raise ConcurrentChange("unreachable")

    def _fire_sla(self, member: str, dedup_key: str, now_ms: int) -> str | None:
        for attempt in range(MAX_ATTEMPTS):
            raw: Any = self.client.get(self.keys.pending(dedup_key))
            c = _Commit()
            c.guard("zm", self.keys.timers, member)
            if raw is None:
                plan = Plan(unschedule=(member,))
            else:
                t = replace(trigger_from_json(raw.decode()), now_ms=now_ms, sla_due_ms=None)
                plan = plan_trigger(t, self._view(t, c), self.new_id(now_ms), from_timer=True)
            self._add_writes(plan, c, now_ms)
            if self._run(c):
                return plan.after.incident_id if plan.after is not None else None
            if self.client.zscore(self.keys.timers, member) is None:
                return None
            self._retrying(attempt)
        raise ConcurrentChange("unreachable")

    def get(self, incident_id: str) -> pb.Incident | None:
        record = self._record_of(incident_id)
        return incident_message(record) if record is not None else None

    def get_record(self, incident_id: str) -> IncidentRecord | None:
        return self._record_of(incident_id)

    def open_incident(self, dedup_key: str) -> str | None:
        """The id of the open incident of a dedup key, if any."""
        raw: Any = self.client.get(self.keys.open(dedup_key))
        return as_text(raw) if raw is not None else None

    def list_incidents(
        self,
        states: Sequence[str] = (),
        team: str = "",
        rule: str = "",
        profile_id: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
    ) -> IncidentPage:
        """Incidents newest change first, filtered (any of `states`, and the rest), a page
        at a time; `next_page_token` continues after the last one ("" at the end)."""
        k = self.keys
        for s in states:
            if s not in STATES:
                raise ValueError(f"state {s!r} is not one of {STATES}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        cursor = _parse_token(page_token) if page_token else None
        sets = [k.team(team)] * bool(team) + [k.rule(rule)] * bool(rule)
        sets += [k.pid(profile_id)] * bool(profile_id)
        if not sets and not states:
            total = int(self.client.zcard(k.incidents))
            top = "+inf" if cursor is None else cursor[0]
            raw: Any = self.client.zrevrangebyscore(
                k.incidents,
                top,
                "-inf",
                start=0,
                num=size + 1 + 1000 * (cursor is not None),
                withscores=True,
            )
            ids = _after_cursor(((as_text(m), s) for m, s in raw), cursor)
        else:
            members: set[str] | None = None
            if sets:
                members = {as_text(m) for m in self.client.sinter(sets)}
            if states:
                in_states = {as_text(m) for m in self.client.sunion([k.state(s) for s in states])}
                members = in_states if members is None else members & in_states
            found = sorted(members or ())
            scores = self.client.zmscore(k.incidents, found) if found else []
            pairs = [(i, float(s)) for i, s in zip(found, scores, strict=True) if s is not None]
            total = len(pairs)
            ids = _after_cursor(pairs, cursor)
        page_ids = ids[:size]
        pipe = self.client.pipeline(transaction=False)
        for i in page_ids:
            pipe.hgetall(k.incident(i))
        records = [incident_from_hash(text_map(h)) for h in pipe.execute() if h]
        next_token = ""
        if len(ids) > size and records:
            last = records[-1]
            next_token = _page_token(last.updated_at_ms, last.incident_id)
        return IncidentPage([incident_message(r) for r in records], next_token, total)

    def purge_resolved(self, before_ms: int, limit: int = 500) -> int:
        """Deletes incidents resolved (last changed) before `before_ms`, at most `limit`,
        with their index entries; how many went. Open incidents are never purged."""
        k = self.keys
        old: Any = self.client.zrangebyscore(k.incidents, "-inf", f"({before_ms}", 0, limit)
        purged = 0
        for raw in old:
            record = self._record_of(as_text(raw))
            c = _Commit()
            if record is None:
                c.write("ZREM", k.incidents, as_text(raw))
            elif record.is_open:
                continue
            else:
                c.guard("hf", k.incident(record.incident_id), "version", str(record.version))
                c.write("DEL", k.incident(record.incident_id))
                c.write("ZREM", k.incidents, record.incident_id)
                for index in (k.state(record.state), k.team(record.team), k.rule(record.rule)):
                    c.write("SREM", index, record.incident_id)
                if record.profile_id:
                    c.write("SREM", k.pid(record.profile_id), record.incident_id)
            if self._run(c) and record is not None:
                purged += 1
        return purged

    # --- silences ---------------------------------------------------------------------

    def create_silence(self, silence: SilenceRecord, now_ms: int) -> SilenceRecord:
        """Stores a new silence (a new id; starts now when `starts_at_ms` is 0)."""
        record = replace(
            silence,
            silence_id=self.new_silence(now_ms),
            starts_at_ms=silence.starts_at_ms or now_ms,
        )
        check_silence(record, now_ms)
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.set(k.silence(record.silence_id), silence_json(record))
        pipe.zadd(k.silences, {record.silence_id: record.ends_at_ms})
        pipe.execute()
        self._trim_silences(now_ms)
        return record

    def _trim_silences(self, now_ms: int) -> None:
        k = self.keys
        old: Any = self.client.zrangebyscore(k.silences, "-inf", now_ms - EXPIRED_SILENCE_KEEP_MS)
        if old:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*[k.silence(as_text(i)) for i in old])
            pipe.zrem(k.silences, *old)
            pipe.execute()

    def get_silence(self, silence_id: str) -> SilenceRecord | None:
        raw: Any = self.client.get(self.keys.silence(silence_id))
        return silence_from_json(raw) if raw is not None else None

    def list_silences(self, include_expired: bool, now_ms: int) -> list[SilenceRecord]:
        """Active and pending silences (and expired ones), by start."""
        k = self.keys
        low = "-inf" if include_expired else f"({now_ms}"
        ids: Any = self.client.zrangebyscore(k.silences, low, "+inf")
        raw = self.client.mget([k.silence(as_text(i)) for i in ids]) if ids else []
        found = [silence_from_json(r) for r in raw if r is not None]
        return sorted(found, key=lambda s: (s.starts_at_ms, s.silence_id))

    def expire_silence(self, silence_id: str, now_ms: int) -> SilenceRecord:
        """Ends a silence now (one already expired is returned as it is)."""
        record = self.get_silence(silence_id)
        if record is None:
            raise UnknownSilence(f"no silence {silence_id!r}")
        if record.ends_at_ms <= now_ms:
            return record
        ended = replace(record, ends_at_ms=now_ms, starts_at_ms=min(record.starts_at_ms, now_ms))
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.silence(silence_id), silence_json(ended))
        pipe.zadd(self.keys.silences, {silence_id: now_ms})
        pipe.execute()
        return ended

    # --- the notifier's side ----------------------------------------------------------

    def record_delivery(self, incident_id: str, delivery: Delivery) -> bool:
        """Writes one receiver's delivery of one change into the incident's history (not
        a change of the incident: no version, no outbox entry). False: no such incident."""
        reply = self._record(
            keys=[self.keys.incident(incident_id)],
            args=[delivery_field(delivery.receiver, delivery.change), delivery_json(delivery)],
        )
        return int(reply) == 1

    def ensure_outbox_group(self, group: str = OUTBOX_GROUP) -> None:
        """Creates the outbox stream's consumer group (from the start) if it is missing."""
        try:
            self.client.xgroup_create(self.keys.outbox, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def outbox_tail(self) -> str:
        """The id of the outbox's newest entry ("0-0" when empty): read after it for
        changes from now on."""
        raw: Any = self.client.xrevrange(self.keys.outbox, count=1)
        return as_text(raw[0][0]) if raw else "0-0"

    def read_outbox(self, after: str, block_ms: int, count: int = 100) -> list[OutboxEntry]:
        """Entries after `after`, waiting up to `block_ms` for one (XREAD BLOCK; 0: no
        wait)."""
        block = block_ms if block_ms > 0 else None
        reply: Any = self.client.xread({self.keys.outbox: after}, count=count, block=block)
        out: list[OutboxEntry] = []
        for _stream, entries in reply or []:
            out.extend(decode_outbox_entry(entry_id, fields) for entry_id, fields in entries)
        return out


# --- In memory ------------------------------------------------------------------------


class MemoryIncidentStore:
    """The store's semantics on dictionaries (the same plans), for unit tests. The
    outbox is a list of decoded entries with ids `<ms>-<n>`."""

    def __init__(
        self,
        new_id: Callable[[int], str] = new_incident_id,
        new_silence: Callable[[int], str] = new_silence_id,
    ) -> None:
        self.new_id = new_id
        self.new_silence = new_silence
        self.incidents: dict[str, IncidentRecord] = {}
        self.open: dict[str, str] = {}
        self.seen: dict[tuple[str, str], str] = {}
        self.pending: dict[str, Trigger] = {}
        self.timers: dict[str, int] = {}
        self.silences: dict[str, SilenceRecord] = {}
        self.deliveries: dict[str, dict[tuple[str, str], Delivery]] = {}
        self.outbox: list[OutboxEntry] = []
        self._lock = threading.RLock()
        self._appended = threading.Condition(self._lock)
        self._seq = 0

    def _view(self, t: Trigger) -> TriggerView:
        groups = []
        if t.profile_id:
            for rule in t.groups_with:
                gid = self.open.get(person_key(rule, t.profile_id))
                if gid is not None:
                    groups.append(self.incidents[gid])
        inhibitors = []
        if t.profile_id and t.touchpoint:
            inhibitors = [
                r
                for r in self.incidents.values()
                if r.is_open and not r.profile_id and r.touchpoint == t.touchpoint
            ]
        open_id = self.open.get(t.dedup_key)
        return TriggerView(
            seen=self.seen.get((t.rule, t.evidence.event_id)),
            open=self.incidents[open_id] if open_id else None,
            groups=groups,
            inhibitors=inhibitors,
            silences=[s for s in self.silences.values() if s.ends_at_ms > t.now_ms],
            scheduled=t.dedup_key in self.pending,
        )

    def _apply(self, plan: Plan, now_ms: int) -> None:
        after = plan.after
        if after is not None:
            self.incidents[after.incident_id] = replace(after, deliveries=())
            if after.is_open:
                self.open[after.dedup_key] = after.incident_id
            elif self.open.get(after.dedup_key) == after.incident_id:
                del self.open[after.dedup_key]
            if plan.change:
                self._seq += 1
                message = change_message(after, plan.change, now_ms)
                self.outbox.append(
                    OutboxEntry(
                        f"{now_ms}-{self._seq}",
                        plan.change,
                        plan.page,
                        after.incident_id,
                        after.version,
                        message,
                    )
                )
                self._appended.notify_all()
        for member, due in plan.schedule:
            self.timers[member] = due
        for member in plan.unschedule:
            self.timers.pop(member, None)
        if plan.pending is not None:
            self.pending[plan.pending.dedup_key] = plan.pending
        if plan.drop_pending:
            self.pending.pop(plan.drop_pending, None)
            self.timers.pop(timer_member(SLA, plan.drop_pending), None)

    def _message(self, record: IncidentRecord) -> pb.Incident:
        found = self.deliveries.get(record.incident_id, {})
        return incident_message(
            incident_from_hash(
                {
                    **incident_to_hash(record),
                    **{delivery_field(r, c): delivery_json(d) for (r, c), d in found.items()},
                }
            )
        )

    def trigger(self, t: Trigger) -> TriggerResult:
        check_trigger(t)
        with self._lock:
            plan = plan_trigger(t, self._view(t), self.new_id(t.now_ms))
            assert plan.result is not None
            if plan.result.change != "DUPLICATE":
                self._apply(plan, t.now_ms)
                if plan.seen:
                    self.seen[(t.rule, t.evidence.event_id)] = plan.seen
            return plan.result

    def _change(self, incident_id: str, plan_of: Any, now_ms: int) -> pb.Incident:
        with self._lock:
            record = self.incidents.get(incident_id)
            if record is None:
                raise UnknownIncident(f"no incident {incident_id!r}")
            plan: Plan = plan_of(record)
            self._apply(plan, now_ms)
            assert plan.after is not None
            return self._message(plan.after)

    def acknowledge(self, incident_id: str, by: str, now_ms: int) -> pb.Incident:
        return self._change(incident_id, lambda r: plan_acknowledge(r, by, now_ms), now_ms)

    def resolve(self, incident_id: str, by: str, note: str, now_ms: int) -> pb.Incident:
        return self._change(incident_id, lambda r: plan_resolve(r, by, note, now_ms), now_ms)

    def resolve_key(self, dedup_key: str, why: str, now_ms: int) -> str | None:
        with self._lock:
            plan = Plan()
            open_id = self.open.get(dedup_key)
            if open_id is not None:
                plan = plan_resolve(self.incidents[open_id], AUTO, why, now_ms)
            if dedup_key in self.pending:
                plan = replace(plan, drop_pending=dedup_key)
            self._apply(plan, now_ms)
            return open_id

    def fire_due(self, now_ms: int) -> list[str]:
        changed = []
        with self._lock:
            due = sorted((d, m) for m, d in self.timers.items() if d <= now_ms)[:FIRE_BATCH]
            for _, member in due:
                kind, subject = split_timer(member)
                plan = Plan(unschedule=(member,))
                if kind == ESCALATION and subject in self.incidents:
                    plan = plan_escalate(self.incidents[subject], now_ms)
                elif kind == SLA and subject in self.pending:
                    t = replace(self.pending[subject], now_ms=now_ms, sla_due_ms=None)
                    plan = plan_trigger(t, self._view(t), self.new_id(now_ms), from_timer=True)
                self._apply(plan, now_ms)
                self.timers.pop(member, None)
                if plan.after is not None:
                    changed.append(plan.after.incident_id)
        return changed

    def get(self, incident_id: str) -> pb.Incident | None:
        with self._lock:
            record = self.incidents.get(incident_id)
            return self._message(record) if record is not None else None

    def list_incidents(
        self,
        states: Sequence[str] = (),
        team: str = "",
        rule: str = "",
        profile_id: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
    ) -> IncidentPage:
        for s in states:
            if s not in STATES:
                raise ValueError(f"state {s!r} is not one of {STATES}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        cursor = _parse_token(page_token) if page_token else None
        with self._lock:
            chosen = [
                r
                for r in self.incidents.values()
                if (not states or r.state in states)
                and (not team or r.team == team)
                and (not rule or r.rule == rule)
                and (not profile_id or r.profile_id == profile_id)
            ]
            ids = _after_cursor(((r.incident_id, r.updated_at_ms) for r in chosen), cursor)
            page = [self.incidents[i] for i in ids[:size]]
            token = ""
            if len(ids) > size and page:
                token = _page_token(page[-1].updated_at_ms, page[-1].incident_id)
            return IncidentPage([self._message(r) for r in page], token, len(chosen))

    def purge_resolved(self, before_ms: int, limit: int = 500) -> int:
        with self._lock:
            old = sorted(
                (r.updated_at_ms, r.incident_id)
                for r in self.incidents.values()
                if r.updated_at_ms < before_ms
            )[:limit]
            purged = 0
            for _, incident_id in old:
                if not self.incidents[incident_id].is_open:
                    del self.incidents[incident_id]
                    self.deliveries.pop(incident_id, None)
                    purged += 1
            return purged

    def create_silence(self, silence: SilenceRecord, now_ms: int) -> SilenceRecord:
        record = replace(
            silence,
            silence_id=self.new_silence(now_ms),
            starts_at_ms=silence.starts_at_ms or now_ms,
        )
        check_silence(record, now_ms)
        with self._lock:
            self.silences[record.silence_id] = record
        return record

    def get_silence(self, silence_id: str) -> SilenceRecord | None:
        return self.silences.get(silence_id)

    def list_silences(self, include_expired: bool, now_ms: int) -> list[SilenceRecord]:
        found = [s for s in self.silences.values() if include_expired or s.ends_at_ms > now_ms]
        return sorted(found, key=lambda s: (s.starts_at_ms, s.silence_id))

    def expire_silence(self, silence_id: str, now_ms: int) -> SilenceRecord:
        with self._lock:
            record = self.silences.get(silence_id)
            if record is None:
                raise UnknownSilence(f"no silence {silence_id!r}")
            if record.ends_at_ms <= now_ms:
                return record
            ended = replace(
                record, ends_at_ms=now_ms, starts_at_ms=min(record.starts_at_ms, now_ms)
            )
            self.silences[silence_id] = ended
            return ended

    def record_delivery(self, incident_id: str, delivery: Delivery) -> bool:
        with self._lock:
            if incident_id not in self.incidents:
                return False
            self.deliveries.setdefault(incident_id, {})[(delivery.receiver, delivery.change)] = (
                delivery
            )
            return True

    def outbox_tail(self) -> str:
        with self._lock:
            return self.outbox[-1].entry_id if self.outbox else "0-0"

    def read_outbox(self, after: str, block_ms: int, count: int = 100) -> list[OutboxEntry]:
        def newer() -> list[OutboxEntry]:
            mark = _entry_order(after)
            return [e for e in self.outbox if _entry_order(e.entry_id) > mark][:count]

        with self._lock:
            self._appended.wait_for(lambda: bool(newer()), timeout=block_ms / 1000)
            return newer()


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
