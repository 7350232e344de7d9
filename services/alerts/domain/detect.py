"""Detection, pure: what one touchpoint event means for the rules.

- `facts(event)`: the event's fields for rule conditions (`rules.EVENT_FIELDS`), using the
  one definition of a negative experience (`services.common.experience`); None for an
  event no rule can use (the alerts service's own ExperienceIncident events, which would
  otherwise feed back into detection).
- `candidates(rules, facts)`: the rules that could apply, judged on the event alone,
  so that the profile is read only for events some rule could page on.
- `evaluate(rules, facts, person)`: with the person's profile fields, which rules match
  (and in which role: a counted event, or the event a window's `preceded_by` waits
  for) and which open incidents the event resolves.
- `dedup_key`, `trigger`: the incident key and the `Trigger` the store opens or updates.
- `spike_step`: whether an open spike clears, given its count now and how long it has
  been below its threshold.

Windows, spikes and timers keep state in Redis (`services.alerts.adapters.windows`); the
worker's pipeline (`services.alerts.pipeline`) joins the two.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev

from services.alerts.domain.incidents import EvidenceItem, Trigger, person_key, touchpoint_key
from services.alerts.domain.owners import Owners
from services.alerts.domain.rules import (
    EVENT_FIELDS,
    PROFILE_PREFIX,
    SEGMENT_PREFIX,
    AlertRule,
    RuleSet,
)
from services.common import experience as xp
from services.common.conditions import Condition, Fields, FieldValue, Rule
from services.common.identifiers import PERSON_TYPES

__all__ = [
    "ANONYMOUS_PREFIX",
    "Evaluation",
    "Match",
    "Person",
    "Resolution",
    "anonymous_profile_id",
    "candidates",
    "dedup_key",
    "evaluate",
    "evidence",
    "facts",
    "fields_for",
    "person_identifier",
    "spike_step",
    "trigger",
]

# Payloads that say nothing to detection: the alerts service's own incident events (the
# notifier publishes them to the touchpoint topic for the profile).
IGNORED_PAYLOADS = frozenset({"experience_incident"})
# Fields whose numbers go into an incident's evidence as scores.
SCORE_FIELDS = ("nps", "csat", "ces", "sentiment", "delivery.late_minutes", "payment.attempt")
# The id of a person the profile does not know (yet): this and a hash of the event's
# strongest identifier, so the person's triggers still share a dedup key and no
# identifier is shown anywhere.
ANONYMOUS_PREFIX = "anon-"


def _enum(value: int, enum: object, prefix: str) -> str | None:
    """`STATUS_OPENED` -> `opened`; None for the unspecified value."""
    if value == 0:
        return None
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def _put(out: dict[str, FieldValue], name: str, value: FieldValue) -> None:
    if value is not None and value != "":
        out[name] = value


def _survey(out: dict[str, FieldValue], s: ev.SurveyResponse) -> None:
    metric = _enum(s.metric, ev.SurveyResponse.Metric, "METRIC_")
    _put(out, "survey.metric", metric)
    if s.metric == ev.SurveyResponse.METRIC_NPS:
        out["nps"] = s.score
    elif s.metric == ev.SurveyResponse.METRIC_CSAT:
        out["csat"] = round(xp.csat_on_five(s), 3)
    elif s.metric == ev.SurveyResponse.METRIC_CES:
        out["ces"] = round(xp.ces_on_seven(s), 3)
        out["survey.severe_effort"] = xp.is_severe_effort(s)


def _complaint(out: dict[str, FieldValue], c: ev.Complaint) -> None:
    _put(out, "complaint.id", c.complaint_id)
    _put(out, "complaint.status", _enum(c.status, ev.Complaint.Status, "STATUS_"))
    _put(out, "complaint.severity", _enum(c.severity, ev.Complaint.Severity, "SEVERITY_"))
    _put(out, "complaint.category", c.category)


def _delivery(out: dict[str, FieldValue], d: ev.DeliveryUpdate) -> None:
    _put(out, "delivery.status", _enum(d.status, ev.DeliveryUpdate.Status, "STATUS_"))
    _put(out, "delivery.carrier", d.carrier)
    late = xp.late_minutes(d)
    if late is not None:
        out["delivery.late_minutes"] = round(late, 1)
    out["delivery.failed"] = xp.is_failed_delivery(d)
    out["delivery.severely_late"] = xp.is_severely_late(d)


def _payment(out: dict[str, FieldValue], p: ev.PaymentFailed) -> None:
    _put(out, "payment.failure_code", p.failure_code)
    _put(out, "payment.method", p.payment_method)
    if p.attempt:
        out["payment.attempt"] = p.attempt


def _app_error(out: dict[str, FieldValue], a: ev.AppError) -> None:
    out["app_error.fatal"] = a.fatal
    _put(out, "app_error.code", a.error_code)
    _put(out, "app_error.screen", a.screen)
    _put(out, "app_error.app_version", a.app_version)


def _message(out: dict[str, FieldValue], m: ev.ConversationMessage) -> None:
    out["sentiment"] = round(m.sentiment, 4)
    _put(
        out, "message.direction", _enum(m.direction, ev.ConversationMessage.Direction, "DIRECTION_")
    )
    out["message.public"] = m.public
    out["message.public_outcry"] = xp.is_public_outcry(m)


def _contact(out: dict[str, FieldValue], c: ev.SupportContact) -> None:
    _put(out, "contact.reason", c.reason)
    out["contact.first_contact"] = c.first_contact
    out["contact.resolved"] = c.resolved
    _put(out, "contact.queue", c.queue)


_PAYLOAD_FACTS: dict[str, Callable[[dict[str, FieldValue], Any], None]] = {
    "survey_response": _survey,
    "complaint": _complaint,
    "delivery_update": _delivery,
    "payment_failed": _payment,
    "app_error": _app_error,
    "conversation_message": _message,
    "support_contact": _contact,
}


def facts(event: ev.TouchpointEvent) -> dict[str, FieldValue] | None:
    """The event's fields for rule conditions; None when no rule can use the event."""
    payload = event.WhichOneof("payload")
    if payload is None or payload in IGNORED_PAYLOADS:
        return None
    out: dict[str, FieldValue] = {"payload": payload, "touchpoint": event.touchpoint}
    _put(out, "channel", _enum(event.channel, ev.Channel, "CHANNEL_"))
    _put(out, "journey_stage", _enum(event.journey_stage, ev.JourneyStage, "JOURNEY_STAGE_"))
    _put(out, "source_system", event.source_system)
    negatives = xp.negative_experiences(event)
    if negatives:
        out["negative"] = negatives[0].value
    add = _PAYLOAD_FACTS.get(payload)
    if add is not None:
        add(out, getattr(event, payload))
    return out


