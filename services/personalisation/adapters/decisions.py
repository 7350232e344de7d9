"""Where decisions go: Redis keeps each one for outcome reports (`DecisionStore`), and
the decision log on Kafka (`DecisionLog`, topic `cx.decisions.v1`) keeps them for
learning and offline evaluation.

Keys (prefix `PERSONALISATION_KEY_PREFIX`, `cx:` by default):
  nba:decision:{decision id}   JSON of a StoredDecision, expiring after the decision TTL
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import asdict, dataclass

import redis
from cx.personalisation.v1 import personalisation_pb2 as pb
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter

from services.common.kafka_io import reliable_producer
from services.common.telemetry import inject_kafka_headers

log = logging.getLogger(__name__)

LOG_RECORDS = Counter(
    "cx_personalisation_decision_log_records",
    "Decision records by what became of them (sent, failed, dropped)",
    ["result"],
)
# Decisions waiting for the log's producer; beyond this they are dropped and counted.
LOG_QUEUE_SIZE = 50_000


@dataclass(frozen=True)
class ChosenAction:
    action_id: str
    kind: str
    marketing: bool


@dataclass(frozen=True)
class StoredDecision:
    """What an outcome report needs to know of its decision."""

    decision_id: str
    # The profile, or empty for a person without one.
    profile_id: str
    # The contact ledger's key for the person, or empty (an anonymous visitor).
    person: str
    # The identifier the decision was asked for (code, value), to address outcome events.
    identifier: tuple[str, str] | None
    placement: str
    channel: str
    decided_at_ms: int
    actions: tuple[ChosenAction, ...]

    def action(self, action_id: str) -> ChosenAction | None:
        return next((a for a in self.actions if a.action_id == action_id), None)


class DecisionStore:
    def __init__(self, client: redis.Redis, key_prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = key_prefix
        self.ttl_s = ttl_s

    def key(self, decision_id: str) -> str:
        return f"{self.prefix}nba:decision:{decision_id}"

    def save(self, decision: StoredDecision) -> None:
        self.client.set(self.key(decision.decision_id), json.dumps(asdict(decision)), ex=self.ttl_s)

    def load(self, decision_id: str) -> StoredDecision | None:
        raw = self.client.get(self.key(decision_id))
        if raw is None:
            return None
        data = json.loads(raw)
        identifier = data.get("identifier")
        return StoredDecision(
            decision_id=data["decision_id"],
            profile_id=data["profile_id"],
            person=data["person"],
            identifier=(identifier[0], identifier[1]) if identifier else None,
            placement=data["placement"],
            channel=data["channel"],
            decided_at_ms=int(data["decided_at_ms"]),
            actions=tuple(ChosenAction(**a) for a in data["actions"]),
        )


class DecisionLog:
    """Sends decision records to Kafka from a thread of its own, so that a decision never
    waits for the broker: during an outage records wait in the producer (up to
    `timeout_s`) and in a bounded queue; what cannot be kept is dropped, counted in
    `cx_personalisation_decision_log_records{result="dropped"}` and logged."""

    def __init__(self, bootstrap_servers: str, topic: str, timeout_s: float) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
        self._queue: queue.Queue[tuple[bytes, bytes, list[tuple[str, bytes]]] | None] = queue.Queue(
            LOG_QUEUE_SIZE
        )
        self._producer: KafkaProducer | None = None
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._closed = threading.Event()
        self._thread.start()

    def append(self, key: str, record: pb.DecisionRecord) -> None:
        try:
            self._queue.put_nowait(
                (key.encode(), record.SerializeToString(), inject_kafka_headers())
            )
        except queue.Full:
            LOG_RECORDS.labels("dropped").inc()
            log.warning("decision log queue full: decision %s not logged", record.decision_id)

    def connected(self) -> bool:
        return self._producer is not None and bool(self._producer.bootstrap_connected())

    def _connect(self) -> KafkaProducer | None:
        try:
            return reliable_producer(
                self.bootstrap_servers,
                client_id="cx-personalisation-decisions",
                linger_ms=50,
                delivery_timeout_ms=int(self.timeout_s * 1000),
                request_timeout_ms=15_000,
                max_block_ms=10_000,
                bootstrap_timeout_ms=5_000,
            )
        except (KafkaError, OSError) as exc:
            log.warning("decision log: Kafka producer not created yet: %s", exc)
            return None

    def _sent(self, _meta: object) -> None:
        LOG_RECORDS.labels("sent").inc()

    def _failed(self, exc: BaseException) -> None:
        LOG_RECORDS.labels("failed").inc()
        log.warning("decision log: a record was not delivered: %s", exc)

    def _run(self) -> None:
        while self._producer is None and not self._closed.is_set():
            self._producer = self._connect()
            if self._producer is None:
                self._closed.wait(2.0)
        while True:
            item = self._queue.get()
            if item is None or self._producer is None:
                return
            key, value, headers = item
            try:
                future = self._producer.send(self.topic, key=key, value=value, headers=headers)
                future.add_callback(self._sent)
                future.add_errback(self._failed)
            except KafkaError as exc:
                self._failed(exc)

    def close(self, timeout_s: float = 10.0) -> None:
        """Sends what is queued (within `timeout_s`), then stops."""
        self._closed.set()
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("decision log: %d records not sent at close", self._queue.qsize())
        self._thread.join(timeout_s)
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout_s)
            except KafkaError as exc:
                # Stopping must not fail: what was not acknowledged is counted and said.
                LOG_RECORDS.labels("failed").inc()
                log.warning("decision log: records not acknowledged at close: %s", exc)
