"""Ceiling for `bench/profile.py`: a Faust agent that only counts its batches, so the
benchmark shows what Faust's consumption alone costs on this machine. The profile worker
consumes every event twice (the touchpoint topic, then the re-keyed topic).

Run as a worker process: `python -m bench.faust_ceiling` (environment as the real one).
"""

from __future__ import annotations

from typing import Any

import faust
import redis.asyncio as aioredis

from bench.faust_apps import comparison_app, run_worker
from services.common.settings import redis_settings
from services.profile.adapters.layout import Keys, Stat
from services.profile.settings import ProfileSettings


def create_app(settings: ProfileSettings) -> faust.App:
    app, touchpoints = comparison_app(settings)
    client = aioredis.Redis.from_url(redis_settings().redis_url)
    stats = Keys(settings.key_prefix).stats

    @app.agent(touchpoints, name="count")
    async def count(stream: Any) -> None:
        batches = stream.take_events(settings.batch_size, within=settings.batch_within_s)
        async for events in batches:
            await client.hincrby(stats, Stat.APPLIED, len(events))

    return app


if __name__ == "__main__":
    run_worker(create_app(ProfileSettings()))
