"""What the notifier's integration tests share: a receiver sink of their own (a real HTTP
server in a thread, so a test can make it fail or slow), an owners file pointing at it,
an incident store and outbox on their own key prefix, Kafka topics of their own, and the
notifier in-process or as a child process (to be killed).

A plain module, not a test module (tests/integration/test_alerts_*.py import it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from services.alerts.adapters.incidents import IncidentStore
from services.alerts.domain.incidents import EvidenceItem, Trigger, person_key
from services.alerts.domain.receivers import parse_receivers, resolve_all, webhook_secrets
from services.alerts.sink import Sink, create_app
from services.common.kafka_admin import ensure_topics
from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec
from tests.paths import REPO_ROOT


class SinkThread:
    """A sink on a free port, served by its own event loop in a thread."""

    def __init__(self, secrets: dict[str, str], log_path: Path | None = None) -> None:
        self.sink = Sink(log_path, secrets)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._serve, name="sink", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the sink did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._runner = web.AppRunner(create_app(self.sink), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server: Any = site._server
            self.port = int(server.sockets[0].getsockname()[1])
            self._started.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, **settings: Any) -> dict[str, Any]:
        return post_json(f"{self.url}/control", settings)

    def received(self, **query: str) -> list[dict[str, Any]]:
        return received(self.url, **query)

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def post_json(url: str, body: object) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        result: dict[str, Any] = json.loads(reply.read())
    return result


def received(base_url: str, **query: str) -> list[dict[str, Any]]:
    url = f"{base_url}/received?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        records: list[dict[str, Any]] = json.loads(reply.read())["records"]
    return records


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float = 30.0, every_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


async def wait_async(
    what: str, check: Callable[[], bool], timeout_s: float = 30.0, every_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(every_s)


def owners_toml(receivers: Sequence[dict[str, Any]], team: str = "cx") -> str:
    """One default team owning every touchpoint, paging `receivers`."""
    names = ", ".join(json.dumps(r["name"]) for r in receivers)
    lines = [
        "[[team]]",
        f'name = "{team}"',
        'touchpoints = ["*"]',
        f"receivers = [{names}]",
        "default = true",
        "",
    ]
    for r in receivers:
        lines.append("[[receiver]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in r.items())
        lines.append("")
    return "\n".join(lines)


class AlertsRun:
    """An incident store, outbox, owners file and topics of one test run."""

    def __init__(self, kafka: KafkaSettings, redis_url: str, tmp: Path, name: str = "notify"):
        self.run = f"{name}-{uuid.uuid4().hex[:8]}"
        self.prefix = f"{self.run}:"
        self.tmp = tmp
        self.redis_url = redis_url
        self.client = redis.Redis.from_url(redis_url)
        self.store = IncidentStore(self.client, self.prefix)
        self.kafka = kafka.model_copy(
            update={
                "experience_incidents_topic": f"{self.run}.experience-incidents",
                "touchpoints_topic": f"{self.run}.touchpoints",
            }
        )
        ensure_topics(
            kafka.kafka_bootstrap_servers,
            [
                TopicSpec(self.kafka.experience_incidents_topic, 2),
                TopicSpec(self.kafka.touchpoints_topic, 2),
            ],
        )
        self.owners_file = tmp / f"{self.run}-owners.toml"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def write_owners(self, receivers: Sequence[dict[str, Any]]) -> dict[str, str]:
        """Writes the owners file; returns the webhook secrets the sink must know."""
        self.owners_file.write_text(owners_toml(receivers))
        specs = parse_receivers(list(receivers), str(self.owners_file))
        return webhook_secrets(list(resolve_all(specs, os.environ).values()))

    def trigger(
        self,
        profile_id: str,
        *,
        rule: str = "detractor_nps",
        severity: str = "critical",
        summary: str = "VIP detractor: NPS 2",
        touchpoint: str = "survey.nps",
        now_ms: int | None = None,
    ) -> str:
        """Opens (or updates) an incident through the real store; its incident id."""
        self._n += 1
        now_ms = now_ms or int(time.time() * 1000)
        result = self.store.trigger(
            Trigger(
                rule=rule,
                kind="event",
                dedup_key=person_key(rule, profile_id),
                severity=severity,
                team="cx",
                summary=summary,
                profile_id=profile_id,
                touchpoint=touchpoint,
                evidence=EvidenceItem(
                    event_id=f"{self.run}-e{self._n}",
                    touchpoint=touchpoint,
                    occurred_at_ms=now_ms,
                    payload="survey_response",
                    negative="detractor",
                    scores={"nps": 2.0},
                ),
                now_ms=now_ms,
                escalate_after_s=None,
            )
        )
        return result.incident_id

    def dedup_key(self, profile_id: str, rule: str = "detractor_nps") -> str:
        return person_key(rule, profile_id)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.kafka_bootstrap_servers,
            "EXPERIENCE_INCIDENTS_TOPIC": self.kafka.experience_incidents_topic,
            "TOUCHPOINTS_TOPIC": self.kafka.touchpoints_topic,
            "REDIS_URL": self.redis_url,
            "ALERTS_KEY_PREFIX": self.prefix,
            "ALERTS_OWNERS_FILE": str(self.owners_file),
            "ALERTS_NOTIFIER_METRICS_PORT": "0",
            "CX_VAR_DIR": str(self.tmp / f"{self.run}-var"),
            **extra,
        }

    def start_notifier(self, log_name: str = "notifier") -> subprocess.Popen[bytes]:
        with (self.tmp / f"{self.run}-{log_name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.alerts.notifier"],
                cwd=REPO_ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(proc)
        return proc

    def notifier_log(self, log_name: str = "notifier") -> str:
        path = self.tmp / f"{self.run}-{log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def close(self) -> None:
        for proc in self.processes:
            self.stop(proc, signal.SIGKILL)
        keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=50_000))
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])
        self.client.close()
