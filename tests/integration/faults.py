"""Helpers of the fault suite (`test_faults.py`): a private Kafka and Redis that tests may
kill, a paced feeder of events, malformed records from another producer, and the exact
check of what the worker made of a stream (nothing lost, nothing doubled, every profile
equal to the fold of its events)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, OffsetTimestamp
from kafka.errors import KafkaError, NoError
from kafka.producer.future import FutureRecordMetadata

from services.common import dead_letter as dl
from services.common.kafka_io import (
    SCHEMA_HEADER,
    reliable_producer,
    send_touchpoint,
    touchpoint_headers,
)
from services.common.settings import KafkaSettings
from services.common.telemetry import KafkaHeaders, header_value
from services.profile.domain.fold import differences, fold
from tests.factories import EVENTS_PER_PERSON, person_events
from tests.integration.profile_harness import ProfileHarness, aggregates
from tests.paths import REPO_ROOT

STACK = REPO_ROOT / "deploy" / "local" / "stack.sh"


# --- a private Kafka and Redis ------------------------------------------------------------


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start: int, span: int = 1) -> int:
    """The first port from `start` (by 10s) with `span` free ports in a row."""
    for port in range(start, start + 2000, 10):
        if all(_free(port + i) for i in range(span)):
            return port
    raise RuntimeError(f"no {span} free ports in a row from {start}")


class PrivateStack:
    """A Kafka broker and a Redis of our own (other ports, own var dir), run by
    `deploy/local/stack.sh` exactly as `make up` runs the shared ones: the tests that kill
    the broker or Redis kill these, never the stack other tests are using."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        kafka_port = free_port(19092, span=2)  # the controller listens on port + 1
        redis_port = free_port(16379)
        # infra-up starts an Alertmanager too: not on the shared stack's port.
        alertmanager_port = free_port(19195)
        self.bootstrap = f"127.0.0.1:{kafka_port}"
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.env = {
            **os.environ,
            "CX_VAR_DIR": str(var_dir),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "ALERTS_ALERTMANAGER_URL": f"http://127.0.0.1:{alertmanager_port}",
            "CX_KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
        }

    def run(self, *command: str, timeout_s: float = 180) -> float:
        """Runs one stack.sh command; how long it took."""
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(STACK), *command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"stack.sh {' '.join(command)} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return time.monotonic() - started

    def up(self) -> None:
        self.run("infra-up")

    def kafka(self, base: KafkaSettings) -> KafkaSettings:
        return base.model_copy(update={"kafka_bootstrap_servers": self.bootstrap})

    def kafka_down(self, kill: bool = True) -> float:
        return self.run("kafka-down", *(["--kill"] if kill else []))

    def kafka_up(self) -> float:
        return self.run("kafka-up")

    def redis_down(self, kill: bool = True) -> float:
        return self.run("redis-down", *(["--kill"] if kill else []))

    def redis_up(self) -> float:
        return self.run("redis-up")

    def down(self) -> None:
        try:
            self.run("down")
        finally:
            shutil.rmtree(self.var_dir, ignore_errors=True)


# --- the stream ---------------------------------------------------------------------------


@dataclass
class Stream:
    """People's events interleaved as a live stream does, each person's order kept."""

    run: str
    people: list[list[ev.TouchpointEvent]]

    @classmethod
    def of(cls, run: str, people: int, seed: int = 7) -> Stream:
        rng = random.Random(seed)
        return cls(run, [person_events(rng, run, i) for i in range(people)])

    @property
    def events(self) -> list[ev.TouchpointEvent]:
        return [p[n] for n in range(EVENTS_PER_PERSON) for p in self.people]

    @property
    def total(self) -> int:
        return len(self.people) * EVENTS_PER_PERSON


