"""What a negative experience is: each kind, each threshold's edge, and the profile's
effects and the demo agreeing with the definition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.experience import (
    CES_HIGH_EFFORT_FROM,
    CSAT_LOW_TO,
    CSAT_SATISFIED_FROM,
    NEGATIVE_KINDS,
    NEGATIVE_SENTIMENT_TO,
    NPS_DETRACTOR_TO,
    NPS_PROMOTER_FROM,
    NegativeExperience,
    is_satisfied_csat,
    negative_experiences,
    nps_category,
)
from services.demo.journeys import DemoConfig, generate
from services.profile.domain.effects import effects_of
from tests.factories import page_view, survey

Kind = NegativeExperience
CSAT, NPS, CES = (
    ev.SurveyResponse.METRIC_CSAT,
    ev.SurveyResponse.METRIC_NPS,
    ev.SurveyResponse.METRIC_CES,
)
PROMISED = datetime(2026, 3, 1, 12, tzinfo=UTC)


def answer(
    metric: ev.SurveyResponse.Metric.ValueType, score: int, scale: tuple[int, int] | None = None
) -> ev.TouchpointEvent:
    event = survey(metric, score)
    if scale:
        event.survey_response.scale.min, event.survey_response.scale.max = scale
    return event


def delivery(
    status: ev.DeliveryUpdate.Status.ValueType, late_by: timedelta | None
) -> ev.TouchpointEvent:
    event = page_view()
    d = event.delivery_update
    d.order_id, d.status = "o-1", status
    d.actual_at.FromDatetime(PROMISED + (late_by or timedelta(0)))
    if late_by is not None:
        d.promised_at.FromDatetime(PROMISED)
    return event


def message(sentiment: float, inbound: bool = True) -> ev.TouchpointEvent:
    event = page_view()
    m = ev.ConversationMessage
    direction = m.DIRECTION_INBOUND if inbound else m.DIRECTION_OUTBOUND
    event.conversation_message.CopyFrom(
        m(conversation_id="c", direction=direction, sentiment=sentiment)
    )
    return event


def contact(first: bool, resolved: bool) -> ev.TouchpointEvent:
    event = page_view()
    event.support_contact.CopyFrom(
        ev.SupportContact(
            contact_id="ct", reason="delivery.late", first_contact=first, resolved=resolved
        )
    )
    return event


def complaint(status: ev.Complaint.Status.ValueType) -> ev.TouchpointEvent:
    event = page_view()
    event.complaint.CopyFrom(ev.Complaint(complaint_id="c", status=status))
    return event


def payment_failed() -> ev.TouchpointEvent:
    event = page_view()
    event.payment_failed.CopyFrom(ev.PaymentFailed(order_id="o-1", attempt=1))
    return event


# --- each kind and each edge -------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kinds"),
    [
        (page_view(), []),
        (payment_failed(), [Kind.PAYMENT_FAILED]),
        # NPS: detractor up to 6.
        (answer(NPS, 0), [Kind.DETRACTOR]),
        (answer(NPS, NPS_DETRACTOR_TO), [Kind.DETRACTOR]),
        (answer(NPS, NPS_DETRACTOR_TO + 1), []),
        # CSAT: low up to 25% of the scale: 1-2 of 5, 1-3 of 1-10, 0-2 of 0-10.
        (answer(CSAT, 2), [Kind.LOW_CSAT]),
        (answer(CSAT, 3), []),
        (answer(CSAT, 3, (1, 10)), [Kind.LOW_CSAT]),
        (answer(CSAT, 4, (1, 10)), []),
        (answer(CSAT, 2, (0, 10)), [Kind.LOW_CSAT]),
        (answer(CSAT, 3, (0, 10)), []),
        # CES: high effort from 5 of 7; on 1-5, from 4 (5.5 of 7).
        (answer(CES, 5), [Kind.HIGH_EFFORT]),
        (answer(CES, 4), []),
        (answer(CES, 4, (1, 5)), [Kind.HIGH_EFFORT]),
        (answer(CES, 3, (1, 5)), []),
        # Deliveries: delivered after the promise, failed, or returned.
        (
            delivery(ev.DeliveryUpdate.STATUS_DELIVERED, timedelta(microseconds=1)),
            [Kind.LATE_DELIVERY],
        ),
        (delivery(ev.DeliveryUpdate.STATUS_DELIVERED, timedelta(0)), []),
        (delivery(ev.DeliveryUpdate.STATUS_DELIVERED, None), []),
        (delivery(ev.DeliveryUpdate.STATUS_OUT_FOR_DELIVERY, timedelta(days=1)), []),
        (delivery(ev.DeliveryUpdate.STATUS_FAILED, None), [Kind.LATE_DELIVERY]),
        (delivery(ev.DeliveryUpdate.STATUS_RETURNED_TO_SENDER, None), [Kind.LATE_DELIVERY]),
        # Inbound messages: negative up to -0.3.
        (message(NEGATIVE_SENTIMENT_TO), [Kind.NEGATIVE_SENTIMENT]),
        (message(-0.29), []),
        (message(-0.9, inbound=False), []),
        # Support contacts: not the first about the reason, resolved or not.
        (contact(first=False, resolved=False), [Kind.REPEAT_CONTACT]),
        (contact(first=False, resolved=True), [Kind.REPEAT_CONTACT]),
        (contact(first=True, resolved=False), []),
        # Complaints: when opened.
        (complaint(ev.Complaint.STATUS_OPENED), [Kind.COMPLAINT]),
        (complaint(ev.Complaint.STATUS_ESCALATED), []),
        (complaint(ev.Complaint.STATUS_RESOLVED), []),
    ],
)
def test_negative_experiences(event: ev.TouchpointEvent, kinds: list[NegativeExperience]) -> None:
    assert negative_experiences(event) == kinds


@pytest.mark.parametrize(
    ("score", "category"),
    [
        (None, None),
        (0, "detractor"),
        (NPS_DETRACTOR_TO, "detractor"),
        (NPS_DETRACTOR_TO + 1, "passive"),
        (NPS_PROMOTER_FROM - 1, "passive"),
        (NPS_PROMOTER_FROM, "promoter"),
        (10, "promoter"),
    ],
)
def test_nps_category(score: int | None, category: str | None) -> None:
    assert nps_category(score) == category


@pytest.mark.parametrize(
    ("score", "scale", "satisfied"),
    [(4, None, True), (3, None, False), (7, (1, 10), False), (8, (1, 10), True)],
)
def test_satisfied_csat(score: int, scale: tuple[int, int] | None, satisfied: bool) -> None:
    assert is_satisfied_csat(answer(CSAT, score, scale).survey_response) is satisfied
    assert not is_satisfied_csat(answer(NPS, 10).survey_response)


def test_the_thresholds_and_their_descriptions() -> None:
    assert (NPS_DETRACTOR_TO, NPS_PROMOTER_FROM) == (6, 9)
    assert (CSAT_LOW_TO, CSAT_SATISFIED_FROM) == (0.25, 0.75)
    assert (CES_HIGH_EFFORT_FROM, NEGATIVE_SENTIMENT_TO) == (5.0, -0.3)
    assert list(NEGATIVE_KINDS) == list(NegativeExperience)
    assert NEGATIVE_KINDS[Kind.DETRACTOR] == "NPS detractor (0-6)"
    assert NEGATIVE_KINDS[Kind.LOW_CSAT] == "low CSAT (1-2 of 5)"
    assert NEGATIVE_KINDS[Kind.HIGH_EFFORT] == "high effort (CES 5-7)"


# --- the profile and the demo use the definition ----------------------------------------

# Kind -> the profile counters that one event showing it adds to.
COUNTERS = {
    Kind.PAYMENT_FAILED: {"payment_failures"},
    Kind.LATE_DELIVERY: {"late_deliveries", "failed_deliveries"},
    Kind.COMPLAINT: {"complaints"},
    Kind.DETRACTOR: {"nps.detractors"},
    Kind.NEGATIVE_SENTIMENT: {"negative_messages"},
}


def test_the_profile_counts_what_the_definition_says_on_every_demo_event() -> None:
    journeys = generate(DemoConfig(customers=300, negative_share=0.5, seed=3), PROMISED)
    seen: set[NegativeExperience] = set()
    for event in (e for j in journeys for e in j.events):
        kinds = set(negative_experiences(event))
        seen |= kinds
        counters = {op[1] for op in effects_of(event).ops if op[0] == "c"}
        for kind, names in COUNTERS.items():
            assert (kind in kinds) == bool(counters & names), (kind, event)
        if Kind.LOW_CSAT in kinds:
            assert "csat.count" in counters
            assert "csat.satisfied" not in counters
    assert seen == set(NegativeExperience)