def scores(fields: Fields) -> dict[str, float]:
    """The numbers an incident's evidence keeps (nps = 3, sentiment = -0.8...)."""
    out: dict[str, float] = {}
    for name in SCORE_FIELDS:
        value = fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def occurred_ms(event: ev.TouchpointEvent) -> int:
    return int(event.occurred_at.ToMilliseconds()) if event.HasField("occurred_at") else 0


def evidence(event: ev.TouchpointEvent, fields: Fields) -> EvidenceItem:
    negative = fields.get("negative")
    return EvidenceItem(
        event_id=event.event_id,
        touchpoint=event.touchpoint,
        occurred_at_ms=occurred_ms(event),
        payload=str(fields.get("payload") or ""),
        negative=negative if isinstance(negative, str) else "",
        scores=scores(fields),
    )


# --- people -------------------------------------------------------------------------------


def person_identifier(event: ev.TouchpointEvent) -> tuple[str, str] | None:
    """(code, value) of the event's strongest identifier (customer id, email, phone,
    anonymous id), what the profile is asked about; None without one."""
    for kind in sorted(PERSON_TYPES, key=lambda t: t.strength):
        value = getattr(event.identities, kind.name)
        if value:
            return kind.code, value
    return None


def anonymous_profile_id(code: str, value: str) -> str:
    """The stand-in profile id of a person the profile does not know."""
    return ANONYMOUS_PREFIX + hashlib.sha256(f"{code}:{value}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Person:
    """Who an event is about, as the profile knows them now."""

    # The profile's id, or `anon-<hash>` for a person the profile does not know.
    profile_id: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    known: bool = True


def fields_for(
    event_facts: Fields, person: Person | None, segment_names: Collection[str] = ()
) -> dict[str, FieldValue]:
    """What a person's rule tests: the event's fields, the profile's (`profile.<field>`
    always, the plain name where the event has no field of that name) and
    `segment.<name>` (True or False for a known person; missing for an unknown one)."""
    out = dict(event_facts)
    if person is None:
        return out
    for name, value in person.fields.items():
        out[PROFILE_PREFIX + name] = value
        if name not in event_facts:
            out[name] = value
    if person.known:
        for name in segment_names:
            out[SEGMENT_PREFIX + name] = name in person.segments
        for name in person.segments:
            out[SEGMENT_PREFIX + name] = True
    return out


# --- which rules ------------------------------------------------------------------------


def _maybe(condition: Condition, fields: Fields) -> bool:
    """The condition holds, or it tests a field the event alone cannot tell."""
    if condition.field not in EVENT_FIELDS:
        return True
    return condition.holds(fields)


def _possible(rule: Rule, fields: Fields) -> bool:
    if not all(_maybe(c, fields) for c in rule.all_of):
        return False
    return not rule.any_of or any(_maybe(c, fields) for c in rule.any_of)


def candidates(rules: RuleSet, event_facts: Fields) -> list[AlertRule]:
    """Rules that could match, count, wait for or resolve something for this event,
    judged on the event's fields alone (profile conditions count as possible)."""
    out = []
    for rule in rules.rules:
        parts = [rule.when]
        if rule.window is not None and rule.window.preceded_by is not None:
            parts.append(rule.window.preceded_by)
        if rule.resolve_when is not None:
            parts.append(rule.resolve_when)
        if any(_possible(part, event_facts) for part in parts):
            out.append(rule)
    return out


HIT, PRECURSOR = "hit", "precursor"


@dataclass(frozen=True)
class Match:
    """A rule's condition held for the event: `hit` (it counts, or fires), or
    `precursor` (a window's `preceded_by` held)."""

    rule: AlertRule
    role: str


@dataclass(frozen=True)
class Resolution:
    """The event resolves the open incident of `dedup_key` (if any)."""

    rule: AlertRule
    dedup_key: str
    why: str


@dataclass(frozen=True)
class Evaluation:
    # Spike matches first (a spike's incident then inhibits the person's pages of the
    # same event), then the person's rules in file order.
    matches: tuple[Match, ...] = ()
    resolutions: tuple[Resolution, ...] = ()


def evaluate(
    rules: Sequence[AlertRule], fields: Fields, person: Person | None, event_facts: Fields
) -> Evaluation:
    """Which of `rules` (the candidates) match `fields` (`fields_for` the event and the
    person; `event_facts` alone for spikes), and what the event resolves. A person's
    rules need a person: an event without identifiers feeds spikes only."""
    spikes: list[Match] = []
    people: list[Match] = []
    resolutions: list[Resolution] = []
    for rule in rules:
        if not rule.per_person:
            if rule.when.matches(event_facts):
                spikes.append(Match(rule, HIT))
            continue
        if person is None:
            continue
        if rule.when.matches(fields):
            people.append(Match(rule, HIT))
        window = rule.window
        preceded_by = window.preceded_by if window is not None else None
        if preceded_by is not None and preceded_by.matches(fields):
            people.append(Match(rule, PRECURSOR))
        if rule.resolve_when is not None and rule.resolve_when.matches(fields):
            key = dedup_key(rule, person.profile_id, fields)
            if key is not None:
                what = fields.get("payload") or "event"
                why = f"{rule.resolve_when.name.removeprefix(rule.name + '.')}: {what}"
                resolutions.append(Resolution(rule, key, why))
    return Evaluation(tuple(spikes + people), tuple(resolutions))


# --- incidents ----------------------------------------------------------------------------

_SAFE_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def _key_part(value: FieldValue) -> str:
    """A field value as part of a key: itself when short and plain, else a hash."""
    text = str(value)
    if _SAFE_RE.match(text):
        return text
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:16]


