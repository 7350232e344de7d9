"""A profile pipeline on its own topics, key prefix and consumer group, with its worker in
a child process: for tests and benchmarks that must not disturb (or be disturbed by) the
running stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import redis
from kafka.admin import KafkaAdminClient
from kafka.errors import UnknownTopicOrPartitionError

from services.common.kafka_admin import ensure_topics
from services.common.settings import KafkaSettings
from services.common.topics import platform_topics
from services.profile.adapters.store import as_text
from services.profile.settings import ProfileSettings

REPO = Path(__file__).resolve().parents[2]


class IsolatedPipeline:
    def __init__(self, base: KafkaSettings, redis_url: str, log_dir: Path, name: str = "test"):
        self.run = run = f"{name}-{uuid.uuid4().hex[:8]}"
        self.kafka = base.model_copy(
            update={
                "touchpoints_topic": f"{run}.touchpoints",
                "touchpoints_dlq_topic": f"{run}.touchpoints.dlq",
                "profile_events_topic": f"{run}.profile-events",
                "profile_changes_topic": f"{run}.profile-changes",
            }
        )
        self.settings = ProfileSettings(key_prefix=f"{run}:", consumer_group=run)
        self.redis = redis.Redis.from_url(redis_url)
        self.log_path = log_dir / f"{run}-worker.log"
        self.env = {
            **os.environ,
            "TOUCHPOINTS_TOPIC": self.kafka.touchpoints_topic,
            "TOUCHPOINTS_DLQ_TOPIC": self.kafka.touchpoints_dlq_topic,
            "PROFILE_EVENTS_TOPIC": self.kafka.profile_events_topic,
            "PROFILE_CHANGES_TOPIC": self.kafka.profile_changes_topic,
            "PROFILE_KEY_PREFIX": self.settings.key_prefix,
            "PROFILE_CONSUMER_GROUP": self.settings.consumer_group,
            "PROFILE_WORKER_METRICS_PORT": "0",
            "REDIS_URL": redis_url,
        }
        ensure_topics(base.kafka_bootstrap_servers, platform_topics(self.kafka))
        self.worker: subprocess.Popen[bytes] | None = None
        self._cleaned = False

    def start_worker(self, module: str = "services.profile.worker") -> None:
        with self.log_path.open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(sig)
            self.worker.wait(timeout=60)
        self.worker = None

    def worker_exited(self) -> int | None:
        return None if self.worker is None else self.worker.poll()

    def stat(self, name: str) -> int:
        value = self.redis.hget(f"{self.settings.key_prefix}stats", name)
        return int(as_text(value)) if value else 0

    def cleanup(self) -> None:
        """Stops the worker and deletes the pipeline's keys and topics (once)."""
        if self._cleaned:
            return
        self._cleaned = True
        self.kill_worker(signal.SIGTERM)
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
