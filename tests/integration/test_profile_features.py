"""GetFeatures, the cheap read for decisions, on the real path: Track -> Kafka -> profile
worker -> Redis -> GetFeatures, checked against GetProfile of the same profile; and how
many Redis round trips its load takes."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
import redis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.common.settings import redis_settings
from services.profile.adapters.reader import ProfileReader
from services.profile.domain.fold import differences, fold
from tests.factories import (
    DAY_MS,
    recent_complaint,
    recent_consent,
    recent_delivery,
    recent_login,
    recent_nps,
    recent_order,
    recent_page,
    recent_payment_failure,
)
from tests.integration.profile_harness import (
    ANON,
    CUSTOMER,
    EMAIL,
    ProfileHarness,
    aggregates,
)

MARKETING_EMAIL = ev.ConsentChange.PURPOSE_MARKETING_EMAIL


def features(
    h: ProfileHarness, t: pb.IdentifierType.ValueType, value: str, *names: str
) -> pb.GetFeaturesResponse:
    request = pb.GetFeaturesRequest(identifier=pb.Identifier(type=t, value=value), names=names)
    reply: pb.GetFeaturesResponse = h.profiles.GetFeatures(request, timeout=10)
    return reply


def ms(event: ev.TouchpointEvent) -> int:
    return event.occurred_at.ToMilliseconds()


def test_get_features_agrees_with_get_profile_and_follows_open_problems(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    tag = uuid.uuid4().hex[:6]
    customer, email = f"feat-{tag}", f"feat-{tag}@example.com"
    journey = [
        recent_login(0, customer_id=customer, email=email),
        recent_consent(1, MARKETING_EMAIL, True, customer_id=customer),
        recent_order(10, 120, customer_id=customer),
        recent_delivery(20, late=True, customer_id=customer),
        recent_nps(30, 3, email=email),
        recent_complaint(40, customer_id=customer),
        recent_payment_failure(50, customer_id=customer),
    ]
    h.track(journey)
    profile = h.wait_for_profile(CUSTOMER, customer, events=len(journey))
    reply = features(h, EMAIL, email)
    f = reply.features

    # The same values GetProfile gives for the same profile.
    assert reply.profile_id == profile.profile_id
    assert f["open_complaints"] == profile.cx.open_complaints == 1
    assert f["value_tier"] == profile.value_tier
    assert f["journey_stage"] == profile.journey_stage == "support"
    assert f["churn_band"] == profile.churn_risk.band
    # Derived a few milliseconds apart: inactivity moves the risk by a hair.
    assert f["churn_risk"] == pytest.approx(profile.churn_risk.score, rel=1e-6)
    assert f["churn_reason"] == profile.churn_risk.reasons[0].code
    assert f["orders"] == profile.commerce.orders == 1
    assert f["revenue"] == pytest.approx(profile.commerce.revenue)
    assert f["late_deliveries"] == profile.commerce.late_deliveries == 1
    assert f["nps_last"] == profile.cx.nps_last == 3
    assert f["nps_category"] == profile.cx.nps_category == "detractor"
    assert f["events"] == profile.activity.events
    assert f["traits.first_name"] == profile.traits["first_name"] == "Ada"
    consents = {c.purpose: c.granted for c in profile.consents}
    assert f["consent.marketing_email"] is consents[MARKETING_EMAIL] is True
    assert list(reply.segments) == list(profile.segments)
    assert {"detractors", "open_complaint"} <= set(reply.segments)
    assert reply.as_of.ToMilliseconds() == profile.activity.last_seen.ToMilliseconds()
    assert reply.as_of.ToMilliseconds() == ms(journey[-1])
    assert "csat_last" not in f  # no value: absent

    # The new fields: a payment failure and a late delivery, both open.
    computed = reply.computed_at.ToMilliseconds()
    assert f["payment_failure_open"] is True
    assert f["delivery_problem_open"] is True
    assert f["days_since_delivery_problem"] == pytest.approx((computed - ms(journey[3])) / DAY_MS)
    assert f["days_since_nps"] == pytest.approx((computed - ms(journey[4])) / DAY_MS)
    # Redis holds what the reference fold of the events holds, the new maxima included.
    state = h.state(profile.profile_id)
    assert state.maxima["last_delivery_problem_at"] == ms(journey[3])
    assert differences(aggregates(fold(journey, profile.profile_id)), aggregates(state)) == []

    # `names` keeps only those asked for; a name without a value or unknown is absent.
    only = features(
        h,
        CUSTOMER,
        customer,
        "payment_failure_open",
        "consent.marketing_email",
        "csat_last",
        "no_such_field",
    )
    assert dict(only.features) == {"payment_failure_open": True, "consent.marketing_email": True}
    assert list(only.segments) == list(reply.segments)

    # A later order closes the payment failure; a later on-time delivery the delivery problem.
    later = [
        recent_order(60, 40, customer_id=customer),
        recent_delivery(70, late=False, customer_id=customer),
    ]
    h.track(later)
    h.wait_for_profile(CUSTOMER, customer, events=len(journey) + len(later))
    closed = features(
        h, CUSTOMER, customer, "payment_failure_open", "delivery_problem_open", "orders"
    )
    assert dict(closed.features) == {
        "payment_failure_open": False,
        "delivery_problem_open": False,
        "orders": 2.0,
    }
    assert closed.as_of.ToMilliseconds() == ms(later[-1])
    after = h.state(profile.profile_id)
    assert after.maxima["last_delivery_ok_at"] == ms(later[-1])
    assert differences(aggregates(fold(journey + later)), aggregates(after)) == []


@pytest.mark.parametrize(
    ("request_", "code", "starts"),
    [
        (pb.GetFeaturesRequest(), grpc.StatusCode.INVALID_ARGUMENT, "identifier"),
        (
            pb.GetFeaturesRequest(identifier=pb.Identifier(type=EMAIL, value="nope")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "identifier.value",
        ),
        (
            pb.GetFeaturesRequest(
                identifier=pb.Identifier(type=CUSTOMER, value="c-1"), names=["x"] * 201
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "names",
        ),
        (
            pb.GetFeaturesRequest(
                identifier=pb.Identifier(type=CUSTOMER, value="c-1"), names=["x" * 201]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "names",
        ),
        (
            pb.GetFeaturesRequest(
                identifier=pb.Identifier(type=CUSTOMER, value=f"nobody-{uuid.uuid4()}")
            ),
            grpc.StatusCode.NOT_FOUND,
            "no profile",
        ),
    ],
    ids=["no-identifier", "bad-email", "201-names", "long-name", "unknown"],
)
def test_get_features_requests_are_checked(
    profile_harness: ProfileHarness,
    request_: pb.GetFeaturesRequest,
    code: grpc.StatusCode,
    starts: str,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        profile_harness.profiles.GetFeatures(request_, timeout=10)
    assert info.value.code() == code
    assert (info.value.details() or "").startswith(starts)


# --- round trips ----------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """Counts what it sends: one send per command, or per pipeline."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def round_trips(call: Any) -> tuple[Any, int]:
    before = CountingConnection.sends
    result = call()
    return result, CountingConnection.sends - before


