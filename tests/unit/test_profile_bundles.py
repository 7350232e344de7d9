"""The repartition hop's bundles: one record per partition, every event once, in order."""

from __future__ import annotations

import pytest

from services.common.dead_letter import InvalidRecord
from services.profile.pipeline import Forward, bundle_forwards, read_bundle
from tests.factories import page_view


def partition_by_last_char(key: bytes) -> int:
    return key[-1] % 3


def test_each_partition_gets_one_bundle_with_its_profiles_events_in_batch_order() -> None:
    forwards = [Forward(f"p{i % 5}", page_view(anonymous_id=f"anon-{i}")) for i in range(20)]
    bundles = bundle_forwards(forwards, partition_by_last_char)

    assert set(bundles) == {partition_by_last_char(f"p{i}".encode()) for i in range(5)}
    seen = []
    for partition, value in bundles.items():
        items = read_bundle(value)
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


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (None, "value"),
        (b"\xff\xff\xff", "value"),
        (
            bundle_forwards([Forward("", page_view(anonymous_id="a"))], lambda _: 0)[0],
            "events[0].profile_id",
        ),
    ],
)
def test_a_corrupt_bundle_is_an_invalid_record_naming_the_field(
    value: bytes | None, field: str
) -> None:
    with pytest.raises(InvalidRecord) as caught:
        read_bundle(value)
    assert caught.value.field == field


def test_a_keyed_record_is_one_event_of_the_profile_in_its_key_as_before_bundles() -> None:
    event = page_view(anonymous_id="anon-legacy")

    assert read_bundle(event.SerializeToString(), key=b"p_legacy") == [("p_legacy", event)]
    with pytest.raises(InvalidRecord, match="not a protobuf TouchpointEvent"):
        read_bundle(b"\xff\xff", key=b"p_legacy")
