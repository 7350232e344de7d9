"""The profile stream worker (Faust): `python -m services.profile.worker`.

Two agents, each taking batches:
- `resolve_identities` reads `cx.touchpoints.v1`, dead-letters bad records, resolves each
  event's profile and forwards the batch to `cx.profile-events.v1` as bundle records, to
  the partition Kafka's default partitioner gives the profile id;
- `apply_events` reads those bundles, so one profile's events are applied in order by one
  worker, applies each batch in one Redis script call and publishes change events to
  `cx.profile-changes.v1`.

The stages are `ProfilePipeline.process_touchpoints` and `process_bundles`; this module
only wires them to Faust (`services.common.stream_worker` says what each piece
guarantees). Nothing is built at import: `create_app(settings, ...)` builds the app.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import faust
import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2
from opentelemetry import trace

from services.common.dead_letter import SourceRecord
from services.common.gc_tuning import freeze_startup_heap
from services.common.heartbeat import beat_from
from services.common.process import start_process
from services.common.settings import (
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    kafka_settings,
    process_settings,
    redis_settings,
)
from services.common.stream_worker import (
    FaustSender,
    batch_span,
    each_batch,
    faust_app,
    raw_topic,
)
from services.profile.adapters.store import ProfileStore
from services.profile.domain.segments import load_segments
from services.profile.pipeline import ProfilePipeline
from services.profile.settings import Guardrails, ProfileSettings

tracer = trace.get_tracer("cx.profile.worker")


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    # aiokafka's murmur2 is pure Python: worth remembering for active profiles.
    return int(murmur2(key) & 0x7FFFFFFF)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (murmur2)."""
    return _key_hash(key) % partitions


def create_app(
    settings: ProfileSettings,
    kafka: KafkaSettings,
    redis_config: RedisSettings,
    process: ProcessSettings,
) -> faust.App:
    """The composition root: the Faust app, its topics and agents, and the pipeline."""
    app = faust_app(settings.consumer_group, kafka, process.cx_var_dir / "faust")
    touchpoints = raw_topic(app, kafka.touchpoints_topic)
    profile_events = raw_topic(app, kafka.profile_events_topic)
    changes = raw_topic(app, kafka.profile_changes_topic)
    dead_letters = raw_topic(app, kafka.touchpoints_dlq_topic)
    sender = FaustSender([profile_events, changes, dead_letters])

    def events_partition(key: bytes) -> int:
        # Before the first metadata arrives, the count the platform creates topics with.
        count = app.consumer.topic_partitions(profile_events.get_topic_name())
        return partition_of(key, int(count or kafka.kafka_topic_partitions))

    client = aioredis.Redis.from_url(redis_config.redis_url)
    store = ProfileStore(client, settings, Guardrails.load(settings.identity_file))
    pipeline = ProfilePipeline(
        store,
        load_segments(settings.segments_file),
        dlq_topic=kafka.touchpoints_dlq_topic,
        events_topic=kafka.profile_events_topic,
        changes_topic=kafka.profile_changes_topic,
        partition_of=events_partition,
        batch_size=settings.batch_size,
        consumer=settings.consumer_group,
    )

    async def resolve_batch(records: list[SourceRecord]) -> None:
        with batch_span(tracer, "profile.resolve", records):
            await pipeline.process_touchpoints(records, sender)

    async def apply_batch(records: list[SourceRecord]) -> None:
        with batch_span(tracer, "profile.apply", records):
            await pipeline.process_bundles(records, sender)

    @app.agent(touchpoints, name="resolve_identities")
    async def resolve_identities(stream: Any) -> None:
        await each_batch(stream, settings.batch_size, settings.batch_within_s, resolve_batch)

    @app.agent(profile_events, name="apply_events")
    async def apply_events(stream: Any) -> None:
        await each_batch(stream, settings.bundles_per_apply, settings.batch_within_s, apply_batch)

    @app.task  # type: ignore[untyped-decorator]
    async def freeze_heap_once_started() -> None:
        freeze_startup_heap()

    # Tells the profile server this worker is alive (its gRPC health reports it).
    beat_from(app, client, store.keys.workers)

    return app


def main() -> None:
    settings, process = ProfileSettings(), process_settings()
    start_process("profile-worker", settings.worker_metrics_port, process)
    app = create_app(settings, kafka_settings(), redis_settings(), process)
    if len(sys.argv) == 1:
        sys.argv += ["worker", "--without-web", "--loglevel", process.log_level.lower()]
    app.main()


if __name__ == "__main__":
    main()
