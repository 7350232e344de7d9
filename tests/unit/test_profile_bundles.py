"""The repartition hop's bundles: one record per partition (split by size), every event
once and in order, and an event that cannot be read dead-lettered alone."""

from __future__ import annotations

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.internal.v1 import stream_pb2

from services.common.dead_letter import FIELD_HEADER, REASON_HEADER, InvalidRecord, SourceRecord
from services.profile.pipeline import (
    MAX_BUNDLE_BYTES,
    Forward,
    ProfilePipeline,
    bundle_forwards,
    read_bundle,
)
from tests.factories import page_view


def partition_by_last_char(key: bytes) -> int:
    return key[-1] % 3


def decoded(value: bytes) -> list[tuple[str, ev.TouchpointEvent]]:
    return [(pid, ev.TouchpointEvent.FromString(raw)) for pid, raw in read_bundle(value)]


def bundle_record(value: bytes | None, offset: int = 7) -> SourceRecord:
    return SourceRecord("t.profile-events", 3, offset, None, value, [("traceparent", b"x")])


def pipeline() -> ProfilePipeline:
    # unbundle needs no store.
    return ProfilePipeline(None, [], dlq_topic="t.dlq")  # type: ignore[arg-type]


def test_each_partition_gets_one_bundle_with_its_profiles_events_in_batch_order() -> None:
    forwards = [Forward(f"p{i % 5}", page_view(anonymous_id=f"anon-{i}")) for i in range(20)]
    bundles = bundle_forwards(forwards, partition_by_last_char)

    partitions = [partition for partition, _ in bundles]
    assert sorted(partitions) == sorted(
        {partition_by_last_char(f"p{i}".encode()) for i in range(5)}
    )
    seen = []
    for partition, value in bundles:
        items = decoded(value)
        assert {partition_by_last_char(pid.encode()) for pid, _ in items} == {partition}
        expected = [
            (f.profile_id, f.event.event_id)
            for f in forwards
            if partition_by_last_char(f.profile_id.encode()) == partition
        ]
        assert [(pid, e.event_id) for pid, e in items] == expected
        seen += items
    assert sorted(e.event_id for _, e in seen) == sorted(f.event.event_id for f in forwards)
    assert [e for _, e in seen if e.event_id == forwards[7].event.event_id] == [forwards[7].event]


def large_event(i: int) -> ev.TouchpointEvent:
    event = page_view(customer_id="c-large")
    event.event_id = f"large-{i}"
    event.properties.update({"blob": "x" * 7000})
    event.page_view.url = "https://shop.example/" + "y" * 2000
    return event


def test_bundles_split_by_size_stay_under_the_limit_and_keep_order() -> None:
    # 1000 events of about 9 KB for one person: one partition, far over one record's limit.
    forwards = [Forward("p-one", large_event(i)) for i in range(1000)]
    bundles = bundle_forwards(forwards, lambda _: 4)

    assert len(bundles) > 1
    assert all(partition == 4 for partition, _ in bundles)
    assert all(len(value) <= MAX_BUNDLE_BYTES for _, value in bundles)
    ids = [e.event_id for _, value in bundles for _, e in decoded(value)]
    assert ids == [f"large-{i}" for i in range(1000)]


def test_one_event_larger_than_the_limit_still_gets_a_bundle_of_its_own() -> None:
    forwards = [
        Forward("p1", page_view()),
        Forward("p1", large_event(1)),
        Forward("p1", page_view()),
    ]
    bundles = bundle_forwards(forwards, lambda _: 0, max_bytes=1000)
    assert [len(read_bundle(value)) for _, value in bundles] == [1, 1, 1]


@pytest.mark.parametrize("value", [None, b"\xff\xff\xff"])
def test_a_record_that_is_not_a_bundle_is_an_invalid_record(value: bytes | None) -> None:
    with pytest.raises(InvalidRecord) as caught:
        read_bundle(value)
    assert caught.value.field == "value"


def test_an_unreadable_event_is_dead_lettered_alone_with_its_own_bytes() -> None:
    good = [page_view(), page_view()]
    bundle = stream_pb2.ProfileEventBundle()
    bundle.events.add(profile_id="p1", event=good[0].SerializeToString())
    bundle.events.add(profile_id="p2", event=b"\x0a\xff\xff\xff")  # truncated field
    bundle.events.add(profile_id="", event=page_view().SerializeToString())
    bundle.events.add(profile_id="p3", event=good[1].SerializeToString())

    out = pipeline().unbundle([bundle_record(bundle.SerializeToString())])

    assert [(i.profile_id, i.event) for i in out.items] == [("p1", good[0]), ("p3", good[1])]
    assert [d.value for d in out.dead_letters] == [
        b"\x0a\xff\xff\xff",
        bundle.events[2].event,
    ]
    headers = [dict(d.headers) for d in out.dead_letters]
    assert [h[FIELD_HEADER] for h in headers] == [b"events[1].event", b"events[2].profile_id"]
    assert all(h[REASON_HEADER] for h in headers)
    assert all(h["cx-dlq-source-offset"] == b"7" for h in headers)
    assert out.items[1].source.value == good[1].SerializeToString()


def test_a_keyed_record_is_not_a_bundle_and_is_dead_lettered_whole() -> None:
    # One event keyed by its profile id, as a worker before the bundles wrote them.
    event = page_view(anonymous_id="anon-legacy")
    record = SourceRecord("t", 0, 1, b"p_legacy", event.SerializeToString(), [])

    out = pipeline().unbundle([record])
    assert out.items == []
    (letter,) = out.dead_letters
    assert (letter.key, letter.value) == (b"p_legacy", event.SerializeToString())
    assert dict(letter.headers)[FIELD_HEADER] == b"key"
    with pytest.raises(InvalidRecord) as caught:
        read_bundle(record.value, record.key)
    assert "not a bundle" in caught.value.reason