class Feeder(threading.Thread):
    """Sends records to the touchpoint topic from its own producer at about `rate` records
    a second, in chunks, each acknowledged before the next. `pause` waits for the chunk in
    flight and closes the producer (before a broker restart); `resume` carries on with a
    new one."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[ev.TouchpointEvent | Raw],
        rate: float = 1000,
        chunk: int = 100,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.records = list(records)
        self.chunk = chunk
        self.rate = rate
        self.sent = 0
        self.finished_at: float | None = None
        self.error: BaseException | None = None
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None

    def run(self) -> None:
        try:
            headers = touchpoint_headers()
            for start in range(0, len(self.records), self.chunk):
                self._open.wait()
                chunk_started = time.monotonic()
                with self._lock:
                    if self._producer is None:
                        self._producer = reliable_producer(self.bootstrap, "fault-feeder")
                    futures: list[FutureRecordMetadata] = []
                    for r in self.records[start : start + self.chunk]:
                        if isinstance(r, Raw):
                            futures.append(
                                self._producer.send(
                                    self.topic, key=r.key, value=r.value, headers=r.headers
                                )
                            )
                        else:
                            futures.append(send_touchpoint(self._producer, self.topic, r, headers))
                    for f in futures:
                        f.get(timeout=60)
                    self.sent += len(futures)
                time.sleep(max(0.0, chunk_started + len(futures) / self.rate - time.monotonic()))
            self.finished_at = time.monotonic()
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            with self._lock:
                if self._producer is not None:
                    self._producer.close(timeout=5)
                    self._producer = None

    def pause(self) -> None:
        self._open.clear()
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None

    def resume(self, rate: float | None = None) -> None:
        if rate is not None:
            self.rate = rate
        self._open.set()

    def finish(self, timeout_s: float = 120) -> None:
        self.join(timeout=timeout_s)
        assert not self.is_alive(), "the feeder did not finish"
        if self.error is not None:
            raise AssertionError(f"the feeder failed: {self.error!r}") from self.error
        assert self.sent == len(self.records)


# --- malformed records from another producer --------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A record as another producer writes it: any bytes, any headers."""

    kind: str
    key: bytes
    value: bytes | None
    headers: KafkaHeaders = field(default_factory=list)


def _rejected(value: bytes | None, headers: KafkaHeaders) -> bool:
    try:
        dl.decode_touchpoint(value, headers, record_time=datetime.now(UTC))
    except dl.InvalidRecord:
        return True
    return False


def _invalid_fields(rng: random.Random, base: ev.TouchpointEvent, i: int) -> ev.TouchpointEvent:
    """A well-formed TouchpointEvent that breaks one rule of the contract."""
    e = ev.TouchpointEvent()
    e.CopyFrom(base)
    kind = i % 10
    if kind == 0:
        e.event_id = ""
    elif kind == 1:
        e.ClearField("identities")
    elif kind == 2:
        e.identities.email = "not an email"
    elif kind == 3:
        e.survey_response.CopyFrom(
            ev.SurveyResponse(survey_id="nps", metric=ev.SurveyResponse.METRIC_NPS, score=11)
        )
    elif kind == 4:
        e.ClearField("occurred_at")
    elif kind == 5:
        e.occurred_at.FromDatetime(datetime.now(UTC) + timedelta(days=rng.randint(2, 400)))
    elif kind == 6:
        e.channel = 97  # type: ignore[assignment]  # not a Channel value
    elif kind == 7:
        e.touchpoint = ""
    elif kind == 8:
        e.order_placed.CopyFrom(
            ev.OrderPlaced(order_id="o-1", total=ev.Money(currency_code="EURO", units=5))
        )
    else:
        e.ClearField("payload")
    return e


