"""Property: whatever bytes reach the worker, every record ends applied or dead-lettered
with a reason, and nothing raises (so nothing can stop the stream).

Valid encoded events are mutated (bytes flipped, cut, inserted, spliced; fields set to
out-of-range timestamps, deep structs, non-finite numbers, long strings and lists,
unknown enum numbers) and fed through both stages of the real pipeline against the real
Redis, with an in-memory sender standing in for Kafka.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio as aioredis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.internal.v1 import stream_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import dead_letter as dl
from services.common.batches import OutRecord
from services.common.settings import redis_settings
from services.common.telemetry import header_value
from services.profile.adapters.store import ProfileStore
from services.profile.domain.segments import load_segments
from services.profile.pipeline import ProfilePipeline
from services.profile.settings import Guardrails, ProfileSettings
from tests.factories import nested_struct, page_view, survey

TOUCHPOINTS, EVENTS, CHANGES, DLQ = "p.touchpoints", "p.events", "p.changes", "p.dlq"
OCCURRED_AT = datetime(2026, 11, 1, 12, tzinfo=UTC)
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)


def base_events(run: str, n: int) -> list[ev.TouchpointEvent]:
    out = []
    for i in range(n):
        e = (
            survey(ev.SurveyResponse.METRIC_NPS, i % 11, customer_id=f"{run}-c{i % 3}")
            if i % 2
            else page_view(anonymous_id=f"{run}-a{i % 4}")
        )
        e.event_id = f"{run}-{i}"
        # Fixed bytes for a given draw: hypothesis replays examples and needs the same data.
        e.occurred_at.FromDatetime(OCCURRED_AT + timedelta(minutes=i))
        out.append(e)
    return out


@st.composite
def mutated(draw: st.DrawFn, event: ev.TouchpointEvent) -> bytes:
    """The event's bytes, changed in one of many ways (or not at all)."""
    kind = draw(st.sampled_from(["none", "flip", "cut", "insert", "splice", "field"]))
    data = bytearray(event.SerializeToString())
    if kind == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    elif kind == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=12))
    elif kind == "splice":
        # Concatenated protobufs merge: a valid-looking event with two payloads' fields.
        data += survey(ev.SurveyResponse.METRIC_CSAT, 3).SerializeToString()
    elif kind == "field":
        e = ev.TouchpointEvent()
        e.CopyFrom(event)
        change = draw(
            st.sampled_from(
                ["nanos", "seconds", "deep", "nan", "string", "list", "enum", "ids", "dur"]
            )
        )
        if change == "nanos":
            e.occurred_at.nanos = draw(INT32)
        elif change == "seconds":
            e.occurred_at.seconds = draw(INT64)
        elif change == "deep":
            e.properties.update(nested_struct(draw(st.integers(1, 45))))
        elif change == "nan":
            e.properties.update({"x": draw(st.sampled_from([float("nan"), float("inf")]))})
        elif change == "string":
            e.touchpoint = draw(st.text(max_size=300))
        elif change == "list":
            e.order_placed.order_id = "o-1"
            e.order_placed.total.currency_code = "EUR"
            for i in range(draw(st.integers(0, 400))):
                e.order_placed.items.add(product_id=f"p{i}", quantity=1)
        elif change == "enum":
            e.channel = draw(INT32)  # type: ignore[assignment]
        elif change == "ids":
            e.identities.Clear()
        elif change == "dur":
            e.support_contact.contact_id = "k"
            e.support_contact.reason = "billing"
            e.support_contact.wait_time.seconds = draw(INT64)
            e.support_contact.wait_time.nanos = draw(INT32)
        return e.SerializeToString()
    return bytes(data)


@dataclass
class MemorySender:
    sent: list[OutRecord] = field(default_factory=list)

    async def send(self, records: Sequence[OutRecord]) -> None:
        self.sent.extend(records)

    def on(self, topic: str) -> list[OutRecord]:
        return [r for r in self.sent if r.topic == topic]


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    """One key prefix for every example, deleted once (scanning a large keyspace per
    example would dominate the run)."""
    name = f"prop{uuid.uuid4().hex[:8]}:"
    yield name
    sync = redis.Redis.from_url(redis_settings().redis_url)
    keys = list(sync.scan_iter(match=f"{name}*", count=10_000))
    for i in range(0, len(keys), 1000):
        sync.delete(*keys[i : i + 1000])
    sync.close()


