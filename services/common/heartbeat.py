"""Stream workers' heartbeats: one Redis sorted set of workers scored by when their beat
expires, so a server counts live workers with one ZCOUNT instead of scanning keys, and
reports them through gRPC health (`ServiceServer.add_component`)."""

from __future__ import annotations

import os
import socket
import time

import redis
import redis.asyncio as aioredis

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
