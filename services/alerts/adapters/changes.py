"""Closing the loop: every incident change on `cx.experience-incidents.v1`, and an
`ExperienceIncident` touchpoint event for a person's incident, so the profile counts the
person's open incidents like any other fact (ordering, dedup, merges).

- `ChangeLog` publishes IncidentChange records (kafka-python, acks=all, idempotent),
  keyed by profile id, or the dedup key for a touchpoint incident: one incident's changes
  stay in order on one partition. A change published twice (an outbox entry redelivered
  after a crash) is the same record again; consumers keep the highest `version`.
- `incident_event` makes the touchpoint event of a change that moves the incident's
  state (OPENED, ACKNOWLEDGED, RESOLVED). Its id derives from the incident id and
  version, so a redelivery is one event to the profile. It is addressed to the person's
  strongest identifier, fetched once per profile (`People`).

Both are synchronous (kafka-python, gRPC); the notifier calls them in threads.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import UTC, datetime

from cx.alerts.v1 import alerts_pb2 as pb
from cx.events.v1 import touchpoint_pb2 as ev
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from services.alerts.receivers.common import change_at_ms, severity_name
from services.alerts.receivers.sender import DeliveryError
from services.common.identifiers import identities_of
from services.common.kafka_io import (
    CONTENT_TYPE_HEADER,
    PROTOBUF_CONTENT_TYPE,
    SCHEMA_HEADER,
    SCHEMA_VERSION_HEADER,
    reliable_producer,
)
from services.common.telemetry import inject_kafka_headers
from services.common.validation import normalise_and_validate
from services.personalisation.adapters.profile_source import ProfileSource

log = logging.getLogger(__name__)

INCIDENT_CHANGE_SCHEMA = "cx.alerts.v1.IncidentChange"
# The touchpoint of the events the notifier writes (the incident's own touchpoint is in
# the payload): a person's touchpoint counters do not count incidents as visits.
EVENT_TOUCHPOINT = "alerts.incident"
SOURCE_SYSTEM = "cx-alerts"
EVENT_STATES = {
    pb.CHANGE_OPENED: ev.ExperienceIncident.STATE_OPENED,
    pb.CHANGE_ACKNOWLEDGED: ev.ExperienceIncident.STATE_ACKNOWLEDGED,
    pb.CHANGE_RESOLVED: ev.ExperienceIncident.STATE_RESOLVED,
}


def record_key(incident: pb.Incident) -> bytes:
    return (incident.profile_id or incident.dedup_key).encode()


def event_id(incident: pb.Incident) -> str:
    """`alerts:<incident id>:v<version>`: one event per incident version."""
    return f"alerts:{incident.incident_id}:v{incident.version}"


def incident_event(
    change: pb.IncidentChange, identifier: tuple[str, str], now: datetime | None = None
) -> ev.TouchpointEvent | None:
    """The ExperienceIncident event of a change that moves the state; None for the others
    (UPDATED, ESCALATED) and for incidents without a person."""
    state = EVENT_STATES.get(change.change)
    incident = change.incident
    if state is None or not incident.profile_id:
        return None
    event = ev.TouchpointEvent(
        event_id=event_id(incident),
        identities=identities_of(*identifier),
        channel=ev.CHANNEL_OTHER,
        touchpoint=EVENT_TOUCHPOINT,
        journey_stage=ev.JOURNEY_STAGE_SUPPORT,
        source_system=SOURCE_SYSTEM,
        experience_incident=ev.ExperienceIncident(
            incident_id=incident.incident_id,
            rule=incident.rule,
            state=state,
            severity=severity_name(incident),
            incident_touchpoint=incident.touchpoint,
        ),
    )
    now = now or datetime.now(UTC)
    at_ms = change_at_ms(change) or int(now.timestamp() * 1000)
    event.occurred_at.FromMilliseconds(min(at_ms, int(now.timestamp() * 1000)))
    event.received_at.FromDatetime(now)
    violations = normalise_and_validate(event, now=now)
    if violations:
        raise ValueError("; ".join(map(str, violations)))
    return event


class ChangeLog:
    """Publishes IncidentChange records, waiting for the broker's acknowledgement."""

    def __init__(self, bootstrap_servers: str, topic: str, timeout_s: float = 10.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _current(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = reliable_producer(
                        self.bootstrap_servers,
                        client_id="cx-alerts-notifier",
                        bootstrap_timeout_ms=5_000,
                    )
                except (KafkaError, OSError) as exc:
                    raise DeliveryError(f"Kafka: {exc}", retryable=True) from exc
            return self._producer

    def _discard(self, producer: KafkaProducer) -> None:
        """A producer that gave up on a record sends nothing more (kafka-python 3.0.12,
        see services/common/touchpoint_publisher.py): the next publish makes a new one."""
        with self._lock:
            if self._producer is producer:
                self._producer = None
        threading.Thread(target=producer.close, args=(0,), daemon=True).start()

    def publish(self, change: pb.IncidentChange) -> None:
        producer = self._current()
        headers = inject_kafka_headers(
            [
                (CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE.encode()),
                (SCHEMA_HEADER, INCIDENT_CHANGE_SCHEMA.encode()),
                (SCHEMA_VERSION_HEADER, b"1"),
            ]
        )
        try:
            future = producer.send(
                self.topic,
                key=record_key(change.incident),
                value=change.SerializeToString(),
                headers=headers,
            )
            future.get(timeout=self.timeout_s)
        except KafkaError as exc:
            retryable = isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", True))
            self._discard(producer)
            raise DeliveryError(f"Kafka: {exc}", retryable=retryable) from exc

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=5)


class People:
    """A profile's strongest person identifier, asked once per profile (a small LRU)."""

    def __init__(self, source: ProfileSource, timeout_s: float, size: int = 10_000) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self.size = size
        self._cache: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def identifier(self, profile_id: str) -> tuple[str, str] | None:
        with self._lock:
            if profile_id in self._cache:
                self._cache.move_to_end(profile_id)
                return self._cache[profile_id]
        found = self.source.person_identifier(profile_id, self.timeout_s)
        if found is None:
            return None
        with self._lock:
            self._cache[profile_id] = found
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return found

    def close(self) -> None:
        self.source.close()
