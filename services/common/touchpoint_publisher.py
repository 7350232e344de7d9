"""Writes touchpoint events to Kafka, waiting for the broker to acknowledge each one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cx.events.v1 import touchpoint_pb2 as ev
from kafka import KafkaProducer
from kafka.errors import KafkaError

from services.common.kafka_io import reliable_producer, send_touchpoint, touchpoint_headers


@dataclass(frozen=True)
class Published:
    partition: int
    offset: int


class PublishError(Exception):
    pass


class TouchpointPublisher:
    """Produces events keyed by person and waits for the broker's acknowledgement."""

    def __init__(self, producer: KafkaProducer, topic: str, ack_timeout_s: float = 30.0) -> None:
        self._producer = producer
        self._topic = topic
        self._ack_timeout_s = ack_timeout_s

    @classmethod
    def connect(cls, bootstrap_servers: str, topic: str) -> TouchpointPublisher:
        return cls(reliable_producer(bootstrap_servers, client_id="cx-ingest"), topic)

    def publish(self, events: Sequence[ev.TouchpointEvent]) -> list[Published | PublishError]:
        """Sends all events, then waits for each acknowledgement (in request order)."""
        headers = touchpoint_headers()
        futures = [send_touchpoint(self._producer, self._topic, event, headers) for event in events]
        results: list[Published | PublishError] = []
        for future in futures:
            try:
                meta = future.get(timeout=self._ack_timeout_s)
                results.append(Published(meta.partition, meta.offset))
            except KafkaError as exc:
                results.append(PublishError(f"Kafka did not acknowledge the event: {exc}"))
        return results

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)
