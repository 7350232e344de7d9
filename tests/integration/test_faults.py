"""The fault suite (issue 7): the profile pipeline under the faults an operator meets.

Each test runs a stream of people's events (`test_profile_recovery.person_events`: pages,
a login that merges the anonymous profile, orders, surveys, contacts, messages) through
a real worker process on an isolated pipeline, injects one fault mid-stream, and checks
that nothing was lost (every event id applied), nothing doubled (no profile counts more
events than it has; the `applied` stat equals the number of events) and every profile
equals the in-memory fold of its events. Each prints a line of the fault table with its
recovery time (`pytest -s` shows them, and the whole table at the end of the module).

The worker faults and the malformed records run in `make test`. Killing Kafka or Redis,
and the repair of lost Redis writes by a replay from Kafka (`chaos`, `make chaos`), use a
private broker and Redis on other ports (`private_stack`), never the shared stack.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from services.common.settings import KafkaSettings, redis_settings
from tests.integration.faults import (
    HEADER,
    RESULTS,
    FaultResult,
    Feeder,
    PrivateStack,
    Progress,
    RedisSnapshot,
    Stream,
    applied,
    check_dead_letters,
    group_members,
    interleave,
    malformed_records,
    replay_touchpoints,
    report,
    row,
    settle_exactly,
    tally,
    wait_ready,
)
from tests.integration.profile_harness import ProfileHarness

# 100 people x 35 events: big enough for a fault to land mid-batch, small enough for the
# worker faults to stay in `make test`.
PEOPLE = 100


def run_id(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:5]}"


@pytest.fixture
def harness(kafka: KafkaSettings, tmp_path: Path) -> Iterator[ProfileHarness]:
    """An isolated pipeline of its own on the shared stack, no worker started."""
    h = ProfileHarness(kafka, redis_settings().redis_url, tmp_path, name="fault")
    yield h
    h.stop_workers(signal.SIGKILL)  # the group and topics are deleted: no need to wait
    h.close()


@pytest.fixture
def private_harness(
    kafka: KafkaSettings, private_stack: PrivateStack, tmp_path: Path
) -> Iterator[ProfileHarness]:
    """An isolated pipeline on the private broker and Redis, no worker started."""
    h = ProfileHarness(private_stack.kafka(kafka), private_stack.redis_url, tmp_path, "chaos")
    yield h
    # A failed test may leave the broker or Redis down: the cleanup needs both.
    private_stack.kafka_up()
    private_stack.redis_up()
    h.close()


@pytest.fixture
def watch() -> Iterator[Callable[[ProfileHarness], Progress]]:
    """Starts a sampler of a pipeline's applied count, stopped after the test."""
    made: list[Progress] = []

    def start(h: ProfileHarness) -> Progress:
        made.append(Progress(h))
        made[-1].start()
        return made[-1]

    yield start
    for progress in made:
        progress.stop()


@pytest.fixture(scope="module", autouse=True)
def fault_table() -> Iterator[None]:
    yield
    if RESULTS:
        print(f"\n\nfault table\n{HEADER}")
        for r in RESULTS:
            print(row(r))


def started(h: ProfileHarness, *names: str) -> list[int]:
    """Starts workers and waits until each owns partitions; how many each owns."""
    for name in names or ("worker",):
        h.start_worker(name=name)
    return wait_ready(h, len(names or ("worker",)))


def feed(h: ProfileHarness, stream: Stream) -> Feeder:
    feeder = Feeder(h.kafka.kafka_bootstrap_servers, h.kafka.touchpoints_topic, stream.events)
    feeder.start()
    return feeder


def assert_exact(h: ProfileHarness, stream: Stream) -> tuple[int, int]:
    settle_exactly(h, stream.total)
    t = tally(h, stream)
    assert (t.lost, t.doubled) == (0, 0), (t.lost, t.doubled)
    assert t.mismatched == [], t.mismatched[:5]
    return t.lost, t.doubled


