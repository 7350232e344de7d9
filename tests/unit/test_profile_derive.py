"""Derived profile values from realistic journeys: events -> fold -> derive."""

from __future__ import annotations

import math
import random

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.profile.domain.derive import (
    DEFAULT_CONFIG,
    ChurnWeights,
    DeriveConfig,
    Derived,
    derive,
    field_names,
    nps_category,
    value_tier,
)
from services.profile.domain.fold import fold
from services.profile.domain.segments import evaluate, load_segments, parse_segments
from services.profile.domain.state import ProfileState
from tests.factories import (
    at,
    cancelled,
    ces,
    complaint,
    consent,
    contact,
    csat,
    delivered,
    delivery_failed,
    delivery_status,
    engagement,
    home_page_view,
    identify,
    journey,
    message,
    nps,
    order,
    payment_failed,
    product_view,
    returned,
    review,
)

OPENED = ev.Complaint.STATUS_OPENED
RESOLVED = ev.Complaint.STATUS_RESOLVED


def derived(events: list[ev.TouchpointEvent], now_day: float, **config: object) -> Derived:
    cfg = DeriveConfig(**config) if config else DEFAULT_CONFIG  # type: ignore[arg-type]
    return derive(fold(events), at(now_day), cfg)


def logistic(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# --- commerce ---------------------------------------------------------------------------


def test_two_orders_and_a_return() -> None:
    d = derived(
        [
            home_page_view(0),
            order(0, 100, "o-1"),
            order(20, 60, "o-2"),
            delivered(22, order_id="o-2"),
            returned(25, 30, "o-2"),
        ],
        now_day=40,
    )
    c = d.commerce
    assert (c.orders, c.net_orders, c.returns, c.cancellations) == (2, 2, 1, 0)
    assert c.revenue == pytest.approx(160)
    assert c.refunds == pytest.approx(30)
    assert c.net_revenue == pytest.approx(130)
    assert c.average_order_value == pytest.approx(65)
    assert c.currency_code == "EUR"
    assert c.first_order_at_ms == at(0)
    assert c.last_order_at_ms == at(20)
    # CLV: historic is net revenue; predicted = orders per month x 12 x AOV x (1 - risk).
    assert c.clv_historic == pytest.approx(130)
    tenure_months = 6  # 40 days of tenure, measured over the six-month minimum
    assert c.purchases_per_month == pytest.approx(2 / tenure_months)
    expected = 2 / tenure_months * 12 * 65 * (1 - d.churn_risk)
    assert c.clv_predicted == pytest.approx(expected)
    assert c.clv_total == pytest.approx(130 + expected)
    assert d.clv_total == c.clv_total
    # Last seen 15 days ago: one day past the 14-day grace of inactivity.
    assert d.churn_risk == pytest.approx(logistic(-3.0 + 2.0 * (15 - 14) / (90 - 14)))
    # RFM: last order 20 days ago, 2 orders, 130 net.
    assert (c.recency_days, c.frequency) == (20, 2)
    assert c.monetary == pytest.approx(130)
    assert (c.rfm_recency, c.rfm_frequency, c.rfm_monetary) == (5, 2, 2)
    assert d.journey_stage == "usage"


def test_predicted_clv_counts_at_least_six_months_of_tenure_and_ignores_cancelled_orders() -> None:
    d = derived([order(0, 100, "o-1"), order(1, 50, "o-2"), cancelled(2, 50, "o-2")], now_day=3)
    c = d.commerce
    assert (c.orders, c.cancellations, c.net_orders) == (2, 1, 1)
    assert c.net_revenue == pytest.approx(100)
    assert c.average_order_value == pytest.approx(100)
    assert c.purchases_per_month == pytest.approx(1 / 6)  # 1 order over the minimum 6 months
    assert c.clv_predicted == pytest.approx(2 * 100 * (1 - d.churn_risk))
    assert d.journey_stage == "onboarding"


def test_a_profile_without_orders_has_no_value() -> None:
    d = derived([home_page_view(0)], now_day=1)
    c = d.commerce
    assert (c.orders, c.average_order_value, c.clv_total) == (0, 0.0, 0.0)
    assert c.recency_days is None
    assert (c.rfm_recency, c.rfm_frequency, c.rfm_monetary) == (0, 0, 0)
    assert d.value_tier == "none"
    assert d.journey_stage == "awareness"


@pytest.mark.parametrize(
    ("days_ago", "orders", "net", "scores"),
    [
        (30, 1, 49.99, (5, 1, 1)),
        (31, 2, 50, (4, 2, 2)),
        (90, 3, 199, (4, 3, 2)),
        (180, 5, 200, (3, 4, 3)),
        (365, 9, 999, (2, 4, 4)),
        (366, 10, 1000, (1, 5, 5)),
    ],
)
def test_rfm_scores_follow_the_fixed_thresholds(
    days_ago: int, orders: int, net: float, scores: tuple[int, int, int]
) -> None:
    events = [order(0, net / orders, f"o-{i}") for i in range(orders)]
    c = derived(events, now_day=days_ago).commerce
    assert (c.rfm_recency, c.rfm_frequency, c.rfm_monetary) == scores


@pytest.mark.parametrize(
    ("clv", "tier"),
    [
        (5000, "vip"),
        (2000, "vip"),
        (1999.99, "high"),
        (1000, "high"),
        (999.99, "medium"),
        (250, "medium"),
        (249.99, "low"),
        (0.01, "low"),
        (0, "none"),
        (-20, "none"),
    ],
)
def test_value_tier_thresholds(clv: float, tier: str) -> None:
    assert value_tier(clv) == tier


def test_value_tier_thresholds_come_from_the_config() -> None:
    config = DeriveConfig(value_tiers=(("vip", 500.0), ("high", 100.0), ("medium", 10.0)))
    assert value_tier(600, config) == "vip"
    assert value_tier(99, config) == "medium"
    assert value_tier(5, config) == "low"
    d = derived([order(0, 200)], now_day=400)  # lapsed: little predicted value
    assert d.value_tier == "medium"
    assert derive(fold([order(0, 200)]), at(400), config).value_tier == "high"


# --- CX metrics --------------------------------------------------------------------------


def test_detractor_with_an_open_complaint() -> None:
    events = [
        order(0, 80),
        nps(10, 3),
        complaint(11, "c-1", OPENED, ev.Complaint.SEVERITY_CRITICAL),
    ]
    d = derived(events, now_day=12)
    assert d.cx.nps_last == 3
    assert d.cx.nps_category == "detractor"
    assert d.cx.open_complaints == 1
    assert d.cx.open_complaint_ids == ("c-1",)
    assert d.cx.open_complaint_max_severity == "critical"
    assert (d.journey_stage, d.journey_rule) == ("support", "open_complaint")
    reasons = {r.code: r for r in d.churn_reasons}
    assert reasons["nps_detractor"].description == "Last NPS score was 3 (detractor)"
    assert reasons["nps_detractor"].contribution == pytest.approx(1.5)
    assert reasons["open_complaints"].description == "1 open complaint"
    assert reasons["open_complaints"].contribution == pytest.approx(1.0)
    assert d.churn_reasons[0].code == "nps_detractor"  # largest first
    assert d.churn_risk == pytest.approx(logistic(-3.0 + 1.5 + 1.0))
    assert d.churn_band == "medium"
    members = evaluate(load_segments(), d.fields())
    assert {"detractors", "open_complaint"} <= members
    assert "promoters" not in members


def test_a_complaint_resolved_later_is_closed_whatever_the_arrival_order() -> None:
    events = [
        order(0, 80),
        nps(10, 3),
        complaint(11, "c-1", OPENED),
        complaint(12, "c-2", OPENED),
        complaint(13, "c-1", ev.Complaint.STATUS_ESCALATED),
        complaint(15, "c-1", RESOLVED),
    ]
    for ordering in (events, events[::-1]):
        d = derived(ordering, now_day=16)
        assert d.cx.complaints == 2
        assert d.cx.open_complaint_ids == ("c-2",)
    closed = derived([*events, complaint(17, "c-2", RESOLVED)], now_day=18)
    assert closed.cx.open_complaints == 0
    assert closed.journey_stage != "support"
    assert "open_complaints" not in {r.code for r in closed.churn_reasons}
    assert "open_complaint" not in evaluate(load_segments(), closed.fields())


def test_support_contact_windows_and_repeat_contacts() -> None:
    now = 100
    events = [
        contact(now - 40, "k-1", "delivery.late"),  # outside 30 days
        contact(now - 20, "k-2", "delivery.late"),  # first in the window: not a repeat
        contact(now - 10, "k-3", "delivery.late"),  # repeat
        contact(now - 5, "k-4", "billing"),
        contact(now - 2, "k-5", "delivery.late", resolved=False),  # repeat
        contact(now - 1, "k-5", "delivery.late", resolved=True),  # same contact, resolved
    ]
    d = derived(events, now_day=now)
    assert d.cx.support_contacts == 6  # every record, lifetime
    assert d.cx.support_contacts_30d == 4
    assert d.cx.support_contacts_7d == 2
    assert d.cx.repeat_contacts_30d == 2
    assert d.cx.unresolved_contacts_7d == 0
    assert d.cx.last_contact_at_ms == at(now - 1)
    assert d.journey_stage != "support"
    reasons = {r.code: r for r in d.churn_reasons}
    assert reasons["repeat_contacts"].description == "2 repeat support contacts in 30 days"
    assert "frequent_contacts" in evaluate(load_segments(), d.fields())

    unresolved = derived(events[:-1], now_day=now)
    assert unresolved.cx.unresolved_contacts_7d == 1
    assert (unresolved.journey_stage, unresolved.journey_rule) == ("support", "unresolved_contact")
    # Eight days later the unresolved contact is out of the 7-day window.
    later = derived(events[:-1], now_day=now + 6)
    assert later.cx.support_contacts_7d == 0
    assert later.journey_stage != "support"


def test_decayed_csat_favours_recent_answers() -> None:
    improving = derived([csat(0, 1), csat(60, 5)], now_day=61).cx
    worsening = derived([csat(0, 5), csat(60, 1)], now_day=61).cx
    # Weights double every 30 days: the later answer weighs 4 times the earlier one.
    assert improving.csat_decayed == pytest.approx((1 * 1 + 5 * 4) / 5)
    assert worsening.csat_decayed == pytest.approx((5 * 1 + 1 * 4) / 5)
    assert (improving.csat_last, worsening.csat_last) == (5.0, 1.0)
    assert improving.csat_percent == worsening.csat_percent == pytest.approx(50.0)
    assert improving.csat_count == 2


def test_low_csat_negative_sentiment_and_effort() -> None:
    d = derived([csat(0, 2), message(1, -0.8), message(1.5, -0.4), ces(2, 6), ces(3, 4)], now_day=3)
    assert d.cx.csat_decayed == pytest.approx(2.0)
    assert d.cx.sentiment is not None
    assert -0.8 < d.cx.sentiment < -0.4
    assert (d.cx.messages, d.cx.negative_messages) == (2, 2)
    assert d.cx.ces_last == pytest.approx(4.0)
    assert d.cx.ces_average == pytest.approx(5.0)
    reasons = {r.code: r for r in d.churn_reasons}
    assert reasons["low_csat"].contribution == pytest.approx(1.2 * (4 - 2) / 3)
    assert reasons["low_csat"].description == "Recent CSAT averages 2.0 of 5"
    assert reasons["negative_sentiment"].contribution == pytest.approx(-d.cx.sentiment)


@pytest.mark.parametrize(
    ("score", "category"),
    [
        (None, None),
        (0, "detractor"),
        (6, "detractor"),
        (7, "passive"),
        (8, "passive"),
        (9, "promoter"),
        (10, "promoter"),
    ],
)
def test_nps_category(score: int | None, category: str | None) -> None:
    assert nps_category(score) == category


def test_the_same_event_twice_counts_once() -> None:
    o, s = order(0, 100), nps(1, 2)
    once = derived([o, s], now_day=2)
    twice = derived([o, s, o, s], now_day=2)
    assert twice == once
    assert twice.commerce.orders == 1
    assert twice.cx.nps_count == 1


def test_derive_is_the_same_for_any_order_of_events() -> None:
    events = journey()
    reference = derived(events, now_day=30)
    rng = random.Random(7)
    for _ in range(10):
        shuffled = events[:]
        rng.shuffle(shuffled)
        d = derived(shuffled, now_day=30)
        assert d.fields() == pytest.approx(reference.fields())
        assert d.churn_reasons == pytest.approx(reference.churn_reasons)


# --- churn -------------------------------------------------------------------------------


def test_churn_reasons_are_the_top_three_positive_contributions() -> None:
    events = [
        order(0, 50),
        delivered(3, late=True),
        delivery_failed(4, order_id="o-2"),
        nps(5, 1),
        csat(5, 1),
        complaint(6, "c-1", OPENED),
        complaint(6, "c-2", OPENED),
        payment_failed(7),
        engagement(8, ev.MessageEngagement.ACTION_UNSUBSCRIBE),
    ]
    d = derived(events, now_day=9)
    codes = [r.code for r in d.churn_reasons]
    # Also present but smaller: delivery problems 1.0, payment failure 0.8, unsubscribed 0.7.
    assert codes == ["open_complaints", "nps_detractor", "low_csat"]
    assert [r.contribution for r in d.churn_reasons] == pytest.approx([2.0, 1.5, 1.2])
    assert d.churn_reasons[0].description == "2 open complaints"
    z = -3.0 + 2.0 + 1.5 + 1.2 + 1.0 + 0.8 + 0.7
    assert d.churn_risk == pytest.approx(logistic(z))
    assert d.churn_band == "high"
    assert "at_risk" in evaluate(load_segments(), d.fields())


def test_churn_grows_with_inactivity_and_order_lapse() -> None:
    events = [order(0, 100)]
    risks = [derived(events, now_day=day).churn_risk for day in (1, 30, 90, 200)]
    assert risks == sorted(risks)
    assert risks[0] == pytest.approx(logistic(-3.0))
    assert risks[-1] == pytest.approx(logistic(-3.0 + 2.0 + 1.5))
    lapsed = derived(events, now_day=200)
    assert lapsed.churn_band == "high"
    assert [r.code for r in lapsed.churn_reasons] == ["inactive", "order_lapse"]
    assert lapsed.churn_reasons[0].description == "Last seen 200 days ago"
    assert lapsed.churn_reasons[1].description == "Last order 200 days ago"


def test_churn_weights_and_bands_come_from_the_config() -> None:
    events = [order(0, 100), nps(1, 2), engagement(1, ev.MessageEngagement.ACTION_UNSUBSCRIBE)]
    default = derived(events, now_day=2)
    assert {r.code for r in default.churn_reasons} == {"nps_detractor", "unsubscribed"}
    config = DeriveConfig(
        churn_bias=-1.0,
        churn_weights=ChurnWeights(nps_detractor=0.0, unsubscribed=3.0),
        churn_bands=(0.2, 0.9),
    )
    custom = derive(fold(events), at(2), config)
    assert [r.code for r in custom.churn_reasons] == ["unsubscribed"]
    assert custom.churn_risk == pytest.approx(logistic(-1.0 + 3.0))
    assert custom.churn_band == "medium"


def test_revoked_email_consent_counts_as_unsubscribed() -> None:
    granted = consent(1, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=True)
    revoked = consent(2, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=False)
    assert "unsubscribed" not in {r.code for r in derived([granted], 3).churn_reasons}
    d = derived([granted, revoked], 3)
    assert d.consent == {"marketing_email": False}
    assert "unsubscribed" in {r.code for r in d.churn_reasons}


def test_an_empty_profile_has_the_baseline_risk() -> None:
    d = derive(ProfileState("p"), at(0))
    assert d.churn_risk == pytest.approx(logistic(DEFAULT_CONFIG.churn_bias))
    assert d.churn_reasons == ()
    assert (d.churn_band, d.value_tier, d.journey_stage) == ("low", "none", "awareness")


# --- journey stages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "now_day", "stage", "rule"),
    [
        ([home_page_view(0)], 1, "awareness", "no_shopping_activity"),
        ([home_page_view(0), product_view(1)], 2, "consideration", "shopping_without_order"),
        ([product_view(0), payment_failed(1)], 2, "purchase", "payment_failed_since_last_order"),
        ([product_view(0), payment_failed(1)], 20, "consideration", "shopping_without_order"),
        ([order(0, 10), payment_failed(1)], 2, "purchase", "payment_failed_since_last_order"),
        ([payment_failed(0), order(1, 10)], 2, "onboarding", "first_order_recent"),
        ([order(0, 10)], 30, "onboarding", "first_order_recent"),
        ([order(0, 10)], 31, "usage", "active_customer"),
        ([order(0, 10)], 121, "renewal", "last_order_old"),
        ([order(0, 10), nps(40, 9)], 50, "advocacy", "nps_promoter"),
        ([order(0, 10), nps(40, 9)], 200, "renewal", "last_order_old"),
        ([order(0, 10), review(40, 5), review(41, 4)], 50, "advocacy", "high_reviews"),
        ([order(0, 10), review(40, 5), review(41, 3)], 50, "usage", "active_customer"),
        ([order(0, 10), nps(40, 9), complaint(45, "c-1", OPENED)], 50, "support", "open_complaint"),
    ],
)
def test_journey_stage_rules(
    events: list[ev.TouchpointEvent], now_day: float, stage: str, rule: str
) -> None:
    d = derived(events, now_day)
    assert (d.journey_stage, d.journey_rule) == (stage, rule)


