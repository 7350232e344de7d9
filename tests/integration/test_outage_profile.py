"""What profile clients see while Redis (or Kafka, for consent updates) cannot be
reached: UNAVAILABLE with a short message for every RPC, and honest health. Outages are
simulated with closed ports; the shared Redis and broker are never touched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_errors import CALLS as SERVER_CALLS
from services.common.settings import redis_settings
from services.common.touchpoint_publisher import TouchpointPublisher
from services.profile.adapters.reader import ProfileReader
from services.profile.server import REDIS_HEALTH_NAME, SERVICE_NAME, build_server
from services.profile.settings import ProfileSettings

CUSTOMER = pb.Identifier(type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value="c-outage")


def serve(reader: ProfileReader, publisher: TouchpointPublisher | None) -> Iterator[grpc.Channel]:
    server = build_server(reader, publisher, "127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    server.stop(grace_s=0)


@pytest.fixture(scope="module")
def redis_down() -> Iterator[grpc.Channel]:
    reader = ProfileReader(redis.Redis.from_url("redis://127.0.0.1:1/0"), ProfileSettings())
    yield from serve(reader, None)


def health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def unavailable_count(rpc: str) -> float:
    method = f"/cx.profile.v1.ProfileService/{rpc}"
    return SERVER_CALLS.labels(method, "UNAVAILABLE")._value.get()  # type: ignore[no-any-return]


CALLS: list[tuple[str, Message]] = [
    ("GetProfile", pb.GetProfileRequest(identifier=CUSTOMER)),
    ("GetFeatures", pb.GetFeaturesRequest(identifier=CUSTOMER)),
    ("GetTimeline", pb.GetTimelineRequest(identifier=CUSTOMER)),
    ("ListSegmentMembers", pb.ListSegmentMembersRequest(segment="detractors")),
    ("RemoveIdentifier", pb.RemoveIdentifierRequest(identifier=CUSTOMER)),
    ("UnmergeProfile", pb.UnmergeProfileRequest(profile_id="p_1", merged_profile_id="p_2")),
    ("ExportProfile", pb.ExportProfileRequest(identifier=CUSTOMER)),
    ("EraseProfile", pb.EraseProfileRequest(identifier=CUSTOMER)),
]


@pytest.mark.parametrize(("rpc", "request_"), CALLS, ids=[c[0] for c in CALLS])
def test_every_rpc_is_unavailable_while_redis_is_down(
    redis_down: grpc.Channel, rpc: str, request_: Message
) -> None:
    # Before: UNKNOWN "Exception calling application: Error 111 connecting..." and a
    # traceback in the log per call.
    stub = profile_pb2_grpc.ProfileServiceStub(redis_down)
    before = unavailable_count(rpc)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "Redis unavailable: retry"
    assert unavailable_count(rpc) == before + 1


def test_health_is_not_serving_while_redis_is_down(redis_down: grpc.Channel) -> None:
    for name in ("", SERVICE_NAME, REDIS_HEALTH_NAME):
        assert health(redis_down, name) == health_pb2.HealthCheckResponse.NOT_SERVING, name


@pytest.mark.parametrize(
    ("identifier", "starts"),
    [
        (pb.Identifier(type=57, value="c-1"), "identifier.type: 57 is not a known IdentifierType"),  # type: ignore[arg-type]
        (
            pb.Identifier(type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value="c" * 10_000),
            "identifier.value: ",
        ),
    ],
)
def test_bad_identifiers_are_invalid_argument_naming_the_field(
    redis_down: grpc.Channel, identifier: pb.Identifier, starts: str
) -> None:
    stub = profile_pb2_grpc.ProfileServiceStub(redis_down)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetProfile(pb.GetProfileRequest(identifier=identifier), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(starts)


def test_consent_update_is_unavailable_while_kafka_is_down() -> None:
    reader = ProfileReader(redis.Redis.from_url(redis_settings().redis_url), ProfileSettings())
    publisher = TouchpointPublisher.connect("127.0.0.1:1", "cx.touchpoints.v1")
    try:
        for channel in serve(reader, publisher):
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.UpdateConsent(
                    pb.UpdateConsentRequest(
                        identifier=CUSTOMER,
                        purpose=ev.ConsentChange.PURPOSE_MARKETING_EMAIL,
                        granted=True,
                    ),
                    timeout=10,
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == "Kafka is unreachable: retry"
    finally:
        publisher.close(timeout_s=0)


def test_health_is_serving_with_redis_up() -> None:
    client = redis.Redis.from_url(redis_settings().redis_url)
    reader = ProfileReader(client, ProfileSettings(key_prefix=f"test-{uuid.uuid4().hex[:8]}:"))
    for channel in serve(reader, None):
        for name in ("", SERVICE_NAME, REDIS_HEALTH_NAME):
            assert health(channel, name) == health_pb2.HealthCheckResponse.SERVING, name
