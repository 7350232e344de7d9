"""Personalisation (next-best-action) benchmark: Decide under ghz at fixed rates.

1. A few hundred demo customers go through ingestion (the stack's IngestService, then its
   profile worker); the bench waits until the profile service has them.
2. The service runs as its own process three times: once per profile source
   (`PERSONALISATION_PROFILE_SOURCE=grpc`, the default, reading through
   ProfileService.GetFeatures; and `reader`, the profile's reader as a library on Redis),
   both with the static rules (no model yet), and once more over gRPC with a learned
   model in place (a checkpoint trained on synthetic outcomes over the whole catalogue),
   so the bandit's predict and sampling are in the figures. Each has its own
   contact-ledger key prefix and decision-log topic, so one run's impressions do not cap
   the next and the demo's decision log stays clean.
3. ghz (a protoset built from protos/: its reflection client answers "Symbol not found"
   on these servers and its proto parser rejects proto3 `optional`) sends Decide at fixed
   rates over the customers, cycling through a data file of requests for three
   placements: p50/p99 of the OK calls, errors, and the rate achieved, after a warm-up.
4. Baseline in the same run: the straightforward Decide (`bench/personalisation_baseline.py`:
   ProfileService/GetProfile over gRPC, then ranking in plain Python, per request). It is
   a gRPC server of its own, driven by the same ghz command, so both sides are measured
   by one client with the same connection, pacing and clock: a Python load driver would
   add its own GIL and scheduling delays to the figures and could not be compared.
5. The cost of one profile read each way, sequentially: GetFeatures over gRPC, the reader
   as a library, and GetProfile (the baseline's read).
6. The CPU time per call of the deciding process and of the profile server (from
   /proc, over each measured run): a Python process decides on one core at a time, so
   this bounds the rate one process can sustain whatever the latency.

Everything runs on this machine: ghz shares its cores with the servers, Redis and Kafka.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import redis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cx.personalisation.v1 import personalisation_pb2
from cx.profile.v1 import profile_pb2, profile_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka.admin import KafkaAdminClient
from kafka.errors import UnknownTopicOrPartitionError

from bench.personalisation_baseline import profile_view
from bench.stats import Figures, print_table
from services.common.kafka_admin import ensure_topics
from services.common.settings import grpc_address, kafka_settings, redis_settings
from services.common.topics import TopicSpec
from services.demo.journeys import DemoConfig, generate
from services.demo.run import lanes
from services.ingest.settings import IngestSettings
from services.personalisation.adapters.learning_store import model_blob_key as blob_key
from services.personalisation.adapters.learning_store import model_current_key as current_key
from services.personalisation.adapters.profile_source import (
    GrpcProfileSource,
    ReaderProfileSource,
)
from services.personalisation.domain.catalogue import load_catalogue
from services.personalisation.domain.learning import (
    ArmSpec,
    Model,
    TrainingExample,
    load_learning,
    model_version,
)
from services.personalisation.service import CONSENT_FIELDS
from services.personalisation.settings import PersonalisationSettings
from services.profile.adapters.layout import Keys
from services.profile.adapters.reader import ProfileReader
from services.profile.domain.segments import load_segments
from services.profile.settings import ProfileSettings
from tests.support.processes import free_port

GOAL_P99_MS = 5.0
GOAL_RATE = 1000
RATES = (100, 250, 500, 1000)
# Pinned: the bench installs it with `go install` into .tools/ when it is not there.
GHZ_VERSION = "v0.121.0"
GHZ_PACKAGE = "github.com/bojand/ghz/cmd/ghz"
# ghz's request workers: calls in flight at most (the service admits 16 at once).
GHZ_CONCURRENCY = 50
CALL = "cx.personalisation.v1.PersonalisationService/Decide"
SERVICE_NAME = personalisation_pb2.DESCRIPTOR.services_by_name["PersonalisationService"].full_name
ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools"
PROTO = "cx/personalisation/v1/personalisation.proto"
# The demo's customers for this bench: their own seed, so their ids are the bench's own
# (a rerun sends the same event ids, which the profile service deduplicates).
SEED = 7301
# (placement, channel, device, page) of the requests, cycled with the customers.
PLACEMENTS = (
    ("web.home.hero", "CHANNEL_WEB", "desktop", "/"),
    ("app.home.banner", "CHANNEL_APP", "mobile", "home"),
    ("agent.panel", "CHANNEL_PHONE", "", ""),
)
SLOW_MS = 20.0


def _say(text: str) -> None:
    print(text, flush=True)


# --- ghz and its inputs ----------------------------------------------------------------


def ensure_ghz() -> Path:
    """ghz: $GHZ, else the pinned version under .tools/ (installed with `go install`)."""
    given = os.environ.get("GHZ")
    if given:
        return Path(given)
    gobin = TOOLS / f"ghz-{GHZ_VERSION}"
    binary = gobin / "ghz"
    if binary.exists():
        return binary
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise RuntimeError("ghz is needed and Go is not installed to build it (or set GHZ)")
    _say(f"installing ghz {GHZ_VERSION} into {gobin} (go install, a few minutes once)")
    subprocess.run(
        [go, "install", f"{GHZ_PACKAGE}@{GHZ_VERSION}"],
        env={**os.environ, "GOBIN": str(gobin)},
        check=True,
        timeout=900,
    )
    return binary


def build_protoset(out: Path) -> Path:
    """A descriptor set of the personalisation proto and everything it imports (the
    module's protoc finds the google/protobuf imports by itself)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            str(ROOT / "protos" / PROTO),
        ],
        check=True,
    )
    return out


