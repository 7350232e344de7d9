"""build_profile and features_of: what callers see, from stored structures held in memory."""

from __future__ import annotations

import math

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.profile.adapters.layout import Lineage
from services.profile.adapters.reader import LoadedProfile
from services.profile.domain.segments import Condition, Segment
from services.profile.views import FeatureView, build_profile, features_of, features_response
from tests.factories import DAY_MS, at, complaint, consent, identify, nps, order, payment_failed
from tests.unit.fake_stores import stored

SEGMENTS = [
    Segment("spenders", "", all_of=(Condition("revenue", ">=", 100),)),
    Segment("vips", "", all_of=(Condition("value_tier", "==", "vip"),)),
]


def events() -> list[ev.TouchpointEvent]:
    first = identify(
        0,
        identities=ev.Identities(anonymous_id="anon-1", email="ann@example.org"),
        first_name="Ann",
        plan="basic",
    )
    return [
        first,
        consent(1, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=True),
        order(2, 120.5, "o-1"),
        nps(3, 9),
        complaint(4, "c-1", ev.Complaint.STATUS_OPENED),
    ]


def build(now_day: float = 5) -> tuple[pb.Profile, list[ev.TouchpointEvent]]:
    journey = events()
    lineage = [
        Lineage(("a", "anon-1"), journey[0].event_id, at(0), "web-frontend"),
        Lineage(("c", "cust-1"), journey[2].event_id, at(2), "shop"),
        Lineage(("e", "ann@example.org"), journey[0].event_id, 0, ""),
    ]
    loaded = LoadedProfile(stored(journey), lineage)
    return build_profile(loaded, SEGMENTS, at(now_day)), journey


def test_identity_traits_and_consent_keep_their_lineage_and_freshness() -> None:
    profile, journey = build()
    assert profile.profile_id == "p-1"
    assert profile.computed_at.ToMilliseconds() == at(5)

    anon, customer, email = profile.identities
    assert anon.identifier == pb.Identifier(type=pb.IDENTIFIER_TYPE_ANONYMOUS_ID, value="anon-1")
    assert anon.linked_by_event_id == journey[0].event_id
    assert anon.linked_at.ToMilliseconds() == at(0)
    assert anon.source_system == "web-frontend"
    assert customer.identifier == pb.Identifier(type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value="cust-1")
    assert customer.linked_at.ToMilliseconds() == at(2)
    assert email.identifier == pb.Identifier(type=pb.IDENTIFIER_TYPE_EMAIL, value="ann@example.org")
    # A link recorded without a time has none.
    assert not email.HasField("linked_at")

    assert dict(profile.traits) == {"first_name": "Ann", "plan": "basic"}
    assert profile.traits_updated.event_id == journey[0].event_id
    assert profile.traits_updated.updated_at.ToMilliseconds() == at(0)

    (marketing,) = profile.consents
    assert marketing.purpose == ev.ConsentChange.PURPOSE_MARKETING_EMAIL
    assert marketing.granted is True
    assert marketing.source_system == "tests"
    assert marketing.updated.event_id == journey[1].event_id
    assert marketing.updated.updated_at.ToMilliseconds() == at(1)


def test_activity_and_commerce_are_counted_from_the_events() -> None:
    profile, journey = build()
    a = profile.activity
    assert a.events == 5
    assert a.first_seen.ToMilliseconds() == at(0)
    assert a.last_seen.ToMilliseconds() == at(4)
    assert dict(a.events_by_channel) == {"web": 3, "email": 1, "phone": 1}
    assert dict(a.events_by_type) == {
        "identify": 1,
        "consent_change": 1,
        "order_placed": 1,
        "survey_response": 1,
        "complaint": 1,
    }
    assert dict(a.events_by_touchpoint) == {"tests.journey": 5}
    assert a.last_channel == "phone"
    assert a.updated.event_id == journey[4].event_id

    c = profile.commerce
    assert c.orders == 1
    assert c.revenue == pytest.approx(120.5)
    assert c.net_revenue == pytest.approx(120.5)
    assert c.average_order_value == pytest.approx(120.5)
    assert c.refunds == 0
    assert c.currency_code == "EUR"
    assert c.first_order_at.ToMilliseconds() == c.last_order_at.ToMilliseconds() == at(2)
    assert c.recency_days == 3
    # Recency 3 days (<= 30): 5; one order (< 2): 1; 120.5 (>= 50, < 200): 2.
    assert (c.rfm_recency, c.rfm_frequency, c.rfm_monetary) == (5, 1, 2)
    assert c.updated.event_id == journey[2].event_id
    # One order over the 6-month minimum tenure, 12 months ahead, at 120.5 each, times
    # (1 - churn risk); churn: bias -3 plus 1 for the open complaint.
    churn = 1 / (1 + math.exp(2))
    assert c.clv_historic == pytest.approx(120.5)
    assert c.clv_predicted == pytest.approx(2 * 120.5 * (1 - churn))
    assert c.clv_total == pytest.approx(c.clv_historic + c.clv_predicted)