def malformed_records(run: str, count: int, seed: int = 11) -> list[Raw]:
    """`count` records the worker must dead-letter, of seven kinds: random bytes, truncated
    events, events breaking one rule, tombstones, the wrong schema header, JSON, and another
    protobuf message. Each has its own key (`<run>-bad-<n>`); each is checked to be refused
    by the consumers' decoder, so the test's input is what it claims to be."""
    rng = random.Random(seed)
    template = Stream.of(f"{run}-bad", 1, seed).people[0]
    out: list[Raw] = []
    kinds = ["garbage", "truncated", "invalid", "tombstone", "schema", "json", "foreign"]
    n = 0
    while len(out) < count:
        kind = kinds[n % len(kinds)]
        key = f"{run}-bad-{n}".encode()
        base = ev.TouchpointEvent()
        base.CopyFrom(template[n % len(template)])
        base.event_id = f"{run}-bad-{n}"
        headers = touchpoint_headers()
        value: bytes | None
        if kind == "garbage":
            value = rng.randbytes(rng.randint(1, 300))
        elif kind == "truncated":
            whole = base.SerializeToString()
            value = whole[: rng.randint(1, len(whole) - 1)]
        elif kind == "invalid":
            value = _invalid_fields(rng, base, n // len(kinds)).SerializeToString()
        elif kind == "tombstone":
            value = None
        elif kind == "schema":
            value = base.SerializeToString()
            headers = [(k, v) for k, v in headers if k != SCHEMA_HEADER]
            headers.append((SCHEMA_HEADER, b"cx.events.v2.TouchpointEvent"))
        elif kind == "json":
            value = f'{{"event_id": "{base.event_id}", "channel": "web"}}'.encode()
        else:
            value = pb.ProfileChange(profile_id=f"{run}-p{n}").SerializeToString()
        n += 1
        if _rejected(value, headers):
            out.append(Raw(kind, key, value, headers))
    return out


def interleave(
    valid: Sequence[ev.TouchpointEvent], bad: Sequence[Raw], seed: int = 5
) -> list[ev.TouchpointEvent | Raw]:
    """The valid events in their order, with the bad records at random places among them."""
    rng = random.Random(seed)
    slots = sorted(rng.randrange(len(valid) + 1) for _ in bad)
    out: list[ev.TouchpointEvent | Raw] = []
    b = 0
    for i, event in enumerate(valid):
        while b < len(bad) and slots[b] == i:
            out.append(bad[b])
            b += 1
        out.append(event)
    out.extend(bad[b:])
    return out


# --- what the worker made of it ------------------------------------------------------------


@dataclass
class Tally:
    events: int
    lost: int
    doubled: int
    mismatched: list[str]


def tally(h: ProfileHarness, stream: Stream) -> Tally:
    """Every event of the stream against Redis: lost (its id never applied), doubled (a
    profile counting more events than it has), and profiles that differ from the fold."""
    seen = h.redis.pipeline(transaction=False)
    for e in stream.events:
        seen.exists(h.reader.keys.seen(e.event_id))
    lost = sum(1 for exists in seen.execute() if not exists)
    doubled, mismatched = 0, []
    for i, events in enumerate(stream.people):
        pid = h.reader.profile_id("c", f"{stream.run}-c{i}")
        if pid is None or h.reader.profile_id("a", f"{stream.run}-a{i}") != pid:
            mismatched.append(f"person {i}: no single profile")
            continue
        stored = h.state(pid)
        doubled += max(0, int(stored.sums.get("events", 0)) - len(events))
        diff = differences(aggregates(fold(events, pid)), aggregates(stored))
        if diff:
            mismatched.append(f"person {i}: {diff[:3]}")
    return Tally(stream.total, lost, doubled, mismatched)


def applied(h: ProfileHarness) -> int:
    return h.stat("applied")


@dataclass
class Recovery:
    resumed_s: float  # from the restart (or kill) to the next event applied
    caught_up_s: float  # from the restart (or kill) to the last event applied


class Progress(threading.Thread):
    """Samples the pipeline's applied count ten times a second, through faults (a failed
    read is skipped), so recovery times are measured from the moment of the fault."""

    def __init__(self, h: ProfileHarness) -> None:
        super().__init__(daemon=True)
        self.h = h
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(redis.RedisError):
                self.samples.append((time.monotonic(), applied(self.h)))
            self._done.wait(0.1)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)

    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def recovery(
        self, since: float, total: int, base: int | None = None, timeout_s: float = 180
    ) -> Recovery:
        """Waits for `total` events applied; times from `since` (a monotonic time) to the
        first event applied after it (beyond `base`, the count at `since` when the caller
        knows it better than the last sample before it) and to the last."""
        self.h.wait_for(f"all {total} events applied", lambda: self.latest() >= total, timeout_s)
        if base is None:
            before = [n for t, n in self.samples if t <= since]
            base = before[-1] if before else 0
        after = [(t, n) for t, n in self.samples if t > since]
        resumed = next(t for t, n in after if n > base or n >= total)
        caught_up = next(t for t, n in after if n >= total)
        return Recovery(resumed - since, caught_up - since)


def settle_exactly(h: ProfileHarness, total: int) -> None:
    """Anything applied twice would show soon after the last event."""
    time.sleep(0.5)
    assert applied(h) == total


def dead_letters_by_key(h: ProfileHarness) -> dict[bytes, list[tuple[bytes, KafkaHeaders]]]:
    out: dict[bytes, list[tuple[bytes, KafkaHeaders]]] = {}
    for key, value, headers in h.records(h.kafka.touchpoints_dlq_topic):
        out.setdefault(key or b"", []).append((value, headers))
    return out


