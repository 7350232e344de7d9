"""Events for tests, in one place; each test changes what it is about.

By the clock they are on:
- a fixed calendar (`at(day)`: days after 2026-03-01) with counted ids, for the pure
  domain (fold, derive, segments, views, pipeline), whose figures depend on dates:
  `event` and one builder per payload (`order`, `nps`, `complaint`, ..., `journey`);
- the real clock, with unique ids and identities, for what ingestion and the stack
  judge against their own clock: `page_view` and `survey` (a second ago), the `recent_*`
  builders (minutes after `RECENT`, three days ago, identities as keywords) for journeys
  through the stack, and `person_events`, one person's stream of `EVENTS_PER_PERSON`
  events for the recovery and fault tests.
"""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev

# --- On a fixed calendar ----------------------------------------------------------------

DAY_MS = 86_400_000
BASE_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
_ids = itertools.count(1)


def at(day: float) -> int:
    """Milliseconds of `day` days after the tests' base date (2026-03-01)."""
    return BASE_MS + round(day * DAY_MS)


def event(
    day: float,
    *,
    customer_id: str = "cust-1",
    channel: ev.Channel.ValueType = ev.CHANNEL_WEB,
    stage: ev.JourneyStage.ValueType = ev.JOURNEY_STAGE_USAGE,
    event_id: str | None = None,
    identities: ev.Identities | None = None,
    **payload: Any,
) -> ev.TouchpointEvent:
    e = ev.TouchpointEvent(
        event_id=event_id or f"evt-{next(_ids)}",
        channel=channel,
        touchpoint="tests.journey",
        journey_stage=stage,
        source_system="tests",
        identities=identities or ev.Identities(customer_id=customer_id),
        **payload,
    )
    e.occurred_at.FromMilliseconds(at(day))
    return e


def money(amount: float, currency: str = "EUR") -> ev.Money:
    units = int(amount)
    return ev.Money(currency_code=currency, units=units, nanos=round((amount - units) * 1e9))


def home_page_view(day: float, **kw: Any) -> ev.TouchpointEvent:
    return event(day, stage=ev.JOURNEY_STAGE_AWARENESS, page_view=ev.PageView(page="/"), **kw)


def product_view(day: float, **kw: Any) -> ev.TouchpointEvent:
    return event(
        day,
        stage=ev.JOURNEY_STAGE_CONSIDERATION,
        product_view=ev.ProductView(product_id="sku-1", price=money(40)),
        **kw,
    )


def order(day: float, total: float, order_id: str = "o-1", **kw: Any) -> ev.TouchpointEvent:
    return event(
        day,
        stage=ev.JOURNEY_STAGE_PURCHASE,
        order_placed=ev.OrderPlaced(order_id=order_id, total=money(total)),
        **kw,
    )


def returned(day: float, refunded: float, order_id: str = "o-1") -> ev.TouchpointEvent:
    return event(day, order_returned=ev.OrderReturned(order_id=order_id, refunded=money(refunded)))


def cancelled(day: float, refunded: float, order_id: str = "o-1") -> ev.TouchpointEvent:
    return event(
        day, order_cancelled=ev.OrderCancelled(order_id=order_id, refunded=money(refunded))
    )


def payment_failed(day: float, order_id: str = "o-9") -> ev.TouchpointEvent:
    return event(
        day,
        stage=ev.JOURNEY_STAGE_PURCHASE,
        payment_failed=ev.PaymentFailed(order_id=order_id, failure_code="card_declined"),
    )


def delivered(day: float, *, late: bool = False, order_id: str = "o-1") -> ev.TouchpointEvent:
    update = ev.DeliveryUpdate(order_id=order_id, status=ev.DeliveryUpdate.STATUS_DELIVERED)
    update.actual_at.FromMilliseconds(at(day))
    update.promised_at.FromMilliseconds(at(day - 1 if late else day + 1))
    return event(day, delivery_update=update)


