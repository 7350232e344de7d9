from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common import dead_letter as dl
from services.common.kafka_io import SCHEMA_HEADER
from tests.factories import page_view


def record(value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> dl.SourceRecord:
    return dl.SourceRecord("cx.touchpoints.v1", 3, 41, b"key", value, headers or [], None)


def test_valid_record_decodes() -> None:
    event = page_view(email="A@Example.com")
    decoded = dl.decode_touchpoint(event.SerializeToString())
    assert decoded.event_id == event.event_id
    assert decoded.identities.email == "a@example.com"


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (None, [], "tombstone"),
        (b"\xff\xff\xff", [], "not a protobuf TouchpointEvent"),
        (b"{}", [(SCHEMA_HEADER, b"cx.other.v1.Thing")], "schema header"),
    ],
)
def test_undecodable_records_raise_with_reason(
    value: bytes | None, headers: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(dl.InvalidRecord) as info:
        dl.decode_touchpoint(value, headers)
    assert reason in info.value.reason
    assert info.value.field == "value"


def test_invalid_event_names_its_first_field() -> None:
    event = page_view()
    event.ClearField("event_id")
    with pytest.raises(dl.InvalidRecord) as info:
        dl.decode_touchpoint(event.SerializeToString())
    assert info.value.field == "event_id"


class ListSink:
    def __init__(self) -> None:
        self.letters: list[dl.DeadLetter] = []

    def send(self, letter: dl.DeadLetter) -> None:
        self.letters.append(letter)


def test_decoder_dead_letters_bad_records_with_original_bytes_and_reason() -> None:
    sink = ListSink()
    decoder = dl.TouchpointDecoder(sink, dlq_topic="cx.touchpoints.dlq.v1", consumer="unit")
    assert decoder.decode(record(b"garbage", [("traceparent", b"00-abc")])) is None
    good = page_view()
    assert decoder.decode(record(good.SerializeToString())) == good
    (letter,) = sink.letters
    headers = dict(letter.headers)
    assert letter.topic == "cx.touchpoints.dlq.v1"
    assert (letter.key, letter.value) == (b"key", b"garbage")
    assert headers["traceparent"] == b"00-abc"
    assert headers[dl.SOURCE_PARTITION_HEADER] == b"3"
    assert headers[dl.SOURCE_OFFSET_HEADER] == b"41"
    assert headers[dl.CONSUMER_HEADER] == b"unit"
    assert b"not a protobuf" in headers[dl.REASON_HEADER]
    assert decoder.dead_lettered == 1


def test_future_events_are_judged_against_record_time() -> None:
    event = page_view()
    event.occurred_at.FromDatetime(datetime(2024, 1, 1, 0, 4, tzinfo=UTC))
    replayed = datetime(2024, 1, 1, 0, 1, tzinfo=UTC)
    assert dl.decode_touchpoint(event.SerializeToString(), record_time=replayed) == event
    event.occurred_at.FromDatetime(datetime(2024, 1, 1, 0, 10, tzinfo=UTC))
    with pytest.raises(dl.InvalidRecord, match="in the future"):
        dl.decode_touchpoint(event.SerializeToString(), record_time=replayed)


def test_a_future_record_time_does_not_make_a_future_event_valid() -> None:
    # Producers set record times: one in 2030 must not carry a 2030 event past the check.
    event = page_view()
    event.occurred_at.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
    with pytest.raises(dl.InvalidRecord, match="in the future"):
        dl.decode_touchpoint(
            event.SerializeToString(), record_time=datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
        )
    with pytest.raises(dl.InvalidRecord):
        dl.decode_touchpoint(event.SerializeToString())
