"""A profile pipeline on its own topics, key prefix and consumer group, with its workers in
child processes: for tests and benchmarks that must not disturb (or be disturbed by) the
running stack.

A plain module, not a test module: the integration tests' harness
(`tests/integration/profile_harness.py`) and the profile benchmark (`bench/profile.py`)
both build on it.

The broker and Redis are those of `base` and `redis_url` (the shared stack's, or a private
one's). Several workers may run at once, each named: they join the pipeline's consumer
group and split its partitions, as `PROFILE_WORKERS` workers of the local stack do.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis
from kafka.admin import KafkaAdminClient
from kafka.errors import UnknownTopicOrPartitionError

from services.common.kafka_admin import ensure_topics
from services.common.settings import KafkaSettings
from services.common.topics import platform_topics
from services.profile.adapters.store import as_text
from services.profile.settings import ProfileSettings
from tests.paths import REPO_ROOT

T = TypeVar("T")


class IsolatedPipeline:
    def __init__(self, base: KafkaSettings, redis_url: str, log_dir: Path, name: str = "test"):
        self.run = run = f"{name}-{uuid.uuid4().hex[:8]}"
        self.kafka = base.model_copy(
            update={
                "touchpoints_topic": f"{run}.touchpoints",
                "touchpoints_dlq_topic": f"{run}.touchpoints.dlq",
                "profile_events_topic": f"{run}.profile-events",
                "profile_changes_topic": f"{run}.profile-changes",
                "decisions_topic": f"{run}.decisions",
                "experience_incidents_topic": f"{run}.experience-incidents",
            }
        )
        self.settings = ProfileSettings(key_prefix=f"{run}:", consumer_group=run)
        self.redis = redis.Redis.from_url(redis_url)
        self.log_dir = log_dir
        self.data_dir = log_dir / f"{run}-data"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": base.kafka_bootstrap_servers,
            "TOUCHPOINTS_TOPIC": self.kafka.touchpoints_topic,
            "TOUCHPOINTS_DLQ_TOPIC": self.kafka.touchpoints_dlq_topic,
            "PROFILE_EVENTS_TOPIC": self.kafka.profile_events_topic,
            "PROFILE_CHANGES_TOPIC": self.kafka.profile_changes_topic,
            "DECISIONS_TOPIC": self.kafka.decisions_topic,
            "EXPERIENCE_INCIDENTS_TOPIC": self.kafka.experience_incidents_topic,
            "PROFILE_KEY_PREFIX": self.settings.key_prefix,
            "PROFILE_CONSUMER_GROUP": self.settings.consumer_group,
            # Several workers on one host: no fixed metrics port to collide on.
            "PROFILE_WORKER_METRICS_PORT": "0",
            "REDIS_URL": redis_url,
            # The worker's var directory (its Faust data goes under it).
            "CX_VAR_DIR": str(self.data_dir),
        }
        ensure_topics(base.kafka_bootstrap_servers, platform_topics(self.kafka))
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._cleaned = False

    @property
    def worker(self) -> subprocess.Popen[bytes] | None:
        """The worker named "worker" (the only one, unless a test starts more)."""
        return self.workers.get("worker")

    @property
    def log_path(self) -> Path:
        return self.worker_log("worker")

    def worker_log(self, name: str = "worker") -> Path:
        return self.log_dir / f"{self.run}-{name}.log"

    def start_worker(self, module: str = "services.profile.worker", name: str = "worker") -> None:
        running = self.workers.get(name)
        if running is not None and running.poll() is None:
            raise RuntimeError(f"worker {name} of {self.run} is already running")
        with self.worker_log(name).open("ab") as log:
            self.workers[name] = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill_worker(self, sig: int = signal.SIGKILL, name: str = "worker") -> int | None:
        """Signals one worker and waits for it to end; its exit code (None if none ran)."""
        proc = self.workers.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def stop_workers(self, sig: int = signal.SIGTERM) -> None:
        for name in list(self.workers):
            self.kill_worker(sig, name)

    def worker_exited(self, name: str = "worker") -> int | None:
        proc = self.workers.get(name)
        return None if proc is None else proc.poll()

    def wait_for(
        self,
        what: str,
        check: Callable[[], T | None],
        timeout_s: float = 90,
        tolerate: tuple[type[Exception], ...] = (),
    ) -> T:
        """Polls until `check` returns a value; a bound against hanging, not a speed goal.

        Fails as soon as a worker ends by itself. Errors of the types in `tolerate` (say,
        Redis being down) count as "not yet".
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = check()
            except tolerate:
                value = None
            if value is not None and value is not False:
                return value
            if time.monotonic() > deadline:
                logs = ", ".join(str(self.worker_log(n)) for n in self.workers) or self.log_path
                raise AssertionError(f"timed out waiting for {what}; worker logs: {logs}")
            for name, code in self.exited_workers().items():
                raise AssertionError(f"worker {name} exited ({code}): {self.worker_log(name)}")
            time.sleep(0.2)

    def exited_workers(self) -> dict[str, int]:
        """The started workers that have ended by themselves, with their exit codes."""
        codes = {name: proc.poll() for name, proc in self.workers.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def stat(self, name: str) -> int:
        value = self.redis.hget(f"{self.settings.key_prefix}stats", name)
        return int(as_text(value)) if value else 0

    def cleanup(self) -> None:
        """Stops the worker and deletes the pipeline's keys and topics (once)."""
        if self._cleaned:
            return
        self._cleaned = True
        self.stop_workers(signal.SIGTERM)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        keys = list(self.redis.scan_iter(match=f"{self.settings.key_prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.redis.delete(*keys[i : i + 1000])
        admin = KafkaAdminClient(bootstrap_servers=self.kafka.kafka_bootstrap_servers)
        try:
            # The platform's topics, and those Faust made for the run's consumer group.
            ours = {s.name for s in platform_topics(self.kafka)}
            ours |= {t for t in admin.list_topics() if t.startswith(f"{self.run}-")}
            admin.delete_topics(sorted(ours))
        except UnknownTopicOrPartitionError:
            pass  # already gone
        finally:
            admin.close()
        self.redis.close()
