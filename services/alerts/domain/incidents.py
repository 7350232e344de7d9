"""Incidents, pure: what a trigger, an acknowledgement, a resolution, an escalation or an
SLA breach does to the incidents, given what is stored now.

The store (services/alerts/adapters/incidents.py) reads a `TriggerView` (or an incident),
asks a `plan_*` function here for a `Plan`, and commits the plan in one Lua call that
checks nothing it read has changed meanwhile (else it reads again). The in-memory store
(`MemoryIncidentStore` in the adapter module) runs the same plans on dictionaries, so the
two agree by construction on the decisions and the integration tests hold the Redis side
to the same outcomes.

The rules (docs: the plan's "Dedup, inhibition, silences"):
- One open (not resolved) incident per dedup key: `<rule>:pid:<profile id>` for a
  person, `<rule>:tp:<touchpoint>` for a touchpoint. A trigger while one is open
  updates it (UPDATED: count, last seen, evidence; never paged again).
- Idempotent per (rule, event id): a redelivered event is a DUPLICATE and changes nothing.
- Grouping: a person's trigger whose `groups_with` names a rule with an open incident for
  that person joins that incident (GROUPED: its `grouped` count and evidence) instead of
  opening its own.
- Inhibition: an open touchpoint-level incident (no person) on touchpoint T inhibits the
  pages of a person's incident opened by an event on T: recorded (`inhibited_by`), not
  paged.
- Silences: every matcher of an active silence matches (team, rule, touchpoint,
  profile_id, severity; equal, or with `prefix` starting with the value): recorded
  (`silenced_by`), not paged.
- Only an incident that was paged when it opened has its ACKNOWLEDGED, RESOLVED and
  ESCALATED changes paged (the outbox entry's `page`).
- triggered -> acknowledged -> resolved, triggered -> resolved; anything else is an
  `InvalidTransition`.
- Escalation: a paged incident still triggered `escalate_after_s` after it opened is
  ESCALATED once (escalation_level 1), paged to the team's next level.
- SLA timers: a trigger with `sla_due_ms` and no open incident for its key schedules the
  incident (SCHEDULED); at the due time it opens, unless `resolve_key` cancelled it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cx.alerts.v1 import alerts_pb2 as pb

# Vocabulary: the store's words, and the protos' enums for them.
TRIGGERED, ACKNOWLEDGED, RESOLVED = "triggered", "acknowledged", "resolved"
STATES = (TRIGGERED, ACKNOWLEDGED, RESOLVED)
SEVERITIES = ("critical", "error", "warning", "info")
KINDS = ("event", "window", "spike", "timer")
# Changes of an incident (the outbox entry's `change`, IncidentChange.change).
OPENED, UPDATED, ESCALATED = "OPENED", "UPDATED", "ESCALATED"
CHANGES = (OPENED, UPDATED, "ACKNOWLEDGED", "RESOLVED", ESCALATED)
CHANGE_ACKNOWLEDGED, CHANGE_RESOLVED = "ACKNOWLEDGED", "RESOLVED"
# What a trigger did (TriggerResult.change).
GROUPED, DUPLICATE, SCHEDULED = "GROUPED", "DUPLICATE", "SCHEDULED"
# Silence matcher names: the incident attributes a silence can match.
MATCHER_NAMES = ("team", "rule", "touchpoint", "profile_id", "severity")
PENDING, ACTIVE, EXPIRED = "pending", "active", "expired"
# Evidence kept per incident, newest first.
MAX_EVIDENCE = 20
# Who resolves an incident automatically.
AUTO = "auto"

STATE_ENUM = {
    TRIGGERED: pb.STATE_TRIGGERED,
    ACKNOWLEDGED: pb.STATE_ACKNOWLEDGED,
    RESOLVED: pb.STATE_RESOLVED,
}
SEVERITY_ENUM = {
    "critical": pb.SEVERITY_CRITICAL,
    "error": pb.SEVERITY_ERROR,
    "warning": pb.SEVERITY_WARNING,
    "info": pb.SEVERITY_INFO,
}
KIND_ENUM = {
    "event": pb.RULE_KIND_EVENT,
    "window": pb.RULE_KIND_WINDOW,
    "spike": pb.RULE_KIND_SPIKE,
    "timer": pb.RULE_KIND_TIMER,
}
CHANGE_ENUM = {
    OPENED: pb.CHANGE_OPENED,
    UPDATED: pb.CHANGE_UPDATED,
    CHANGE_ACKNOWLEDGED: pb.CHANGE_ACKNOWLEDGED,
    CHANGE_RESOLVED: pb.CHANGE_RESOLVED,
    ESCALATED: pb.CHANGE_ESCALATED,
}
SILENCE_STATE_ENUM = {
    PENDING: pb.SILENCE_STATE_PENDING,
    ACTIVE: pb.SILENCE_STATE_ACTIVE,
    EXPIRED: pb.SILENCE_STATE_EXPIRED,
}
STATE_OF_ENUM = {v: k for k, v in STATE_ENUM.items()}
SEVERITY_OF_ENUM = {v: k for k, v in SEVERITY_ENUM.items()}


class InvalidTransition(Exception):
    """The incident is not in a state the change can start from (FAILED_PRECONDITION)."""


class UnknownIncident(LookupError):
    """No incident has this id (NOT_FOUND)."""


class UnknownSilence(LookupError):
    """No silence has this id (NOT_FOUND)."""


class InvalidSilence(ValueError):
    """A silence that cannot be created: `field: what is wrong` (INVALID_ARGUMENT)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def person_key(rule: str, profile_id: str) -> str:
    """The dedup key of a rule's incident for one person."""
    return f"{rule}:pid:{profile_id}"