def delivery_failed(day: float, order_id: str = "o-1") -> ev.TouchpointEvent:
    return event(
        day,
        delivery_update=ev.DeliveryUpdate(
            order_id=order_id, status=ev.DeliveryUpdate.STATUS_FAILED
        ),
    )


def delivery_status(
    day: float, status: ev.DeliveryUpdate.Status.ValueType, order_id: str = "o-1"
) -> ev.TouchpointEvent:
    """Any delivery update without a promised time (delivered: at `day`)."""
    update = ev.DeliveryUpdate(order_id=order_id, status=status)
    if status == ev.DeliveryUpdate.STATUS_DELIVERED:
        update.actual_at.FromMilliseconds(at(day))
    return event(day, delivery_update=update)


def _survey(
    day: float, metric: ev.SurveyResponse.Metric.ValueType, score: int
) -> ev.TouchpointEvent:
    return event(
        day,
        channel=ev.CHANNEL_EMAIL,
        stage=ev.JOURNEY_STAGE_SUPPORT,
        survey_response=ev.SurveyResponse(survey_id="s-1", metric=metric, score=score),
    )


def nps(day: float, score: int) -> ev.TouchpointEvent:
    return _survey(day, ev.SurveyResponse.METRIC_NPS, score)


def csat(day: float, score: int) -> ev.TouchpointEvent:
    return _survey(day, ev.SurveyResponse.METRIC_CSAT, score)


def ces(day: float, score: int) -> ev.TouchpointEvent:
    return _survey(day, ev.SurveyResponse.METRIC_CES, score)


def review(day: float, rating: int) -> ev.TouchpointEvent:
    return event(day, review=ev.Review(review_id=f"r-{day}", product_id="sku-1", rating=rating))


def complaint(
    day: float,
    complaint_id: str,
    status: ev.Complaint.Status.ValueType,
    severity: ev.Complaint.Severity.ValueType = ev.Complaint.SEVERITY_HIGH,
) -> ev.TouchpointEvent:
    return event(
        day,
        channel=ev.CHANNEL_PHONE,
        stage=ev.JOURNEY_STAGE_SUPPORT,
        complaint=ev.Complaint(
            complaint_id=complaint_id, status=status, severity=severity, category="delivery"
        ),
    )


def incident(
    day: float,
    incident_id: str,
    state: ev.ExperienceIncident.State.ValueType,
    *,
    severity: str = "critical",
    rule: str = "detractor_nps",
    **kw: Any,
) -> ev.TouchpointEvent:
    """An alerts incident about the person changed, as the alerts notifier reports it."""
    e = event(
        day,
        channel=ev.CHANNEL_OTHER,
        stage=ev.JOURNEY_STAGE_SUPPORT,
        experience_incident=ev.ExperienceIncident(
            incident_id=incident_id,
            rule=rule,
            state=state,
            severity=severity,
            incident_touchpoint="survey.nps",
        ),
        **kw,
    )
    e.touchpoint, e.source_system = "alerts.incident", "cx-alerts"
    return e


def contact(
    day: float, contact_id: str, reason: str, *, resolved: bool = True
) -> ev.TouchpointEvent:
    return event(
        day,
        channel=ev.CHANNEL_PHONE,
        stage=ev.JOURNEY_STAGE_SUPPORT,
        support_contact=ev.SupportContact(contact_id=contact_id, reason=reason, resolved=resolved),
    )


def message(day: float, sentiment: float) -> ev.TouchpointEvent:
    return event(
        day,
        channel=ev.CHANNEL_CHAT,
        conversation_message=ev.ConversationMessage(
            conversation_id="conv-1",
            direction=ev.ConversationMessage.DIRECTION_INBOUND,
            text="hello",
            sentiment=sentiment,
        ),
    )


def engagement(day: float, action: ev.MessageEngagement.Action.ValueType) -> ev.TouchpointEvent:
    return event(
        day,
        channel=ev.CHANNEL_EMAIL,
        message_engagement=ev.MessageEngagement(message_id="m-1", action=action),
    )


