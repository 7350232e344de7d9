"""Ceiling for `bench/profile.py`: a Faust agent that only counts its batches, so the
benchmark shows what Faust's consumption alone costs on this machine. The profile worker
consumes every event twice (the touchpoint topic, then the re-keyed topic).

Run as a worker process: `python -m bench.faust_ceiling` (environment as the real one).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from bench.faust_apps import comparison_app, run_worker, settings
from services.common.settings import redis_settings

app, touchpoints = comparison_app()
client = aioredis.Redis.from_url(redis_settings().redis_url)


@app.agent(touchpoints)
async def count(stream: Any) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        await client.hincrby(f"{settings.key_prefix}stats", "applied", len(events))


if __name__ == "__main__":
    run_worker(app)
