"""Alerts benchmark: negative event -> page, and the detector's throughput, against the
real broker, Redis and Alertmanager.

Everything runs on isolated pipelines (tests/support/isolation.py through the alerts
detection harness): topics, key prefix and consumer groups of the run, the profile worker
and an in-process profile server beside the alerts processes, so people have profiles
and the shared stack's data is not touched. The alerts worker and notifier are their
own processes (`python -m services.alerts.worker`, `services.alerts.notifier`), as is a
receiver sink (`services.alerts.sink`) on a free port. All of it is deleted at the end.

1. Detector throughput: a burst of demo journeys (mostly ordinary events, a share of
   negative experiences, all within the last days so that they still open incidents) is
   on the run's touchpoint topic and applied by the profile worker first (every person is
   known, no wait for a profile); then the alerts worker starts on it, consuming from the
   start. Events/s from its first committed offset until its consumer group's lag is 0
   (both ends seen through committed offsets, every second as Faust commits).
2. Negative event -> page, at a fixed rate: NPS detractor answers from distinct
   customers (each its own incident; the customers have a profile from an earlier order)
   are produced onto the touchpoint topic with kafka-python, each send time stamped; the
   latency is until the sink received the PagerDuty trigger whose evidence is that
   event (the sink stamps each request as it arrives). Lost (no page within the wait),
   duplicated (a second trigger for one incident) and invalid requests are counted.
   The bench's PagerDuty receiver has no rate limit: PagerDuty itself takes about 120
   events a minute per routing key (the shipped default), so at 20 pages a second one key
   would queue them (never drop) and the figure would be that limit, not the service.
3. Baseline in the same run: the same negative events raised as alerts straight to a
   private Alertmanager (Debian's prometheus-alertmanager) with its default routing
   timers (group_wait 30 s, group_interval 5 m; group_by alertname and the incident's
   key, so each is its own group), POST /api/v2/alerts at the same rate, received at its
   webhook on the same sink.
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
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec

from bench.profile import preload
from bench.stats import Figures, print_table
from services.alerts.domain.rules import DEFAULT_PATH as SHIPPED_RULES
from services.common.experience import negative_experiences
from services.common.kafka_io import reliable_producer, send_touchpoint, touchpoint_headers
from services.common.settings import kafka_settings, redis_settings
from services.demo.journeys import DemoConfig, generate
from services.profile.adapters.layout import Stat
from tests.integration.alerts_delivery_harness import owners_toml, received
from tests.integration.alerts_detection_harness import (
    AlertsDetectionHarness,
    now_event,
    nps,
)
from tests.support.processes import free_port

GOAL_P99_MS = 500.0
RATE = 20.0
SECONDS = 25.0
BURST = 20_000
WARMUP = 5
# After the last send, how long a page may still come before it counts as lost.
SERVICE_WAIT_S = 20.0
# Alertmanager's group_wait (its default) plus room for its flush.
BASELINE_WAIT_S = 45.0
RULE = "detractor_nps"
RECEIVER = "pagerduty-bench"


def _say(text: str) -> None:
    print(text, flush=True)


# --- the processes -------------------------------------------------------------------------


def isolated_run(logs: Path) -> AlertsDetectionHarness:
    """A detection harness set back to what the service ships: the shipped rules and the
    timer period's default (the harness makes them quick for tests)."""
    h = AlertsDetectionHarness(kafka_settings(), redis_settings().redis_url, logs)
    h.env["ALERTS_RULES_FILE"] = str(SHIPPED_RULES)
    h.env.pop("ALERTS_TIMER_EVERY_S", None)
    # The shared stack's notifier has the default metrics port.
    h.env["ALERTS_NOTIFIER_METRICS_PORT"] = "0"
    return h


