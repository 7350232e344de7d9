"""IngestServicer logic with an in-memory publisher (no broker): the real path is in
tests/integration/test_ingest.py."""

from __future__ import annotations

import uuid

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb

from services.common.grpc_errors import ServiceError
from services.ingest.service import (
    MAX_VIOLATIONS_SHOWN,
    REJECTIONS,
    IngestServicer,
    field_label,
)
from tests.factories import page_view, survey
from tests.unit.fake_grpc import RecordingPublisher, ctx


def test_track_publishes_a_normalised_event_with_received_at() -> None:
    publisher = RecordingPublisher()
    event = page_view(email=" Someone@Example.com")
    reply = IngestServicer(publisher).Track(pb.TrackRequest(event=event), ctx())
    assert reply.result.status == pb.EventResult.STATUS_ACCEPTED
    assert reply.result.event_id == event.event_id
    (sent,) = publisher.published
    assert sent.identities.email == "someone@example.com"
    assert sent.HasField("received_at")


def test_track_rejects_invalid_event_with_invalid_argument_naming_the_field() -> None:
    publisher = RecordingPublisher()
    with pytest.raises(ServiceError) as info:
        IngestServicer(publisher).Track(
            pb.TrackRequest(event=survey(ev.SurveyResponse.METRIC_NPS, 12)), ctx()
        )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.survey_response.score" in info.value.details
    assert publisher.published == []


def test_track_without_event_is_invalid_argument() -> None:
    with pytest.raises(ServiceError) as info:
        IngestServicer(RecordingPublisher()).Track(pb.TrackRequest(), ctx())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith("event:")


def test_track_reports_unavailable_when_the_broker_does_not_acknowledge() -> None:
    event = page_view()
    publisher = RecordingPublisher(fail_ids=frozenset({event.event_id}))
    with pytest.raises(ServiceError) as info:
        IngestServicer(publisher).Track(pb.TrackRequest(event=event), ctx())
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "Kafka is unreachable" in info.value.details
    assert "same event ids" in info.value.details


def test_batch_accepts_and_rejects_each_event_on_its_own() -> None:
    publisher = RecordingPublisher()
    good, bad, good2 = page_view(), page_view(email="nope"), page_view()
    reply = IngestServicer(publisher).TrackBatch(
        pb.TrackBatchRequest(events=[good, bad, good2]), ctx()
    )
    assert [r.status for r in reply.results] == [
        pb.EventResult.STATUS_ACCEPTED,
        pb.EventResult.STATUS_REJECTED,
        pb.EventResult.STATUS_ACCEPTED,
    ]
    assert [r.index for r in reply.results] == [0, 1, 2]
    assert [v.field for v in reply.results[1].violations] == ["identities.email"]
    assert (reply.accepted_count, reply.rejected_count) == (2, 1)
    assert [e.event_id for e in publisher.published] == [good.event_id, good2.event_id]


def test_batch_is_unavailable_as_a_whole_when_the_broker_does_not_take_every_event() -> None:
    # Not "OK with every event rejected": a client checking only the status must retry.
    first, second, invalid = page_view(), page_view(), page_view(email="nope")
    publisher = RecordingPublisher(fail_ids=frozenset({second.event_id}))
    with pytest.raises(ServiceError) as info:
        IngestServicer(publisher).TrackBatch(
            pb.TrackBatchRequest(events=[first, second, invalid]), ctx()
        )
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "same event ids" in info.value.details


def test_batch_of_only_invalid_events_is_answered_without_the_broker() -> None:
    bad = page_view(email="nope")
    publisher = RecordingPublisher(fail_ids=frozenset({bad.event_id}))
    reply = IngestServicer(publisher).TrackBatch(pb.TrackBatchRequest(events=[bad]), ctx())
    assert reply.rejected_count == 1
    assert publisher.timeouts == []


def test_publish_waits_at_most_what_is_left_of_the_client_deadline() -> None:
    publisher = RecordingPublisher()
    servicer = IngestServicer(publisher)
    servicer.Track(pb.TrackRequest(event=page_view()), ctx(time_remaining=1.0))
    servicer.Track(pb.TrackRequest(event=page_view()), ctx(time_remaining=None))
    bounded, unbounded = publisher.timeouts
    assert bounded is not None
    assert 0 < bounded < 1.0
    assert unbounded is None  # the publisher's own ack timeout applies


def _order_with_bad_items(count: int) -> ev.TouchpointEvent:
    event = page_view()
    event.touchpoint = "checkout.order"
    event.journey_stage = ev.JOURNEY_STAGE_PURCHASE
    event.order_placed.order_id = "o-1"
    for _ in range(count):
        event.order_placed.items.add()  # no product id, no quantity
    return event


def test_violations_shown_per_event_are_capped() -> None:
    reply = IngestServicer(RecordingPublisher()).TrackBatch(
        pb.TrackBatchRequest(events=[_order_with_bad_items(100)]), ctx()
    )
    violations = reply.results[0].violations
    assert len(violations) == MAX_VIOLATIONS_SHOWN + 1
    assert violations[-1].description.endswith("more violations")


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("identities.email", "identities.email"),
        ("order_placed.items[17].product_id", "order_placed.items[].product_id"),
        (
            "order_placed.items[3].unit_price.currency_code",
            "order_placed.items[].unit_price.currency_code",
        ),
        ("properties.a3f9c2.nested[4]", "properties"),
        ("identify.traits.some_key", "identify.traits"),
        ("event", "event"),
        ("no_such_field.x", "event"),
    ],
)
def test_field_labels_are_schema_paths(path: str, label: str) -> None:
    assert field_label(path) == label


def _rejection_labels() -> set[str]:
    return {
        sample.labels["field"]
        for metric in REJECTIONS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def _event_with_bad_property_keys(keys: int) -> ev.TouchpointEvent:
    event = page_view()
    for _ in range(keys):
        event.properties.fields[uuid.uuid4().hex].number_value = float("nan")
    return event


def test_rejection_metric_labels_stay_bounded_whatever_clients_send() -> None:
    # Labels were the raw field paths: every new struct key (client data) and list index
    # made a new time series, kept for the life of the process.
    servicer = IngestServicer(RecordingPublisher())

    def send_round() -> None:
        events = [_event_with_bad_property_keys(30), _order_with_bad_items(150)]
        reply = servicer.TrackBatch(pb.TrackBatchRequest(events=events), ctx())
        assert reply.rejected_count == 2

    send_round()
    after_first = _rejection_labels()
    for _ in range(3):
        send_round()
    assert _rejection_labels() == after_first
    assert "properties" in after_first
    assert "order_placed.items[].product_id" in after_first
    assert not any(label.startswith("properties.") for label in after_first)


@pytest.mark.parametrize("count", [0, 4])
def test_batch_size_is_bounded(count: int) -> None:
    servicer = IngestServicer(RecordingPublisher(), max_batch=3)
    with pytest.raises(ServiceError) as info:
        servicer.TrackBatch(pb.TrackBatchRequest(events=[page_view() for _ in range(count)]), ctx())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith("events:")