def touchpoint_key(rule: str, touchpoint: str) -> str:
    """The dedup key of a rule's incident for one touchpoint (spikes)."""
    return f"{rule}:tp:{touchpoint}"


def new_incident_id(now_ms: int) -> str:
    """`inc-<ms, hex>-<6 random hex>`: sorts by creation time, unique enough per ms."""
    return f"inc-{now_ms:011x}-{secrets.token_hex(3)}"


def new_silence_id(now_ms: int) -> str:
    return f"sil-{now_ms:011x}-{secrets.token_hex(3)}"


# --- The interface detection codes against -------------------------------------------


@dataclass(frozen=True)
class EvidenceItem:
    """The event that made or updated an incident."""

    event_id: str
    touchpoint: str
    occurred_at_ms: int
    # The payload's type, for example `survey_response`.
    payload: str
    # The negative experience it showed, for example `detractor`.
    negative: str
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Trigger:
    """A rule fired: open or update the incident of `dedup_key`."""

    rule: str
    kind: str  # "event" | "window" | "spike" | "timer"
    dedup_key: str
    severity: str  # "critical" | "error" | "warning" | "info"
    team: str
    summary: str
    profile_id: str  # "" for a touchpoint-level incident
    touchpoint: str
    evidence: EvidenceItem
    now_ms: int
    # From the team's escalation policy; None: never escalated.
    escalate_after_s: float | None
    # Rules whose open incident for the same person this trigger joins instead (a
    # detractor answer joins the person's open complaint incident).
    groups_with: tuple[str, ...] = ()
    # Schedule the incident to open at this time unless resolve_key(dedup_key) comes
    # first (timer rules: a complaint's SLA).
    sla_due_ms: int | None = None


@dataclass(frozen=True)
class TriggerResult:
    incident_id: str  # "" for SCHEDULED
    change: str  # OPENED | UPDATED | GROUPED | DUPLICATE | SCHEDULED
    # Whether receivers are told (an OPENED incident neither silenced nor inhibited).
    paged: bool
    # "", "silence:<silence id>" or "inhibited:<incident id>".
    suppressed_by: str


