"""The alerts stream worker (Faust): `python -m services.alerts.worker`.

One agent reads `cx.touchpoints.v1` in its own consumer group (`ALERTS_CONSUMER_GROUP`,
cx-alerts) and hands each batch to `DetectionPipeline.process` (services/alerts/
pipeline.py says what a batch does); Faust commits the batch's offsets once it returns,
so incidents and their outbox entries are in Redis before the offsets move. As in every
worker of the platform (services/common/stream_worker.py, batches.py):
- an infrastructure failure (Redis, the profile service not answering) is retried in
  place for as long as it lasts;
- a record that cannot be decoded is skipped and counted; one whose processing fails on
  its own is skipped, counted and logged; nothing bad in the input stops the stream;
- anything else escaping the batch ends the process before Faust can commit past it.

A Faust timer (`ALERTS_TIMER_EVERY_S`) runs `DetectionPipeline.tick`: SLA timers and
escalations due, spikes clearing, windows gone quiet; it also reloads the rules and
owners files when they change. Nothing is built at import: `create_app(settings, ...)`
builds the app.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import faust
import redis
import redis.asyncio as aioredis
from opentelemetry import trace

from services.alerts.adapters.config_files import watched_detection_config
from services.alerts.adapters.incidents import IncidentStore
from services.alerts.adapters.layout import AlertKeys
from services.alerts.adapters.profiles import GrpcProfiles
from services.alerts.adapters.windows import DetectionState
from services.alerts.pipeline import DetectionPipeline
from services.alerts.settings import AlertsSettings
from services.common.batches import (
    is_infrastructure_failure,
    process_isolating,
    retry_infrastructure,
)
from services.common.dead_letter import SourceRecord
from services.common.gc_tuning import freeze_startup_heap
from services.common.heartbeat import beat_from
from services.common.process import start_process
from services.common.settings import (
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    grpc_address,
    kafka_settings,
    process_settings,
    redis_settings,
)
from services.common.stream_worker import batch_span, each_batch, faust_app, raw_topic
from services.profile.domain.segments import load_segments
from services.profile.settings import ProfileSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("cx.alerts.worker")

# Records a batch takes at most, and how long it waits to fill.
BATCH_SIZE = 500
BATCH_WITHIN_S = 0.02
# How often the rules and owners files are checked for changes.
CONFIG_CHECK_EVERY_S = 2.0


def create_app(
    settings: AlertsSettings,
    kafka: KafkaSettings,
    redis_config: RedisSettings,
    process: ProcessSettings,
) -> faust.App:
    """The composition root: the Faust app, its topic, agent and timer, and the pipeline."""
    config = watched_detection_config(settings.rules_file, settings.owners_file)
    app = faust_app(settings.consumer_group, kafka, process.cx_var_dir / "faust")
    touchpoints = raw_topic(app, kafka.touchpoints_topic)

    client = redis.Redis.from_url(redis_config.redis_url)
    keys = AlertKeys(settings.key_prefix)
    address = settings.profile_address or grpc_address(ProfileSettings().grpc_port, process)
    profiles = GrpcProfiles(address, settings.profile_timeout_s)
    pipeline = DetectionPipeline(
        config,
        IncidentStore(client, settings.key_prefix),
        DetectionState(client, keys),
        profiles,
        segment_names=[s.name for s in load_segments()],
    )
    log.info(
        "alerts worker: %d rules (%s), %d teams; profile service at %s",
        len(config.current.rules.rules),
        config.current.version,
        len(config.current.owners.teams),
        address,
    )

    async def run(records: Sequence[SourceRecord]) -> None:
        await retry_infrastructure(
            "alerts detection", lambda: asyncio.to_thread(pipeline.process, records)
        )

    async def skip(record: SourceRecord, exc: Exception) -> None:
        pipeline.skip(record, exc)

    async def detect_batch(records: list[SourceRecord]) -> None:
        with batch_span(tracer, "alerts.detect", records):
            await process_isolating(records, run, skip, what="alerts detection")

    @app.agent(touchpoints, name="detect")
    async def detect(stream: Any) -> None:
        await each_batch(stream, BATCH_SIZE, BATCH_WITHIN_S, detect_batch)

    @app.timer(interval=settings.timer_every_s)  # type: ignore[untyped-decorator]
    async def timers() -> None:
        """SLA timers, escalations, spike clears and quiet windows (wall clock)."""
        try:
            await asyncio.to_thread(pipeline.tick)
        except Exception as exc:
            # The next tick tries again: nothing due is lost while Redis is away.
            level = logging.WARNING if is_infrastructure_failure(exc) else logging.ERROR
            log.log(level, "timer step failed: %s: %s", type(exc).__name__, exc, exc_info=exc)

    # Tells the alerts server this worker is alive (its gRPC health reports it).
    beat_from(app, aioredis.Redis.from_url(redis_config.redis_url), keys.workers)

    @app.timer(interval=CONFIG_CHECK_EVERY_S)  # type: ignore[untyped-decorator]
    async def reload_config() -> None:
        await asyncio.to_thread(config.refresh)

    @app.task  # type: ignore[untyped-decorator]
    async def freeze_heap_once_started() -> None:
        freeze_startup_heap()

    return app


def main() -> None:
    settings, process = AlertsSettings(), process_settings()
    start_process("alerts-worker", settings.worker_metrics_port, process)
    app = create_app(settings, kafka_settings(), redis_settings(), process)
    if len(sys.argv) == 1:
        sys.argv += ["worker", "--without-web", "--loglevel", process.log_level.lower()]
    app.main()


if __name__ == "__main__":
    main()