def secs(value: float) -> str:
    return f"{value:.1f} s"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_worker_stopped_mid_stream_then_restarted(
    harness: ProfileHarness, watch: Callable[[ProfileHarness], Progress], sig: int
) -> None:
    h = harness
    progress = watch(h)
    stream = Stream.of(run_id("wk"), PEOPLE)
    started(h)
    feeder = feed(h, stream)
    h.wait_for("a third of the stream", lambda: applied(h) > stream.total / 3)
    stopping, sent = time.monotonic(), feeder.sent
    code = h.kill_worker(sig)
    stopped_s = time.monotonic() - stopping
    at_stop = applied(h)
    assert at_stop < stream.total, "the worker finished before it was stopped"
    if sig == signal.SIGTERM:
        assert code == 0, f"a SIGTERM'd worker should exit cleanly, not with {code}"
    restart = time.monotonic()
    h.start_worker()
    feeder.finish()
    recovery = progress.recovery(restart, stream.total, base=at_stop)
    lost, doubled = assert_exact(h, stream)
    name = signal.Signals(sig).name
    report(
        FaultResult(
            f"worker {name}, restarted",
            stream.total,
            f"{at_stop} / {sent}",
            lost,
            doubled,
            0,
            f"stopped in {secs(stopped_s)}; restart -> applying {secs(recovery.resumed_s)}, "
            f"-> caught up {secs(recovery.caught_up_s)}",
        )
    )


def test_two_workers_one_killed(
    harness: ProfileHarness, watch: Callable[[ProfileHarness], Progress]
) -> None:
    h = harness
    progress = watch(h)
    stream = Stream.of(run_id("tw"), PEOPLE)
    split = started(h, "w1", "w2")
    feeder = feed(h, stream)
    h.wait_for("a third of the stream", lambda: applied(h) > stream.total / 3)
    killed, sent = time.monotonic(), feeder.sent
    h.kill_worker(signal.SIGKILL, "w1")
    at_kill = applied(h)
    assert at_kill < stream.total, "the workers finished before one was killed"
    feeder.finish()
    recovery = progress.recovery(killed, stream.total)
    # The survivor took every partition over.
    assert [len(p) for p in group_members(h.kafka.kafka_bootstrap_servers, h.run)] == [
        h.kafka.kafka_topic_partitions
    ]
    lost, doubled = assert_exact(h, stream)
    report(
        FaultResult(
            f"2 workers ({split[0]}+{split[1]} partitions), 1 SIGKILL",
            stream.total,
            f"{at_kill} / {sent}",
            lost,
            doubled,
            0,
            f"kill -> caught up by the survivor {secs(recovery.caught_up_s)}",
        )
    )


def test_malformed_records_from_another_producer(
    harness: ProfileHarness, watch: Callable[[ProfileHarness], Progress]
) -> None:
    h = harness
    progress = watch(h)
    stream = Stream.of(run_id("mf"), PEOPLE)
    bad = malformed_records(stream.run, 350)
    records = interleave(stream.events, bad)
    started(h)
    feeder = Feeder(h.kafka.kafka_bootstrap_servers, h.kafka.touchpoints_topic, records, 3000)
    feeder.start()
    feeder.finish()
    assert feeder.finished_at is not None
    recovery = progress.recovery(feeder.finished_at, stream.total)
    dead = check_dead_letters(h, bad)
    drained_s = time.monotonic() - feeder.finished_at
    lost, doubled = assert_exact(h, stream)
    assert h.worker_exited() is None
    kinds = sorted({r.kind for r in bad})
    report(
        FaultResult(
            f"{len(bad)} malformed records ({len(kinds)} kinds)",
            stream.total,
            "-",
            lost,
            doubled,
            dead,
            f"last record sent -> all applied {secs(recovery.caught_up_s)}, "
            f"all dead-lettered {secs(drained_s)}",
        )
    )


@pytest.mark.chaos
def test_kafka_killed_mid_stream_then_restarted(
    private_stack: PrivateStack,
    private_harness: ProfileHarness,
    watch: Callable[[ProfileHarness], Progress],
) -> None:
    h = private_harness
    progress = watch(h)
    stream = Stream.of(run_id("kk"), PEOPLE * 2)
    started(h)
    feeder = feed(h, stream)
    h.wait_for("a third of the stream", lambda: applied(h) > stream.total / 3)
    feeder.pause()
    killed = time.monotonic()
    private_stack.kafka_down(kill=True)
    at_kill, sent = applied(h), feeder.sent
    assert at_kill < stream.total, "the worker finished before the broker was killed"
    time.sleep(15)  # the outage, with the worker running
    assert h.exited_workers() == {}, f"the worker died while the broker was down: {h.log_path}"
    before_up = applied(h)
    during = before_up - at_kill
    up_s = private_stack.kafka_up()
    restarted = time.monotonic()
    feeder.resume(rate=3000)
    feeder.finish()
    recovery = progress.recovery(restarted, stream.total, base=before_up)
    lost, doubled = assert_exact(h, stream)
    report(
        FaultResult(
            f"Kafka SIGKILL, down {restarted - killed:.0f} s",
            stream.total,
            f"{at_kill} / {sent}",
            lost,
            doubled,
            0,
            f"broker restart {secs(up_s)} ({during} applied during the outage); "
            f"up -> applying {secs(recovery.resumed_s)}, -> caught up "
            f"{secs(recovery.caught_up_s)}",
        )
    )