def close(h: AlertsDetectionHarness) -> None:
    """Stops the run's processes and deletes its keys, topics and consumer groups."""
    h.kill_worker(signal.SIGTERM, "notifier")  # leaves its consumer group at once
    h.kill_worker(signal.SIGTERM, "sink")
    h.stop_workers(signal.SIGKILL)  # Faust workers: no graceful shutdown to wait for
    h.close()
    admin = KafkaAdminClient(bootstrap_servers=h.kafka.kafka_bootstrap_servers)
    try:
        groups = {str(g["group_id"]) for g in admin.list_groups()}
        ours = sorted(g for g in groups if g == h.run or g.startswith(f"{h.run}-"))
        if ours:
            admin.delete_groups(ours)
    except Exception as exc:  # best effort: an empty group also expires by itself
        _say(f"  (consumer groups of {h.run} not deleted: {exc})")
    finally:
        admin.close()


def start_sink(h: AlertsDetectionHarness) -> str:
    port = free_port()
    h.env["ALERTS_SINK_PORT"] = str(port)
    h.start_worker("services.alerts.sink", "sink")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    h.wait_for("the sink", up, timeout_s=30)
    return url


class PrivateAlertmanager:
    """Debian's prometheus-alertmanager on a free port with its default route timers,
    delivering every group to one webhook."""

    def __init__(self, directory: Path, webhook_url: str) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            raise RuntimeError("Alertmanager is not installed: run `make install`")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "alertmanager.yml"
        # No group_wait / group_interval / repeat_interval: Alertmanager's defaults.
        config.write_text(
            "route:\n"
            "  receiver: bench-sink\n"
            "  group_by: [alertname, dedup_key]\n"
            "receivers:\n"
            "  - name: bench-sink\n"
            "    webhook_configs:\n"
            f"      - url: {webhook_url}/alertmanager/webhook\n"
            "        send_resolved: false\n"
        )
        self.log = directory / "alertmanager.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.status = get_json(f"{self.url}/api/v2/status")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Alertmanager did not start; see {self.log}") from None
                time.sleep(0.2)

    def route_timers(self) -> str:
        """What the route's timers are: the loaded configuration (GET /api/v2/status)
        sets none, so Alertmanager's defaults apply."""
        original = str(self.status.get("config", {}).get("original", ""))
        version = self.status.get("versionInfo", {}).get("version", "?")
        names = ("group_wait", "group_interval", "repeat_interval")
        set_here = [n for n in names if re.search(rf"^\s*{n}:", original, re.MULTILINE)]
        if set_here:
            return f"Alertmanager {version}, route sets {', '.join(set_here)}: NOT the defaults"
        return (
            f"Alertmanager {version}, route timers unset: its defaults (group_wait 30s, "
            "group_interval 5m, repeat_interval 4h)"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.directory / "data", ignore_errors=True)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        result: dict[str, Any] = json.loads(reply.read())
    return result


def post(url: str, body: object) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()


def metrics(port: int, *names: str) -> dict[str, float]:
    """Counters of a process's /metrics whose sample name starts with one of `names`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(names):
            sample, value = line.rsplit(" ", 1)
            out[sample] = float(value)
    return out


# --- paced sending and pages ------------------------------------------------------------------


def paced(count: int, rate: float, send: Callable[[int], None]) -> float:
    """Calls send(0..count-1) on a fixed schedule; the seconds it took."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)
    return time.perf_counter() - start


@dataclass
class Arrivals:
    """What a latency run measured."""

    name: str
    sent: int
    seconds: float
    latencies_s: list[float]
    lost: int
    duplicated: int
    invalid: int
    # Where the time went, by stage name (seconds per page).
    stages: dict[str, list[float]] = field(default_factory=dict)
    # The worker's profile reads so far, by result (known, unknown: waited for).
    people: dict[str, float] = field(default_factory=dict)

    def figures(self) -> Figures:
        return Figures(self.name, self.sent, self.seconds, self.latencies_s)

    def max_ms(self) -> float | None:
        return max(self.latencies_s) * 1000 if self.latencies_s else None