# --- flat fields -------------------------------------------------------------------------


def test_fields_flatten_metrics_traits_and_consent() -> None:
    events = [
        identify(0, plan="plus", age=41, beta=True, tags=["a", "b"]),
        consent(1, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=True),
        consent(1, ev.ConsentChange.PURPOSE_MARKETING_SMS, granted=False),
        order(2, 75),
        nps(3, 10),
    ]
    f = derived(events, now_day=4).fields()
    assert f["traits.plan"] == "plus"
    assert f["traits.age"] == 41
    assert f["traits.beta"] is True
    assert f["traits.tags"] == '["a","b"]'
    assert f["consent.marketing_email"] is True
    assert f["consent.marketing_sms"] is False
    assert "consent.analytics" not in f
    assert f["orders"] == 1
    assert f["revenue"] == pytest.approx(75)
    assert f["nps_category"] == "promoter"
    assert f["ch.web"] == 4
    assert f["ch.email"] == 1
    assert f["ch.chat"] == 0
    assert f["type.order_placed"] == 1
    assert f["journey_stage"] == "onboarding"
    assert f["days_since_first_order"] == pytest.approx(2.0)
    # CLV: 75 so far plus 1 order per 6 months (the minimum tenure) x 12 months x 75 x
    # (1 - churn 1/(1+e^3)): about 218, above 0 and under medium's 250.
    assert f["clv_total"] == pytest.approx(75 + 2 * 75 * (1 - 1 / (1 + math.exp(3))))
    assert f["value_tier"] == "low"
    assert all(isinstance(v, str | int | float | bool) or v is None for v in f.values()), (
        "fields are scalars"
    )


