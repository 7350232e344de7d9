"""What Redis's `appendfsync always` costs the profile worker, against `everysec`.

    .venv/bin/python -m tests.integration.fsync_cost [--customers 400] [--rounds 5]

Starts a private Redis with `deploy/local/stack.sh redis-up` (another port, data under
`var/`, so on the same disk as the stack's Redis, never a tmpfs), then runs the worker's
two batch steps in process, exactly as the worker calls them but without Kafka: stage 1
(`process_touchpoints`: decode, `resolve.lua`, bundles) on batches of touchpoint records,
stage 2 (`process_bundles`: `apply.lua`, derive, change events, `publish.lua`) on the
bundles, 8 per call as `PROFILE_BUNDLES_PER_APPLY`. Rounds alternate between the two
settings (`CONFIG SET appendfsync`), each on a fresh key prefix, at batches of 500
records (a backlog: `PROFILE_BATCH_SIZE`), 50 and 10 (live load, where batches are small).
Prints events/s and p50/p99 per batch of each stage, the median round of each setting.
Then the real worker process (`bench.profile`'s drain and latency, on the shared broker
with topics of its own, and this Redis): events/s draining a backlog, and p50/p99 from
produce to applied at 500 events/s.

With `always`, Redis fsyncs the AOF before answering the clients of each event-loop turn
that wrote, so every script call (one per batch and stage) waits for one fsync.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from cx.events.v1 import touchpoint_pb2 as ev

from bench.profile import demo_events, drain, latency, preload
from bench.stats import Figures
from services.common.batches import OutRecord
from services.common.dead_letter import SourceRecord
from services.common.kafka_io import touchpoint_headers
from services.common.settings import kafka_settings
from services.common.validation import partition_key
from services.demo.journeys import DemoConfig, generate
from services.profile.adapters.store import ProfileStore
from services.profile.domain.segments import load_segments
from services.profile.pipeline import ProfilePipeline
from services.profile.settings import Guardrails, ProfileSettings
from tests.integration.faults import STACK, free_port
from tests.paths import REPO_ROOT
from tests.support.isolation import IsolatedPipeline

PARTITIONS = 8
BUNDLES_PER_APPLY = 8


class Capture:
    """A RecordSender that keeps what the pipeline would produce."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def send(self, records: Sequence[OutRecord]) -> None:
        self.records.extend(records)


class Timed:
    """Wraps one of the store's scripts, timing each call from the client: with `always`
    the fsync happens before Redis answers, so it shows here."""

    def __init__(self, script: Callable[..., Awaitable[Any]], times_ms: list[float]) -> None:
        self.script = script
        self.times_ms = times_ms

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await self.script(*args, **kwargs)
        finally:
            self.times_ms.append((time.perf_counter() - t0) * 1000)


