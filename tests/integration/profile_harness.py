"""An isolated profile pipeline for tests: its own topics, key prefix and consumer group,
a real worker process (which tests may SIGKILL), and in-process gRPC servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import redis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from services.common.grpc_server import ServiceServer
from services.common.kafka_admin import ensure_topics
from services.common.settings import KafkaSettings
from services.common.topics import platform_topics
from services.common.touchpoint_publisher import TouchpointPublisher
from services.ingest.server import build_server as build_ingest
from services.profile.adapters.reader import ProfileReader
from services.profile.adapters.store import as_text
from services.profile.domain.state import ProfileState
from services.profile.server import build_server as build_profile
from services.profile.settings import ProfileSettings

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class ProfileHarness:
    def __init__(self, base: KafkaSettings, redis_url: str, log_dir: Path) -> None:
        run = uuid.uuid4().hex[:8]
        self.kafka = base.model_copy(
            update={
                "touchpoints_topic": f"test-{run}.touchpoints",
                "touchpoints_dlq_topic": f"test-{run}.touchpoints.dlq",
                "profile_events_topic": f"test-{run}.profile-events",
                "profile_changes_topic": f"test-{run}.profile-changes",
            }
        )
        self.settings = ProfileSettings(key_prefix=f"test-{run}:", consumer_group=f"test-{run}")
        self.redis = redis.Redis.from_url(redis_url)
        self.log_path = log_dir / f"profile-worker-{run}.log"
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
        self.publisher = TouchpointPublisher.connect(
            base.kafka_bootstrap_servers, self.kafka.touchpoints_topic
        )
        self.reader = ProfileReader(self.redis, self.settings)
        self.ingest_server = build_ingest(self.publisher, "127.0.0.1:0")
        self.profile_server = build_profile(self.reader, self.publisher, "127.0.0.1:0")
        self.servers: list[ServiceServer] = [self.ingest_server, self.profile_server]
        for server in self.servers:
            server.start()
        self.ingest_channel = grpc.insecure_channel(f"127.0.0.1:{self.ingest_server.port}")
        self.profile_channel = grpc.insecure_channel(f"127.0.0.1:{self.profile_server.port}")
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self.ingest_channel)
        self.profiles = profile_pb2_grpc.ProfileServiceStub(self.profile_channel)

    # --- the worker process ---------------------------------------------------------------

    def start_worker(self) -> None:
        log = self.log_path.open("ab")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "services.profile.worker"],
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

    # --- sending and waiting --------------------------------------------------------------

    def track(self, events: Sequence[ev.TouchpointEvent]) -> None:
        for i in range(0, len(events), 500):
            reply = self.ingest.TrackBatch(
                ingest_pb2.TrackBatchRequest(events=events[i : i + 500]), timeout=60
            )
            rejected = [r for r in reply.results if r.violations]
            assert not rejected, rejected

    def wait_for(self, what: str, check: Callable[[], T | None], timeout_s: float = 90) -> T:
        """Polls until `check` returns a value; a bound against hanging, not a speed goal."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value is not None and value is not False:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; worker log: {self.log_path}")
            if self.worker is not None and self.worker.poll() is not None:
                raise AssertionError(f"worker exited ({self.worker.returncode}): {self.log_path}")
            time.sleep(0.2)

    def profile(self, t: pb.IdentifierType.ValueType, value: str) -> pb.Profile | None:
        try:
            reply = self.profiles.GetProfile(
                pb.GetProfileRequest(identifier=pb.Identifier(type=t, value=value)), timeout=10
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return reply.profile

    def wait_for_profile(
        self, t: pb.IdentifierType.ValueType, value: str, events: int | None = None
    ) -> pb.Profile:
        def check() -> pb.Profile | None:
            p = self.profile(t, value)
            if p is None or (events is not None and p.activity.events != events):
                return None
            return p

        return self.wait_for(f"the profile of {value} with {events} events", check)

    def state(self, profile_id: str) -> ProfileState:
        loaded = self.reader.load(profile_id)
        assert loaded is not None, profile_id
        return loaded.stored.state()

    def stat(self, name: str) -> int:
        value = self.redis.hget(f"{self.settings.key_prefix}stats", name)
        return int(as_text(value)) if value else 0

    def records(self, topic: str) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
        """Every record on one of the harness's topics (small in tests)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.kafka.kafka_bootstrap_servers, enable_auto_commit=False
        )
        try:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(parts)
            consumer.seek_to_beginning()
            ends = consumer.end_offsets(parts)
            out: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
            while any(consumer.position(tp) < ends[tp] for tp in parts):
                for batch in consumer.poll(timeout_ms=500).values():
                    out.extend((r.key, r.value, list(r.headers)) for r in batch)
            return out
        finally:
            consumer.close()

    def close(self) -> None:
        self.kill_worker(signal.SIGTERM)
        for server in self.servers:
            server.stop(grace_s=1)
        self.ingest_channel.close()
        self.profile_channel.close()
        self.publisher.close()
        keys = list(self.redis.scan_iter(match=f"{self.settings.key_prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.redis.delete(*keys[i : i + 1000])
        admin = KafkaAdminClient(bootstrap_servers=self.kafka.kafka_bootstrap_servers)
        try:
            admin.delete_topics([s.name for s in platform_topics(self.kafka)])
        finally:
            admin.close()
        self.redis.close()
