"""The alerts notifier against the real Redis, Kafka and Alertmanager and the receiver
sink: trigger, acknowledge and resolve with one dedup key; the receiver down for a while
then back (every page delivered, none twice); a notifier killed mid-delivery and
restarted (none lost, none twice); pending entries of a dead notifier recovered; rate
limits; failures that are not retried; the IncidentChange records and ExperienceIncident
events that close the loop."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cx.alerts.v1 import alerts_pb2 as pb
from cx.events.v1 import touchpoint_pb2 as ev
from kafka import KafkaConsumer, TopicPartition

from services.alerts.adapters.changes import ChangeLog, People
from services.alerts.adapters.layout import OUTBOX_GROUP
from services.alerts.adapters.outbox import Outbox
from services.alerts.notifier import Notifier, OwnersFile, TouchpointEvents, Tuning
from services.alerts.receivers.common import ms_rfc3339
from services.alerts.receivers.sender import HttpSender
from services.alerts.settings import AlertsSettings
from services.common.settings import KafkaSettings, redis_settings
from services.common.touchpoint_publisher import TouchpointPublisher
from tests.integration.alerts_delivery_harness import (
    AlertsRun,
    SinkThread,
    received,
    wait_async,
    wait_for,
)

pytestmark = pytest.mark.integration


def receivers_at(sink: SinkThread, *names: str) -> list[dict[str, Any]]:
    """Receiver tables pointing at `sink` (loopback: stand-in secrets)."""
    tables = {
        "pagerduty-cx": {"type": "pagerduty", "url": f"{sink.url}/pagerduty/v2/enqueue"},
        "slack-cx": {"type": "slack", "url": f"{sink.url}/slack/cx"},
        "webhook-ops": {"type": "webhook", "url": f"{sink.url}/webhook/ops"},
    }
    return [{"name": n, **tables[n]} for n in names]


class KnownPeople:
    """The profile's answer for every person: their customer id."""

    def person_identifier(self, profile_id: str, timeout_s: float) -> tuple[str, str] | None:
        return ("c", f"cust-{profile_id}")

    def features(self, *args: Any) -> None:
        return None

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def run(kafka: KafkaSettings, tmp_path: Path) -> Iterator[AlertsRun]:
    alerts = AlertsRun(kafka, redis_settings().redis_url, tmp_path)
    yield alerts
    alerts.close()


@pytest.fixture
def sink_for(run: AlertsRun) -> Iterator[Any]:
    """Writes the owners file for the named receivers and starts a sink that knows their
    secrets."""
    sinks: list[SinkThread] = []

    def make(*names: str, extra: list[dict[str, Any]] | None = None) -> SinkThread:
        sink = SinkThread({})
        sinks.append(sink)
        sink.sink.secrets.update(run.write_owners(receivers_at(sink, *names) + (extra or [])))
        return sink

    yield make
    for sink in sinks:
        sink.close()


