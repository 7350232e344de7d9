"""Identity management and privacy through the gRPC API, against the running pipeline."""

from __future__ import annotations

import uuid
from typing import cast

import grpc
import pytest
import redis.asyncio as aioredis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.heartbeat import beat
from services.common.settings import redis_settings
from services.profile.adapters.layout import Keys, as_text
from services.profile.adapters.reader import ProfileReader
from services.profile.server import WORKER_HEALTH_NAME
from services.profile.server import build_server as build_profile
from services.profile.settings import ProfileSettings
from tests.factories import recent_login, recent_nps, recent_order, recent_page
from tests.integration.profile_harness import ANON, CUSTOMER, EMAIL, ProfileHarness

PHONE = pb.IDENTIFIER_TYPE_PHONE


def ident(t: pb.IdentifierType.ValueType, value: str) -> pb.Identifier:
    return pb.Identifier(type=t, value=value)


def test_erase_removes_every_key_and_suppresses_recreation(profile_harness: ProfileHarness) -> None:
    h = profile_harness
    tag = uuid.uuid4().hex[:6]
    customer, email, phone, anon = (
        f"er-{tag}",
        f"er-{tag}@example.com",
        "+447700900123",
        f"ea-{tag}",
    )
    h.track(
        [
            recent_page(0, anonymous_id=anon),
            recent_login(1, anonymous_id=anon, customer_id=customer, email=email, phone=phone),
            recent_nps(2, 2, customer_id=customer),
            recent_order(3, 40, email=email),
        ]
    )
    profile = h.wait_for_profile(EMAIL, email, events=4)
    pid = profile.profile_id
    assert "detractors" in profile.segments

    exported = h.profiles.ExportProfile(pb.ExportProfileRequest(identifier=ident(PHONE, phone)))
    assert exported.profile.profile_id == pid
    assert len(exported.events) == 4

    reply = h.profiles.EraseProfile(pb.EraseProfileRequest(identifier=ident(CUSTOMER, customer)))
    assert reply.profile_id == pid
    assert reply.identifiers_suppressed == 4
    assert reply.keys_deleted > 0

    secrets = [s.encode() for s in (pid, customer, email, phone, anon)]
    for key in h.redis.scan_iter(match=f"{h.settings.key_prefix}*", count=1000):
        assert not any(s in key for s in secrets), key
        kind = as_text(h.redis.type(key))
        # Values as bytes: archived events are protobuf, not text.
        if kind == "hash":
            content = b" ".join(cast(bytes, x) for kv in h.redis.hgetall(key).items() for x in kv)
        elif kind == "zset":
            content = b" ".join(cast(bytes, m) for m in h.redis.zrange(key, 0, -1))
        elif kind == "string":
            content = cast(bytes, h.redis.get(key) or b"")
        else:
            content = b""
        assert not any(s in content for s in secrets), key
    for t, value in ((CUSTOMER, customer), (EMAIL, email), (PHONE, phone), (ANON, anon)):
        assert h.profile(t, value) is None

    suppressed = h.stat("suppressed")
    h.track([recent_page(10, email=email)])
    h.wait_for("the event to be suppressed", lambda: h.stat("suppressed") > suppressed)
    assert h.profile(EMAIL, email) is None