def check_trigger(t: Trigger) -> None:
    """Raises ValueError for a trigger no rule should make (a bug upstream)."""
    problems = []
    if t.kind not in KINDS:
        problems.append(f"kind {t.kind!r} is not one of {', '.join(KINDS)}")
    if t.severity not in SEVERITIES:
        problems.append(f"severity {t.severity!r} is not one of {', '.join(SEVERITIES)}")
    for name in ("rule", "dedup_key", "team"):
        if not getattr(t, name):
            problems.append(f"{name} is empty")
    if not t.evidence.event_id:
        problems.append("evidence.event_id is empty")
    if "|" in t.rule or "|" in t.dedup_key:
        problems.append("rule and dedup_key cannot hold '|'")
    if t.escalate_after_s is not None and t.escalate_after_s < 0:
        problems.append("escalate_after_s is negative")
    if problems:
        raise ValueError(f"trigger of rule {t.rule!r}: " + "; ".join(problems))


# --- Incidents ------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One receiver's delivery of one change (written by the notifier)."""

    receiver: str
    change: str
    status: str  # delivered | pending | failed | suppressed
    attempts: int = 0
    last_error: str = ""
    delivered_at_ms: int = 0


@dataclass(frozen=True)
class IncidentRecord:
    """An incident as stored. Times are epoch ms, 0 when unset."""

    incident_id: str
    dedup_key: str
    rule: str
    kind: str
    state: str
    severity: str
    team: str
    summary: str
    profile_id: str
    touchpoint: str
    count: int
    first_seen_ms: int
    last_seen_ms: int
    # Newest first, at most MAX_EVIDENCE.
    evidence: tuple[EvidenceItem, ...]
    acknowledged_by: str = ""
    acknowledged_at_ms: int = 0
    resolved_by: str = ""
    resolved_at_ms: int = 0
    resolution: str = ""
    inhibited_by: str = ""
    silenced_by: str = ""
    grouped: int = 0
    version: int = 1
    escalation_level: int = 0
    # Whether its opening was paged (then its later changes are too).
    paged: bool = False
    # When it escalates if still triggered (0: never).
    escalate_at_ms: int = 0
    # The last change, for listing newest first.
    updated_at_ms: int = 0
    # Not part of the incident's versioned state: the notifier's delivery history.
    deliveries: tuple[Delivery, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.state != RESOLVED

    @property
    def attributes(self) -> dict[str, str]:
        """What silences match."""
        return {
            "team": self.team,
            "rule": self.rule,
            "touchpoint": self.touchpoint,
            "profile_id": self.profile_id,
            "severity": self.severity,
        }


def _with_evidence(
    evidence: tuple[EvidenceItem, ...], item: EvidenceItem
) -> tuple[EvidenceItem, ...]:
    kept = [e for e in evidence if e.event_id != item.event_id]
    merged = sorted([item, *kept], key=lambda e: e.occurred_at_ms, reverse=True)
    return tuple(merged[:MAX_EVIDENCE])


def _more_severe(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) <= SEVERITIES.index(b) else b


# --- Silences -------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    name: str  # one of MATCHER_NAMES
    value: str
    prefix: bool = False

    def matches(self, attributes: Mapping[str, str]) -> bool:
        actual = attributes.get(self.name, "")
        return actual.startswith(self.value) if self.prefix else actual == self.value


@dataclass(frozen=True)
class SilenceRecord:
    silence_id: str
    matchers: tuple[Matcher, ...]
    starts_at_ms: int
    ends_at_ms: int
    created_by: str = ""
    comment: str = ""

    def state_at(self, now_ms: int) -> str:
        if now_ms >= self.ends_at_ms:
            return EXPIRED
        return PENDING if now_ms < self.starts_at_ms else ACTIVE

    def holds(self, attributes: Mapping[str, str], now_ms: int) -> bool:
        """Whether it silences an incident with these attributes at `now_ms`."""
        return self.state_at(now_ms) == ACTIVE and all(m.matches(attributes) for m in self.matchers)


MAX_MATCHERS = 10
MAX_MATCHER_VALUE = 200
MAX_SILENCE_TEXT = 500


def check_silence(s: SilenceRecord, now_ms: int) -> None:
    """Raises InvalidSilence naming the field for a silence that cannot be created."""
    if not s.matchers:
        raise InvalidSilence("silence.matchers", "at least one matcher is required")
    if len(s.matchers) > MAX_MATCHERS:
        raise InvalidSilence("silence.matchers", f"at most {MAX_MATCHERS} matchers")
    for i, m in enumerate(s.matchers):
        where = f"silence.matchers[{i}]"
        if m.name not in MATCHER_NAMES:
            raise InvalidSilence(f"{where}.name", f"{m.name!r} is not one of {MATCHER_NAMES}")
        if not m.value and not m.prefix:
            raise InvalidSilence(f"{where}.value", "is required")
        if len(m.value) > MAX_MATCHER_VALUE:
            raise InvalidSilence(f"{where}.value", f"is longer than {MAX_MATCHER_VALUE}")
        if m.name == "severity" and not m.prefix and m.value not in SEVERITIES:
            raise InvalidSilence(f"{where}.value", f"severity is one of {SEVERITIES}")
    if s.ends_at_ms <= 0:
        raise InvalidSilence("silence.ends_at", "is required")
    if s.ends_at_ms <= s.starts_at_ms:
        raise InvalidSilence("silence.ends_at", "must be after starts_at")
    if s.ends_at_ms <= now_ms:
        raise InvalidSilence("silence.ends_at", "is in the past")
    for name in ("created_by", "comment"):
        if len(getattr(s, name)) > MAX_SILENCE_TEXT:
            raise InvalidSilence(f"silence.{name}", f"is longer than {MAX_SILENCE_TEXT}")


def holding_silence(
    silences: Sequence[SilenceRecord], attributes: Mapping[str, str], now_ms: int
) -> SilenceRecord | None:
    """The first silence (by id) that holds an incident with these attributes."""
    for s in sorted(silences, key=lambda s: s.silence_id):
        if s.holds(attributes, now_ms):
            return s
    return None


# --- Plans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerView:
    """What the store holds that a trigger's outcome depends on."""

    # The (rule, event id) marker: "<incident id>|<result change>" when seen.
    seen: str | None = None
    # The open incident of the trigger's dedup key.
    open: IncidentRecord | None = None
    # Open incidents of the person for `groups_with` rules, in that order.
    groups: Sequence[IncidentRecord] = ()
    # Open touchpoint-level incidents on the trigger's touchpoint.
    inhibitors: Sequence[IncidentRecord] = ()
    silences: Sequence[SilenceRecord] = ()
    # An SLA timer is already scheduled for the dedup key.
    scheduled: bool = False


@dataclass(frozen=True)
class Plan:
    """What to write: the incident after the change (None: none changes), the outbox
    entry's change and page flag, timers, and the trigger's result."""

    result: TriggerResult | None = None
    before: IncidentRecord | None = None
    after: IncidentRecord | None = None
    change: str = ""  # the outbox entry's change; "" for none
    page: bool = False
    # Timers (members of the timers set, see timer_member) to add with their due time,
    # and to remove.
    schedule: tuple[tuple[str, int], ...] = ()
    unschedule: tuple[str, ...] = ()
    # An SLA trigger to keep until its timer fires (SCHEDULED).
    pending: Trigger | None = None
    # The SLA trigger of the dedup key is done with (opened or cancelled).
    drop_pending: str = ""
    # Mark (rule, event id) as seen with this value.
    seen: str = ""


ESCALATION, SLA = "esc", "sla"


def timer_member(kind: str, subject: str) -> str:
    """A member of the timers set: `esc|<incident id>` or `sla|<dedup key>`."""
    return f"{kind}|{subject}"


def split_timer(member: str) -> tuple[str, str]:
    kind, _, subject = member.partition("|")
    return kind, subject


def seen_value(result: TriggerResult) -> str:
    return f"{result.incident_id}|{result.change}"


def plan_trigger(t: Trigger, view: TriggerView, new_id: str, *, from_timer: bool = False) -> Plan:
    """What trigger `t` does given `view`; `new_id` names the incident if one opens.
    `from_timer`: an SLA timer fired for the scheduled trigger `t` (its event was seen
    when it was scheduled); whatever it does, the schedule is done with."""
    plan = _plan_trigger(t, view, new_id, from_timer)
    return replace(plan, drop_pending=t.dedup_key) if from_timer else plan


def _plan_trigger(t: Trigger, view: TriggerView, new_id: str, from_timer: bool) -> Plan:
    if view.seen is not None and not from_timer:
        incident_id = view.seen.partition("|")[0]
        return Plan(result=TriggerResult(incident_id, DUPLICATE, False, ""))
    ev = t.evidence
    mark = not from_timer
    if view.open is not None:
        before = view.open
        after = replace(
            before,
            count=before.count + 1,
            first_seen_ms=min(before.first_seen_ms, ev.occurred_at_ms or t.now_ms),
            last_seen_ms=max(before.last_seen_ms, ev.occurred_at_ms or t.now_ms),
            evidence=_with_evidence(before.evidence, ev),
            severity=_more_severe(before.severity, t.severity),
            version=before.version + 1,
            updated_at_ms=max(before.updated_at_ms, t.now_ms),
        )
        result = TriggerResult(before.incident_id, UPDATED, False, "")
        return Plan(result, before, after, UPDATED, False, seen=seen_value(result) if mark else "")
    if t.profile_id and view.groups:
        before = view.groups[0]
        after = replace(
            before,
            grouped=before.grouped + 1,
            last_seen_ms=max(before.last_seen_ms, ev.occurred_at_ms or t.now_ms),
            evidence=_with_evidence(before.evidence, ev),
            version=before.version + 1,
            updated_at_ms=max(before.updated_at_ms, t.now_ms),
        )
        result = TriggerResult(before.incident_id, GROUPED, False, "")
        return Plan(result, before, after, UPDATED, False, seen=seen_value(result) if mark else "")
    if t.sla_due_ms is not None and not from_timer:
        result = TriggerResult("", SCHEDULED, False, "")
        if view.scheduled:
            # The first event of the problem set the clock; later ones do not move it.
            return Plan(result, seen=seen_value(result))
        return Plan(
            result,
            schedule=((timer_member(SLA, t.dedup_key), t.sla_due_ms),),
            pending=t,
            seen=seen_value(result),
        )
    seen_at = ev.occurred_at_ms or t.now_ms
    opened = IncidentRecord(
        incident_id=new_id,
        dedup_key=t.dedup_key,
        rule=t.rule,
        kind=t.kind,
        state=TRIGGERED,
        severity=t.severity,
        team=t.team,
        summary=t.summary,
        profile_id=t.profile_id,
        touchpoint=t.touchpoint,
        count=1,
        first_seen_ms=seen_at if not from_timer else t.now_ms,
        last_seen_ms=seen_at if not from_timer else t.now_ms,
        evidence=(ev,),
        version=1,
        updated_at_ms=t.now_ms,
    )
    inhibitor = next(
        (
            i
            for i in sorted(view.inhibitors, key=lambda i: i.incident_id)
            if t.profile_id and i.is_open and not i.profile_id and i.touchpoint == t.touchpoint
        ),
        None,
    )
    silence = holding_silence(view.silences, opened.attributes, t.now_ms)
    suppressed = ""
    if inhibitor is not None:
        suppressed = f"inhibited:{inhibitor.incident_id}"
    elif silence is not None:
        suppressed = f"silence:{silence.silence_id}"
    paged = not suppressed
    escalate_at = 0
    if paged and t.escalate_after_s is not None:
        escalate_at = t.now_ms + int(t.escalate_after_s * 1000)
    opened = replace(
        opened,
        inhibited_by=inhibitor.incident_id if inhibitor else "",
        silenced_by=silence.silence_id if silence else "",
        paged=paged,
        escalate_at_ms=escalate_at,
    )
    result = TriggerResult(new_id, OPENED, paged, suppressed)
    return Plan(
        result,
        None,
        opened,
        OPENED,
        paged,
        schedule=((timer_member(ESCALATION, new_id), escalate_at),) if escalate_at else (),
        seen=seen_value(result) if mark else "",
    )


def plan_acknowledge(incident: IncidentRecord, by: str, now_ms: int) -> Plan:
    if incident.state == ACKNOWLEDGED:
        raise InvalidTransition(
            f"incident {incident.incident_id} is already acknowledged"
            f" (by {incident.acknowledged_by or 'someone'})"
        )
    if incident.state != TRIGGERED:
        raise InvalidTransition(
            f"incident {incident.incident_id} is {incident.state}: only a triggered incident"
            " can be acknowledged"
        )
    after = replace(
        incident,
        state=ACKNOWLEDGED,
        acknowledged_by=by,
        acknowledged_at_ms=now_ms,
        version=incident.version + 1,
        escalate_at_ms=0,
        updated_at_ms=max(incident.updated_at_ms, now_ms),
    )
    return Plan(
        before=incident,
        after=after,
        change=CHANGE_ACKNOWLEDGED,
        page=incident.paged,
        unschedule=(timer_member(ESCALATION, incident.incident_id),),
    )


def plan_resolve(incident: IncidentRecord, by: str, note: str, now_ms: int) -> Plan:
    """Resolved by `by` (AUTO for a rule; then `note` is why)."""
    if incident.state == RESOLVED:
        raise InvalidTransition(
            f"incident {incident.incident_id} is already resolved"
            f" (by {incident.resolved_by or 'someone'})"
        )
    after = replace(
        incident,
        state=RESOLVED,
        resolved_by=by,
        resolved_at_ms=now_ms,
        resolution=f"{AUTO}: {note}" if by == AUTO else note,
        version=incident.version + 1,
        escalate_at_ms=0,
        updated_at_ms=max(incident.updated_at_ms, now_ms),
    )
    return Plan(
        before=incident,
        after=after,
        change=CHANGE_RESOLVED,
        page=incident.paged,
        unschedule=(timer_member(ESCALATION, incident.incident_id),),
    )


def plan_escalate(incident: IncidentRecord, now_ms: int) -> Plan:
    """The escalation timer of `incident` fired: ESCALATED if it is still triggered."""
    member = timer_member(ESCALATION, incident.incident_id)
    if incident.state != TRIGGERED or not incident.escalate_at_ms:
        return Plan(unschedule=(member,))
    after = replace(
        incident,
        escalation_level=incident.escalation_level + 1,
        version=incident.version + 1,
        escalate_at_ms=0,
        updated_at_ms=max(incident.updated_at_ms, now_ms),
    )
    return Plan(
        before=incident, after=after, change=ESCALATED, page=incident.paged, unschedule=(member,)
    )


# --- Codecs (the Redis hash and the outbox; JSON for what Lua never reads) -------------


def evidence_json(items: Sequence[EvidenceItem]) -> str:
    return json.dumps(
        [
            {
                "e": e.event_id,
                "t": e.touchpoint,
                "at": e.occurred_at_ms,
                "p": e.payload,
                "n": e.negative,
                "s": dict(e.scores),
            }
            for e in items
        ],
        separators=(",", ":"),
    )


def evidence_from_json(text: str) -> tuple[EvidenceItem, ...]:
    return tuple(
        EvidenceItem(
            event_id=str(e["e"]),
            touchpoint=str(e.get("t", "")),
            occurred_at_ms=int(e.get("at", 0)),
            payload=str(e.get("p", "")),
            negative=str(e.get("n", "")),
            scores={str(k): float(v) for k, v in (e.get("s") or {}).items()},
        )
        for e in json.loads(text or "[]")
    )


def trigger_json(t: Trigger) -> str:
    return json.dumps(
        {
            "rule": t.rule,
            "kind": t.kind,
            "dedup_key": t.dedup_key,
            "severity": t.severity,
            "team": t.team,
            "summary": t.summary,
            "profile_id": t.profile_id,
            "touchpoint": t.touchpoint,
            "evidence": json.loads(evidence_json([t.evidence]))[0],
            "now_ms": t.now_ms,
            "escalate_after_s": t.escalate_after_s,
            "groups_with": list(t.groups_with),
            "sla_due_ms": t.sla_due_ms,
        },
        separators=(",", ":"),
    )


def trigger_from_json(text: str) -> Trigger:
    d: dict[str, Any] = json.loads(text)
    return Trigger(
        rule=d["rule"],
        kind=d["kind"],
        dedup_key=d["dedup_key"],
        severity=d["severity"],
        team=d["team"],
        summary=d["summary"],
        profile_id=d["profile_id"],
        touchpoint=d["touchpoint"],
        evidence=evidence_from_json(json.dumps([d["evidence"]]))[0],
        now_ms=int(d["now_ms"]),
        escalate_after_s=d.get("escalate_after_s"),
        groups_with=tuple(d.get("groups_with") or ()),
        sla_due_ms=d.get("sla_due_ms"),
    )


# Hash fields holding numbers; the rest are text. Delivery fields start with DELIVERY.
_INT_FIELDS = (
    "count",
    "first_seen_ms",
    "last_seen_ms",
    "acknowledged_at_ms",
    "resolved_at_ms",
    "grouped",
    "version",
    "escalation_level",
    "escalate_at_ms",
    "updated_at_ms",
)
_TEXT_FIELDS = (
    "incident_id",
    "dedup_key",
    "rule",
    "kind",
    "state",
    "severity",
    "team",
    "summary",
    "profile_id",
    "touchpoint",
    "acknowledged_by",
    "resolved_by",
    "resolution",
    "inhibited_by",
    "silenced_by",
)
DELIVERY_FIELD = "d:"


def delivery_field(receiver: str, change: str) -> str:
    return f"{DELIVERY_FIELD}{receiver}|{change}"


def incident_to_hash(r: IncidentRecord) -> dict[str, str]:
    """The incident's hash fields (not its deliveries: the notifier writes those)."""
    out = {name: str(getattr(r, name)) for name in _TEXT_FIELDS}
    out.update({name: str(getattr(r, name)) for name in _INT_FIELDS})
    out["evidence"] = evidence_json(r.evidence)
    out["paged"] = "1" if r.paged else "0"
    return out


def delivery_json(d: Delivery) -> str:
    return json.dumps(
        {
            "receiver": d.receiver,
            "change": d.change,
            "status": d.status,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "delivered_at_ms": d.delivered_at_ms,
        },
        separators=(",", ":"),
    )


def incident_from_hash(h: Mapping[str, str]) -> IncidentRecord:
    deliveries = []
    for name, value in h.items():
        if name.startswith(DELIVERY_FIELD):
            d = json.loads(value)
            deliveries.append(
                Delivery(
                    receiver=str(d["receiver"]),
                    change=str(d["change"]),
                    status=str(d["status"]),
                    attempts=int(d.get("attempts", 0)),
                    last_error=str(d.get("last_error", "")),
                    delivered_at_ms=int(d.get("delivered_at_ms", 0)),
                )
            )
    order = {c: i for i, c in enumerate(CHANGES)}
    deliveries.sort(key=lambda d: (order.get(d.change, 99), d.receiver))
    values: dict[str, Any] = {name: h.get(name, "") for name in _TEXT_FIELDS}
    values.update({name: int(h.get(name) or 0) for name in _INT_FIELDS})
    return IncidentRecord(
        **values,
        evidence=evidence_from_json(h.get("evidence", "")),
        paged=h.get("paged") == "1",
        deliveries=tuple(deliveries),
    )


def silence_json(s: SilenceRecord) -> str:
    return json.dumps(
        {
            "id": s.silence_id,
            "m": [[m.name, m.value, int(m.prefix)] for m in s.matchers],
            "start": s.starts_at_ms,
            "end": s.ends_at_ms,
            "by": s.created_by,
            "comment": s.comment,
        },
        separators=(",", ":"),
    )


def silence_from_json(text: str | bytes) -> SilenceRecord:
    d = json.loads(text)
    return SilenceRecord(
        silence_id=str(d["id"]),
        matchers=tuple(Matcher(str(n), str(v), bool(p)) for n, v, p in d["m"]),
        starts_at_ms=int(d["start"]),
        ends_at_ms=int(d["end"]),
        created_by=str(d.get("by", "")),
        comment=str(d.get("comment", "")),
    )


# --- Protos ---------------------------------------------------------------------------


def _ts(message: Any, ms: int) -> None:
    if ms:
        message.FromMilliseconds(ms)


def incident_message(r: IncidentRecord) -> pb.Incident:
    m = pb.Incident(
        incident_id=r.incident_id,
        dedup_key=r.dedup_key,
        rule=r.rule,
        kind=KIND_ENUM.get(r.kind, pb.RULE_KIND_UNSPECIFIED),
        state=STATE_ENUM.get(r.state, pb.STATE_UNSPECIFIED),
        severity=SEVERITY_ENUM.get(r.severity, pb.SEVERITY_UNSPECIFIED),
        team=r.team,
        summary=r.summary,
        profile_id=r.profile_id,
        touchpoint=r.touchpoint,
        count=r.count,
        acknowledged_by=r.acknowledged_by,
        resolved_by=r.resolved_by,
        resolution=r.resolution,
        inhibited_by=r.inhibited_by,
        silenced_by=r.silenced_by,
        grouped=r.grouped,
        version=r.version,
        escalation_level=r.escalation_level,
    )
    _ts(m.first_seen, r.first_seen_ms)
    _ts(m.last_seen, r.last_seen_ms)
    _ts(m.acknowledged_at, r.acknowledged_at_ms)
    _ts(m.resolved_at, r.resolved_at_ms)
    for e in r.evidence:
        item = m.evidence.add(
            event_id=e.event_id, touchpoint=e.touchpoint, payload=e.payload, negative=e.negative
        )
        _ts(item.occurred_at, e.occurred_at_ms)
        item.scores.update(e.scores)
    for d in r.deliveries:
        delivery = m.deliveries.add(
            receiver=d.receiver,
            change=d.change,
            status=d.status,
            attempts=d.attempts,
            last_error=d.last_error,
        )
        _ts(delivery.delivered_at, d.delivered_at_ms)
    return m


def change_message(r: IncidentRecord, change: str, at_ms: int) -> pb.IncidentChange:
    m = pb.IncidentChange(incident=incident_message(r), change=CHANGE_ENUM[change])
    _ts(m.at, at_ms)
    return m


def silence_message(s: SilenceRecord, now_ms: int) -> pb.Silence:
    m = pb.Silence(
        silence_id=s.silence_id,
        matchers=[pb.Matcher(name=x.name, value=x.value, prefix=x.prefix) for x in s.matchers],
        created_by=s.created_by,
        comment=s.comment,
        state=SILENCE_STATE_ENUM[s.state_at(now_ms)],
    )
    _ts(m.starts_at, s.starts_at_ms)
    _ts(m.ends_at, s.ends_at_ms)
    return m