def consent(
    day: float, purpose: ev.ConsentChange.Purpose.ValueType, *, granted: bool
) -> ev.TouchpointEvent:
    return event(day, consent_change=ev.ConsentChange(purpose=purpose, granted=granted))


def identify(
    day: float, *, identities: ev.Identities | None = None, **traits: Any
) -> ev.TouchpointEvent:
    e = event(day, identities=identities, identify=ev.Identify(method=ev.Identify.METHOD_LOGIN))
    e.identify.traits.update(traits)
    return e


def journey() -> list[ev.TouchpointEvent]:
    """A realistic mixed journey with ties, duplicates and out-of-order updates."""
    first = home_page_view(0, identities=ev.Identities(anonymous_id="anon-1"))
    tie_a = event(5, channel=ev.CHANNEL_APP, page_view=ev.PageView(page="/a"))
    tie_b = event(5, channel=ev.CHANNEL_WEB, page_view=ev.PageView(page="/b"))
    tie_b.occurred_at.CopyFrom(tie_a.occurred_at)
    events = [
        first,
        product_view(1, identities=ev.Identities(anonymous_id="anon-1", email="ann@example.org")),
        identify(2, plan="basic", first_name="Ann"),
        order(3, 120.5, "o-1"),
        delivered(6, late=True),
        tie_a,
        tie_b,
        returned(8, 20.25),
        csat(9, 2),
        contact(10, "k-1", "delivery.late", resolved=False),
        contact(11, "k-1", "delivery.late", resolved=True),
        contact(12, "k-2", "delivery.late", resolved=True),
        complaint(12, "c-1", ev.Complaint.STATUS_OPENED),
        complaint(14, "c-1", ev.Complaint.STATUS_RESOLVED),
        nps(15, 4),
        message(15, -0.6),
        message(16, 0.4),
        ces(16, 5),
        review(17, 2),
        consent(18, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=True),
        consent(19, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=False),
        identify(20, plan="plus"),
        order(21, 80, "o-2", identities=ev.Identities(customer_id="cust-1", phone="+447700900123")),
        payment_failed(22),
        engagement(23, ev.MessageEngagement.ACTION_UNSUBSCRIBE),
        csat(24, 5),
        nps(25, 9),
    ]
    # The latest event ties with another one: the greater values win in any order.
    last_tie = event(25, channel=ev.CHANNEL_APP, page_view=ev.PageView(page="/thanks"))
    last_tie.occurred_at.CopyFrom(events[-1].occurred_at)
    return [*events, last_tie, events[3], events[9]]  # and two redeliveries


# --- On the real clock ------------------------------------------------------------------


def page_view(**identities: str) -> ev.TouchpointEvent:
    event = ev.TouchpointEvent(
        event_id=f"test-{uuid.uuid4()}",
        channel=ev.CHANNEL_WEB,
        touchpoint="catalogue.product",
        journey_stage=ev.JOURNEY_STAGE_CONSIDERATION,
        source_system="tests",
        identities=ev.Identities(**(identities or {"anonymous_id": f"anon-{uuid.uuid4()}"})),
        page_view=ev.PageView(page="/products/42", url="https://shop.example/products/42"),
    )
    event.occurred_at.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    return event


def survey(
    metric: ev.SurveyResponse.Metric.ValueType, score: int, **identities: str
) -> ev.TouchpointEvent:
    event = page_view(**identities)
    event.touchpoint = "survey.post_contact"
    event.channel = ev.CHANNEL_EMAIL
    event.journey_stage = ev.JOURNEY_STAGE_SUPPORT
    event.survey_response.CopyFrom(ev.SurveyResponse(survey_id="s1", metric=metric, score=score))
    return event


# The start of the recent journeys: three days ago, so every window the profile keeps
# (contacts in 7 days, recency) holds them.
RECENT = datetime.now(UTC) - timedelta(days=3)