def test_the_cheap_load_takes_two_round_trips_and_follows_merges(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    tag = uuid.uuid4().hex[:6]
    anon, customer = f"anon-{tag}", f"rt-{tag}"
    h.track([recent_page(0, anonymous_id=anon)])
    browsing = h.wait_for_profile(ANON, anon, events=1)
    h.track([recent_page(1, customer_id=customer)])
    h.wait_for_profile(CUSTOMER, customer, events=1)
    h.track([recent_login(2, anonymous_id=anon, customer_id=customer)])
    merged = h.wait_for_profile(CUSTOMER, customer, events=3)
    # The profile of the strongest identifier (the customer id) survives.
    survivor, loser = merged.profile_id, browsing.profile_id
    assert loser != survivor

    pool = redis.ConnectionPool.from_url(
        redis_settings().redis_url, connection_class=CountingConnection
    )
    client = redis.Redis(connection_pool=pool)
    try:
        client.ping()  # connects (the handshake is not a read's)
        reader = ProfileReader(client, h.settings)
        expected = reader.load(survivor)
        assert expected is not None

        loaded, trips = round_trips(lambda: reader.load_identified("c", customer))
        assert loaded == expected
        assert trips == 2
        # The path it replaces: GET, HGET of the alias, EXISTS, then the pipeline.
        pid, trips = round_trips(lambda: reader.profile_id("c", customer))
        assert pid == survivor
        assert trips == 3
        assert round_trips(lambda: reader.load_identified("a", anon)) == (expected, 2)
        assert round_trips(lambda: reader.load_identified("pid", survivor)) == (expected, 1)
        # A merged profile's id: its alias is followed, one more round trip.
        assert round_trips(lambda: reader.load_identified("pid", loser)) == (expected, 2)
        assert round_trips(lambda: reader.load_identified("c", f"nobody-{tag}")) == (None, 1)
        assert reader.load_identified("pid", f"p_nobody_{tag}") is None
    finally:
        client.close()
        pool.disconnect()