@pytest.mark.chaos
def test_redis_killed_mid_stream_then_restarted(
    private_stack: PrivateStack,
    private_harness: ProfileHarness,
    watch: Callable[[ProfileHarness], Progress],
) -> None:
    h = private_harness
    progress = watch(h)
    stream = Stream.of(run_id("rk"), PEOPLE * 2)
    started(h)
    feeder = feed(h, stream)
    h.wait_for("a third of the stream", lambda: applied(h) > stream.total / 3)
    at_kill, sent = applied(h), feeder.sent
    killed = time.monotonic()
    private_stack.redis_down(kill=True)
    time.sleep(8)  # the outage, with the stream still coming
    assert h.exited_workers() == {}, f"the worker died while Redis was down: {h.log_path}"
    up_s = private_stack.redis_up()
    restarted = time.monotonic()
    # Nothing is applied while Redis is down; read right after it is back, the count can
    # only be late (then "applying" is measured from a higher count: later, not sooner).
    at_restart = h.wait_for("Redis", lambda: (applied(h),), tolerate=(redis.RedisError,))[0]
    feeder.finish()
    recovery = progress.recovery(restarted, stream.total, base=at_restart)
    lost, doubled = assert_exact(h, stream)
    report(
        FaultResult(
            f"Redis SIGKILL, down {restarted - killed:.0f} s",
            stream.total,
            f"{at_kill} / {sent}",
            lost,
            doubled,
            0,
            f"Redis restart {secs(up_s)}; up -> applying {secs(recovery.resumed_s)}, "
            f"-> caught up {secs(recovery.caught_up_s)}",
        )
    )


@pytest.mark.chaos
def test_lost_redis_writes_are_repaired_by_a_replay_from_kafka(
    private_harness: ProfileHarness, watch: Callable[[ProfileHarness], Progress]
) -> None:
    """The repair the durability note prescribes for writes Redis acknowledged and then
    lost (AOF fsync window, a restore from an older copy): Redis is rolled back to an
    earlier moment, the stopped worker's group is moved back on the touchpoint topic to
    a little before it, and event-id dedup makes the overlap harmless."""
    h = private_harness
    progress = watch(h)
    stream = Stream.of(run_id("rp"), PEOPLE)
    half = len(stream.events) // 2
    started(h)
    first = Feeder(h.kafka.kafka_bootstrap_servers, h.kafka.touchpoints_topic, stream.events[:half])
    first.start()
    first.finish()
    h.wait_for("the first half applied", lambda: applied(h) >= half)
    time.sleep(1)  # the worker idle: the snapshot is a consistent moment
    snapshot_ms = int(time.time() * 1000)
    snapshot = RedisSnapshot(h)
    rest = Feeder(
        h.kafka.kafka_bootstrap_servers, h.kafka.touchpoints_topic, stream.events[half:], 3000
    )
    rest.start()
    rest.finish()
    h.wait_for("every event applied", lambda: applied(h) >= stream.total)
    assert h.kill_worker(signal.SIGTERM) == 0
    snapshot.restore()  # the writes after the snapshot are lost
    assert applied(h) == half
    window_s = 2
    moved = replay_touchpoints(h, snapshot_ms - window_s * 1000)
    replayed = stream.total - sum(moved.values())
    assert replayed >= stream.total - half
    restart = time.monotonic()
    h.start_worker()
    recovery = progress.recovery(restart, stream.total)
    lost, doubled = assert_exact(h, stream)
    report(
        FaultResult(
            "Redis rolled back, replay from Kafka",
            stream.total,
            f"{half} / {stream.total}",
            lost,
            doubled,
            0,
            f"offsets {window_s} s before the loss ({replayed} records replayed); "
            f"restart -> caught up {secs(recovery.caught_up_s)}",
        )
    )