def collect(
    sink_url: str,
    kind: str,
    since: int,
    sent_at: dict[str, float],
    match: Callable[[dict[str, Any]], Iterable[str]],
    wait_s: float,
) -> tuple[dict[str, list[float]], int, list[dict[str, Any]]]:
    """Polls the sink until every id in `sent_at` arrived or `wait_s` passed; the arrival
    times (epoch s) by id, the requests of this kind the sink refused as invalid, and the
    records that matched."""
    arrivals: dict[str, list[float]] = {}
    matched: list[dict[str, Any]] = []
    invalid = 0
    deadline = time.monotonic() + wait_s
    while True:
        for record in received(sink_url, kind=kind, since=str(since)):
            since = max(since, int(record["seq"]))
            if not record.get("valid"):
                invalid += 1
                continue
            for key in match(record):
                if key in sent_at:
                    arrivals.setdefault(key, []).append(record["at_ms"] / 1000)
                    matched.append(record)
        if len(arrivals) >= len(sent_at) or time.monotonic() > deadline:
            return arrivals, invalid, matched
        time.sleep(0.5)


def arrivals_figures(
    name: str,
    sent_at: dict[str, float],
    seconds: float,
    arrivals: dict[str, list[float]],
    invalid: int,
) -> Arrivals:
    latencies = [min(arrivals[k]) - t0 for k, t0 in sent_at.items() if k in arrivals]
    return Arrivals(
        name,
        len(sent_at),
        seconds,
        latencies,
        lost=sum(1 for k in sent_at if k not in arrivals),
        duplicated=sum(len(v) - 1 for v in arrivals.values()),
        invalid=invalid,
    )


def last_seq(sink_url: str) -> int:
    return int(get_json(f"{sink_url}/received?kind=pagerduty&since=999999999")["last_seq"])


def page_event_ids(record: dict[str, Any]) -> list[str]:
    """The event a PagerDuty trigger was opened by (the incident's first evidence)."""
    body = record.get("body") or {}
    if body.get("event_action") != "trigger":
        return []
    evidence = body.get("payload", {}).get("custom_details", {}).get("evidence") or []
    return [evidence[0]["event_id"]] if evidence else []


def alert_keys(record: dict[str, Any]) -> list[str]:
    return list(record.get("keys") or [])


# --- 1. detector throughput ---------------------------------------------------------------------


def burst_events(count: int, seed: int) -> list[ev.TouchpointEvent]:
    """Demo journeys within the last six days (younger than the worker's seven-day limit
    for opening incidents), a third of the customers with a negative experience."""
    config = DemoConfig(customers=count // 45 + 1, seed=seed, days=6, negative_share=0.3)
    events = [e for j in generate(config, datetime.now(UTC)) for e in j.events]
    events.sort(key=lambda e: e.occurred_at.ToNanoseconds())
    return events[:count]


def end_offsets(admin: KafkaAdminClient, topic: str) -> dict[TopicPartition, int]:
    (described,) = admin.describe_topics([topic])
    parts = [TopicPartition(topic, p["partition_index"]) for p in described["partitions"]]
    latest = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in parts})
    return {tp: found.offset for tp, found in latest.items()}