def dedup_key(rule: AlertRule, profile_id: str, fields: Fields) -> str | None:
    """`<rule>:tp:<touchpoint>` for a spike; `<rule>:pid:<profile id>` for a person's
    rule, with `:<value>` of a timer's `per` field (one clock per complaint); None when
    the `per` field is missing."""
    if not rule.per_person:
        return touchpoint_key(rule.name, str(fields.get("touchpoint") or ""))
    key = person_key(rule.name, profile_id)
    if rule.timer is not None and rule.timer.per:
        value = fields.get(rule.timer.per)
        if value is None:
            return None
        key = f"{key}:{_key_part(value)}"
    return key


def window_key(rule: AlertRule, profile_id: str, fields: Fields) -> str | None:
    """The key of a person's window (per value of `same`); None when `same` is missing."""
    if rule.window is None or not rule.window.same:
        return profile_id
    value = fields.get(rule.window.same)
    if value is None:
        return None
    return f"{profile_id}:{_key_part(value)}"


def trigger(
    rule: AlertRule,
    owners: Owners,
    event: ev.TouchpointEvent,
    fields: Fields,
    profile_id: str,
    now_ms: int,
) -> Trigger | None:
    """The Trigger of `rule` for the event (None when its dedup key cannot be made)."""
    key = dedup_key(rule, profile_id, fields)
    if key is None:
        return None
    severity = rule.severity(fields)
    team = owners.route(rule.name, rule.kind, event.touchpoint, rule.team)
    sla_due_ms = None
    if rule.timer is not None:
        sla_due_ms = (occurred_ms(event) or now_ms) + int(rule.timer.sla_s * 1000)
    return Trigger(
        rule=rule.name,
        kind=rule.kind,
        dedup_key=key,
        severity=severity,
        team=team.name,
        summary=rule.describe(fields)[:500],
        profile_id=profile_id if rule.per_person else "",
        touchpoint=event.touchpoint,
        evidence=evidence(event, fields),
        now_ms=now_ms,
        escalate_after_s=team.escalate_after_s(severity),
        groups_with=rule.groups_with,
        sla_due_ms=sla_due_ms,
    )


# --- spikes clearing ------------------------------------------------------------------------

HOLD, CLEAR, STILL = "hold", "clear", "still"


def spike_step(
    count: int, threshold: float, below_since_ms: int | None, now_ms: int, clear_hold_s: float
) -> tuple[str, int | None]:
    """What an open spike does at `now_ms`: `still` spiking (count at or above the
    threshold that opened it; the below-since mark is dropped), `hold` (below since the
    returned time, not yet for `clear_hold_s`) or `clear`."""
    if count >= threshold:
        return STILL, None
    since = now_ms if below_since_ms is None else below_since_ms
    if now_ms - since >= clear_hold_s * 1000:
        return CLEAR, since
    return HOLD, since
