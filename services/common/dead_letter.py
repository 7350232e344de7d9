"""Consumer-side decoding of touchpoint records, with dead-lettering of bad ones.

Records on `cx.touchpoints.v1` written by other producers may not be valid
TouchpointEvents. A consumer never drops them silently: it decodes each record with
`decode_touchpoint`, and what fails goes to `cx.touchpoints.dlq.v1` unchanged (same key,
value and headers) with the reason in `cx-dlq-*` headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cx.events.v1 import touchpoint_pb2 as ev
from google.protobuf.message import DecodeError

from services.common.kafka_io import SCHEMA_HEADER, TOUCHPOINT_SCHEMA
from services.common.telemetry import KafkaHeaders, header_value
from services.common.validation import normalise_and_validate

REASON_HEADER = "cx-dlq-reason"
FIELD_HEADER = "cx-dlq-field"
SOURCE_TOPIC_HEADER = "cx-dlq-source-topic"
SOURCE_PARTITION_HEADER = "cx-dlq-source-partition"
SOURCE_OFFSET_HEADER = "cx-dlq-source-offset"
CONSUMER_HEADER = "cx-dlq-consumer"
FAILED_AT_HEADER = "cx-dlq-failed-at"
# Set when the broker refused the dead letter with its value (at the size limit).
VALUE_OMITTED_HEADER = "cx-dlq-value-omitted"


class InvalidRecord(Exception):
    """A record that is not a valid TouchpointEvent, with the reason and field."""

    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class SourceRecord:
    """The parts of a consumed Kafka record the dead-letter path needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: KafkaHeaders
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: KafkaHeaders


class DeadLetterSink(Protocol):
    def send(self, letter: DeadLetter) -> None: ...


def decode_touchpoint(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None = None,
    *,
    record_time: datetime | None = None,
) -> ev.TouchpointEvent:
    """Parses and validates one record value; raises InvalidRecord when it is not valid.

    Future timestamps are judged against the record's own time (or this clock, when that
    is earlier), so a replay of old records does not fail on them.
    """
    if value is None:
        raise InvalidRecord("record has no value (tombstone)", "value")
    schema = header_value(headers, SCHEMA_HEADER)
    if schema is not None and schema != TOUCHPOINT_SCHEMA:
        raise InvalidRecord(f"schema header is {schema!r}, expected {TOUCHPOINT_SCHEMA}", "value")
    event = ev.TouchpointEvent()
    try:
        event.ParseFromString(value)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise InvalidRecord(f"not a protobuf TouchpointEvent: {exc}", "value") from exc
    # A record's time is the producer's to set: never later than this consumer's clock,
    # so an event cannot pass as "not in the future" by claiming a future record time.
    wall = datetime.now(UTC)
    judged_at = wall if record_time is None else min(record_time, wall)
    violations = normalise_and_validate(event, now=judged_at)
    if violations:
        raise InvalidRecord("; ".join(map(str, violations)), violations[0].field)
    return event


def record_time(timestamp_ms: int | None) -> datetime | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


def dead_letter(
    record: SourceRecord,
    error: InvalidRecord,
    *,
    dlq_topic: str,
    consumer: str,
    now: datetime | None = None,
) -> DeadLetter:
    """The dead-letter record for a bad one: the original bytes plus why and where."""
    failed_at = (now or datetime.now(UTC)).isoformat()
    headers: KafkaHeaders = [(k, v) for k, v in record.headers if not k.startswith("cx-dlq-")]
    headers += [
        (REASON_HEADER, error.reason.encode()),
        (FIELD_HEADER, error.field.encode()),
        (SOURCE_TOPIC_HEADER, record.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(record.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(record.offset).encode()),
        (CONSUMER_HEADER, consumer.encode()),
        (FAILED_AT_HEADER, failed_at.encode()),
    ]
    return DeadLetter(dlq_topic, record.key, record.value, headers)


class TouchpointDecoder:
    """Decodes consumed records, sending the bad ones to the dead-letter sink.

    Records are dead-lettered before the caller commits their offsets, so a bad record
    is never lost: it is either still on the source topic or on the dead-letter topic.
    """

    # Events may claim to have happened this far after the record's broker timestamp.
    max_clock_skew = timedelta(minutes=5)

    def __init__(self, sink: DeadLetterSink, *, dlq_topic: str, consumer: str) -> None:
        self._sink = sink
        self._dlq_topic = dlq_topic
        self._consumer = consumer
        self.dead_lettered = 0

    def decode(self, record: SourceRecord) -> ev.TouchpointEvent | None:
        try:
            return decode_touchpoint(
                record.value, record.headers, record_time=record_time(record.timestamp_ms)
            )
        except InvalidRecord as error:
            self._sink.send(
                dead_letter(record, error, dlq_topic=self._dlq_topic, consumer=self._consumer)
            )
            self.dead_lettered += 1
            return None
