"""Kafka producer settings and record headers every service uses."""

from __future__ import annotations

from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev
from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from services.common.telemetry import KafkaHeaders, inject_kafka_headers
from services.common.validation import partition_key

TOUCHPOINT_SCHEMA = "cx.events.v1.TouchpointEvent"
SCHEMA_HEADER = "cx-schema"
SCHEMA_VERSION_HEADER = "cx-schema-version"
TOUCHPOINT_SCHEMA_VERSION = "1"
CONTENT_TYPE_HEADER = "content-type"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"

_TOUCHPOINT_HEADERS: KafkaHeaders = [
    (CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE.encode()),
    (SCHEMA_HEADER, TOUCHPOINT_SCHEMA.encode()),
    (SCHEMA_VERSION_HEADER, TOUCHPOINT_SCHEMA_VERSION.encode()),
]


def touchpoint_headers() -> KafkaHeaders:
    """Schema headers plus the current trace context."""
    return inject_kafka_headers(_TOUCHPOINT_HEADERS)


def send_touchpoint(
    producer: KafkaProducer, topic: str, event: ev.TouchpointEvent, headers: KafkaHeaders
) -> FutureRecordMetadata:
    """Sends one event keyed by its person, so one person's events stay in order."""
    return producer.send(
        topic, key=partition_key(event), value=event.SerializeToString(), headers=headers
    )


def reliable_producer(bootstrap_servers: str, client_id: str, **overrides: Any) -> KafkaProducer:
    """A producer that neither loses nor duplicates what the broker acknowledged.

    acks=all with the idempotent producer: retries cannot write a record twice or out of
    order. lz4 keeps the network and disk cost low for the small, repetitive payloads.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers.split(","),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": "lz4",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
        "delivery_timeout_ms": 30_000,
        "request_timeout_ms": 15_000,
    }
    config.update(overrides)
    return KafkaProducer(**config)
