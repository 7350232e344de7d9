"""Batch processing: infrastructure failures retried in place, anything else isolated to
the one item that causes it (and dead-lettered), never a crash of the whole batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import aiokafka.errors
import kafka.errors
import pytest
import redis.exceptions
from cx.events.v1 import touchpoint_pb2 as ev

from services.common import batches
from services.common.batches import OutRecord
from services.common.dead_letter import REASON_HEADER, SourceRecord
from services.common.telemetry import header_value
from services.profile.pipeline import (
    Forward,
    ProfilePipeline,
    bundle_forwards,
    read_bundle,
)
from tests.factories import page_view
from tests.unit.fake_stores import StoreFailingOn


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Error 111 connecting"),
        redis.exceptions.TimeoutError(),
        redis.exceptions.BusyLoadingError(),
        redis.exceptions.ResponseError("OOM command not allowed when used memory > maxmemory"),
        aiokafka.errors.KafkaTimeoutError(),
        aiokafka.errors.KafkaConnectionError(),
        aiokafka.errors.NotLeaderForPartitionError(),
        kafka.errors.KafkaTimeoutError(),
        ConnectionRefusedError(),
        TimeoutError(),
    ],
)
def test_unavailable_dependencies_are_infrastructure_failures(exc: Exception) -> None:
    assert batches.is_infrastructure_failure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("Timestamp is not valid"),
        OverflowError(),
        KeyError("x"),
        redis.exceptions.ResponseError("ERR user_script:12: attempt to compare nil"),
        aiokafka.errors.MessageSizeTooLargeError(),
        aiokafka.errors.KafkaError("unknown"),
    ],
)
def test_anything_about_the_input_is_not(exc: Exception) -> None:
    assert not batches.is_infrastructure_failure(exc)


async def test_infrastructure_failures_are_retried_until_they_pass() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("down")
        return "done"

    assert await batches.retry_infrastructure("test", flaky, max_wait_s=0.01) == "done"
    assert len(calls) == 3


async def test_other_failures_are_not_retried() -> None:
    calls = []

    async def broken() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await batches.retry_infrastructure("test", broken)
    assert len(calls) == 1


async def test_a_failing_batch_is_run_item_by_item_and_only_the_bad_item_is_poison() -> None:
    runs: list[list[int]] = []
    poisoned: list[tuple[int, str]] = []

    async def run(items: Sequence[int]) -> None:
        runs.append(list(items))
        if 3 in items:
            raise ValueError("three is bad")

    async def poison(item: int, exc: Exception) -> None:
        poisoned.append((item, str(exc)))

    await batches.process_isolating([1, 2, 3, 4], run, poison, what="test")

    assert runs == [[1, 2, 3, 4], [1], [2], [3], [4]]
    assert poisoned == [(3, "three is bad")]


async def test_a_batch_whose_every_item_fails_the_same_way_is_a_fault_of_the_worker() -> None:
    poisoned: list[int] = []

    async def broken(items: Sequence[int]) -> None:
        raise ValueError('unknown enum label ""')

    async def poison(item: int, exc: Exception) -> None:
        poisoned.append(item)

    items = list(range(batches.SYSTEMIC_MIN_ITEMS))
    with pytest.raises(batches.SystemicFailure, match="all 8 items failed with ValueError"):
        await batches.process_isolating(items, broken, poison, what="test")
    assert poisoned == []
    # Small batches, or mixed outcomes, are input problems: dead-lettered.
    await batches.process_isolating(items[:3], broken, poison, what="test")
    assert poisoned == [0, 1, 2]


async def test_a_good_batch_runs_once() -> None:
    runs: list[list[int]] = []

    async def run(items: Sequence[int]) -> None:
        runs.append(list(items))

    async def poison(item: int, exc: Exception) -> None:
        raise AssertionError("nothing is poison")

    await batches.process_isolating([1, 2], run, poison, what="test")
    assert runs == [[1, 2]]


# --- the profile pipeline on a store that fails for one event ------------------------------


@dataclass
class MemorySender:
    sent: list[OutRecord] = field(default_factory=list)
    refuse_values_over: int | None = None

    async def send(self, records: Sequence[OutRecord]) -> None:
        for r in records:
            if (
                self.refuse_values_over is not None
                and len(r.value or b"") > self.refuse_values_over
            ):
                raise aiokafka.errors.MessageSizeTooLargeError()
        self.sent.extend(records)


def pipeline(store: StoreFailingOn) -> ProfilePipeline:
    return ProfilePipeline(
        store,  # type: ignore[arg-type]
        [],
        dlq_topic="dlq",
        events_topic="events",
        changes_topic="changes",
    )


def touchpoint_records(events: Sequence[ev.TouchpointEvent]) -> list[SourceRecord]:
    return [
        SourceRecord("touchpoints", 0, i, b"k", e.SerializeToString(), [])
        for i, e in enumerate(events)
    ]


async def test_resolve_dead_letters_only_the_record_that_fails_and_forwards_the_rest() -> None:
    events = [page_view() for _ in range(5)]
    store = StoreFailingOn(poison={events[2].event_id}, outages=2)
    sender = MemorySender()

    await pipeline(store).process_touchpoints(touchpoint_records(events), sender)

    (letter,) = [r for r in sender.sent if r.topic == "dlq"]
    assert letter.value == events[2].SerializeToString()
    assert "ValueError: cannot resolve" in (header_value(letter.headers or [], REASON_HEADER) or "")
    forwarded = [
        ev.TouchpointEvent.FromString(raw).event_id
        for r in sender.sent
        if r.topic == "events"
        for _, raw in read_bundle(r.value)
    ]
    assert set(forwarded) == {e.event_id for i, e in enumerate(events) if i != 2}


async def test_apply_dead_letters_only_the_event_that_fails_and_applies_its_neighbours() -> None:
    events = [page_view() for _ in range(6)]
    store = StoreFailingOn(poison={events[4].event_id}, outages=1)
    bundles = bundle_forwards([Forward("p-1", e) for e in events], lambda _: 0)
    records = [SourceRecord("events", 0, i, None, v, []) for i, (_, v) in enumerate(bundles)]
    sender = MemorySender()

    await pipeline(store).process_bundles(records, sender)

    assert sorted(store.applied) == sorted(e.event_id for i, e in enumerate(events) if i != 4)
    (letter,) = [r for r in sender.sent if r.topic == "dlq"]
    assert letter.value == events[4].SerializeToString()
    assert "ResponseError" in (header_value(letter.headers or [], REASON_HEADER) or "")


async def test_a_dead_letter_the_broker_refuses_goes_without_its_value() -> None:
    big = SourceRecord("touchpoints", 0, 9, b"k", b"\xff" * 5000, [])
    sender = MemorySender(refuse_values_over=1000)

    await pipeline(StoreFailingOn(set())).process_touchpoints([big], sender)

    (letter,) = sender.sent
    assert letter.value is None
    assert "5000 bytes" in (header_value(letter.headers or [], "cx-dlq-value-omitted") or "")
    assert header_value(letter.headers or [], REASON_HEADER)