def check_dead_letters(h: ProfileHarness, bad: Sequence[Raw], timeout_s: float = 60) -> int:
    """Every bad record on the dead-letter topic once, as it was written (its value, or
    none for a tombstone), with a reason; nothing else there. How many there are."""
    wanted = {r.key: r for r in bad}

    def all_there() -> dict[bytes, list[tuple[bytes, KafkaHeaders]]] | None:
        letters = dead_letters_by_key(h)
        return letters if wanted.keys() <= letters.keys() else None

    letters = h.wait_for("every malformed record dead-lettered", all_there, timeout_s)
    assert letters.keys() == wanted.keys(), sorted(letters.keys() - wanted.keys())[:5]
    problems = []
    for key, copies in letters.items():
        (value, headers), *more = copies
        if more:
            problems.append(f"{key!r}: dead-lettered {len(copies)} times")
        if not header_value(headers, dl.REASON_HEADER):
            problems.append(f"{key!r}: no reason")
        omitted = header_value(headers, dl.VALUE_OMITTED_HEADER) is not None
        if not omitted and (value or None) != (wanted[key].value or None):
            problems.append(f"{key!r} ({wanted[key].kind}): value changed")
    assert not problems, problems[:5]
    return len(letters)


def wait_ready(h: ProfileHarness, workers: int = 1) -> list[int]:
    """Waits until `workers` workers are in the pipeline's group, each owning touchpoint
    partitions (a stream sent earlier would only be a backlog); how many each owns."""

    def owning() -> list[int] | None:
        members = group_members(h.kafka.kafka_bootstrap_servers, h.run)
        return sorted(map(len, members)) if len(members) == workers and all(members) else None

    # The group's coordinator may not be known yet (a fresh broker creates it on demand).
    return h.wait_for(f"{workers} worker(s) owning partitions", owning, 60, (KafkaError,))


def replay_touchpoints(h: ProfileHarness, since_ms: int) -> dict[int, int]:
    """Moves the (stopped) workers' group back on the touchpoint topic to the first record
    at or after `since_ms`, as the durability note in docs/architecture.md says; the
    offsets it moved to."""
    topic = h.kafka.touchpoints_topic
    admin = KafkaAdminClient(bootstrap_servers=h.kafka.kafka_bootstrap_servers)
    try:
        moved = admin.reset_group_offsets(
            h.run,
            {
                TopicPartition(topic, p): OffsetTimestamp(since_ms)
                for p in range(h.kafka.kafka_topic_partitions)
            },
        )
    finally:
        admin.close()
    failed = {tp: r["error"] for tp, r in moved.items() if r["error"] is not NoError}
    assert not failed, failed
    return {tp.partition: int(r["offset"]) for tp, r in moved.items()}


class RedisSnapshot:
    """Every key of a pipeline, dumped: restoring it rolls the pipeline's Redis state back
    to that moment, as losing the writes after it would."""

    def __init__(self, h: ProfileHarness) -> None:
        self.h = h
        self.keys: list[tuple[bytes, int, bytes]] = []
        for key in h.redis.scan_iter(match=f"{h.settings.key_prefix}*", count=1000):
            ttl, dumped = h.redis.pttl(key), h.redis.dump(key)
            if dumped is not None:
                self.keys.append((key, max(int(ttl), 0), dumped))

    def restore(self) -> None:
        r = self.h.redis
        for key in list(r.scan_iter(match=f"{self.h.settings.key_prefix}*", count=1000)):
            r.delete(key)
        for key, ttl, dumped in self.keys:
            r.restore(key, ttl, dumped, replace=True)


def group_members(bootstrap: str, group: str) -> list[list[int]]:
    """The touchpoint partitions of each member of a consumer group."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_groups([group])[group]
    finally:
        admin.close()
    out = []
    for member in described.get("members") or []:
        assignment = member.get("member_assignment") or {}
        parts: list[int] = []
        for topic in assignment.get("assigned_partitions") or []:
            if topic["topic"].endswith(".touchpoints"):
                parts.extend(topic["partitions"])
        out.append(sorted(parts))
    return out


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultResult:
    fault: str
    events: int
    at: str  # where the stream was when the fault hit: applied / sent
    lost: int
    doubled: int
    dead_lettered: int
    recovery: str


RESULTS: list[FaultResult] = []

HEADER = (
    f"{'fault':<38} {'events':>6} {'applied/sent at fault':>22} {'lost':>4} {'doubled':>7} "
    f"{'dead-lettered':>13}  recovery"
)


def row(r: FaultResult) -> str:
    return (
        f"{r.fault:<38} {r.events:>6} {r.at:>22} {r.lost:>4} {r.doubled:>7} "
        f"{r.dead_lettered:>13}  {r.recovery}"
    )


def report(result: FaultResult) -> None:
    """Prints the test's line of the fault table (and keeps it for the whole table)."""
    RESULTS.append(result)
    print(f"\n{HEADER}\n{row(result)}")
