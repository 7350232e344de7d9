"""Writes touchpoint events to Kafka, waiting for the broker to acknowledge each one.

During an outage callers get `BrokerUnavailable` fast instead of blocking a thread: a
probe asks the cluster every second whether it answers, and while it does not, `publish`
fails at once without sending (a circuit breaker). When the broker does answer, a call
waits for its acknowledgements at most its timeout (the caller passes what is left of
its client's deadline). A call that fails this way may have written some of its events:
retrying with the same event ids is safe, because consumers drop duplicates by event id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cx.events.v1 import touchpoint_pb2 as ev
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from services.common.grpc_errors import DependencyUnavailable
from services.common.kafka_io import (
    BrokerProbe,
    reliable_producer,
    send_touchpoint,
    touchpoint_headers,
)

log = logging.getLogger(__name__)

# Longest a publish waits for acknowledgements unless the caller asks for less.
DEFAULT_ACK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Published:
    partition: int
    offset: int


class PublishError(Exception):
    """Kafka refused the events for a reason a retry will not change."""


class BrokerUnavailable(DependencyUnavailable, PublishError):
    """Kafka cannot be reached or did not acknowledge in time; a retry may succeed."""

    def __init__(self, message: str) -> None:
        super().__init__("Kafka", message)


class TouchpointPublisher:
    """Produces events keyed by person and waits for the broker's acknowledgement."""

    def __init__(
        self,
        producer: KafkaProducer | None,
        topic: str,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        probe: BrokerProbe | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._ack_timeout_s = ack_timeout_s
        self._probe = probe
        self._bootstrap_servers = ""
        # Set when the current producer gave up on a record: see _delivery_failed.
        self._producer_broken = False
        self._replacing = threading.Lock()

    @classmethod
    def connect(
        cls, bootstrap_servers: str, topic: str, ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    ) -> TouchpointPublisher:
        """A publisher with its probe running; starts even while Kafka is down (the
        producer is then created once the broker answers)."""
        publisher = cls(None, topic, ack_timeout_s)
        publisher._bootstrap_servers = bootstrap_servers
        publisher._probe = BrokerProbe(bootstrap_servers, on_reachable=publisher._renew_producer)
        publisher._probe.check()
        publisher._probe.start()
        return publisher

    def _renew_producer(self) -> None:
        """Creates the producer, or replaces a broken one; called while Kafka answers."""
        if (
            self._producer is not None and not self._producer_broken
        ) or not self._bootstrap_servers:
            return
        if not self._replacing.acquire(blocking=False):
            return
        try:
            producer = reliable_producer(
                self._bootstrap_servers, client_id="cx-ingest", bootstrap_timeout_ms=5_000
            )
        except (KafkaError, OSError) as exc:
            log.warning("Kafka producer not created yet: %s", exc)
            return
        finally:
            self._replacing.release()
        old, self._producer, self._producer_broken = self._producer, producer, False
        if old is not None:
            log.info("Kafka producer replaced")
            # Its remaining records fail; their callers were answered UNAVAILABLE already.
            threading.Thread(target=old.close, args=(0,), daemon=True).start()

    def _delivery_failed(self, producer: KafkaProducer, exc: Exception) -> None:
        """A record's delivery failed for good (it expired, or the broker refused it).

        kafka-python 3.0.12 then resets the idempotent producer's id without ever asking
        for a new one, and the producer sends nothing more: it is replaced by a new one
        (a new producer id, as the Java client would take) as soon as Kafka answers.
        """
        if producer is self._producer and not self._producer_broken:
            self._producer_broken = True
            log.warning("Kafka producer gave up on a record (%s): replacing it", exc)

    def available(self) -> bool:
        """Whether the broker answered the last probe (cheap: no network)."""
        return (
            self._producer is not None
            and not self._producer_broken
            and (self._probe is None or self._probe.reachable())
        )

    def publish(
        self, events: Sequence[ev.TouchpointEvent], timeout_s: float | None = None
    ) -> list[Published]:
        """Sends all events, then waits for every acknowledgement, `timeout_s` in all
        (at most the publisher's ack timeout). Results are in request order.

        Raises BrokerUnavailable when Kafka is unreachable (at once) or did not
        acknowledge every event in time, and PublishError when it refused an event.
        """
        producer = self._producer
        if producer is None or not self.available():
            raise BrokerUnavailable("Kafka is unreachable")
        budget = self._ack_timeout_s if timeout_s is None else min(timeout_s, self._ack_timeout_s)
        deadline = time.monotonic() + max(budget, 0.0)
        headers = touchpoint_headers()
        try:
            futures = [send_touchpoint(producer, self._topic, event, headers) for event in events]
            for future in futures:
                future.add_errback(self._delivery_failed, producer)
        except KafkaTimeoutError as exc:  # metadata not available within max_block_ms
            raise BrokerUnavailable("Kafka did not answer") from exc
        except KafkaError as exc:
            raise PublishError(f"Kafka refused an event: {exc}") from exc
        results: list[Published] = []
        for future in futures:
            try:
                meta = future.get(timeout=max(deadline - time.monotonic(), 0.0))
            except KafkaError as exc:
                if isinstance(exc, KafkaTimeoutError) or exc.retriable:
                    raise BrokerUnavailable(
                        f"Kafka did not acknowledge {len(events)} event(s) within {budget:.1f} s"
                    ) from exc
                raise PublishError(f"Kafka refused an event: {exc}") from exc
            results.append(Published(meta.partition, meta.offset))
        return results

    def close(self, timeout_s: float = 10.0) -> None:
        if self._probe is not None:
            self._probe.close()
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)