def test_field_names_cover_every_field_a_profile_can_produce() -> None:
    names = field_names()
    full = derived(journey(), now_day=30).fields()
    open_fields = {k for k in full if k.startswith(("traits.", "consent."))}
    assert open_fields
    assert set(full) - open_fields == names
    assert {"churn_risk", "support_contacts_30d", "ch.chat", "type.review"} <= names


def test_delivery_problems_are_the_share_of_late_or_failed_deliveries() -> None:
    events = [
        order(0, 40),
        delivered(2, late=True),
        delivered(3, order_id="o-2"),
        delivery_failed(4, order_id="o-3"),
    ]
    d = derived(events, now_day=5)
    assert (d.commerce.deliveries, d.commerce.late_deliveries) == (2, 1)
    assert d.commerce.failed_deliveries == 1
    (reason,) = d.churn_reasons
    assert reason.code == "delivery_problems"
    assert reason.description == "2 of 3 deliveries late or failed"
    assert reason.contribution == pytest.approx(1.0 * 2 / 3)


def test_a_complaint_resolved_in_the_same_millisecond_as_an_update_is_closed() -> None:
    def complaint_event(n: int, status: ev.Complaint.Status.ValueType) -> ev.TouchpointEvent:
        e = ev.TouchpointEvent(
            event_id=f"cmp-{n}",
            identities=ev.Identities(customer_id="c"),
            channel=ev.CHANNEL_PHONE,
            touchpoint="support.complaint",
            journey_stage=ev.JOURNEY_STAGE_SUPPORT,
            source_system="tests",
            complaint=ev.Complaint(complaint_id="k-1", status=status),
        )
        e.occurred_at.FromMilliseconds(1_800_000_000_000 + (0 if n else -1000))
        return e

    events = [
        complaint_event(0, ev.Complaint.STATUS_OPENED),
        complaint_event(1, ev.Complaint.STATUS_RESOLVED),
        complaint_event(2, ev.Complaint.STATUS_UPDATED),
    ]
    for ordered in (events, events[::-1]):
        assert derive(fold(ordered), 1_800_000_100_000).cx.open_complaints == 0