def write_requests(customer_ids: Sequence[str], path: Path) -> int:
    """ghz's data file: an array of DecideRequest (JSON), which it cycles through."""
    rng = random.Random(SEED)
    requests = []
    for i, cid in enumerate(customer_ids):
        for j in range(len(PLACEMENTS)):
            placement, channel, device, page = PLACEMENTS[(i + j) % len(PLACEMENTS)]
            request: dict[str, Any] = {
                "identifier": {"type": "IDENTIFIER_TYPE_CUSTOMER_ID", "value": cid},
                "placement": placement,
                "channel": channel,
                "maxActions": 1,
                "explain": False,
            }
            if device:
                request["context"] = {"device": device, "page": page, "locale": "en-GB"}
            requests.append(request)
    rng.shuffle(requests)
    path.write_text(json.dumps(requests))
    return len(requests)


# --- customers ---------------------------------------------------------------------------


def ingest_customers(count: int, timeout_s: float = 240) -> list[str]:
    """Sends `count` demo customers' journeys through the stack's ingestion and returns the
    customer ids the profile service holds once their events are applied."""
    journeys = generate(DemoConfig(customers=count, seed=SEED), datetime.now(UTC))
    events = [e for j in journeys for e in j.events]
    target = grpc_address(IngestSettings().grpc_port)
    with grpc.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        def send(lane: list[ev.TouchpointEvent]) -> int:
            rejected = 0
            for start in range(0, len(lane), 500):
                batch = lane[start : start + 500]
                reply = stub.TrackBatch(ingest_pb2.TrackBatchRequest(events=batch), timeout=60)
                rejected += reply.rejected_count
            return rejected

        with ThreadPoolExecutor(4) as pool:
            rejected = sum(pool.map(send, lanes(journeys, 4)))
    _say(
        f"sent {len(events)} events of {count} demo customers (seed {SEED}) to {target}"
        + (f", {rejected} rejected" if rejected else "")
    )

    # Applied: the profile worker wrote the event's dedup key with the profile.
    r = redis.Redis.from_url(redis_settings().redis_url)
    keys = Keys(ProfileSettings().key_prefix)
    pending = [e.event_id for e in events]
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pipe = r.pipeline(transaction=False)
        for event_id in pending:
            pipe.exists(keys.seen(event_id))
        pending = [e for e, seen in zip(pending, pipe.execute(), strict=True) if not seen]
        if pending:
            time.sleep(0.5)
    r.close()
    if pending:
        _say(f"  {len(pending)} of {len(events)} events not applied after {timeout_s:.0f} s")

    wanted = [j.customer.customer_id for j in journeys if j.customer.identifies]
    found: list[str] = []
    with grpc.insecure_channel(grpc_address(ProfileSettings().grpc_port)) as channel:
        profiles = profile_pb2_grpc.ProfileServiceStub(channel)
        for cid in wanted:
            try:
                profiles.GetFeatures(
                    profile_pb2.GetFeaturesRequest(
                        identifier=profile_pb2.Identifier(
                            type=profile_pb2.IDENTIFIER_TYPE_CUSTOMER_ID, value=cid
                        ),
                        names=["orders"],
                    ),
                    timeout=5,
                )
                found.append(cid)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
    _say(f"profiles held for {len(found)} of {len(wanted)} identified customers")
    if not found:
        raise RuntimeError("the profile service holds none of the bench's customers")
    return found


