"""An isolated profile pipeline for tests: its own topics, key prefix and consumer group,
real worker processes (which tests may SIGKILL), and in-process gRPC servers, on the
shared stack or on a private broker and Redis."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc
from kafka import KafkaConsumer, TopicPartition

from services.common.grpc_server import ServiceServer
from services.common.settings import KafkaSettings
from services.common.touchpoint_publisher import TouchpointPublisher
from services.ingest.server import build_server as build_ingest
from services.profile.adapters.reader import ProfileReader
from services.profile.domain.state import ProfileState
from services.profile.server import build_server as build_profile
from tests.support.isolation import IsolatedPipeline

EMAIL = pb.IDENTIFIER_TYPE_EMAIL
CUSTOMER = pb.IDENTIFIER_TYPE_CUSTOMER_ID
ANON = pb.IDENTIFIER_TYPE_ANONYMOUS_ID


def aggregates(state: ProfileState) -> ProfileState:
    """Only what events determine: drops what identity resolution itself keeps, to compare
    a stored profile with the fold of its events."""
    state.sums = {k: v for k, v in state.sums.items() if not k.startswith("ids.")}
    state.minima.pop("created", None)
    state.latest.pop("u.identity", None)
    return state


class ProfileHarness(IsolatedPipeline):
    def __init__(
        self, base: KafkaSettings, redis_url: str, log_dir: Path, name: str = "test"
    ) -> None:
        super().__init__(base, redis_url, log_dir, name=name)
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

    # --- sending and waiting --------------------------------------------------------------

    def track(self, events: Sequence[ev.TouchpointEvent]) -> None:
        for i in range(0, len(events), 500):
            reply = self.ingest.TrackBatch(
                ingest_pb2.TrackBatchRequest(events=events[i : i + 500]), timeout=60
            )
            rejected = [r for r in reply.results if r.violations]
            assert not rejected, rejected

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

    def dead_letters(self, value: bytes) -> list[list[tuple[str, bytes]]]:
        """The headers of every dead letter holding this value."""
        return [
            headers
            for _, letter, headers in self.records(self.kafka.touchpoints_dlq_topic)
            if letter == value
        ]

    def close(self) -> None:
        self.stop_workers(signal.SIGTERM)
        for server in self.servers:
            server.stop(grace_s=1)
        self.ingest_channel.close()
        self.profile_channel.close()
        self.publisher.close()
        self.cleanup()
