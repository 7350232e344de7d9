"""The reference fold: op semantics, deduplication, identities and order independence.

The event builders here are shared by the derive and segment tests.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.profile.adapters.layout import contact_member as member_of
from services.profile.adapters.layout import state_to_redis
from services.profile.domain.effects import Effects
from services.profile.domain.fold import Folder, apply_effects, differences, fold
from services.profile.domain.state import Contact, Latest, ProfileState

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


def page_view(day: float, **kw: Any) -> ev.TouchpointEvent:
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


def survey(
    day: float, metric: ev.SurveyResponse.Metric.ValueType, score: int
) -> ev.TouchpointEvent:
    return event(
        day,
        channel=ev.CHANNEL_EMAIL,
        stage=ev.JOURNEY_STAGE_SUPPORT,
        survey_response=ev.SurveyResponse(survey_id="s-1", metric=metric, score=score),
    )


def nps(day: float, score: int) -> ev.TouchpointEvent:
    return survey(day, ev.SurveyResponse.METRIC_NPS, score)


def csat(day: float, score: int) -> ev.TouchpointEvent:
    return survey(day, ev.SurveyResponse.METRIC_CSAT, score)


def ces(day: float, score: int) -> ev.TouchpointEvent:
    return survey(day, ev.SurveyResponse.METRIC_CES, score)


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
    first = page_view(0, identities=ev.Identities(anonymous_id="anon-1"))
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


# ---------------------------------------------------------------------------------------


def test_fold_sums_minima_maxima_and_latest() -> None:
    state = fold([page_view(0), order(2, 50, "o-1"), order(1, 30.5, "o-2"), csat(3, 4)])
    assert state.count("events") == 4
    assert state.count("orders") == 2
    assert state.sum("revenue") == pytest.approx(80.5)
    assert state.count("ch.web") == 3
    assert state.count("ch.email") == 1
    assert state.count("type.order_placed") == 2
    assert state.minima["first_seen"] == at(0)
    assert state.minima["first_order_at"] == at(1)
    assert state.maxima["last_order_at"] == at(2)
    assert state.maxima["last_seen"] == at(3)
    assert state.latest["channel"] == Latest("email", at(3))
    assert state.latest["stage"] == Latest("support", at(3))
    assert state.latest["csat"] == Latest("4.00", at(3))
    assert state.latest["currency"] == Latest("EUR", at(2))


def test_latest_is_by_event_time_not_arrival() -> None:
    newer, older = identify(10, plan="plus"), identify(2, plan="basic", name="Ann")
    state = fold([newer, older])
    assert state.traits["plan"] == Latest('"plus"', at(10))
    assert state.traits["name"] == Latest('"Ann"', at(2))
    assert state.latest["u.traits"] == Latest(newer.event_id, at(10))


def test_latest_ties_break_on_the_greater_value_whatever_the_order() -> None:
    a = event(1, channel=ev.CHANNEL_APP, page_view=ev.PageView(page="/"))
    b = event(1, channel=ev.CHANNEL_WEB, page_view=ev.PageView(page="/"))
    for events in ([a, b], [b, a]):
        assert fold(events).latest["channel"] == Latest("web", at(1))


def test_the_same_event_id_applies_once() -> None:
    o = order(1, 100)
    c = contact(2, "k-1", "billing")
    state = fold([o, c, o, c, o])
    assert state.count("orders") == 1
    assert state.sum("revenue") == pytest.approx(100)
    assert state.count("events") == 2
    assert len(state.contacts) == 1

    folder = Folder()
    assert folder.add(o) is True
    assert folder.add(o) is False


def test_identities_of_every_event_are_collected() -> None:
    state = fold(
        [
            page_view(0, identities=ev.Identities(anonymous_id="anon-1")),
            identify(1, identities=ev.Identities(anonymous_id="anon-1", email="a@example.org")),
            order(2, 10, identities=ev.Identities(customer_id="c-9", phone="+447700900123")),
        ],
        profile_id="prof-1",
    )
    assert state.profile_id == "prof-1"
    assert state.identities == {
        ("a", "anon-1"),
        ("e", "a@example.org"),
        ("c", "c-9"),
        ("p", "+447700900123"),
    }


def test_contacts_keep_the_latest_score_of_a_member_and_parse_it() -> None:
    state = ProfileState("p")
    fx = Effects()
    fx.member("contacts", "k-1|billing|0")
    apply_effects(state, fx, at(5))
    apply_effects(state, fx, at(3))  # older score: ignored (ZADD GT)
    assert state.contacts == [Contact(at(5), "k-1", "billing", False)]
    apply_effects(state, fx, at(7))
    assert state.contacts == [Contact(at(7), "k-1", "billing", False)]

    state = fold([contact(4, "k-2", "delivery.late"), contact(2, "k-3", "billing", resolved=False)])
    assert state.contacts == [
        Contact(at(2), "k-3", "billing", False),
        Contact(at(4), "k-2", "delivery.late", True),
    ]
    assert member_of(state.contacts[1]) == "k-2|delivery.late|1"


def test_sub_maps_hold_complaints_and_consent() -> None:
    state = fold(
        [
            complaint(3, "c-1", ev.Complaint.STATUS_RESOLVED),
            complaint(1, "c-1", ev.Complaint.STATUS_OPENED),
            consent(2, ev.ConsentChange.PURPOSE_MARKETING_SMS, granted=True),
        ]
    )
    assert state.complaints["c-1"] == Latest("4|resolved|high|delivery", at(3))
    assert state.consent["marketing_sms"].value.startswith("1|tests|")
    assert state.count("complaints") == 1


def test_unknown_ops_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        apply_effects(ProfileState("p"), Effects(ops=[["zz", "x", 1]]), 0)
    with pytest.raises(ValueError, match="unknown sub-map"):
        apply_effects(ProfileState("p"), Effects(ops=[["h", "secrets", "k", "v"]]), 0)


def test_any_order_of_the_same_events_folds_to_the_same_state() -> None:
    events = journey()
    reference = fold(events)
    rng = random.Random(20260301)
    for _ in range(25):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert differences(reference, fold(shuffled)) == []
    # Spot checks that the journey exercised what it should.
    assert reference.count("orders") == 2
    assert reference.latest["channel"] == Latest("email", at(25))
    assert reference.complaints["c-1"].value.startswith("4|resolved|")
    assert reference.consent["marketing_email"].value.startswith("0|")
    assert reference.traits["plan"].value == '"plus"'
    assert len(reference.contacts) == 3


def test_differences_reports_what_differs_and_tolerates_float_noise() -> None:
    events = journey()
    reference = fold(events)
    copy = fold(events[::-1])
    copy.sums["revenue"] += 1e-12
    assert differences(reference, copy) == []
    copy.sums["revenue"] += 1
    copy.latest["stage"] = Latest("awareness", 0)
    copy.identities.add(("e", "other@example.org"))
    copy.contacts.pop()
    found = differences(reference, copy)
    assert any(d.startswith("sums['revenue']") for d in found)
    assert any(d.startswith("latest['stage']") for d in found)
    assert any(d.startswith("identities:") and "other@example.org" in d for d in found)
    assert any(d.startswith("contacts:") for d in found)


def test_folded_state_round_trips_through_the_redis_encoding() -> None:
    reference = fold(journey(), profile_id="p-1")
    raw = state_to_redis(reference)
    parsed = ProfileState.from_redis(
        "p-1",
        raw["main"],
        identities={f"{t}:{v}" for t, v in reference.identities},
        traits=raw["traits"],
        consent=raw["consent"],
        complaints=raw["complaints"],
        contacts={member: float(score) for member, score in raw["contacts"]},
        touchpoints=raw["touchpoints"],
    )
    assert differences(reference, parsed) == []
    assert parsed.contacts == reference.contacts


def test_one_order_folds_into_the_aggregates_its_definition_names() -> None:
    e = order(1, 10.5, event_id="ord-1", channel=ev.CHANNEL_APP)
    ts = at(1)
    # Written from the definitions (effects.py: every event, then an order), not from
    # the effects the fold applies.
    expected = ProfileState(
        "p",
        sums={
            "events": 1,
            "ch.app": 1,
            "type.order_placed": 1,
            "orders": 1,
            "revenue": 10.5,
            "discount": 0,
        },
        minima={"first_seen": ts, "first_order_at": ts},
        maxima={"last_seen": ts, "last_order_at": ts},
        latest={
            "stage": Latest("purchase", ts),
            "channel": Latest("app", ts),
            "u.activity": Latest("ord-1", ts),
            "currency": Latest("EUR", ts),
            "u.commerce": Latest("ord-1", ts),
        },
        identities={("c", "cust-1")},
        touchpoints={"tests.journey": 1},
    )
    assert differences(expected, fold([e])) == []


def test_a_contact_id_with_the_separator_keeps_its_reason_and_resolution() -> None:
    e = ev.TouchpointEvent(
        event_id="pipe-1",
        identities=ev.Identities(customer_id="c"),
        channel=ev.CHANNEL_PHONE,
        touchpoint="support.phone",
        journey_stage=ev.JOURNEY_STAGE_SUPPORT,
        source_system="tests",
        support_contact=ev.SupportContact(contact_id="a|b", reason="billing", resolved=True),
    )
    e.occurred_at.FromMilliseconds(1_800_000_000_000)
    (contact,) = fold([e]).contacts
    assert (contact.contact_id, contact.reason, contact.resolved) == ("a/b", "billing", True)
