"""The skeleton every Faust stream worker shares.

A worker's composition root (`create_app(settings, ...)`) builds its app with `faust_app`,
declares its agents with `each_batch` around a pipeline method, and produces through a
`FaustSender`. What each piece guarantees:
- `faust_app`: one configuration (raw bytes in and out, acks from every replica, short
  group timeouts so restarts rejoin fast, no web server, data under the var directory).
- `each_batch`: Faust commits a batch's offsets once the handler returns; the handler
  (a pipeline built on `services.common.batches`) retries infrastructure failures and
  dead-letters bad input itself, so what escapes it is a fault of the worker, and the
  process exits before Faust can commit past unprocessed records (Faust's `take_events`
  acks a batch even when the agent raises).
- `batch_span`: one span per batch, linked to the spans of the records' producers.
- `services.common.heartbeat`: the worker beats into Redis, a gRPC server reports the
  beats through its health service.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import faust
from opentelemetry import trace
from opentelemetry.trace import Link

from services.common.dead_letter import SourceRecord
from services.common.settings import KafkaSettings
from services.common.telemetry import KafkaHeaders, extract_kafka_context, inject_kafka_headers

log = logging.getLogger(__name__)
# Producers' spans a batch span links to, at most (a span's links are kept in memory).
MAX_LINKS = 64
# Exit status of a worker that stopped on a fault of its own (EX_SOFTWARE).
FATAL_EXIT_STATUS = 70


def faust_app(app_id: str, kafka: KafkaSettings, data_dir: Path, **overrides: Any) -> faust.App:
    """A Faust app configured as every worker of the platform is."""
    app_dir = data_dir / app_id
    app_dir.mkdir(parents=True, exist_ok=True)  # Faust creates no parents
    config: dict[str, Any] = {
        "broker": ";".join(f"kafka://{b}" for b in kafka.kafka_bootstrap_servers.split(",")),
        "store": "memory://",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": kafka.kafka_topic_partitions,
        "topic_replication_factor": kafka.kafka_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": 10,
        "broker_heartbeat_interval": 3,
        "broker_commit_interval": 1.0,
        "producer_acks": -1,
        "web_enabled": False,
        # Faust keeps a directory per app; under the var directory, not the repository.
        "datadir": str(app_dir),
    }
    config.update(overrides)
    return faust.App(app_id, **config)


def raw_topic(app: faust.App, name: str) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes)


def source_record(message: Any) -> SourceRecord:
    """What the pipelines and the dead-letter path need of a consumed Faust message."""
    raw = message.headers or []
    items = raw.items() if isinstance(raw, dict) else raw
    return SourceRecord(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        [(str(k), bytes(v)) for k, v in items if v is not None],
        message.timestamp and int(message.timestamp * 1000),
    )


def batch_span(
    tracer: trace.Tracer, name: str, records: Sequence[SourceRecord]
) -> AbstractContextManager[trace.Span]:
    """A span for one batch, linked to the spans of (up to MAX_LINKS of) its records."""
    links = []
    for record in records[:MAX_LINKS]:
        context = extract_kafka_context(record.headers)
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return tracer.start_as_current_span(
        name, links=links, attributes={"messaging.batch.message_count": len(records)}
    )


def fatal(exc: BaseException) -> None:
    """Ends the process before Faust can commit the offsets of an unprocessed batch."""
    log.critical("unexpected failure, exiting before offsets are committed: %r", exc, exc_info=exc)
    logging.shutdown()
    os._exit(FATAL_EXIT_STATUS)


async def each_batch(
    stream: Any,
    size: int,
    within_s: float,
    handle: Callable[[list[SourceRecord]], Awaitable[None]],
) -> None:
    """Runs `handle` on every batch of the agent's stream (see the module doc)."""
    async for events in stream.take_events(size, within=within_s):
        try:
            await handle([source_record(e.message) for e in events])
        except Exception as exc:
            fatal(exc)


class FaustSender:
    """Produces through a Faust app's producer (the `RecordSender` of the pipelines).

    Sends every record, then waits for every acknowledgement; records without headers
    get the current trace context."""

    def __init__(self, topics: Sequence[Any]) -> None:
        self._topics = {t.get_topic_name(): t for t in topics}

    async def send(self, records: Sequence[Any]) -> None:
        if not records:
            return
        context_headers: KafkaHeaders = inject_kafka_headers()
        acks = [
            await self._topics[r.topic].send(
                key=r.key,
                value=r.value,
                partition=r.partition,
                headers=context_headers if r.headers is None else list(r.headers),
            )
            for r in records
        ]
        await asyncio.gather(*acks)