def committed(admin: KafkaAdminClient, group: str, ends: dict[TopicPartition, int]) -> int:
    offsets = admin.list_group_offsets(group).get(group, {})
    return sum(max(offsets[tp].offset, 0) for tp in ends if tp in offsets)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def detector_throughput(logs: Path, count: int) -> tuple[Figures, dict[str, float]]:
    h = isolated_run(logs)
    admin = KafkaAdminClient(bootstrap_servers=h.kafka.kafka_bootstrap_servers)
    try:
        events = burst_events(count, seed=8101)
        negatives = sum(1 for e in events if negative_experiences(e))
        _say(f"  burst: {len(events)} demo events on {h.kafka.touchpoints_topic}")
        preload(h, events)
        ends = end_offsets(admin, h.kafka.touchpoints_topic)
        total = sum(ends.values())
        _say("  profile worker applying the burst first (every person known)")
        h.start_worker()

        def applied() -> bool:
            done = sum(map(h.stat, (Stat.APPLIED, Stat.BLOCKED, Stat.SUPPRESSED)))
            return done >= len(events)

        h.wait_for("the profile worker to apply the burst", applied, timeout_s=300)
        h.kill_worker(signal.SIGKILL)
        _say("  alerts worker draining the burst from the start")
        h.start_alerts()
        group = h.env["ALERTS_CONSUMER_GROUP"]
        worker = h.workers["alerts"]
        deadline = time.monotonic() + 600
        first_at, first_count, first_cpu, done = 0.0, 0, 0.0, 0
        while done < total:
            done = committed(admin, group, ends)
            now = time.monotonic()
            if not first_at and done > 0:
                first_at, first_count, first_cpu = now, done, cpu_seconds(worker.pid)
            if now > deadline or h.worker_exited("alerts") is not None:
                raise RuntimeError(f"alerts worker: {done}/{total}; see {h.worker_log('alerts')}")
            time.sleep(0.05)
        seconds = max(time.monotonic() - first_at, 1e-6)
        cpu = cpu_seconds(worker.pid) - first_cpu
        counts = metrics(h.metrics_port, "cx_alerts_records_total", "cx_alerts_triggers_total")
        counts["worker cpu seconds"] = cpu
        counts["negative events in the burst"] = negatives
        figures = Figures(f"detector: {total} burst -> lag 0", total - first_count, seconds)
        return figures, counts
    finally:
        admin.close()
        close(h)


# --- 2. negative event -> page --------------------------------------------------------------------


def known_customers(h: AlertsDetectionHarness, count: int) -> list[str]:
    """Customers with a profile (one order each, of varied value, so severities vary)."""
    rng = random.Random(8102)
    customers = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    orders = []
    for c in customers:
        order = now_event("checkout.order", c, minutes_ago=rng.uniform(60, 60 * 24 * 30))
        order.channel, order.journey_stage = ev.CHANNEL_WEB, ev.JOURNEY_STAGE_PURCHASE
        total = ev.Money(currency_code="EUR", units=rng.choice((20, 150, 600, 4000)))
        order.order_placed.CopyFrom(ev.OrderPlaced(order_id=f"o-{uuid.uuid4()}", total=total))
        orders.append(order)
    h.track(orders)

    def applied() -> bool:
        return sum(map(h.stat, (Stat.APPLIED, Stat.BLOCKED, Stat.SUPPRESSED))) >= count

    h.wait_for("the customers' profiles", applied, timeout_s=120)
    return customers


def service_latency(
    h: AlertsDetectionHarness, sink_url: str, customers: Sequence[str], rate: float
) -> Arrivals:
    producer = reliable_producer(h.kafka.kafka_bootstrap_servers, "bench-alerts")
    topic = h.kafka.touchpoints_topic
    producer.partitions_for(topic)  # metadata first, not timed
    headers = touchpoint_headers()
    sent_at: dict[str, float] = {}
    since = last_seq(sink_url)

    def send(i: int) -> None:
        event = nps(customers[i], i % 7)
        sent_at[event.event_id] = time.time()
        send_touchpoint(producer, topic, event, headers)

    try:
        seconds = paced(len(customers), rate, send)
        producer.flush()
    finally:
        producer.close()
    arrivals, invalid, pages = collect(
        sink_url, "pagerduty", since, sent_at, page_event_ids, SERVICE_WAIT_S
    )
    result = arrivals_figures(
        "service: event -> PagerDuty page", sent_at, seconds, arrivals, invalid
    )
    result.stages = stages(h, sent_at, pages)
    reads = metrics(h.metrics_port, "cx_alerts_profile_reads_total")
    result.people = {label(k, "result"): v for k, v in reads.items()}
    return result