@dataclass(frozen=True)
class Round:
    setting: str
    batch: int
    events: int
    seconds: float
    stage1_ms: list[float]
    stage2_ms: list[float]
    scripts_ms: dict[str, list[float]]

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def pct(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def demo_records(customers: int, seed: int) -> list[SourceRecord]:
    journeys = generate(DemoConfig(customers=customers, seed=seed), datetime.now(UTC))
    events: list[ev.TouchpointEvent] = [e for j in journeys for e in j.events]
    events.sort(key=lambda e: e.occurred_at.ToNanoseconds())
    headers = touchpoint_headers()
    now_ms = int(time.time() * 1000)
    return [
        SourceRecord(
            "touchpoints",
            i % PARTITIONS,
            i,
            partition_key(e),
            e.SerializeToString(),
            headers,
            now_ms,
        )
        for i, e in enumerate(events)
    ]


async def one_round(url: str, setting: str, records: Sequence[SourceRecord], batch: int) -> Round:
    client = aioredis.Redis.from_url(url)
    await client.config_set("appendfsync", setting)
    settings = ProfileSettings(key_prefix=f"fsync-{uuid.uuid4().hex[:8]}:", batch_size=batch)
    store = ProfileStore(client, settings, Guardrails.load(settings.identity_file))
    scripts_ms: dict[str, list[float]] = {"resolve": [], "apply": [], "publish": []}
    for name, times in scripts_ms.items():
        setattr(store, f"_{name}", Timed(getattr(store, f"_{name}"), times))
    pipeline = ProfilePipeline(
        store,
        load_segments(),
        dlq_topic="dlq",
        events_topic="events",
        changes_topic="changes",
        partition_of=lambda key: hash(key) % PARTITIONS,
        batch_size=batch,
    )
    stage1: list[float] = []
    stage2: list[float] = []
    changes = Capture()
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        forwarded = Capture()
        t0 = time.perf_counter()
        await pipeline.process_touchpoints(records[start : start + batch], forwarded)
        stage1.append((time.perf_counter() - t0) * 1000)
        bundles = [
            SourceRecord(r.topic, r.partition or 0, n, r.key, r.value, [], None)
            for n, r in enumerate(forwarded.records)
            if r.topic == "events"
        ]
        for b in range(0, len(bundles), BUNDLES_PER_APPLY):
            t0 = time.perf_counter()
            await pipeline.process_bundles(bundles[b : b + BUNDLES_PER_APPLY], changes)
            stage2.append((time.perf_counter() - t0) * 1000)
    seconds = time.perf_counter() - started
    applied = int(await client.hget(f"{settings.key_prefix}stats", "applied") or 0)
    if applied < 0.99 * len(records):
        raise RuntimeError(f"only {applied} of {len(records)} events applied: not a fair run")
    keys = [k async for k in client.scan_iter(match=f"{settings.key_prefix}*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])
    await client.aclose()
    return Round(setting, batch, applied, seconds, stage1, stage2, scripts_ms)


def disk_fsync_ms(directory: Path, count: int = 200) -> tuple[float, float]:
    """p50 and p99 of appending 1 KiB and fsyncing it, in the Redis data directory."""
    path = directory / "fsync-probe"
    times = []
    with path.open("ab") as f:
        for _ in range(count):
            f.write(b"x" * 1024)
            f.flush()
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - t0) * 1000)
    path.unlink()
    return pct(times, 50), pct(times, 99)


@dataclass(frozen=True)
class WorkerRound:
    setting: str
    drain: Figures
    live: Figures


def worker_round(url: str, setting: str, customers: int, seed: int, log_dir: Path) -> WorkerRound:
    """The real worker process (Faust, the shared broker, this Redis): events/s draining a
    backlog, then produce-to-applied latency at a live 500 events/s."""
    redis.Redis.from_url(url).config_set("appendfsync", setting)
    pipeline = IsolatedPipeline(kafka_settings(), url, log_dir, name=f"fsync-{setting}")
    try:
        backlog = demo_events(customers, seed)
        preload(pipeline, backlog)
        drained = drain(pipeline, len(backlog), "services.profile.worker", setting)
        live = latency(pipeline, demo_events(customers, seed + 1), rate=500, seconds=8)
    finally:
        pipeline.cleanup()
    return WorkerRound(setting, drained, live)


def median_by_rate(rounds: Sequence[Round]) -> Round:
    return sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2]