# --- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    """A server process under test, with its log."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); {self.log}")
                try:
                    reply = health.Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not SERVING after {timeout_s}s; {self.log}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- ghz runs ----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    target: int
    calls: int
    seconds: float
    ok_latencies_s: list[float]
    errors: Counter[str] = field(default_factory=Counter)
    # CPU time per call of the deciding server and of the profile server, in ms.
    cpu_ms: float = 0.0
    profile_cpu_ms: float = 0.0

    @property
    def figures(self) -> Figures:
        return Figures(self.name, len(self.ok_latencies_s), self.seconds, self.ok_latencies_s)

    @property
    def achieved(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return self.figures.percentile_ms(q) or 0.0

    @property
    def max_ms(self) -> float:
        return max(self.ok_latencies_s, default=0.0) * 1000

    @property
    def slow(self) -> int:
        return sum(1 for s in self.ok_latencies_s if s * 1000 > SLOW_MS)


_TS = re.compile(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _epoch_s(text: str) -> float:
    """ghz's RFC 3339 timestamps have nanoseconds, more than fromisoformat takes."""
    match = _TS.match(text)
    if match is None:
        raise ValueError(f"unexpected timestamp {text!r}")
    base, fraction, zone = match.groups()
    whole = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return whole.timestamp() + float(fraction or 0)


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process so far (0 when it is not known)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_server_pid() -> int | None:
    """The stack's profile server (its pid file), for the CPU its reads cost."""
    try:
        pid = int((ROOT / "var" / "run" / "profile.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"services.profile.server" in cmdline else None


@dataclass(frozen=True)
class Ghz:
    binary: Path
    protoset: Path
    data: Path

    def report(self, port: int, rate: int, seconds: float, out: Path) -> dict[str, Any]:
        """One constant-rate run of `seconds`; calls still in flight at the end are waited
        for and counted."""
        argv = [
            str(self.binary),
            "--insecure",
            f"--protoset={self.protoset}",
            f"--call={CALL}",
            f"--data-file={self.data}",
            f"--rps={rate}",
            f"--duration={seconds:g}s",
            "--duration-stop=wait",
            f"--concurrency={GHZ_CONCURRENCY}",
            "--connections=1",
            "--timeout=5s",
            "--format=json",
            f"--output={out}",
            f"127.0.0.1:{port}",
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=seconds + 60
        )
        if not out.exists() or out.stat().st_size == 0:
            raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr.strip()[:2000]}")
        report: dict[str, Any] = json.loads(out.read_text())
        return report

    def run(
        self, name: str, server: Server, rate: int, warmup_s: float, seconds: float, out: Path
    ) -> Run:
        """A warm-up run that is not counted, then the measured one."""
        self.report(server.port, rate, warmup_s, out)
        pids = (server.proc.pid if server.proc else None, profile_server_pid())
        cpu_before = [cpu_seconds(pid) for pid in pids]
        report = self.report(server.port, rate, seconds, out)
        cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
        details: list[dict[str, Any]] = report.get("details") or []
        calls = max(len(details), 1)
        return Run(
            name,
            rate,
            len(details),
            report["total"] / 1e9,
            [d["latency"] / 1e9 for d in details if d["status"] == "OK"],
            Counter(f"{d['status']}: {d['error']}"[:160] for d in details if d["status"] != "OK"),
            cpu[0] * 1000 / calls,
            cpu[1] * 1000 / calls,
        )


def worst_second(out: Path) -> tuple[int, float, int]:
    """(seconds into the counted calls, p99 ms, calls) of the one-second window of a ghz
    report with the worst p99: where a latency spike was."""
    details: list[dict[str, Any]] = json.loads(out.read_text()).get("details") or []
    if not details:
        return 0, 0.0, 0
    start = min(_epoch_s(d["timestamp"]) for d in details)
    windows: dict[int, list[float]] = {}
    for d in details:
        windows.setdefault(int(_epoch_s(d["timestamp"]) - start), []).append(d["latency"] / 1e9)

    def p99(second: int) -> float:
        latencies = windows[second]
        return Figures("", len(latencies), 1.0, latencies).percentile_ms(99) or 0.0

    worst = max(windows, key=p99)
    return worst, p99(worst), len(windows[worst])


# --- profile read cost ---------------------------------------------------------------------


def timed_calls(name: str, calls: int, call: Callable[[int], object]) -> Figures:
    for i in range(min(50, calls)):
        call(i)  # warm up: connections, code paths
    latencies = []
    start = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
    return Figures(name, calls, time.perf_counter() - start, latencies)


def read_costs(customer_ids: Sequence[str], calls: int) -> list[Figures]:
    """One profile read each way, sequentially, with the names a decision asks for."""
    catalogue = load_catalogue(PersonalisationSettings().catalogue_file)
    names = catalogue.fields_read() | CONSENT_FIELDS
    profile_settings = ProfileSettings()
    address = grpc_address(profile_settings.grpc_port)
    over_grpc = GrpcProfileSource(address)
    client = redis.Redis.from_url(redis_settings().redis_url)
    reader = ReaderProfileSource(
        ProfileReader(client, profile_settings), load_segments(profile_settings.segments_file)
    )
    channel = grpc.insecure_channel(address)
    profiles = profile_pb2_grpc.ProfileServiceStub(channel)

    def cid(i: int) -> str:
        return customer_ids[i % len(customer_ids)]

    def get_profile(i: int) -> object:
        reply = profiles.GetProfile(
            profile_pb2.GetProfileRequest(
                identifier=profile_pb2.Identifier(
                    type=profile_pb2.IDENTIFIER_TYPE_CUSTOMER_ID, value=cid(i)
                )
            ),
            timeout=5,
        )
        return profile_view(reply.profile, names)

    try:
        return [
            timed_calls(
                "GetFeatures over gRPC (service: grpc)",
                calls,
                lambda i: over_grpc.features("c", cid(i), names, 5.0),
            ),
            timed_calls(
                "reader as a library (service: reader)",
                calls,
                lambda i: reader.features("c", cid(i), names, 5.0),
            ),
            timed_calls("GetProfile over gRPC + flatten (baseline)", calls, get_profile),
        ]
    finally:
        over_grpc.close()
        channel.close()
        client.close()


# --- the run ---------------------------------------------------------------------------------


def seed_model(key_prefix: str, examples: int = 3000) -> str:
    """Writes a checkpoint as the learner would, trained on random outcomes over every
    action of the catalogue: what a server with a model does per decision is then
    measured (its weights do not matter to the cost)."""
    catalogue = load_catalogue(PersonalisationSettings().catalogue_file)
    arms = tuple(ArmSpec(a.action_id, a.kind) for a in catalogue.actions)
    model = Model(load_learning().model.vw_args)
    rng = random.Random(SEED)
    tiers = ("none", "bronze", "silver", "gold", "platinum")
    for i in range(examples):
        offered = tuple(rng.sample(arms, 6))
        shared = (
            f"shared |u value_tier={rng.choice(tiers)} seg=s{rng.randrange(8)}"
            f" |r placement=p{rng.randrange(3)}"
        )
        chosen = rng.randrange(len(offered))
        model.learn(
            TrainingExample(f"b{i}", shared, offered, chosen, 1 / 6, rng.choice((0.0, 0.1, 0.7)))
        )
    data = model.to_bytes()
    model.close()
    version = model_version(1, data)
    client = redis.Redis.from_url(redis_settings().redis_url)
    try:
        client.set(blob_key(key_prefix, version), data)
        client.hset(
            current_key(key_prefix),
            mapping={"version": version, "sequence": 1, "cursor": "0-0", "trained": examples},
        )
    finally:
        client.close()
    return version


def _service(name: str, source: str, run_id: str, topic: str, logs: Path) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PERSONALISATION_GRPC_PORT": str(port),
        "PERSONALISATION_METRICS_PORT": "0",
        "PERSONALISATION_PROFILE_SOURCE": source,
        # Its own contact ledger and decisions: one run's impressions do not cap the next.
        "PERSONALISATION_KEY_PREFIX": f"{run_id}-{name}:",
        "DECISIONS_TOPIC": topic,
    }
    argv = [sys.executable, "-m", "services.personalisation.server"]
    return Server(name, port, argv, env, logs / f"{run_id}-{name}.log")


def _baseline(run_id: str, logs: Path) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.personalisation_baseline",
        f"--port={port}",
        f"--profile-address={grpc_address(ProfileSettings().grpc_port)}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return Server("baseline", port, argv, env, logs / f"{run_id}-baseline.log")


def _cleanup(run_id: str, topic: str) -> None:
    client = redis.Redis.from_url(redis_settings().redis_url)
    keys = list(client.scan_iter(match=f"{run_id}-*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings().kafka_bootstrap_servers)
    try:
        admin.delete_topics([topic])
    except UnknownTopicOrPartitionError:
        pass
    finally:
        admin.close()


def _ms(value: float) -> str:
    return f"{value:8.2f}"


def print_runs(title: str, runs: Sequence[Run]) -> None:
    print(f"\n== {title}")
    print(
        f"{'run':<34} {'target/s':>8} {'got/s':>7} {'calls':>6} {'errors':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'>' + str(int(SLOW_MS)) + 'ms':>6} "
        f"{'cpu ms':>6} {'+prof':>6}"
    )
    for r in runs:
        print(
            f"{r.name:<34} {r.target:>8} {r.achieved:>7.0f} {r.calls:>6} "
            f"{sum(r.errors.values()):>6} {_ms(r.p(50))} {_ms(r.p(99))} {_ms(r.max_ms)} "
            f"{r.slow:>6} {r.cpu_ms:>6.2f} {r.profile_cpu_ms:>6.2f}"
        )
    print(
        f"(got/s: calls answered per second; >{SLOW_MS:g}ms: OK calls slower than that; cpu ms: "
        "CPU time of the deciding process per call, +prof: of the profile server)"
    )


def run(
    customers: int = 300,
    rates: Sequence[int] = RATES,
    seconds: float = 10,
    warmup_s: float = 2,
    read_calls: int = 500,
) -> None:
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"bench-nba-{uuid.uuid4().hex[:8]}"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\npersonalisation bench {run_id}: artefacts and logs in {out_dir} (load {load})")
    binary = ensure_ghz()
    protoset = build_protoset(out_dir / "personalisation.protoset")
    customer_ids = ingest_customers(customers)
    data = out_dir / "decide-requests.json"
    requests = write_requests(customer_ids, data)
    ghz = Ghz(binary, protoset, data)
    print(f"ghz data file: {requests} Decide requests over {len(customer_ids)} customers")

    topic = f"{run_id}.decisions"
    bootstrap = kafka_settings().kafka_bootstrap_servers
    ensure_topics(bootstrap, [TopicSpec(topic, kafka_settings().kafka_topic_partitions)])
    variants = [
        ("service, profile via gRPC", _service("grpc", "grpc", run_id, topic, out_dir)),
        ("service, profile via reader", _service("reader", "reader", run_id, topic, out_dir)),
        ("service, gRPC, learned model", _service("learned", "grpc", run_id, topic, out_dir)),
        ("baseline: GetProfile + rank", _baseline(run_id, out_dir)),
    ]
    results: dict[str, list[Run]] = {}
    spikes: list[str] = []
    version = seed_model(f"{run_id}-learned:")
    print(f"learned model for the 'learned' runs: checkpoint {version}")
    try:
        costs = read_costs(customer_ids, read_calls)
        for label, server in variants:
            with serving(server):
                for rate in rates:
                    out = out_dir / f"ghz-{server.name}-{rate}.json"
                    _say(f"ghz: {label} at {rate}/s ({warmup_s:g} s warm-up + {seconds:g} s)")
                    result = ghz.run(f"{label} @{rate}", server, rate, warmup_s, seconds, out)
                    results.setdefault(server.name, []).append(result)
                    at, p99, n = worst_second(out)
                    spikes.append(
                        f"  {label} @{rate}/s: p99 {p99:.1f} ms over {n} calls, {at} s in"
                    )
    finally:
        for _, server in variants:
            server.stop()
        _cleanup(run_id, topic)

    print_table(f"one profile read, {read_calls} sequential calls", costs)
    runs = [r for name in ("grpc", "reader", "learned", "baseline") for r in results.get(name, [])]
    print_runs(
        f"personalisation: Decide under ghz {GHZ_VERSION} (c={GHZ_CONCURRENCY}, one connection), "
        "latency of OK calls",
        runs,
    )
    for r in runs:
        for error, count in r.errors.most_common(3):
            print(f"  errors {r.name}: {count} x {error}")
    print("worst one-second window of each run (its p99):")
    print("\n".join(spikes))

    print("\nservice / baseline (lower is better):")
    base = {r.target: r for r in results.get("baseline", [])}
    for name in ("grpc", "reader", "learned"):
        for r in results.get(name, []):
            b = base.get(r.target)
            if b is None or not b.p(50) or not b.p(99):
                continue
            print(f"  {r.name:<34} p50 {r.p(50) / b.p(50):5.2f}x   p99 {r.p(99) / b.p(99):5.2f}x")
    for name in ("grpc", "reader", "learned", "baseline"):
        within = [
            r
            for r in results.get(name, [])
            if r.p(99) <= GOAL_P99_MS and not r.errors and r.achieved >= 0.95 * r.target
        ]
        print(
            f"highest tested rate with p99 <= {GOAL_P99_MS:g} ms and no errors ({name}): "
            + (f"{max(r.target for r in within)}/s" if within else "none")
        )
    for name, label in (
        ("grpc", "profile via gRPC, the default"),
        ("reader", "reader"),
        ("learned", "gRPC with a learned model"),
    ):
        at_goal = [r for r in results.get(name, []) if r.target == GOAL_RATE]
        if not at_goal:
            continue
        r = at_goal[0]
        errors = sum(r.errors.values())
        met = r.p(99) <= GOAL_P99_MS and errors == 0 and r.achieved >= 0.95 * GOAL_RATE
        print(
            f"goal p99 <= {GOAL_P99_MS:g} ms at {GOAL_RATE:,}/s ({label}): "
            f"{'met' if met else 'NOT met'} (p99 {r.p(99):.1f} ms, {r.achieved:.0f}/s, "
            f"{errors} errors)"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load} ({os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup-seconds", type=float, default=2)
    parser.add_argument("--read-calls", type=int, default=500)
    args = parser.parse_args()
    run(args.customers, args.rates, args.seconds, args.warmup_seconds, args.read_calls)


if __name__ == "__main__":
    main()
