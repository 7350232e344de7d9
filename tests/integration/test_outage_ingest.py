"""What ingest clients see while Kafka cannot be reached: a fast, retryable UNAVAILABLE
for the call and honest health. The broker is "down" by pointing a server at a closed
port; the shared broker is never touched."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.touchpoint_publisher import TouchpointPublisher
from services.ingest.server import KAFKA_HEALTH_NAME, SERVICE_NAME, build_server
from tests.factories import page_view

UNREACHABLE = "127.0.0.1:1"
# The bound: answered within a few seconds, not 30. Generous for shared CPUs.
ANSWER_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def down_channel() -> Iterator[grpc.Channel]:
    publisher = TouchpointPublisher.connect(UNREACHABLE, "cx.touchpoints.v1")
    server = build_server(publisher, "127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    server.stop(grace_s=0)
    publisher.close(timeout_s=0)


def statuses(channel: grpc.Channel) -> dict[str, int]:
    health = health_pb2_grpc.HealthStub(channel)
    return {
        name: int(health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status)
        for name in ("", SERVICE_NAME, KAFKA_HEALTH_NAME)
    }


def test_track_is_unavailable_fast_while_kafka_is_down(down_channel: grpc.Channel) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(down_channel)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Track(pb.TrackRequest(event=page_view()), timeout=30)
    assert time.monotonic() - started < ANSWER_WITHIN_S
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "same event ids" in (info.value.details() or "")


def test_batch_is_unavailable_as_a_whole_while_kafka_is_down(down_channel: grpc.Channel) -> None:
    # Before: status OK after about 30 s, every event "rejected" with an empty field.
    stub = ingest_pb2_grpc.IngestServiceStub(down_channel)
    events = [page_view() for _ in range(20)] + [page_view(email="not-an-email")]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.TrackBatch(pb.TrackBatchRequest(events=events), timeout=30)
    assert time.monotonic() - started < ANSWER_WITHIN_S
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_invalid_events_are_still_judged_while_kafka_is_down(down_channel: grpc.Channel) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(down_channel)
    reply = stub.TrackBatch(pb.TrackBatchRequest(events=[page_view(email="nope")]), timeout=30)
    assert reply.rejected_count == 1
    assert [v.field for v in reply.results[0].violations] == ["identities.email"]


def test_health_is_not_serving_while_kafka_is_down(down_channel: grpc.Channel) -> None:
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert statuses(down_channel) == {
        "": not_serving,
        SERVICE_NAME: not_serving,
        KAFKA_HEALTH_NAME: not_serving,
    }


def test_health_is_serving_with_the_broker_up(ingest_channel: grpc.Channel) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert statuses(ingest_channel) == {
        "": serving,
        SERVICE_NAME: serving,
        KAFKA_HEALTH_NAME: serving,
    }
