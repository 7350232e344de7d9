"""Stream workers' heartbeats: one Redis sorted set of workers scored by when their beat
expires, so a server counts live workers with one ZCOUNT instead of scanning keys, and
reports them through gRPC health (`ServiceServer.add_component`)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

# This process's name among the workers of a group.
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


async def beat(client: aioredis.Redis, key: str, every_s: float) -> None:
    """Says this worker is alive for three beats; drops workers whose beat expired."""
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {WORKER_NAME: now + every_s * 3})
        pipe.zremrangebyscore(key, "-inf", now)
        await pipe.execute()


def alive(client: redis.Redis, key: str) -> int:
    """Workers whose heartbeat in `key` has not expired."""
    return int(client.zcount(key, time.time(), "+inf"))


# A stream worker beats this often; a server counts it alive for three beats.
WORKER_BEAT_EVERY_S = 5.0


def beat_from(
    app: Any, client: aioredis.Redis, key: str, every_s: float = WORKER_BEAT_EVERY_S
) -> None:
    """Adds a Faust timer to `app` that beats into `key`, so that a gRPC server can report
    the worker in its health; a beat Redis does not take is skipped (the next one counts)."""

    @app.timer(interval=every_s)  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        with contextlib.suppress(RedisError, OSError):
            await beat(client, key, every_s)