def print_stages(rounds: Sequence[Round], batches: Sequence[int]) -> None:
    print(
        "\nstages in process, median round of each setting; stage = the worker's call per "
        "batch; apply.lua = one script call; Redis = share of the time in scripts"
    )
    print(
        f"{'batch':>5} {'appendfsync':<11} {'events/s':>9} {'stage 1 p50/p99 ms':>19} "
        f"{'stage 2 p50/p99 ms':>19} {'apply.lua p50/p99 ms':>21} {'Redis':>6}  vs everysec"
    )
    for batch in batches:
        medians = {
            setting: median_by_rate([r for r in rounds if (r.setting, r.batch) == (setting, batch)])
            for setting in SETTINGS
        }
        for setting, r in medians.items():
            s1 = f"{pct(r.stage1_ms, 50):.1f} / {pct(r.stage1_ms, 99):.1f}"
            s2 = f"{pct(r.stage2_ms, 50):.1f} / {pct(r.stage2_ms, 99):.1f}"
            ap = r.scripts_ms["apply"]
            s3 = f"{pct(ap, 50):.1f} / {pct(ap, 99):.1f}"
            share = sum(map(sum, r.scripts_ms.values())) / 1000 / r.seconds
            ratio = r.rate / medians["everysec"].rate - 1
            print(
                f"{batch:>5} {setting:<11} {r.rate:>9.0f} {s1:>19} {s2:>19} {s3:>21} "
                f"{share:>6.0%}  {ratio:+.1%}"
            )


def print_workers(rounds: Sequence[WorkerRound]) -> None:
    print("\nthe worker process, median of each setting (latency: produce -> applied)")
    print(
        f"{'appendfsync':<11} {'drain events/s':>15} {'live p50 ms':>12} {'live p99 ms':>12}"
        "  drain vs everysec"
    )
    base = statistics.median(r.drain.rate for r in rounds if r.setting == "everysec")
    for setting in SETTINGS:
        mine = [r for r in rounds if r.setting == setting]
        rate = statistics.median(r.drain.rate for r in mine)
        p50 = statistics.median(r.live.percentile_ms(50) or 0.0 for r in mine)
        p99 = statistics.median(r.live.percentile_ms(99) or 0.0 for r in mine)
        print(f"{setting:<11} {rate:>15.0f} {p50:>12.1f} {p99:>12.1f}  {rate / base - 1:+.1%}")


SETTINGS = ("everysec", "always")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds per setting")
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 50, 10])
    parser.add_argument(
        "--worker-rounds", type=int, default=3, help="worker-process rounds per setting (0: none)"
    )
    args = parser.parse_args()

    var_dir = REPO_ROOT / "var" / f"fsync-cost-{os.getpid()}"
    port = free_port(16400)
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "CX_VAR_DIR": str(var_dir), "REDIS_URL": url}
    env.pop("CX_REDIS_APPENDFSYNC", None)
    subprocess.run(["bash", str(STACK), "redis-up"], env=env, check=True)
    stages: list[Round] = []
    workers: list[WorkerRound] = []
    try:
        fsync_p50, fsync_p99 = disk_fsync_ms(var_dir / "redis")
        print(f"disk: fsync of a 1 KiB append p50 {fsync_p50:.2f} ms, p99 {fsync_p99:.2f} ms")
        records = demo_records(args.customers, seed=7101)
        print(f"{len(records)} demo events of {args.customers} customers")
        for batch in args.batches:
            for _ in range(args.rounds):
                for setting in SETTINGS:
                    stages.append(asyncio.run(one_round(url, setting, records, batch)))
                    print(f"  stages, batch {batch:>3} {setting:<8} {stages[-1].rate:8.0f} ev/s")
        for i in range(args.worker_rounds):
            for setting in SETTINGS:
                workers.append(worker_round(url, setting, args.customers, 7201 + 2 * i, var_dir))
                w = workers[-1]
                print(f"  worker {setting:<8} {w.drain.rate:8.0f} ev/s")
        info = redis.Redis.from_url(url).info("persistence")
        print(
            f"redis: aof_rewrites {info.get('aof_rewrites')}, "
            f"aof_delayed_fsync {info.get('aof_delayed_fsync')}"
        )
    finally:
        subprocess.run(["bash", str(STACK), "redis-down"], env=env, check=False)
        shutil.rmtree(var_dir, ignore_errors=True)
    if stages:
        print_stages(stages, args.batches)
    if workers:
        print_workers(workers)


if __name__ == "__main__":
    main()
