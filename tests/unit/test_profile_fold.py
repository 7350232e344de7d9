"""The reference fold: op semantics, deduplication, identities and order independence."""

from __future__ import annotations

import random

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.profile.adapters.layout import contact_member as member_of
from services.profile.adapters.layout import state_to_redis
from services.profile.domain.effects import Effects
from services.profile.domain.fold import Folder, apply_effects, differences, fold
from services.profile.domain.state import Contact, Latest, ProfileState
from tests.factories import (
    at,
    complaint,
    consent,
    contact,
    csat,
    event,
    home_page_view,
    identify,
    journey,
    order,
)


def test_fold_sums_minima_maxima_and_latest() -> None:
    state = fold([home_page_view(0), order(2, 50, "o-1"), order(1, 30.5, "o-2"), csat(3, 4)])
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
            home_page_view(0, identities=ev.Identities(anonymous_id="anon-1")),
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