def pipeline_on(client: aioredis.Redis, prefix: str) -> ProfilePipeline:
    profile = ProfileSettings(key_prefix=prefix)
    store = ProfileStore(client, profile, Guardrails.load(profile.identity_file))
    return ProfilePipeline(
        store,
        load_segments(),
        dlq_topic=DLQ,
        events_topic=EVENTS,
        changes_topic=CHANGES,
        partition_of=lambda key: key[-1] % 4,
    )


def source(topic: str, offset: int, value: bytes | None) -> dl.SourceRecord:
    return dl.SourceRecord(topic, 0, offset, None, value, [("cx-test", b"1")])


def reason_of(letter: OutRecord) -> str:
    return header_value(letter.headers or [], dl.REASON_HEADER) or ""


def applied(sync: redis.Redis, prefix: str, event_id: str) -> bool:
    return bool(sync.exists(f"{prefix}seen:{event_id}"))


async def run_both_stages(
    p: ProfilePipeline, values: list[bytes]
) -> tuple[MemorySender, MemorySender]:
    first, second = MemorySender(), MemorySender()
    await p.process_touchpoints([source(TOUCHPOINTS, i, v) for i, v in enumerate(values)], first)
    bundles = [source(EVENTS, i, r.value) for i, r in enumerate(first.on(EVENTS))]
    await p.process_bundles(bundles, second)
    return first, second


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_every_mutated_record_is_applied_or_dead_lettered_with_a_reason(
    data: st.DataObject,
) -> None:
    run = f"prop{uuid.uuid4().hex[:8]}"
    prefix = f"{run}:"
    events = base_events(run, data.draw(st.integers(1, 6)))
    values = [data.draw(mutated(e)) for e in events]

    async def go() -> tuple[MemorySender, MemorySender]:
        client = aioredis.Redis.from_url(redis_settings().redis_url)
        try:
            return await run_both_stages(pipeline_on(client, prefix), values)
        finally:
            await client.aclose()

    first, second = asyncio.run(go())

    sync = redis.Redis.from_url(redis_settings().redis_url)
    try:
        letters = {
            int(header_value(d.headers or [], dl.SOURCE_OFFSET_HEADER) or -1): d
            for d in first.on(DLQ)
        }
        assert all(reason_of(d) for d in first.on(DLQ) + second.on(DLQ))
        assert all(d.value == values[offset] for offset, d in letters.items())
        late_letters = {d.value for d in second.on(DLQ)}
        for offset, value in enumerate(values):
            if offset in letters:
                continue
            event = dl.decode_touchpoint(value)  # stage 1 found it valid: so must this
            encoded = event.SerializeToString()
            assert applied(sync, prefix, event.event_id) or encoded in late_letters, offset
    finally:
        sync.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_unvalidated_events_inside_bundles_are_applied_or_dead_lettered_alone(
    prefix: str, data: st.DataObject
) -> None:
    """Bundles skip stage 1's validation (another writer on the repartition topic): the
    apply stage still never raises and never loses a good event to a bad neighbour."""
    run = f"b{uuid.uuid4().hex[:8]}"
    events = base_events(run, data.draw(st.integers(2, 6)))
    values = [data.draw(mutated(e)) for e in events]

    async def go() -> MemorySender:
        client = aioredis.Redis.from_url(redis_settings().redis_url)
        sender = MemorySender()
        try:
            p = pipeline_on(client, prefix)
            # Two profiles, as identity resolution would have made them.
            seeds = await p.store.resolve(
                [page_view(customer_id=f"{run}-seed{i}") for i in range(2)]
            )
            bundle = stream_pb2.ProfileEventBundle()
            for i, value in enumerate(values):
                bundle.events.add(profile_id=seeds[i % 2].profile_id or "", event=value)
            await p.process_bundles([source(EVENTS, 0, bundle.SerializeToString())], sender)
        finally:
            await client.aclose()
        return sender

    sender = asyncio.run(go())
    letters = {d.value: reason_of(d) for d in sender.on(DLQ)}
    assert all(letters.values())
    sync = redis.Redis.from_url(redis_settings().redis_url)
    try:
        for value in values:
            if value in letters:
                continue
            event = ev.TouchpointEvent.FromString(value)
            assert applied(sync, prefix, event.event_id), value
    finally:
        sync.close()
