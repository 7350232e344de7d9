"""Ceiling for `bench/profile.py`: a Faust agent that only counts its batches, so the
benchmark shows what Faust's consumption alone costs on this machine. The profile worker
consumes every event twice (the touchpoint topic, then the re-keyed topic).

Run as a worker process: `python -m bench.faust_ceiling` (environment as the real one).
"""

from __future__ import annotations

import sys
from typing import Any

import faust
import redis.asyncio as aioredis

from services.common.settings import kafka_settings, redis_settings
from services.profile.settings import ProfileSettings

kafka = kafka_settings()
settings = ProfileSettings()
app = faust.App(
    settings.consumer_group,
    broker=f"kafka://{kafka.kafka_bootstrap_servers}",
    store="memory://",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=10,
    broker_heartbeat_interval=3,
    web_enabled=False,
)
touchpoints = app.topic(kafka.touchpoints_topic, value_type=bytes)
client = aioredis.Redis.from_url(redis_settings().redis_url)


@app.agent(touchpoints)
async def count(stream: Any) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        await client.hincrby(f"{settings.key_prefix}stats", "applied", len(events))


if __name__ == "__main__":
    sys.argv += ["worker", "--without-web", "--loglevel", "warn"]
    app.main()