def test_cx_stage_churn_tier_and_segments_are_derived() -> None:
    profile, journey = build()
    x = profile.cx
    assert x.nps_last == 9
    assert x.nps_category == "promoter"
    assert x.open_complaints == 1
    assert not x.HasField("csat_last")
    assert not x.HasField("ces_last")
    # The newest of the CX and support updates: the complaint.
    assert x.updated.event_id == journey[4].event_id
    assert x.updated.updated_at.ToMilliseconds() == at(4)

    assert profile.journey_stage == "support"
    assert profile.churn_risk.score == pytest.approx(1 / (1 + math.exp(2)))
    assert profile.churn_risk.band == "low"
    (reason,) = profile.churn_risk.reasons
    assert (reason.code, reason.contribution) == ("open_complaints", 1.0)
    # 120.5 + about 212 predicted: at least 250, under 1000.
    assert profile.value_tier == "medium"
    assert list(profile.segments) == ["spenders"]


def test_time_dependent_values_are_computed_at_read_time() -> None:
    now, _ = build(now_day=5)
    later, _ = build(now_day=5 + 100)
    assert later.computed_at.ToMilliseconds() - now.computed_at.ToMilliseconds() == 100 * DAY_MS
    assert (now.commerce.recency_days, later.commerce.recency_days) == (3, 103)
    assert later.churn_risk.score > now.churn_risk.score


# --- features_of ------------------------------------------------------------------------


def loaded_profile(journey: list[ev.TouchpointEvent]) -> LoadedProfile:
    return LoadedProfile(stored(journey), [])


def test_features_are_the_derived_fields_without_none_values_with_segments_and_freshness() -> None:
    journey = events()
    view = features_of(loaded_profile(journey), SEGMENTS, at(5))
    profile, _ = build(now_day=5)
    assert (view.profile_id, view.computed_at_ms) == ("p-1", at(5))
    # The newest event time the profile holds: the complaint's.
    assert view.as_of_ms == at(4)
    assert view.segments == list(profile.segments) == ["spenders"]
    f = view.fields
    assert f["open_complaints"] == profile.cx.open_complaints == 1
    assert f["value_tier"] == profile.value_tier
    assert f["churn_risk"] == pytest.approx(profile.churn_risk.score)
    assert f["nps_last"] == 9
    assert f["days_since_nps"] == pytest.approx(2)
    assert f["consent.marketing_email"] is True
    assert f["traits.first_name"] == "Ann"
    assert f["payment_failure_open"] is False
    # None values are left out: no CSAT answer, no delivery problem.
    assert "csat_last" not in f
    assert "days_since_delivery_problem" not in f
    assert all(v is not None for v in f.values())


def test_features_keep_only_the_names_asked_for() -> None:
    journey = [*events(), payment_failed(4.5)]
    view = features_of(
        loaded_profile(journey),
        SEGMENTS,
        at(5),
        ["payment_failure_open", "csat_last", "no_such_field", "orders"],
    )
    # Unknown names and None values are absent; segments are always all of them.
    assert view.fields == {"payment_failure_open": True, "orders": 1}
    assert view.segments == ["spenders"]
    assert view.as_of_ms == at(4.5)


def test_the_features_reply_carries_the_view() -> None:
    view = FeatureView(
        profile_id="p-1",
        fields={"orders": 3, "churn_band": "low", "payment_failure_open": True, "clv": 1.5},
        segments=["a", "b"],
        as_of_ms=at(1),
        computed_at_ms=at(2),
    )
    reply = features_response(view)
    assert reply.profile_id == "p-1"
    assert dict(reply.features) == {
        "orders": 3.0,
        "churn_band": "low",
        "payment_failure_open": True,
        "clv": 1.5,
    }
    assert list(reply.segments) == ["a", "b"]
    assert reply.as_of.ToMilliseconds() == at(1)
    assert reply.computed_at.ToMilliseconds() == at(2)
    empty = features_response(FeatureView("p-2", {}, [], None, at(2)))
    assert not empty.HasField("as_of")
    assert dict(empty.features) == {}
