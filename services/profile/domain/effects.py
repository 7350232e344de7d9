"""What one touchpoint event does to a profile, as generic operations (pure).

`effects_of(event)` turns an event into operations on the stored aggregates (see
`state.py` for the layout) plus signals for the change-event outbox. The Redis apply
script only interprets these operations, so every metric's definition lives here; what
counts as a negative experience (detractor, satisfied CSAT, late delivery, negative
sentiment...) is decided by `services.common.experience`, shared with the other services.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev

from services.common.experience import (
    ces_on_seven,
    csat_on_five,
    is_failed_delivery,
    is_late_delivery,
    is_negative_message,
    is_satisfied_csat,
    nps_category,
    on_scale,
)
from services.profile.domain.codec import (
    COMPLAINTS,
    CONSENT,
    CONTACTS,
    INCIDENTS,
    TOUCHPOINTS,
    TRAITS,
    encode_complaint,
    encode_consent,
    encode_contact,
    encode_incident,
)
from services.profile.domain.state import decay_weight

Op = list[Any]

CHANNEL_NAMES = {
    v.number: v.name.removeprefix("CHANNEL_").lower() for v in ev.Channel.DESCRIPTOR.values
}
STAGE_NAMES = {
    v.number: v.name.removeprefix("JOURNEY_STAGE_").lower()
    for v in ev.JourneyStage.DESCRIPTOR.values
}
COMPLAINT_LIFECYCLE = {
    ev.Complaint.STATUS_OPENED: 1,
    ev.Complaint.STATUS_UPDATED: 2,
    ev.Complaint.STATUS_ESCALATED: 3,
    ev.Complaint.STATUS_RESOLVED: 4,
}
INCIDENT_LIFECYCLE = {
    ev.ExperienceIncident.STATE_OPENED: 1,
    ev.ExperienceIncident.STATE_ACKNOWLEDGED: 2,
    ev.ExperienceIncident.STATE_RESOLVED: 3,
}


@dataclass
class Effects:
    ops: list[Op] = field(default_factory=list)
    # (kind, payload) pairs for the change-event outbox, written only if the event is new.
    signals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def add(self, name: str, amount: float = 1) -> None:
        self.ops.append(["c", name, amount])

    def minimum(self, name: str, value: float) -> None:
        self.ops.append(["mn", name, value])

    def maximum(self, name: str, value: float) -> None:
        self.ops.append(["mx", name, value])

    def latest(self, name: str, value: str) -> None:
        self.ops.append(["l", name, value])

    def latest_in(self, sub: str, key: str, value: str) -> None:
        self.ops.append(["h", sub, key, value])

    def count_in(self, sub: str, key: str, amount: int = 1) -> None:
        self.ops.append(["hc", sub, key, amount])

    def member(self, sub: str, member: str) -> None:
        self.ops.append(["z", sub, member])

    def decayed(self, metric: str, value: float, ts_ms: int) -> None:
        weight = decay_weight(metric, ts_ms)
        self.add(f"{metric}.sw", weight)
        self.add(f"{metric}.swx", weight * value)

    def signal(self, kind: str, **payload: Any) -> None:
        self.signals.append((kind, payload))


def money(m: ev.Money) -> float:
    return m.units + m.nanos / 1e9


def timestamp_ms(event: ev.TouchpointEvent) -> int:
    return event.occurred_at.seconds * 1000 + event.occurred_at.nanos // 1_000_000


def effects_of(event: ev.TouchpointEvent) -> Effects:
    ts = timestamp_ms(event)
    fx = Effects()
    kind = event.WhichOneof("payload") or "unknown"
    fx.add("events")
    fx.add(f"ch.{CHANNEL_NAMES.get(event.channel, 'other')}")
    fx.add(f"type.{kind}")
    # Touchpoints are many and open-ended: counted in their own hash, not the profile's.
    fx.count_in(TOUCHPOINTS, event.touchpoint)
    fx.minimum("first_seen", ts)
    fx.maximum("last_seen", ts)
    fx.latest("stage", STAGE_NAMES.get(event.journey_stage, "unspecified"))
    fx.latest("channel", CHANNEL_NAMES.get(event.channel, "other"))
    fx.latest("u.activity", event.event_id)
    handler = _HANDLERS.get(kind)
    if handler is not None:
        handler(fx, event, ts)
    return fx


def _order_placed(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    fx.add("orders")
    fx.add("revenue", money(e.order_placed.total))
    fx.add("discount", money(e.order_placed.discount))
    fx.minimum("first_order_at", ts)
    fx.maximum("last_order_at", ts)
    fx.latest("currency", e.order_placed.total.currency_code)
    fx.latest("u.commerce", e.event_id)


def _order_cancelled(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    fx.add("cancellations")
    fx.add("refunds", money(e.order_cancelled.refunded))
    fx.latest("u.commerce", e.event_id)


def _order_returned(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    fx.add("returns")
    fx.add("refunds", money(e.order_returned.refunded))
    fx.latest("u.commerce", e.event_id)


def _payment_failed(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    fx.add("payment_failures")
    fx.maximum("last_payment_failure_at", ts)
    fx.latest("u.commerce", e.event_id)


def _delivery_update(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    d = e.delivery_update
    if d.status == ev.DeliveryUpdate.STATUS_DELIVERED:
        fx.add("deliveries")
        if is_late_delivery(d):
            fx.add("late_deliveries")
            fx.maximum("last_delivery_problem_at", ts)
        else:
            fx.maximum("last_delivery_ok_at", ts)
    elif is_failed_delivery(d):
        fx.add("failed_deliveries")
        fx.maximum("last_delivery_problem_at", ts)
    fx.latest("u.commerce", e.event_id)


def _support_contact(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    s = e.support_contact
    fx.add("support_contacts")
    if not s.resolved:
        fx.add("support_unresolved")
    fx.add("support_wait_s", s.wait_time.ToTimedelta().total_seconds())
    fx.maximum("last_contact_at", ts)
    fx.member(CONTACTS, encode_contact(s.contact_id, s.reason, s.resolved))
    fx.latest("u.support", e.event_id)


def _survey_response(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    s = e.survey_response
    fx.latest("u.cx", e.event_id)
    if s.metric == ev.SurveyResponse.METRIC_CSAT:
        on_five = csat_on_five(s)
        fx.add("csat.count")
        if is_satisfied_csat(s):
            fx.add("csat.satisfied")
        fx.decayed("csat", on_five, ts)
        fx.latest("csat", f"{on_five:.2f}")
    elif s.metric == ev.SurveyResponse.METRIC_NPS:
        fx.add("nps.count")
        fx.latest("nps", str(s.score))
        category = nps_category(s.score)
        if category == "promoter":
            fx.add("nps.promoters")
        elif category == "detractor":
            fx.add("nps.detractors")
            fx.signal("nps_detractor", score=s.score, event_id=e.event_id, comment=s.comment[:200])
    elif s.metric == ev.SurveyResponse.METRIC_CES:
        on_seven = ces_on_seven(s)
        fx.add("ces.count")
        fx.add("ces.sum", on_seven)
        fx.latest("ces", f"{on_seven:.2f}")


def _review(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    r = e.review
    fx.add("reviews")
    fx.add("review.sum", on_scale(r.rating, 1, r.rating_max or 5, 1, 5))
    fx.latest("u.cx", e.event_id)


def _complaint(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    c = e.complaint
    status = ev.Complaint.Status.Name(c.status).removeprefix("STATUS_").lower()
    severity = ev.Complaint.Severity.Name(c.severity).removeprefix("SEVERITY_").lower()
    # The lifecycle rank leads the value: two updates in the same millisecond resolve to
    # the later state (resolved over escalated over updated over opened).
    rank = COMPLAINT_LIFECYCLE.get(c.status, 0)
    fx.latest_in(COMPLAINTS, c.complaint_id, encode_complaint(rank, status, severity, c.category))
    fx.latest("u.cx", e.event_id)
    if c.status == ev.Complaint.STATUS_OPENED:
        fx.add("complaints")
        fx.signal(
            "complaint_opened",
            complaint_id=c.complaint_id,
            severity=severity,
            category=c.category,
            event_id=e.event_id,
        )
    elif c.status == ev.Complaint.STATUS_RESOLVED:
        fx.signal("complaint_closed", complaint_id=c.complaint_id, event_id=e.event_id)


def _experience_incident(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    """An alerts incident about the person changed (the alerts notifier publishes one per
    change): its latest state, by the change's time, is the incident's entry."""
    i = e.experience_incident
    state = ev.ExperienceIncident.State.Name(i.state).removeprefix("STATE_").lower()
    rank = INCIDENT_LIFECYCLE.get(i.state, 0)
    fx.latest_in(INCIDENTS, i.incident_id, encode_incident(rank, state, i.severity, i.rule))
    fx.latest("u.cx", e.event_id)


def _conversation_message(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    m = e.conversation_message
    if m.direction != ev.ConversationMessage.DIRECTION_INBOUND:
        return
    fx.add("messages")
    fx.decayed("sentiment", m.sentiment, ts)
    if is_negative_message(m):
        fx.add("negative_messages")
    fx.latest("u.cx", e.event_id)


def _message_engagement(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    action = ev.MessageEngagement.Action.Name(e.message_engagement.action)
    fx.add(f"msg.{action.removeprefix('ACTION_').lower()}")
    fx.latest("u.engagement", e.event_id)


def _app_error(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    fx.add("app_errors")
    if e.app_error.fatal:
        fx.add("app_errors.fatal")


def _identify(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    for key, value in e.identify.traits.items():
        fx.latest_in(TRAITS, key, json.dumps(_plain(value), separators=(",", ":")))
    if e.identify.traits:
        fx.latest("u.traits", e.event_id)


def _consent_change(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    c = e.consent_change
    purpose = ev.ConsentChange.Purpose.Name(c.purpose).removeprefix("PURPOSE_").lower()
    fx.latest_in(CONSENT, purpose, encode_consent(c.granted, e.source_system, e.event_id))
    fx.latest("u.consent", e.event_id)


def _offer_outcome(fx: Effects, e: ev.TouchpointEvent, ts: int) -> None:
    outcome = ev.OfferOutcome.Outcome.Name(e.offer_outcome.outcome)
    fx.add(f"offer.{outcome.removeprefix('OUTCOME_').lower()}")


def _plain(value: Any) -> Any:
    """Struct values as plain JSON types (protobuf Struct lists and maps included)."""
    from google.protobuf.struct_pb2 import ListValue, Struct

    if isinstance(value, Struct):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, ListValue):
        return [_plain(v) for v in value]
    return value


_HANDLERS = {
    "order_placed": _order_placed,
    "order_cancelled": _order_cancelled,
    "order_returned": _order_returned,
    "payment_failed": _payment_failed,
    "delivery_update": _delivery_update,
    "support_contact": _support_contact,
    "survey_response": _survey_response,
    "review": _review,
    "complaint": _complaint,
    "experience_incident": _experience_incident,
    "conversation_message": _conversation_message,
    "message_engagement": _message_engagement,
    "app_error": _app_error,
    "identify": _identify,
    "consent_change": _consent_change,
    "offer_outcome": _offer_outcome,
}
