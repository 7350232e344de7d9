from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.validation import Limits, normalise_and_validate, partition_key
from tests.factories import page_view, survey


def fields(event: ev.TouchpointEvent, **kwargs: object) -> list[str]:
    return [v.field for v in normalise_and_validate(event, **kwargs)]  # type: ignore[arg-type]


def test_valid_event_has_no_violations() -> None:
    assert normalise_and_validate(page_view()) == []


def test_identities_are_normalised() -> None:
    event = page_view(email="  Ada.Lovelace@Example.COM ", phone="+44 (20) 7946-0000")
    assert normalise_and_validate(event) == []
    assert event.identities.email == "ada.lovelace@example.com"
    assert event.identities.phone == "+442079460000"


def test_international_prefix_becomes_plus() -> None:
    event = page_view(phone="0044 20 7946 0000")
    assert normalise_and_validate(event) == []
    assert event.identities.phone == "+442079460000"


@pytest.mark.parametrize(
    ("identities", "field"),
    [
        ({"email": "not-an-email"}, "identities.email"),
        ({"phone": "020 7946 0000"}, "identities.phone"),
        ({"customer_id": "x" * 200}, "identities.customer_id"),
    ],
)
def test_bad_identities_are_named(identities: dict[str, str], field: str) -> None:
    assert fields(page_view(**identities)) == [field]


def test_event_without_identities_is_rejected() -> None:
    event = page_view()
    event.ClearField("identities")
    assert fields(event) == ["identities"]


def test_required_envelope_fields() -> None:
    event = ev.TouchpointEvent(identities=ev.Identities(anonymous_id="a"))
    assert fields(event) == [
        "event_id",
        "occurred_at",
        "channel",
        "touchpoint",
        "journey_stage",
        "source_system",
        "payload",
    ]


def test_unknown_enum_number_is_rejected() -> None:
    event = page_view()
    event.channel = 99  # type: ignore[assignment]
    violations = normalise_and_validate(event)
    assert [v.field for v in violations] == ["channel"]
    assert "99 is not a known Channel value" in violations[0].description


PAYLOAD_ENUMS = [
    (payload.name, field.name, field.enum_type.name)
    for payload in ev.TouchpointEvent.DESCRIPTOR.oneofs_by_name["payload"].fields
    for field in getattr(ev.TouchpointEvent(), payload.name).DESCRIPTOR.fields
    if field.enum_type is not None
]


@pytest.mark.parametrize(("payload", "name", "enum"), PAYLOAD_ENUMS)
def test_every_payload_enum_is_checked_under_its_field_path(
    payload: str, name: str, enum: str
) -> None:
    event = page_view()
    setattr(getattr(event, payload), name, 99)
    violations = {v.field: v.description for v in normalise_and_validate(event)}
    assert violations[f"{payload}.{name}"] == f"99 is not a known {enum} value"


def test_future_timestamp_is_rejected_but_small_skew_is_allowed() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    event = page_view()
    event.occurred_at.FromDatetime(now + timedelta(minutes=4))
    assert fields(event, now=now) == []
    event.occurred_at.FromDatetime(now + timedelta(hours=1))
    assert fields(event, now=now) == ["occurred_at"]


def test_touchpoint_must_be_dotted_lower_case() -> None:
    event = page_view()
    event.touchpoint = "Checkout Payment"
    assert fields(event) == ["touchpoint"]


@pytest.mark.parametrize(
    ("metric", "score", "ok"),
    [
        (ev.SurveyResponse.METRIC_NPS, 0, True),
        (ev.SurveyResponse.METRIC_NPS, 10, True),
        (ev.SurveyResponse.METRIC_NPS, 11, False),
        (ev.SurveyResponse.METRIC_CSAT, 5, True),
        (ev.SurveyResponse.METRIC_CSAT, 0, False),
        (ev.SurveyResponse.METRIC_CES, 7, True),
        (ev.SurveyResponse.METRIC_CES, 8, False),
    ],
)
def test_survey_scores_follow_default_scales(
    metric: ev.SurveyResponse.Metric.ValueType, score: int, ok: bool
) -> None:
    assert (fields(survey(metric, score)) == []) is ok


def test_survey_with_explicit_scale() -> None:
    event = survey(ev.SurveyResponse.METRIC_CSAT, 9)
    event.survey_response.scale.CopyFrom(ev.ScoreScale(min=1, max=10))
    assert fields(event) == []
    event.survey_response.score = 11
    violations = normalise_and_validate(event)
    assert [v.field for v in violations] == ["survey_response.score"]
    assert "outside the scale 1 to 10" in violations[0].description


def test_nps_must_use_its_own_scale() -> None:
    event = survey(ev.SurveyResponse.METRIC_NPS, 4)
    event.survey_response.scale.CopyFrom(ev.ScoreScale(min=1, max=5))
    assert fields(event) == ["survey_response.scale"]


def test_money_is_checked() -> None:
    event = page_view()
    event.order_placed.CopyFrom(
        ev.OrderPlaced(order_id="o1", total=ev.Money(currency_code="eur", units=-3, nanos=5))
    )
    assert fields(event) == [
        "order_placed.total.currency_code",
        "order_placed.total.nanos",
        "order_placed.total",
    ]


def test_order_line_items_are_checked_with_their_index() -> None:
    event = page_view()
    event.order_placed.CopyFrom(
        ev.OrderPlaced(
            order_id="o1",
            total=ev.Money(currency_code="EUR", units=10),
            items=[ev.LineItem(product_id="p", quantity=1), ev.LineItem(product_id="", quantity=0)],
        )
    )
    assert fields(event) == ["order_placed.items[1].product_id", "order_placed.items[1].quantity"]


def test_sentiment_range() -> None:
    event = page_view()
    event.conversation_message.CopyFrom(
        ev.ConversationMessage(
            conversation_id="c", direction=ev.ConversationMessage.DIRECTION_INBOUND, sentiment=1.5
        )
    )
    assert fields(event) == ["conversation_message.sentiment"]


def test_size_limits() -> None:
    event = page_view()
    event.properties.update({"blob": "x" * 9000})
    assert fields(event) == ["properties"]
    assert fields(event, limits=Limits(max_event_bytes=1000)) == ["event"]


def test_partition_key_prefers_customer_id_and_hides_values() -> None:
    anon = page_view(anonymous_id="device-1")
    known = page_view(anonymous_id="device-1", customer_id="c-1")
    assert partition_key(known) == partition_key(page_view(customer_id="c-1"))
    assert partition_key(anon) != partition_key(known)
    assert b"device-1" not in partition_key(anon)