# --- open problems and survey recency ---------------------------------------------------


def test_days_since_nps_is_from_the_latest_answer_by_event_time() -> None:
    assert derived([order(0, 10)], now_day=5).cx.days_since_nps is None
    # The older answer arrives last: the latest by event time still counts.
    d = derived([nps(10, 9), nps(4, 2)], now_day=12.5)
    assert d.cx.nps_last == 9
    assert d.cx.days_since_nps == pytest.approx(2.5)
    assert d.fields()["days_since_nps"] == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("events", "is_open"),
    [
        ([order(0, 10)], False),
        ([payment_failed(1)], True),
        ([order(0, 10), payment_failed(1)], True),
        ([payment_failed(1), order(2, 10)], False),
        # Arrival order does not matter, only event times.
        ([order(2, 10), payment_failed(1)], False),
        ([payment_failed(1), order(2, 10), payment_failed(3)], True),
    ],
)
def test_a_payment_failure_is_open_until_an_order_is_placed_after_it(
    events: list[ev.TouchpointEvent], is_open: bool
) -> None:
    d = derived(events, now_day=60)
    assert d.commerce.payment_failure_open is is_open
    assert d.fields()["payment_failure_open"] is is_open


def test_a_payment_failure_and_an_order_in_the_same_millisecond_is_closed() -> None:
    failure, placed = payment_failed(1), order(1, 10)
    assert failure.occurred_at == placed.occurred_at
    assert derived([failure, placed], now_day=2).commerce.payment_failure_open is False


