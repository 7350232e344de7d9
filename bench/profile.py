"""Profile worker benchmark against the real broker and Redis.

1. Sustained throughput: a backlog of demo journeys is written to an isolated topic, then
   a worker process drains it; events/s from its first to its last applied event.
2. Baseline in the same run: a straightforward Faust agent awaiting Redis per event
   (`bench/profile_baseline.py`) drains the same backlog; the ratio is printed. A
   ceiling: a Faust agent that only counts (`bench/faust_ceiling.py`), since the worker
   consumes every event twice (touchpoints, then the re-keyed topic).
3. End-to-end latency at a fixed rate of half the measured maximum: from the producer's
   send to the event being applied in Redis (its dedup key exists, written in the same
   script as the profile), p50/p99 over sampled probe events.
4. Redis memory per profile (MEMORY USAGE of every key of a profile and its identity
   links, without the event archive behind the timeline), and the archive and dedup keys.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cx.events.v1 import touchpoint_pb2 as ev

from bench.stats import Figures, print_ratio, print_table
from services.common.kafka_io import reliable_producer, send_touchpoint, touchpoint_headers
from services.common.settings import kafka_settings, redis_settings
from services.demo.journeys import DemoConfig, generate
from services.profile.adapters.layout import Keys, Stat, as_text, split_member
from tests.support.isolation import IsolatedPipeline

GOAL_EVENTS_PER_S = 10_000
GOAL_P99_MS = 50.0
GOAL_RATIO = 5.0
GOAL_BYTES = 2048


def demo_events(customers: int, seed: int) -> list[ev.TouchpointEvent]:
    journeys = generate(DemoConfig(customers=customers, seed=seed), datetime.now(UTC))
    events = [e for j in journeys for e in j.events]
    events.sort(key=lambda e: e.occurred_at.ToNanoseconds())
    return events


def preload(pipeline: IsolatedPipeline, events: Sequence[ev.TouchpointEvent]) -> None:
    producer = reliable_producer(pipeline.kafka.kafka_bootstrap_servers, "bench-preload")
    headers = touchpoint_headers()
    for e in events:
        send_touchpoint(producer, pipeline.kafka.touchpoints_topic, e, headers)
    producer.flush()
    producer.close()


def drain(
    pipeline: IsolatedPipeline, total: int, module: str, name: str, timeout_s: float = 600
) -> Figures:
    """Starts a worker on the backlog; events/s from the first applied event to the last."""
    pipeline.start_worker(module)
    deadline = time.monotonic() + timeout_s
    first_at, first_count = None, 0
    done = 0
    while done < total:
        done = sum(map(pipeline.stat, (Stat.APPLIED, Stat.BLOCKED, Stat.SUPPRESSED)))
        now = time.monotonic()
        if first_at is None and done > 0:
            first_at, first_count = now, done
        if now > deadline or pipeline.worker_exited() is not None:
            raise RuntimeError(
                f"{name}: {done}/{total} after {timeout_s}s; see {pipeline.log_path}"
            )
        time.sleep(0.05)
    end = time.monotonic()
    assert first_at is not None
    return Figures(name, total - first_count, max(end - first_at, 1e-6))


def latency(
    pipeline: IsolatedPipeline, events: Sequence[ev.TouchpointEvent], rate: float, seconds: float
) -> Figures:
    """Sends at a fixed rate; every 10th event is a probe whose application is timed."""
    count = min(len(events), int(rate * seconds))
    producer = reliable_producer(pipeline.kafka.kafka_bootstrap_servers, "bench-latency")
    # Metadata first: otherwise the first probe also times the producer's bootstrap.
    producer.partitions_for(pipeline.kafka.touchpoints_topic)
    headers = touchpoint_headers()
    sent_at: dict[str, float] = {}
    lock = threading.Lock()
    keys = Keys(pipeline.settings.key_prefix)
    latencies: list[float] = []
    finished = threading.Event()

    def poll() -> None:
        # Only the oldest probes are checked each round, so the poller's own load on
        # Redis stays small whatever the latency.
        client = pipeline.redis
        while not finished.is_set() or sent_at:
            with lock:
                pending = list(itertools.islice(sent_at.items(), 32))
            if pending:
                pipe = client.pipeline(transaction=False)
                for event_id, _ in pending:
                    pipe.exists(keys.seen(event_id))
                now = time.perf_counter()
                for (event_id, t0), exists in zip(pending, pipe.execute(), strict=True):
                    if exists:
                        latencies.append(now - t0)
                        with lock:
                            sent_at.pop(event_id, None)
            time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    for i, e in enumerate(events[:count]):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if i % 10 == 0:
            with lock:
                sent_at[e.event_id] = time.perf_counter()
        send_touchpoint(producer, pipeline.kafka.touchpoints_topic, e, headers)
    producer.flush()
    elapsed = time.perf_counter() - start
    finished.set()
    poller.join(timeout=120)
    producer.close()
    return Figures(f"produce -> applied at {rate:.0f} ev/s", count, elapsed, latencies)


def memory_per_profile(pipeline: IsolatedPipeline, sample: int = 300) -> dict[str, float]:
    r = pipeline.redis
    keys = Keys(pipeline.settings.key_prefix)
    ids: list[str] = []
    for key in r.scan_iter(match=keys.profile("*"), count=1000):
        pid = keys.profile_id_of(key)
        if pid is not None:
            ids.append(pid)
        if len(ids) >= sample:
            break
    profile_bytes, archive_bytes, events = [], [], []
    for pid in ids:
        archive = keys.profile(pid, "events")
        total = 0
        for key in keys.all_of_profile(pid):
            if key != archive:
                total += r.memory_usage(key, samples=0) or 0
        for member in r.hkeys(keys.profile(pid, "ids")):
            total += r.memory_usage(keys.identity(*split_member(as_text(member))), samples=0) or 0
        profile_bytes.append(total)
        archive_bytes.append(r.memory_usage(archive, samples=0) or 0)
        events.append(r.zcard(archive))
    seen = next(iter(r.scan_iter(match=keys.seen("*"), count=1000)), None)
    return {
        "profiles sampled": len(ids),
        "mean bytes per profile (no archive)": statistics.mean(profile_bytes),
        "p95 bytes per profile (no archive)": statistics.quantiles(profile_bytes, n=20)[-1],
        "mean events per profile": statistics.mean(events),
        "mean archive bytes per profile": statistics.mean(archive_bytes),
        "dedup key bytes per event": float(r.memory_usage(seen, samples=0) or 0) if seen else 0,
    }


def run(customers: int = 1500, baseline_events: int = 15_000, latency_s: float = 10) -> None:
    base, redis_url = kafka_settings(), redis_settings().redis_url
    logs = Path(tempfile.mkdtemp(prefix="cx-bench-"))
    events = demo_events(customers, seed=7001)
    print(f"\nprofile bench: {len(events)} events of {customers} customers; logs in {logs}")

    main = IsolatedPipeline(base, redis_url, logs, name="bench-profile")
    baseline = IsolatedPipeline(base, redis_url, logs, name="bench-baseline")
    ceiling_run = IsolatedPipeline(base, redis_url, logs, name="bench-ceiling")
    try:
        preload(ceiling_run, events)
        ceiling = drain(
            ceiling_run, len(events), "bench.faust_ceiling", "ceiling: Faust consuming, no work"
        )
        ceiling_run.cleanup()

        preload(main, events)
        worker = drain(main, len(events), "services.profile.worker", "profile worker (batched)")
        memory = memory_per_profile(main)

        subset = events[:baseline_events]
        preload(baseline, subset)
        straight = drain(
            baseline, len(subset), "bench.profile_baseline", "baseline: await Redis per event"
        )

        fresh = demo_events(customers, seed=7002)
        timed: list[Figures] = []
        for rate in (250, 500, 1000, worker.rate / 2):
            timed.append(latency(main, fresh, rate=rate, seconds=latency_s))
            fresh = fresh[timed[-1].events :]
    finally:
        for pipeline in (main, baseline, ceiling_run):
            pipeline.cleanup()

    print_table(
        "profile worker: Kafka -> Redis, one worker process",
        [worker, straight, ceiling, *timed],
    )
    print(
        f"throughput goal {GOAL_EVENTS_PER_S} events/s: "
        f"{'meets' if worker.rate >= GOAL_EVENTS_PER_S else 'BELOW'} ({worker.rate:.0f})"
    )
    p99 = timed[-1].percentile_ms(99) or 0.0
    print(
        f"latency goal p99 <= {GOAL_P99_MS:.0f} ms at half the maximum rate: "
        f"{'meets' if p99 <= GOAL_P99_MS else 'BELOW'} ({p99:.1f} ms)"
    )
    within_goal = [f for f in timed if (f.percentile_ms(99) or 0.0) <= GOAL_P99_MS]
    print(
        f"highest tested rate with p99 <= {GOAL_P99_MS:.0f} ms: "
        + (f"{max(f.rate for f in within_goal):.0f} ev/s" if within_goal else "none")
    )
    print_ratio("batched worker / per-event baseline", worker.rate / straight.rate, GOAL_RATIO)
    print("\nRedis memory")
    for name, value in memory.items():
        print(f"  {name:<40} {value:10.0f}")
    verdict = "meets" if memory["mean bytes per profile (no archive)"] <= GOAL_BYTES else "BELOW"
    print(f"  memory goal <= {GOAL_BYTES} bytes per profile without its timeline: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--baseline-events", type=int, default=15_000)
    parser.add_argument("--latency-seconds", type=float, default=10)
    args = parser.parse_args()
    run(args.customers, args.baseline_events, args.latency_seconds)


if __name__ == "__main__":
    main()