def stages(
    h: AlertsDetectionHarness, sent_at: dict[str, float], pages: Sequence[dict[str, Any]]
) -> dict[str, list[float]]:
    """Each page's time split at its incident's outbox entry (written with the incident,
    in the worker's Lua call; the stream entry id is Redis's clock in ms): detection
    (produce -> incident and outbox entry in Redis), then delivery (-> the sink)."""
    opened = {e.incident_id: e.at_ms / 1000 for e in h.outbox() if e.change == "OPENED"}
    detect: list[float] = []
    deliver: list[float] = []
    rows = ["event_id,sent_s,detect_ms,deliver_ms"]
    start = min(sent_at.values(), default=0.0)
    first: dict[str, float] = {}
    for page in pages:
        (event_id,) = page_event_ids(page)
        at = page["at_ms"] / 1000
        if event_id not in first or at < first[event_id]:
            first[event_id] = at
    for page in pages:
        (event_id,) = page_event_ids(page)
        incident = page["body"]["payload"]["custom_details"].get("incident_id", "")
        at = page["at_ms"] / 1000
        if at != first[event_id] or incident not in opened:
            continue
        detect.append(opened[incident] - sent_at[event_id])
        deliver.append(at - opened[incident])
        rows.append(
            f"{event_id},{sent_at[event_id] - start:.3f},"
            f"{detect[-1] * 1000:.1f},{deliver[-1] * 1000:.1f}"
        )
    (h.log_dir / f"{h.run}-pages-{len(sent_at)}.csv").write_text("\n".join(rows) + "\n")
    return {"produce -> incident in Redis": detect, "incident -> page at the sink": deliver}


def baseline_latency(
    am: PrivateAlertmanager, sink_url: str, customers: Sequence[str], rate: float
) -> Arrivals:
    sent_at: dict[str, float] = {}
    since = last_seq(sink_url)

    def send(i: int) -> None:
        key = f"{RULE}:customer:{customers[i]}"
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        alert = {
            "labels": {
                "alertname": RULE,
                "rule": RULE,
                "team": "cx",
                "severity": "warning",
                "dedup_key": key,
            },
            "annotations": {"summary": f"NPS {i % 7} at survey.nps"},
            "startsAt": now,
            "generatorURL": "http://127.0.0.1/bench",
        }
        sent_at[key] = time.time()
        post(f"{am.url}/api/v2/alerts", [alert])

    seconds = paced(len(customers), rate, send)
    arrivals, invalid, _ = collect(
        sink_url, "alertmanager", since, sent_at, alert_keys, BASELINE_WAIT_S
    )
    return arrivals_figures(
        "baseline: Alertmanager default route", sent_at, seconds, arrivals, invalid
    )


def page_latency(logs: Path, rate: float, seconds: float) -> tuple[Arrivals, Arrivals, str]:
    h = isolated_run(logs)
    am: PrivateAlertmanager | None = None
    try:
        sink_url = start_sink(h)
        owners = logs / f"{h.run}-owners.toml"
        receiver = {
            "name": RECEIVER,
            "type": "pagerduty",
            "url": f"{sink_url}/pagerduty/v2/enqueue",
            # The sink is not PagerDuty: no 120-a-minute limit (see the module docstring).
            "rate_per_min": 0,
        }
        owners.write_text(owners_toml([receiver]))
        h.env["ALERTS_OWNERS_FILE"] = str(owners)
        count = int(rate * seconds)
        _say(f"  {count + WARMUP} customers with a profile (one order each)")
        h.start_worker()
        customers = known_customers(h, count + WARMUP)
        _say("  alerts worker, notifier; warm-up pages")
        h.start_alerts()
        h.start_worker("services.alerts.notifier", "notifier")
        warm = service_latency(h, sink_url, customers[:WARMUP], rate)
        if warm.lost:
            # The first group join can take a while: wait once more before measuring.
            h.wait_for(
                "the warm-up pages",
                lambda: len(received(sink_url, kind="pagerduty")) >= WARMUP,
                timeout_s=60,
            )
        _say(f"  {count} detractor answers at {rate:g}/s, one incident each")
        service = service_latency(h, sink_url, customers[WARMUP:], rate)
        am = PrivateAlertmanager(logs / f"{h.run}-alertmanager", sink_url)
        timers = am.route_timers()
        _say(f"  the same {count} as alerts to a private {timers}")
        baseline = baseline_latency(am, sink_url, customers[WARMUP:], rate)
        return service, baseline, timers
    finally:
        if am is not None:
            am.stop()
        close(h)