def test_remove_identifier_splits_and_does_not_link_back(profile_harness: ProfileHarness) -> None:
    h = profile_harness
    tag = uuid.uuid4().hex[:6]
    anon, customer = f"ra-{tag}", f"rc-{tag}"
    h.track([recent_page(i, anonymous_id=anon) for i in range(3)])
    h.wait_for_profile(ANON, anon, events=3)
    h.track(
        [
            recent_login(5, anonymous_id=anon, customer_id=customer),
            recent_order(6, 50, customer_id=customer),
            recent_order(7, 70, customer_id=customer),
        ]
    )
    merged = h.wait_for_profile(CUSTOMER, customer, events=6)

    reply = h.profiles.RemoveIdentifier(pb.RemoveIdentifierRequest(identifier=ident(ANON, anon)))
    assert reply.profile_id == merged.profile_id
    split_off = h.profile(ANON, anon)
    kept = h.profile(CUSTOMER, customer)
    assert split_off is not None
    assert kept is not None
    assert split_off.profile_id == reply.new_profile_id
    assert split_off.activity.events == 3
    assert split_off.commerce.orders == 0
    assert kept.activity.events == 3
    assert kept.commerce.orders == 2
    assert [i.identifier.value for i in kept.identities] == [customer]

    # A later event carrying both does not merge them again: it goes to the customer.
    h.track([recent_login(9, anonymous_id=anon, customer_id=customer)])
    h.wait_for_profile(CUSTOMER, customer, events=4)
    again = h.profile(ANON, anon)
    assert again is not None
    assert again.profile_id == reply.new_profile_id

    with pytest.raises(grpc.RpcError) as info:
        h.profiles.RemoveIdentifier(pb.RemoveIdentifierRequest(identifier=ident(ANON, anon)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unmerge_restores_the_merged_profile(profile_harness: ProfileHarness) -> None:
    h = profile_harness
    tag = uuid.uuid4().hex[:6]
    anon, email = f"ua-{tag}", f"u-{tag}@example.com"
    h.track([recent_page(0, email=email)])
    known = h.wait_for_profile(EMAIL, email, events=1)
    h.track([recent_page(i, anonymous_id=anon) for i in range(1, 4)])
    anonymous = h.wait_for_profile(ANON, anon, events=3)
    h.track([recent_login(5, anonymous_id=anon, email=email)])
    h.wait_for_profile(EMAIL, email, events=5)

    reply = h.profiles.UnmergeProfile(
        pb.UnmergeProfileRequest(
            profile_id=known.profile_id, merged_profile_id=anonymous.profile_id
        )
    )
    assert reply.restored_profile_id == anonymous.profile_id
    restored = h.profile(ANON, anon)
    survivor = h.profile(EMAIL, email)
    assert restored is not None
    assert survivor is not None
    assert restored.profile_id == anonymous.profile_id
    assert restored.activity.events == 3
    assert survivor.activity.events == 2

    with pytest.raises(grpc.RpcError) as info:
        h.profiles.UnmergeProfile(
            pb.UnmergeProfileRequest(
                profile_id=known.profile_id, merged_profile_id=anonymous.profile_id
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_consent_goes_through_the_stream_and_segments_list_members(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    email = f"consent-{uuid.uuid4().hex[:6]}@example.com"
    h.track([recent_page(0, email=email)])
    h.wait_for_profile(EMAIL, email, events=1)
    reply = h.profiles.UpdateConsent(
        pb.UpdateConsentRequest(
            identifier=ident(EMAIL, email.upper()),
            purpose=ev.ConsentChange.PURPOSE_MARKETING_EMAIL,
            granted=True,
            source_system="crm",
        )
    )
    assert reply.event_id
    profile = h.wait_for_profile(EMAIL, email, events=2)
    (consent,) = profile.consents
    assert consent.purpose == ev.ConsentChange.PURPOSE_MARKETING_EMAIL
    assert consent.granted
    assert consent.source_system == "crm"
    assert consent.updated.event_id == reply.event_id
    assert "marketing_email_opt_in" in profile.segments

    def member() -> bool:
        token, seen = "", list[str]()
        while True:
            page_ = h.profiles.ListSegmentMembers(
                pb.ListSegmentMembersRequest(
                    segment="marketing_email_opt_in", page_size=1, page_token=token
                )
            )
            seen += page_.profile_ids
            token = page_.next_page_token
            if not token:
                return profile.profile_id in seen

    h.wait_for("segment membership", member)
    with pytest.raises(grpc.RpcError) as info:
        h.profiles.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="nope"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("segment")


def test_health_reports_the_stream_worker(profile_harness: ProfileHarness) -> None:
    health = health_pb2_grpc.HealthStub(profile_harness.profile_channel)

    def status(service: str) -> int:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)

    assert status("cx.profile.v1.ProfileService") == health_pb2.HealthCheckResponse.SERVING
    profile_harness.wait_for(
        "the worker's heartbeat",
        lambda: status("cx.profile.v1.ProfileWorker") == health_pb2.HealthCheckResponse.SERVING,
    )


async def test_worker_health_follows_the_heartbeats(profile_harness: ProfileHarness) -> None:
    """NOT_SERVING with no worker, SERVING once one beats, NOT_SERVING again when its beat
    expires: the check runs, and it reads what the workers write."""
    settings = ProfileSettings(key_prefix=f"beats-{uuid.uuid4().hex[:8]}:")
    server = build_profile(ProfileReader(profile_harness.redis, settings), None, "127.0.0.1:0")
    server.start()
    beats = aioredis.Redis.from_url(redis_settings().redis_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def worker_status() -> int:
                request = health_pb2.HealthCheckRequest(service=WORKER_HEALTH_NAME)
                return int(health.Check(request, timeout=5).status)

            assert worker_status() == health_pb2.HealthCheckResponse.NOT_SERVING
            # One beat, alive for three beats of a second: longer than a check's period.
            await beat(beats, Keys(settings.key_prefix).workers, every_s=1.0)
            profile_harness.wait_for(
                "the beat to be reported",
                lambda: worker_status() == health_pb2.HealthCheckResponse.SERVING,
                timeout_s=10,
            )
            profile_harness.wait_for(
                "the expired beat to be reported",
                lambda: worker_status() == health_pb2.HealthCheckResponse.NOT_SERVING,
                timeout_s=10,
            )
    finally:
        server.stop(grace_s=0)
        profile_harness.redis.delete(Keys(settings.key_prefix).workers)
        await beats.aclose()