def recent_event(minutes: float, **identities: str) -> ev.TouchpointEvent:
    e = ev.TouchpointEvent(
        event_id=f"flow-{uuid.uuid4()}",
        identities=ev.Identities(**identities),
        channel=ev.CHANNEL_WEB,
        touchpoint="catalogue.product",
        journey_stage=ev.JOURNEY_STAGE_CONSIDERATION,
        source_system="tests",
    )
    e.occurred_at.FromDatetime(RECENT + timedelta(minutes=minutes))
    return e


def recent_page(minutes: float, **ids: str) -> ev.TouchpointEvent:
    e = recent_event(minutes, **ids)
    e.page_view.page = "/p/1"
    return e


def recent_order(minutes: float, amount: int, **ids: str) -> ev.TouchpointEvent:
    e = recent_event(minutes, **ids)
    e.channel, e.touchpoint = ev.CHANNEL_APP, "checkout.order"
    e.journey_stage = ev.JOURNEY_STAGE_PURCHASE
    e.order_placed.CopyFrom(
        ev.OrderPlaced(
            order_id=f"o-{uuid.uuid4()}", total=ev.Money(currency_code="EUR", units=amount)
        )
    )
    return e


def recent_nps(minutes: float, score: int, **ids: str) -> ev.TouchpointEvent:
    e = recent_event(minutes, **ids)
    e.channel, e.touchpoint = ev.CHANNEL_EMAIL, "survey.nps"
    e.journey_stage = ev.JOURNEY_STAGE_ADVOCACY
    e.survey_response.CopyFrom(
        ev.SurveyResponse(survey_id="nps-q4", metric=ev.SurveyResponse.METRIC_NPS, score=score)
    )
    return e


def recent_complaint(minutes: float, **ids: str) -> ev.TouchpointEvent:
    e = recent_event(minutes, **ids)
    e.channel, e.touchpoint = ev.CHANNEL_PHONE, "support.complaint"
    e.journey_stage = ev.JOURNEY_STAGE_SUPPORT
    e.complaint.CopyFrom(
        ev.Complaint(
            complaint_id=f"cmp-{uuid.uuid4()}",
            status=ev.Complaint.STATUS_OPENED,
            severity=ev.Complaint.SEVERITY_HIGH,
            category="delivery",
        )
    )
    return e


def recent_incident(
    minutes: float,
    incident_id: str,
    state: ev.ExperienceIncident.State.ValueType,
    severity: str = "critical",
    **ids: str,
) -> ev.TouchpointEvent:
    """An alerts incident about the person changed, as the alerts notifier reports it."""
    e = recent_event(minutes, **ids)
    e.channel, e.touchpoint, e.source_system = ev.CHANNEL_OTHER, "alerts.incident", "cx-alerts"
    e.journey_stage = ev.JOURNEY_STAGE_SUPPORT
    e.experience_incident.CopyFrom(
        ev.ExperienceIncident(
            incident_id=incident_id,
            rule="detractor_nps",
            state=state,
            severity=severity,
            incident_touchpoint="survey.nps",
        )
    )
    return e


def recent_payment_failure(minutes: float, **ids: str) -> ev.TouchpointEvent:
    e = recent_event(minutes, **ids)
    e.channel, e.touchpoint = ev.CHANNEL_WEB, "checkout.payment"
    e.journey_stage = ev.JOURNEY_STAGE_PURCHASE
    e.payment_failed.CopyFrom(
        ev.PaymentFailed(
            order_id=f"o-{uuid.uuid4()}",
            failure_code="card_declined",
            amount=ev.Money(currency_code="EUR", units=59),
        )
    )
    return e


def recent_delivery(minutes: float, *, late: bool, **ids: str) -> ev.TouchpointEvent:
    """Delivered `minutes` after RECENT, an hour after or before its promised time."""
    e = recent_event(minutes, **ids)
    e.channel, e.touchpoint = ev.CHANNEL_OTHER, "logistics.delivery"
    e.journey_stage = ev.JOURNEY_STAGE_PURCHASE
    actual = RECENT + timedelta(minutes=minutes)
    update = ev.DeliveryUpdate(
        order_id=f"o-{uuid.uuid4()}", status=ev.DeliveryUpdate.STATUS_DELIVERED
    )
    update.actual_at.FromDatetime(actual)
    update.promised_at.FromDatetime(actual + timedelta(hours=-1 if late else 1))
    e.delivery_update.CopyFrom(update)
    return e


