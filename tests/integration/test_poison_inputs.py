"""The three inputs that once stopped or corrupted the stream (issue 7), through the real
path: ingest or another producer, Kafka, the worker process, Redis, the profile API.

Each leaves every other event applied and the worker running; the bad one is refused
by ingest with the field named, or dead-lettered alone with its reason.
"""

from __future__ import annotations

import uuid

from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2
from cx.profile.v1 import profile_pb2 as pb
from kafka import KafkaProducer

from services.common import dead_letter as dl
from services.common.kafka_io import touchpoint_headers
from services.common.telemetry import header_value
from services.common.validation import partition_key
from tests.factories import nested_struct, page_view
from tests.integration.profile_harness import ProfileHarness


def people_events(run: str, people: int, each: int) -> list[ev.TouchpointEvent]:
    events = []
    for n in range(each):
        for i in range(people):
            e = page_view(customer_id=f"{run}-c{i}")
            e.event_id = f"{run}-{i}-{n}"
            events.append(e)
    return events


def write_raw(h: ProfileHarness, events: list[ev.TouchpointEvent]) -> None:
    """Writes events as another producer would: straight to the topic, no validation."""
    producer = KafkaProducer(bootstrap_servers=h.kafka.kafka_bootstrap_servers, acks="all")
    try:
        for e in events:
            producer.send(
                h.kafka.touchpoints_topic,
                key=partition_key(e),
                value=e.SerializeToString(),
                headers=touchpoint_headers(),
            ).get(timeout=30)
    finally:
        producer.close()


def wait_for_everyone(h: ProfileHarness, run: str, people: int, each: int) -> None:
    for i in range(people):
        h.wait_for_profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, f"{run}-c{i}", events=each)


def assert_dead_lettered(h: ProfileHarness, value: bytes, field: str, reason: str) -> None:
    letters = h.wait_for("the dead letter", lambda: h.dead_letters(value), timeout_s=60)
    headers = letters[0]
    assert header_value(headers, dl.FIELD_HEADER) == field
    assert reason in (header_value(headers, dl.REASON_HEADER) or "")


def test_a_deeply_nested_event_is_refused_alone_and_the_others_are_applied(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    run = f"deep{uuid.uuid4().hex[:6]}"
    valid = people_events(run, 30, 10)
    deep = page_view(customer_id=f"{run}-c0")
    deep.properties.update(nested_struct(32))

    reply = h.ingest.TrackBatch(
        ingest_pb2.TrackBatchRequest(events=[*valid[:150], deep, *valid[150:]]), timeout=60
    )

    assert reply.accepted_count == 300
    (refused,) = [r for r in reply.results if r.status != ingest_pb2.EventResult.STATUS_ACCEPTED]
    assert refused.index == 150
    assert refused.violations[0].field.startswith("properties.k")
    assert "nested more than" in refused.violations[0].description
    # The same event from a producer that skips ingestion: dead-lettered alone.
    write_raw(h, [deep])
    wait_for_everyone(h, run, 30, 10)
    assert_dead_lettered(h, deep.SerializeToString(), "properties.k.k.k.k.k.k.k.k.k.k", "nested")
    assert h.worker_exited() is None


def test_large_events_for_one_person_are_all_applied_in_bundles_under_the_limit(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    run = f"big{uuid.uuid4().hex[:6]}"
    events = []
    for n in range(1000):
        e = page_view(customer_id=f"{run}-c0")
        e.event_id = f"{run}-{n}"
        e.page_view.url = "https://shop.example/" + "u" * 2000
        e.page_view.referrer = "https://ref.example/" + "r" * 2000
        e.properties.update({"blob": "p" * 7900})
        events.append(e)
    assert all(11_000 < e.ByteSize() < 64 * 1024 for e in events)
    others = people_events(run, 5, 4)  # other people's events behind them
    for e in others:
        e.identities.customer_id = e.identities.customer_id.replace("-c", "-o")

    reply = h.ingest.TrackBatch(ingest_pb2.TrackBatchRequest(events=events), timeout=120)
    assert reply.accepted_count == 1000
    h.track(others)

    h.wait_for_profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, f"{run}-c0", events=1000)
    for i in range(5):
        h.wait_for_profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, f"{run}-o{i}", events=4)
    assert h.worker_exited() is None
    bundles = h.records(h.kafka.profile_events_topic)
    assert max(len(value) for _, value, _ in bundles) <= 512 * 1024


def test_an_invalid_timestamp_from_another_producer_is_dead_lettered_alone(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    run = f"ts{uuid.uuid4().hex[:6]}"
    bad = page_view(customer_id=f"{run}-c0")
    bad.occurred_at.nanos = 1_500_000_000
    behind = people_events(run, 3, 2)

    write_raw(h, [bad, *behind])

    wait_for_everyone(h, run, 3, 2)
    assert_dead_lettered(h, bad.SerializeToString(), "occurred_at", "not a valid timestamp")
    assert h.worker_exited() is None


def test_ingest_rejects_an_invalid_timestamp_per_event_naming_the_field(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    bad = page_view()
    bad.occurred_at.nanos = 1_500_000_000
    good = page_view()

    reply = h.ingest.TrackBatch(ingest_pb2.TrackBatchRequest(events=[good, bad]), timeout=30)

    assert reply.accepted_count == 1
    assert reply.results[0].status == ingest_pb2.EventResult.STATUS_ACCEPTED
    assert reply.results[1].status == ingest_pb2.EventResult.STATUS_REJECTED
    assert [v.field for v in reply.results[1].violations] == ["occurred_at"]


def test_a_record_too_large_to_dead_letter_whole_is_dead_lettered_without_its_value(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    run = f"huge{uuid.uuid4().hex[:6]}"
    # Accepted by the broker (under its 1 MiB limit) but, with the reason headers on top,
    # over what the worker's producer may send back out.
    huge = b"\x0a" + b"\xff" * 1_040_000
    producer = KafkaProducer(
        bootstrap_servers=h.kafka.kafka_bootstrap_servers, acks="all", max_request_size=1_048_000
    )
    try:
        producer.send(h.kafka.touchpoints_topic, key=b"huge-" + run.encode(), value=huge).get(
            timeout=30
        )
    finally:
        producer.close()
    behind = people_events(run, 2, 2)
    write_raw(h, behind)

    wait_for_everyone(h, run, 2, 2)

    def omitted() -> list[list[tuple[str, bytes]]] | None:
        letters = [
            headers
            for key, value, headers in h.records(h.kafka.touchpoints_dlq_topic)
            if key == b"huge-" + run.encode()
        ]
        return letters or None

    (headers,) = h.wait_for("the dead letter without its value", omitted, timeout_s=60)
    assert "1040001 bytes" in (header_value(headers, dl.VALUE_OMITTED_HEADER) or "")
    assert "not a protobuf TouchpointEvent" in (header_value(headers, dl.REASON_HEADER) or "")
    assert h.worker_exited() is None