class Running:
    """An in-process notifier as a task of the test's loop."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.task = asyncio.create_task(notifier.run())

    async def ready(self) -> None:
        ready = asyncio.create_task(self.notifier.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=20, return_when="FIRST_COMPLETED")
        if self.task in done:
            self.task.result()
        assert ready in done, "the notifier did not start"

    async def stop(self) -> None:
        self.notifier.stop()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def notifiers(run: AlertsRun) -> AsyncIterator[Any]:
    started: list[Running] = []

    async def start(
        name: str = "n1", *, tuning: Tuning | None = None, max_age_s: float = 3600
    ) -> Running:
        client = aioredis.Redis.from_url(run.redis_url)
        bootstrap = run.kafka.kafka_bootstrap_servers
        changes = ChangeLog(bootstrap, run.kafka.experience_incidents_topic)
        events = TouchpointEvents(
            TouchpointPublisher.connect(bootstrap, run.kafka.touchpoints_topic),
            People(KnownPeople(), 0.5),
        )
        notifier = Notifier(
            Outbox(client, run.prefix, consumer=f"{run.run}-{name}"),
            OwnersFile(run.owners_file, os.environ),
            HttpSender(5.0),
            changes=changes.publish,
            touchpoints=events.publish,
            max_age_s=max_age_s,
            tuning=tuning or Tuning(retry_max_s=2.0, heartbeat_s=0.5),
            closers=[changes.close, events.close, client.aclose],
        )
        running = Running(notifier)
        started.append(running)
        await running.ready()
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.stop()


def pending(run: AlertsRun) -> int:
    info: Any = run.client.xpending(run.store.keys.outbox, OUTBOX_GROUP)
    return int(info["pending"])


def outbox_drained(run: AlertsRun) -> bool:
    """Every entry read and acknowledged."""
    groups: Any = run.client.xinfo_groups(run.store.keys.outbox)
    group = next(g for g in groups if g["name"] in (OUTBOX_GROUP, OUTBOX_GROUP.encode()))
    return int(group["pending"]) == 0 and int(group.get("lag") or 0) == 0


def topic_records(bootstrap: str, topic: str, expected: int, timeout_s: float = 20) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # A little longer: more than expected would be a duplicate.
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


def accepted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["accepted"]]


def assert_clean(records: list[dict[str, Any]]) -> None:
    """Valid against the schema, no personal data."""
    for r in records:
        if r["refused"]:
            continue
        assert r["valid"], (r["path"], r["errors"])
        assert r["personal_data"] == [], (r["path"], r["personal_data"])


# --- one incident through its life --------------------------------------------------------


async def test_trigger_acknowledge_resolve_reach_every_receiver_with_one_dedup_key(
    run: AlertsRun, sink_for: Any, notifiers: Any, kafka: KafkaSettings
) -> None:
    sink = sink_for("pagerduty-cx", "slack-cx", "webhook-ops")
    await notifiers()
    pid = f"p-{run.run}"
    key = run.dedup_key(pid)
    incident_id = run.trigger(pid, summary="VIP detractor ada@example.com: NPS 2")

    def pages(n: int) -> bool:
        return len(sink.received(kind="pagerduty", dedup_key=key)) == n

    await wait_async("the trigger", lambda: pages(1))
    # A second detractor answer updates the incident: no new page.
    assert run.trigger(pid) == incident_id
    run.store.acknowledge(incident_id, "Ada <ada@example.com>", int(time.time() * 1000))
    await wait_async("the acknowledgement", lambda: pages(2))
    run.store.resolve(incident_id, "ada", "called back on +447700900123", int(time.time() * 1000))
    await wait_async("the resolution", lambda: pages(3))
    await wait_async("the outbox drained", lambda: outbox_drained(run))

    pd = sink.received(kind="pagerduty", dedup_key=key)
    assert [r["body"]["event_action"] for r in pd] == ["trigger", "acknowledge", "resolve"]
    assert [r["effect"] for r in pd] == ["opened", "acknowledged", "resolved"]
    assert len({r["body"]["routing_key"] for r in pd}) == 1
    assert pd[0]["body"]["payload"]["custom_details"]["profile_id"] == pid
    assert pd[0]["body"]["payload"]["summary"] == "VIP detractor [email]: NPS 2"
    slack = sink.received(kind="slack", dedup_key=key)
    hooks = sink.received(kind="webhook", dedup_key=key)
    assert [h["headers"]["X-Cx-Event"] for h in hooks] == ["OPENED", "ACKNOWLEDGED", "RESOLVED"]
    assert [s["body"]["blocks"][0]["text"]["text"].split(":")[0] for s in slack] == [
        "Opened",
        "Acknowledged",
        "Resolved",
    ]
    everything = pd + slack + hooks
    assert_clean(everything)
    assert not any(r["duplicate"] for r in everything)
    assert len({r["idempotency_key"] for r in everything}) == 9

    incident = run.store.get(incident_id)
    assert incident is not None
    history = {(d.receiver, d.change): d for d in incident.deliveries}
    assert set(history) == {
        (r, c)
        for r in ("pagerduty-cx", "slack-cx", "webhook-ops")
        for c in ("OPENED", "ACKNOWLEDGED", "RESOLVED")
    }
    assert all(d.status == "delivered" and d.attempts == 1 for d in history.values())

    bootstrap = kafka.kafka_bootstrap_servers
    changes = topic_records(bootstrap, run.kafka.experience_incidents_topic, 4)
    parsed = [pb.IncidentChange.FromString(r.value) for r in changes]
    assert [(p.change, p.incident.version) for p in parsed] == [
        (pb.CHANGE_OPENED, 1),
        (pb.CHANGE_UPDATED, 2),
        (pb.CHANGE_ACKNOWLEDGED, 3),
        (pb.CHANGE_RESOLVED, 4),
    ]
    assert {r.key for r in changes} == {pid.encode()}
    events = topic_records(bootstrap, run.kafka.touchpoints_topic, 3)
    parsed_events = [ev.TouchpointEvent.FromString(r.value) for r in events]
    assert [(e.event_id, e.experience_incident.state) for e in parsed_events] == [
        (f"alerts:{incident_id}:v1", ev.ExperienceIncident.STATE_OPENED),
        (f"alerts:{incident_id}:v3", ev.ExperienceIncident.STATE_ACKNOWLEDGED),
        (f"alerts:{incident_id}:v4", ev.ExperienceIncident.STATE_RESOLVED),
    ]
    assert all(e.identities.customer_id == f"cust-{pid}" for e in parsed_events)


# --- Alertmanager (the stack's, delivering to the stack's sink) ---------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@pytest.fixture
def stack_alertmanager() -> tuple[str, str]:
    settings = AlertsSettings()
    sink = f"http://127.0.0.1:{settings.sink_port}"
    try:
        _get_json(f"{settings.alertmanager_url}/api/v2/status")
        urllib.request.urlopen(f"{sink}/health", timeout=5).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"Alertmanager or the alerts sink is not running ({exc}); `make up`")
    return settings.alertmanager_url, sink


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_alertmanager_fires_and_resolves_with_the_dedup_key(
    run: AlertsRun, sink_for: Any, notifiers: Any, stack_alertmanager: tuple[str, str]
) -> None:
    alertmanager_url, stack_sink = stack_alertmanager
    sink_for(extra=[{"name": "alertmanager", "type": "alertmanager", "url": alertmanager_url}])
    await notifiers()
    pid = f"p-{run.run}"
    key = run.dedup_key(pid)
    incident_id = run.trigger(pid, severity="error")

    def notifications(status: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for record in received(stack_sink, kind="alertmanager", dedup_key=key):
            out += [
                (record, a)
                for a in record["body"]["alerts"]
                if a["labels"].get("dedup_key") == key and a["status"] == status
            ]
        return out

    await wait_async("the firing notification", lambda: bool(notifications("firing")), 30)
    record, alert = notifications("firing")[0]
    assert record["valid"], record["errors"]
    assert record["body"]["version"] == "4"
    assert alert["labels"]["profile_id"] == pid
    assert alert["labels"]["team"] == "cx"
    assert alert["annotations"]["severity"] == "error"
    assert alert["annotations"]["incident_id"] == incident_id

    # Acknowledged: the same alert (same labels), its annotations updated in Alertmanager.
    run.store.acknowledge(incident_id, "ada", int(time.time() * 1000))
    query = urllib.parse.urlencode({"filter": f'dedup_key="{key}"'})

    def annotated() -> bool:
        alerts = _get_json(f"{alertmanager_url}/api/v2/alerts?{query}")
        return len(alerts) == 1 and alerts[0]["annotations"].get("state") == "acknowledged"

    await wait_async("the acknowledgement in Alertmanager", annotated, 20)

    resolved_ms = int(time.time() * 1000)
    run.store.resolve(incident_id, "ada", "fixed", resolved_ms)
    await wait_async("the resolved notification", lambda: bool(notifications("resolved")), 40)
    record, alert = notifications("resolved")[0]
    assert record["valid"], record["errors"]
    assert record["personal_data"] == []
    assert alert["labels"] == notifications("firing")[0][1]["labels"]
    ends = _time(alert["endsAt"])
    assert abs(ends.timestamp() * 1000 - resolved_ms) < 2, (
        alert["endsAt"],
        ms_rfc3339(resolved_ms),
    )
    assert _time(alert["startsAt"]) < ends


# --- the receiver down, then back ---------------------------------------------------------


@pytest.mark.parametrize(
    "outage_s",
    [pytest.param(8.0, id="8s"), pytest.param(60.0, id="60s", marks=pytest.mark.chaos)],
)
async def test_receiver_down_then_back_every_page_delivered_none_twice(
    run: AlertsRun, sink_for: Any, notifiers: Any, outage_s: float
) -> None:
    sink = sink_for("pagerduty-cx", "slack-cx", "webhook-ops")
    # The service's own backoff (0.5 s to 30 s) for the long outage; shorter for 8 s.
    tuning = Tuning() if outage_s >= 30 else Tuning(retry_max_s=2.0)
    await notifiers(tuning=tuning)
    sink.control(fail=True, status=503)
    started = time.monotonic()
    pids = [f"p{i}-{run.run}" for i in range(12)]
    ids = [run.trigger(pid) for pid in pids]
    await asyncio.sleep(outage_s / 2)
    now = int(time.time() * 1000)
    for incident_id in ids[:4]:
        run.store.acknowledge(incident_id, "ada", now)
    for incident_id in ids[4:6]:
        run.store.resolve(incident_id, "ada", "fixed", now)
    await asyncio.sleep(max(outage_s - (time.monotonic() - started), 0))
    refused = [r for r in sink.received() if r["refused"]]
    assert refused, "the receiver was never tried while it was down"
    # Meanwhile the history says what is going on: the first page (at the head of its
    # lanes) retried, the last one queued behind.
    for incident_id, tried in ((ids[0], True), (ids[-1], False)):
        waiting = run.store.get(incident_id)
        assert waiting is not None
        opened = [d for d in waiting.deliveries if d.change == "OPENED"]
        assert {d.status for d in opened} == {"pending"}
        if tried:
            assert all(d.attempts >= 2 and "HTTP 503" in d.last_error for d in opened)
    sink.control(fail=False)
    await wait_async("every page delivered", lambda: outbox_drained(run), 60 + outage_s)

    pd = accepted(sink.received(kind="pagerduty"))
    effects = collections.Counter((r["keys"][0], r["effect"]) for r in pd)
    for i, pid in enumerate(pids):
        key = run.dedup_key(pid)
        assert effects[(key, "opened")] == 1, key
        assert effects[(key, "deduplicated")] == 0, key
        if i < 4:
            assert effects[(key, "acknowledged")] == 1
        if 4 <= i < 6:
            assert effects[(key, "resolved")] == 1
    assert effects.total() == 12 + 4 + 2
    # Per incident, the trigger came first.
    order = [(r["keys"][0], r["body"]["event_action"]) for r in pd]
    for pid in pids:
        actions = [a for k, a in order if k == run.dedup_key(pid)]
        assert actions[0] == "trigger"
    for kind in ("slack", "webhook"):
        records = accepted(sink.received(kind=kind))
        keys = collections.Counter(r["idempotency_key"] for r in records)
        assert len(keys) == 18, kind
        assert max(keys.values()) == 1, kind
    everything = sink.received()
    assert_clean(everything)
    assert not any(r.get("duplicate") for r in everything)
    # The history shows the retries.
    incident = run.store.get(ids[0])
    assert incident is not None
    history = {d.receiver: d for d in incident.deliveries if d.change == "OPENED"}
    assert len(history) == 3
    assert all(d.status == "delivered" and d.attempts > 1 for d in history.values())


# --- the notifier killed mid-delivery ------------------------------------------------------


def test_notifier_killed_mid_delivery_none_lost_none_twice(run: AlertsRun, sink_for: Any) -> None:
    sink = sink_for("pagerduty-cx", "webhook-ops")
    # A slow receiver: requests are in flight when the notifier dies.
    sink.control(delay_s=0.25)
    pids = [f"p{i}-{run.run}" for i in range(30)]
    for pid in pids:
        run.trigger(pid)
    first = run.start_notifier("first")
    wait_for(
        "some pages delivered",
        lambda: len(accepted(sink.received(kind="pagerduty"))) >= 6,
        30,
    )
    assert run.stop(first, signal.SIGKILL) == -signal.SIGKILL
    delivered_before = len(accepted(sink.received(kind="pagerduty")))
    assert delivered_before < 30, "every page went out before the kill; nothing was tested"
    second = run.start_notifier("second")
    wait_for("every page delivered", lambda: outbox_drained(run), 60)
    wait_for(
        "30 pages",
        lambda: len({r["keys"][0] for r in accepted(sink.received(kind="pagerduty"))}) == 30,
    )
    assert run.stop(second) == 0, run.notifier_log("second")
    assert "claimed" in run.notifier_log("second")

    records = sink.received()
    assert_clean(records)
    pd = accepted(sink.received(kind="pagerduty"))
    opened = collections.Counter(r["keys"][0] for r in pd if r["effect"] == "opened")
    assert opened == {run.dedup_key(pid): 1 for pid in pids}
    hooks = accepted(sink.received(kind="webhook"))
    assert {r["keys"][0] for r in hooks} == {run.dedup_key(pid) for pid in pids}
    # A request is repeated only if the notifier died between sending it and recording
    # its answer: at most the requests in flight at the kill (4 lanes per receiver), and
    # with the same idempotency key, so the receiver knows it has it (PagerDuty's dedup
    # key made the repeats "deduplicated" above, never a second page).
    seen: set[str] = set()
    repeated = 0
    for r in accepted(records):
        key = r["idempotency_key"]
        assert r["duplicate"] == (key in seen), key
        repeated += key in seen
        seen.add(key)
    assert len(seen) == 60
    assert repeated <= 8, repeated


# --- recovery, limits, failures --------------------------------------------------------------


async def test_pending_entries_of_a_dead_notifier_are_claimed(
    run: AlertsRun, sink_for: Any, notifiers: Any
) -> None:
    sink = sink_for("webhook-ops")
    pids = [f"p{i}-{run.run}" for i in range(5)]
    for pid in pids:
        run.trigger(pid)
    stream = run.store.keys.outbox
    run.client.xadd(stream, {"incident": b"\xff not a message", "change": b"OPENED"})
    run.store.ensure_outbox_group()
    # A notifier that read everything and died (no heartbeat).
    run.client.xreadgroup(OUTBOX_GROUP, "dead-notifier", {stream: ">"}, count=100)
    assert pending(run) == 6
    await notifiers()
    await wait_async("the dead notifier's entries delivered", lambda: outbox_drained(run))
    hooks = accepted(sink.received(kind="webhook"))
    assert sorted(r["keys"][0] for r in hooks) == sorted(run.dedup_key(p) for p in pids)
    consumers = run.client.xinfo_consumers(stream, OUTBOX_GROUP)
    assert b"dead-notifier" not in {c["name"] for c in consumers}


async def test_pagerduty_rate_limit_queues_and_never_drops(
    run: AlertsRun, sink_for: Any, notifiers: Any
) -> None:
    sink = SinkThread({})
    try:
        run.write_owners(
            [
                {
                    "name": "pagerduty-cx",
                    "type": "pagerduty",
                    "url": f"{sink.url}/pagerduty/v2/enqueue",
                    "rate_per_min": 300,
                    "burst": 1,
                }
            ]
        )
        await notifiers()
        for i in range(6):
            run.trigger(f"p{i}-{run.run}")
        await wait_async("six pages", lambda: len(sink.received(kind="pagerduty")) == 6)
        times = sorted(r["at_ms"] for r in sink.received(kind="pagerduty"))
        # One every 0.2 s after the first: five gaps.
        assert times[-1] - times[0] >= 900
        assert all(r["effect"] == "opened" for r in sink.received(kind="pagerduty"))
    finally:
        sink.close()


async def test_refused_request_fails_at_once_and_is_recorded(
    run: AlertsRun, sink_for: Any, notifiers: Any
) -> None:
    sink = sink_for("pagerduty-cx", "webhook-ops")
    sink.control(fail=True, status=400)
    await notifiers()
    incident_id = run.trigger(f"p-{run.run}")
    await wait_async("the entry given up", lambda: outbox_drained(run))
    attempts = sink.received()
    assert len(attempts) == 2  # one each, no retry
    incident = run.store.get(incident_id)
    assert incident is not None
    assert {(d.receiver, d.status, d.attempts) for d in incident.deliveries} == {
        ("pagerduty-cx", "failed", 1),
        ("webhook-ops", "failed", 1),
    }
    assert all("HTTP 400" in d.last_error for d in incident.deliveries)


async def test_retries_stop_at_the_entry_max_age(
    run: AlertsRun, sink_for: Any, notifiers: Any
) -> None:
    sink = sink_for("webhook-ops")
    sink.control(fail=True, status=503)
    await notifiers(max_age_s=3, tuning=Tuning(retry_max_s=0.5))
    incident_id = run.trigger(f"p-{run.run}")
    await wait_async("the entry given up", lambda: outbox_drained(run), 20)
    incident = run.store.get(incident_id)
    assert incident is not None
    (delivery,) = incident.deliveries
    assert delivery.status == "failed"
    assert delivery.attempts > 2
    assert "gave up after" in delivery.last_error
    assert "HTTP 503" in delivery.last_error
    assert len(sink.received()) == delivery.attempts


async def test_entries_stuck_with_a_live_notifier_are_taken_after_the_idle_backstop(
    run: AlertsRun, sink_for: Any, notifiers: Any
) -> None:
    sink = sink_for("webhook-ops")
    pids = [f"p{i}-{run.run}" for i in range(3)]
    for pid in pids:
        run.trigger(pid)
    stream = run.store.keys.outbox
    run.store.ensure_outbox_group()
    # A notifier that beats but never finishes its entries (stuck).
    run.client.zadd(run.store.keys.root + "notifiers", {"stuck-notifier": time.time() + 3600})
    run.client.xreadgroup(OUTBOX_GROUP, "stuck-notifier", {stream: ">"}, count=100)
    started = time.monotonic()
    await notifiers(tuning=Tuning(retry_max_s=1.0, claim_idle_ms=2000, touch_every_s=0.5))
    await wait_async("the stuck entries delivered", lambda: outbox_drained(run), 20)
    assert time.monotonic() - started >= 1.5  # not before they were idle long enough
    hooks = accepted(sink.received(kind="webhook"))
    assert sorted(r["keys"][0] for r in hooks) == sorted(run.dedup_key(p) for p in pids)