# --- the run -----------------------------------------------------------------------------------


def label(sample: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', sample)
    return found.group(1) if found else sample


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:9.1f}"


def run(rate: float = RATE, seconds: float = SECONDS, burst: int = BURST) -> None:
    logs = Path(tempfile.mkdtemp(prefix="cx-bench-alerts-"))
    _say(f"\nalerts bench: logs in {logs} (load {load()})")
    started = time.monotonic()
    _say("detector throughput")
    throughput, counts = detector_throughput(logs, burst)
    _say("negative event -> page")
    service, baseline, timers = page_latency(logs, rate, seconds)
    took = time.monotonic() - started

    print_table(
        "alerts: detector burst throughput; negative event -> page (events/s: the rate sent)",
        [throughput, service.figures(), baseline.figures()],
    )
    print(f"\nnegative event -> page at {rate:g}/s for {seconds:g} s (one incident per customer):")
    print(f"  {'':<38} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'lost':>5} {'dup':>4} {'bad':>4}")
    for a in (service, baseline):
        f = a.figures()
        print(
            f"  {a.name:<38} {_ms(f.percentile_ms(50))} {_ms(f.percentile_ms(99))} "
            f"{_ms(a.max_ms())} {a.lost:>5} {a.duplicated:>4} {a.invalid:>4}"
        )
    for stage, values in service.stages.items():
        f = Figures(stage, len(values), 1.0, values)
        worst = max(values) * 1000 if values else None
        print(f"    {stage:<36} {_ms(f.percentile_ms(50))} {_ms(f.percentile_ms(99))} {_ms(worst)}")
    people = ", ".join(f"{k} {v:.0f}" for k, v in sorted(service.people.items()))
    print(f"    the worker's profile reads (warm-up included): {people}")
    print(f"  baseline: {timers}")
    s50, s99 = service.figures().percentile_ms(50), service.figures().percentile_ms(99)
    b50, b99 = baseline.figures().percentile_ms(50), baseline.figures().percentile_ms(99)
    if s50 and s99 and b50 and b99:
        print(
            f"  baseline / service (higher: the service is faster): "
            f"p50 {b50 / s50:.0f}x, p99 {b99 / s99:.0f}x"
        )
    print(
        "  the bench's PagerDuty receiver is not rate limited; with PagerDuty's 120 events a "
        f"minute per routing key, one key at {rate:g}/s would queue pages (never drop them)"
    )
    cpu = counts.get("worker cpu seconds", 0.0)
    print(
        f"\ndetector: {throughput.rate:.0f} events/s until its consumer group's lag was 0 "
        f"(wall clock); its process used {cpu:.1f} CPU s for those {throughput.events} events: "
        f"{throughput.events / cpu if cpu else 0:.0f} events per CPU second"
    )
    records = {k: v for k, v in counts.items() if k.startswith("cx_alerts_records_total")}
    triggers = sum(v for k, v in counts.items() if k.startswith("cx_alerts_triggers_total"))
    outcomes = ", ".join(f"{label(k, 'outcome')} {v:.0f}" for k, v in sorted(records.items()))
    negatives = counts.get("negative events in the burst", 0)
    print(
        f"  burst: {negatives:.0f} negative experiences; records by outcome: {outcomes}; "
        f"rule triggers {triggers:.0f}"
    )
    complete = service.lost == 0 and service.duplicated == 0 and service.invalid == 0
    met = s99 is not None and s99 <= GOAL_P99_MS and complete
    print(
        f"goal p99 <= {GOAL_P99_MS:.0f} ms: {'met' if met else 'NOT met'} "
        f"({_ms(s99).strip()} ms, {service.lost} lost, {service.duplicated} duplicated)"
    )
    print(
        f"alerts bench took {took:.0f} s; load average at the end {load()} ({os.cpu_count()} cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=RATE, help="negative events a second")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--burst", type=int, default=BURST, help="events for the throughput")
    args = parser.parse_args()
    run(args.rate, args.seconds, args.burst)


if __name__ == "__main__":
    main()
