"""Baseline for `bench/profile.py`: the straightforward Faust agent, awaiting Redis for
each event: the same resolve and apply scripts, called for one event at a time, with no
repartition topic, derivations or change events (less work per event than the worker).

Run as a worker process: `python -m bench.profile_baseline` (environment as the real one).
"""

from __future__ import annotations

from typing import Any

import faust
import redis.asyncio as aioredis

from bench.faust_apps import comparison_app, run_worker
from services.common.dead_letter import InvalidRecord, decode_touchpoint
from services.common.settings import redis_settings
from services.profile.adapters.store import ProfileStore, ToApply
from services.profile.domain.effects import effects_of
from services.profile.settings import Guardrails, ProfileSettings


def create_app(settings: ProfileSettings) -> faust.App:
    app, touchpoints = comparison_app(settings)
    store = ProfileStore(
        aioredis.Redis.from_url(redis_settings().redis_url),
        settings,
        Guardrails.load(settings.identity_file),
    )

    @app.agent(touchpoints, name="apply_each")
    async def apply_each(stream: Any) -> None:
        async for value in stream:
            try:
                event = decode_touchpoint(value)
            except InvalidRecord:
                continue
            (resolved,) = await store.resolve([event])
            if resolved.profile_id is not None:
                await store.apply([ToApply(resolved.profile_id, event, effects_of(event))])

    return app


if __name__ == "__main__":
    run_worker(create_app(ProfileSettings()))