def recent_consent(
    minutes: float, purpose: ev.ConsentChange.Purpose.ValueType, granted: bool, **ids: str
) -> ev.TouchpointEvent:
    e = recent_event(minutes, **ids)
    e.channel, e.touchpoint = ev.CHANNEL_EMAIL, "preferences.consent"
    e.journey_stage = ev.JOURNEY_STAGE_USAGE
    e.consent_change.CopyFrom(ev.ConsentChange(purpose=purpose, granted=granted))
    return e


def recent_login(minutes: float, **ids: str) -> ev.TouchpointEvent:
    e = recent_event(minutes, **ids)
    e.touchpoint = "account.login"
    e.identify.method = ev.Identify.METHOD_LOGIN
    e.identify.traits.update({"first_name": "Ada", "plan": "gold"})
    return e


EVENTS_PER_PERSON = 35
# The surveys of person_events: metric and scale.
SURVEY_SCALES = {
    "nps": (ev.SurveyResponse.METRIC_NPS, 0, 10),
    "csat": (ev.SurveyResponse.METRIC_CSAT, 1, 5),
}


def person_events(rng: random.Random, run: str, i: int) -> list[ev.TouchpointEvent]:
    anon, customer, email = f"{run}-a{i}", f"{run}-c{i}", f"{run}-{i}@example.com"
    start = datetime.now(UTC) - timedelta(days=20) + timedelta(minutes=i)
    out = []
    for n in range(EVENTS_PER_PERSON):
        e = ev.TouchpointEvent(
            event_id=f"{run}-{i}-{n}",
            channel=ev.CHANNEL_WEB,
            touchpoint="site.page",
            journey_stage=ev.JOURNEY_STAGE_CONSIDERATION,
            source_system="recovery-test",
        )
        e.occurred_at.FromDatetime(start + timedelta(hours=n))
        if n < 5:
            e.identities.anonymous_id = anon
            e.page_view.page = f"/p/{n}"
        elif n == 5:
            e.identities.MergeFrom(
                ev.Identities(anonymous_id=anon, customer_id=customer, email=email)
            )
            e.identify.method = ev.Identify.METHOD_LOGIN
        else:
            e.identities.customer_id = customer
            kind = rng.choice(["order", "nps", "csat", "contact", "message", "page"])
            if kind == "order":
                e.order_placed.CopyFrom(
                    ev.OrderPlaced(
                        order_id=f"o-{n}",
                        total=ev.Money(currency_code="EUR", units=rng.randint(5, 300)),
                    )
                )
            elif kind in SURVEY_SCALES:
                metric, lowest, highest = SURVEY_SCALES[kind]
                e.survey_response.CopyFrom(
                    ev.SurveyResponse(
                        survey_id=kind, metric=metric, score=rng.randint(lowest, highest)
                    )
                )
            elif kind == "contact":
                e.support_contact.CopyFrom(
                    ev.SupportContact(
                        contact_id=f"k-{n}",
                        reason=rng.choice(["delivery.late", "billing"]),
                        resolved=rng.random() < 0.5,
                    )
                )
            elif kind == "message":
                e.conversation_message.CopyFrom(
                    ev.ConversationMessage(
                        conversation_id=f"m-{n}",
                        direction=ev.ConversationMessage.DIRECTION_INBOUND,
                        sentiment=round(rng.uniform(-1, 1), 2),
                    )
                )
            else:
                e.page_view.page = "/account"
        out.append(e)
    return out


def nested_struct(depth: int) -> dict[str, Any]:
    """A struct (for `properties`) nested `depth` levels deep."""
    root: dict[str, Any] = {}
    current = root
    for _ in range(depth - 1):
        current["k"] = {}
        current = current["k"]
    current["leaf"] = 1
    return root
