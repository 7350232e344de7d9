"""The profile stream worker (Faust): `python -m services.profile.worker`.

Two agents, each taking batches:
- `resolve_identities` reads `cx.touchpoints.v1`, dead-letters bad records, resolves each
  event's profile and forwards the batch to `cx.profile-events.v1` as one bundle record
  per partition, the partition being the one Kafka's default partitioner gives the
  profile id;
- `apply_events` reads those bundles, so one profile's events are applied in order by one
  worker, applies each batch in one Redis script call and publishes change events to
  `cx.profile-changes.v1`.

Offsets are committed by Faust only after a batch returns, and a batch returns only after
its Redis writes and Kafka sends succeeded: transient failures are retried in place, and
anything unexpected ends the process before Faust can commit past unapplied events
(Faust's `take` acks a batch even when the agent raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import faust
import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2
from opentelemetry import trace
from opentelemetry.trace import Link
from redis.exceptions import RedisError

from services.common.dead_letter import SourceRecord
from services.common.gc_tuning import freeze_startup_heap
from services.common.logs import setup_logging
from services.common.settings import kafka_settings, metrics_ports, redis_settings
from services.common.telemetry import (
    KafkaHeaders,
    extract_kafka_context,
    inject_kafka_headers,
    setup_tracing,
    start_metrics_server,
)
from services.profile.adapters.store import ProfileStore
from services.profile.domain.segments import load_segments
from services.profile.pipeline import OutRecord, ProfilePipeline
from services.profile.settings import Guardrails, ProfileSettings

log = logging.getLogger("cx.profile.worker")
tracer = trace.get_tracer("cx.profile.worker")
T = TypeVar("T")
MAX_LINKS = 64
HEARTBEAT_EVERY_S = 5.0
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


kafka = kafka_settings()
settings = ProfileSettings()

app = faust.App(
    settings.consumer_group,
    broker=";".join(f"kafka://{b}" for b in kafka.kafka_bootstrap_servers.split(",")),
    store="memory://",
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=kafka.kafka_topic_partitions,
    topic_replication_factor=kafka.kafka_replication_factor,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=10,
    broker_heartbeat_interval=3,
    broker_commit_interval=1.0,
    producer_acks=-1,
    web_enabled=False,
)
touchpoints = app.topic(kafka.touchpoints_topic, key_type=bytes, value_type=bytes)
profile_events = app.topic(kafka.profile_events_topic, key_type=bytes, value_type=bytes)
changes_topic = app.topic(kafka.profile_changes_topic, key_type=bytes, value_type=bytes)
dlq_topic = app.topic(kafka.touchpoints_dlq_topic, key_type=bytes, value_type=bytes)

_pipeline: ProfilePipeline | None = None


def pipeline() -> ProfilePipeline:
    global _pipeline
    if _pipeline is None:
        client = aioredis.Redis.from_url(redis_settings().redis_url)
        store = ProfileStore(client, settings, Guardrails.load(settings.identity_file))
        _pipeline = ProfilePipeline(
            store,
            load_segments(),
            dlq_topic=kafka.touchpoints_dlq_topic,
            events_topic=kafka.profile_events_topic,
            changes_topic=kafka.profile_changes_topic,
            partition_of=partition_of,
            batch_size=settings.batch_size,
        )
    return _pipeline


def _headers(message: Any) -> KafkaHeaders:
    raw = message.headers or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), bytes(v)) for k, v in items if v is not None]


def _links(headers: Sequence[KafkaHeaders]) -> list[Link]:
    links = []
    for h in headers[:MAX_LINKS]:
        span_context = trace.get_current_span(extract_kafka_context(h)).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    # aiokafka's murmur2 is pure Python: worth remembering for active profiles.
    return int(murmur2(key) & 0x7FFFFFFF)


def partition_of(key: bytes) -> int:
    """The partition of the re-keyed topic Kafka's default partitioner gives this key."""
    # Before the first metadata arrives, the count the platform creates the topics with.
    count = app.consumer.topic_partitions(profile_events.get_topic_name())
    return _key_hash(key) % int(count or kafka.kafka_topic_partitions)


def _source_record(message: Any) -> SourceRecord:
    return SourceRecord(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        _headers(message),
        message.timestamp and int(message.timestamp * 1000),
    )


def _fatal(exc: BaseException) -> None:
    log.critical("unexpected failure, exiting before offsets are committed: %r", exc, exc_info=exc)
    logging.shutdown()
    os._exit(70)


def _batch_span(name: str, records: Sequence[SourceRecord]) -> Any:
    """A span for one batch, linked to the spans of (up to MAX_LINKS of) its records."""
    return tracer.start_as_current_span(
        name,
        links=_links([r.headers for r in records]),
        attributes={"messaging.batch.message_count": len(records)},
    )


class FaustSender:
    """Produces through the Faust app's producer; trace context added where none is set."""

    def __init__(self, topics: dict[str, Any]) -> None:
        self._topics = topics

    async def send(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        context_headers = inject_kafka_headers()
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


_sender = FaustSender({t.get_topic_name(): t for t in (profile_events, changes_topic, dlq_topic)})


async def resolve_batch(events: Sequence[Any]) -> None:
    records = [_source_record(e.message) for e in events]
    with _batch_span("profile.resolve", records):
        await pipeline().process_touchpoints(records, _sender)


async def apply_batch(events: Sequence[Any]) -> None:
    records = [_source_record(e.message) for e in events]
    with _batch_span("profile.apply", records):
        await pipeline().process_bundles(records, _sender)


async def _each_batch(
    stream: Any, size: int, handle: Callable[[Sequence[Any]], Awaitable[None]]
) -> None:
    async for events in stream.take_events(size, within=settings.batch_within_s):
        try:
            await handle(events)
        except Exception as exc:
            # Input failures are dead-lettered and infrastructure failures retried inside
            # `handle`: what reaches here is a fault of the worker itself.
            _fatal(exc)


@app.agent(touchpoints)
async def resolve_identities(stream: Any) -> None:
    await _each_batch(stream, settings.batch_size, resolve_batch)


@app.agent(profile_events)
async def apply_events(stream: Any) -> None:
    await _each_batch(stream, settings.bundles_per_apply, apply_batch)


@app.task  # type: ignore[untyped-decorator]
async def freeze_heap_once_started() -> None:
    freeze_startup_heap()


@app.timer(interval=HEARTBEAT_EVERY_S)  # type: ignore[untyped-decorator]
async def heartbeat() -> None:
    """Tells the profile server this worker is alive (its gRPC health reports it).

    One sorted set of workers scored by when their beat expires, so the server counts
    live workers with one ZCOUNT instead of scanning the keyspace.
    """
    store = pipeline().store
    now = time.time()
    with contextlib.suppress(RedisError, OSError):
        async with store.client.pipeline(transaction=False) as pipe:
            pipe.zadd(store.keys.workers, {WORKER_NAME: now + HEARTBEAT_EVERY_S * 3})
            pipe.zremrangebyscore(store.keys.workers, "-inf", now)
            await pipe.execute()


def main() -> None:
    setup_logging("profile-worker")
    setup_tracing("cx-profile-worker")
    start_metrics_server(metrics_ports().metrics_host, settings.worker_metrics_port)
    if len(sys.argv) == 1:
        sys.argv += ["worker", "--without-web", "--loglevel", "info"]
    app.main()


if __name__ == "__main__":
    main()
