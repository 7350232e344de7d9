"""Kafka producer settings, record headers and a reachability probe every service uses."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from services.common.telemetry import KafkaHeaders, inject_kafka_headers
from services.common.validation import partition_key

log = logging.getLogger(__name__)

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


# kafka-python logs every failed connection attempt and metadata refresh (about ten lines
# a second during an outage with a one-second reconnect backoff). The probe logs the
# outage once; of the library's repeated lines one of each kind a minute is kept.
_CHATTY_KAFKA_LOGGERS = (
    "kafka.cluster",
    "kafka.net.manager",
    "kafka.net.connection",
    "kafka.net.transport",
)
_REPEAT_EVERY_S = 60.0


class _OncePerInterval(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = re.sub(r"[0-9]+", "N", record.getMessage())[:80]
        key = (record.name, record.levelno, kind)
        now = time.monotonic()
        if now - self._last.get(key, -_REPEAT_EVERY_S) < _REPEAT_EVERY_S:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


_quiet = _OncePerInterval()


def quiet_repeated_kafka_logs() -> None:
    """Keeps one of each repeated kafka-python connection message a minute (idempotent)."""
    for name in _CHATTY_KAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if _quiet not in logger.filters:
            logger.addFilter(_quiet)


def reliable_producer(bootstrap_servers: str, client_id: str, **overrides: Any) -> KafkaProducer:
    """A producer that neither loses nor duplicates what the broker acknowledged.

    acks=all with the idempotent producer: retries cannot write a record twice or out of
    order. lz4 keeps the network and disk cost low for the small, repetitive payloads.

    Outages: `send` blocks at most `max_block_ms` when the topic's metadata is unknown
    (kafka-python's default is 60 s, during which the calling thread is stuck), and the
    reconnect backoff stops growing at one second (default 30 s), so that the producer
    finds the broker again within about a second of its return.
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
        "max_block_ms": 2_000,
        "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": 1_000,
    }
    config.update(overrides)
    quiet_repeated_kafka_logs()
    return KafkaProducer(**config)


def _connect_admin(**config: Any) -> KafkaAdminClient:
    """KafkaAdminClient(**config), minus the thread a failed bootstrap leaves behind.

    kafka-python 3.0 starts the client's IO thread before bootstrapping and does not stop
    it when bootstrapping fails: a probe that retries every second during an outage
    would leak one thread a second.
    """
    admin = KafkaAdminClient.__new__(KafkaAdminClient)
    try:
        admin.__init__(**config)
    except BaseException:
        for part in ("_metrics", "_client"):
            if getattr(admin, part, None) is not None:
                getattr(admin, part).close()
        if getattr(admin, "_net", None) is not None:
            admin._net.stop()
        raise
    return admin


class BrokerProbe:
    """Asks the cluster to describe itself every `every_s`, each attempt bounded by `timeout_s`.

    One admin client is kept (created once the cluster first answers), so a healthy probe
    reuses its connection and costs a small request a second. `reachable()` is cheap: it
    reads the last answer, and counts an answer older than a few periods (an attempt
    that hangs) as "unreachable".
    """

    def __init__(
        self,
        bootstrap_servers: str,
        every_s: float = 1.0,
        timeout_s: float = 1.0,
        on_reachable: Callable[[], None] = lambda: None,
    ) -> None:
        self._servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
        self._every_s = every_s
        self._timeout_ms = max(int(timeout_s * 1000), 100)
        self._on_reachable = on_reachable
        self._admin: KafkaAdminClient | None = None
        self._up = False
        quiet_repeated_kafka_logs()
        self._checked_at: float | None = None
        self._stopped = threading.Event()

    def _describe(self) -> bool:
        if self._admin is None:
            self._admin = _connect_admin(
                bootstrap_servers=self._servers,
                client_id="cx-broker-probe",
                bootstrap_timeout_ms=self._timeout_ms,
                request_timeout_ms=self._timeout_ms,
                reconnect_backoff_max_ms=1_000,
            )
        cluster: dict[str, Any] = self._admin.describe_cluster()
        return bool(cluster.get("brokers"))

    def check(self) -> bool:
        """One attempt now; records and returns whether the cluster answered."""
        try:
            up, reason = self._describe(), "no brokers"
        except (KafkaError, OSError) as exc:
            up, reason = False, str(exc) or type(exc).__name__
        if up != self._up:
            where = ",".join(self._servers)
            if up:
                log.info("Kafka at %s answers", where)
            else:
                log.warning("Kafka at %s does not answer: %s", where, reason)
        self._up, self._checked_at = up, time.monotonic()
        if up:
            self._on_reachable()
        return up

    def reachable(self) -> bool:
        checked_at = self._checked_at
        return (
            self._up
            and checked_at is not None
            and time.monotonic() - checked_at <= 3 * self._every_s + self._timeout_ms / 1000
        )

    def start(self) -> None:
        """Checks in a background thread until close()."""

        def loop() -> None:
            while not self._stopped.wait(self._every_s):
                self.check()
            if self._admin is not None:
                self._admin.close()

        threading.Thread(target=loop, name="kafka-probe", daemon=True).start()

    def close(self) -> None:
        self._stopped.set()