DELIVERED = ev.DeliveryUpdate.STATUS_DELIVERED
RETURNED_TO_SENDER = ev.DeliveryUpdate.STATUS_RETURNED_TO_SENDER
OUT_FOR_DELIVERY = ev.DeliveryUpdate.STATUS_OUT_FOR_DELIVERY


@pytest.mark.parametrize(
    ("events", "is_open", "days_since"),
    [
        ([order(0, 10)], False, None),
        ([delivered(2)], False, None),
        ([delivered(2, late=True)], True, 8.0),
        ([delivery_failed(3)], True, 7.0),
        ([delivery_status(4, RETURNED_TO_SENDER)], True, 6.0),
        # A later on-time delivery closes it; an update that is not a delivery does not.
        ([delivered(2, late=True), delivered(5, order_id="o-2")], False, 8.0),
        ([delivery_failed(3), delivery_status(6, OUT_FOR_DELIVERY)], True, 7.0),
        # Delivered without a promise is never late: on time.
        ([delivery_failed(3), delivery_status(4, DELIVERED)], False, 7.0),
        # The latest problem counts, whatever the arrival order.
        ([delivered(5, order_id="o-2"), delivery_failed(6), delivered(2, late=True)], True, 4.0),
    ],
)
def test_a_delivery_problem_is_open_until_a_later_delivery_arrives_on_time(
    events: list[ev.TouchpointEvent], is_open: bool, days_since: float | None
) -> None:
    d = derived(events, now_day=10)
    c = d.commerce
    assert c.delivery_problem_open is is_open
    if days_since is None:
        assert c.days_since_delivery_problem is None
        assert c.last_delivery_problem_at_ms is None
    else:
        assert c.days_since_delivery_problem == pytest.approx(days_since)
        assert c.last_delivery_problem_at_ms == at(10 - days_since)
    f = d.fields()
    assert f["delivery_problem_open"] is is_open
    assert f["days_since_delivery_problem"] == c.days_since_delivery_problem


def test_delivery_outcomes_are_kept_as_two_maxima() -> None:
    state = fold([delivered(1), delivered(2, late=True), delivery_failed(3), delivered(4)])
    assert state.maxima["last_delivery_problem_at"] == at(3)
    assert state.maxima["last_delivery_ok_at"] == at(4)


def test_the_new_fields_are_field_names_segments_may_test() -> None:
    new = {
        "days_since_nps",
        "payment_failure_open",
        "delivery_problem_open",
        "days_since_delivery_problem",
    }
    assert new <= field_names()
    empty = derive(ProfileState("-"), at(0)).fields()
    assert (empty["payment_failure_open"], empty["delivery_problem_open"]) == (False, False)
    assert (empty["days_since_nps"], empty["days_since_delivery_problem"]) == (None, None)
    segments = parse_segments(
        {
            "segment": [
                {
                    "name": "delivery_trouble",
                    "all": [
                        {"field": "delivery_problem_open", "op": "==", "value": True},
                        {"field": "days_since_delivery_problem", "op": "<=", "value": 7},
                    ],
                }
            ]
        }
    )
    assert evaluate(segments, derived([delivery_failed(3)], now_day=5).fields()) == {
        "delivery_trouble"
    }
