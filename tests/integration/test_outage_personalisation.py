"""Outages: the profile service, Redis or Kafka down. A call that needs what is down fails
fast with UNAVAILABLE (retryable), health says NOT_SERVING, and calls come back when it
does. Redis and Kafka outages are simulated with closed ports; the shared stack is never
touched."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import grpc
import pytest
import redis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as npb
from cx.personalisation.v1 import personalisation_pb2_grpc
from cx.profile.v1 import profile_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.contact_ledger import ContactLedger
from services.common.grpc_server import ServiceServer
from services.common.settings import KafkaSettings, redis_settings
from services.common.touchpoint_publisher import TouchpointPublisher
from services.personalisation.adapters.catalogue_file import CatalogueFile
from services.personalisation.adapters.decisions import DecisionStore
from services.personalisation.adapters.profile_source import ReaderProfileSource
from services.personalisation.server import build_server
from services.personalisation.service import PersonalisationServicer
from services.personalisation.settings import PersonalisationSettings
from services.profile.adapters.reader import ProfileReader
from services.profile.server import build_server as build_profile
from services.profile.settings import ProfileSettings
from tests.integration.personalisation_harness import PersonalisationHarness

pytestmark = pytest.mark.integration


def test_profile_service_down_gives_unavailable_not_a_hang(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    h = PersonalisationHarness(kafka, redis_settings().redis_url, tmp_path_factory.mktemp("down"))
    try:
        cid = f"c-{uuid.uuid4().hex[:8]}"
        assert h.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid).actions
        h.profile_server.stop(grace_s=0)

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            h.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "profile" in (caught.value.details() or "")
        assert time.monotonic() - started < 2.0

        health = health_pb2_grpc.HealthStub(h.nba_channel)
        h.wait_for(
            "health NOT_SERVING",
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            timeout_s=15,
        )
        # Anonymous visitors need no profile: they still get a generic decision.
        assert h.decide("web.home.hero", ev.CHANNEL_WEB).basis

        # The profile service back on the same port: decisions come back.
        port = h.profile_server.port
        h.profile_server = build_profile(h.reader, h.publisher, f"127.0.0.1:{port}")
        h.profile_server.start()
        h.servers.append(h.profile_server)
        h.wait_for(
            "decisions again",
            lambda: h.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid).decision_id,
            timeout_s=30,
            tolerate=(grpc.RpcError,),
        )
    finally:
        h.close()


def servicer_on(redis_url: str, kafka_servers: str, prefix: str) -> PersonalisationServicer:
    settings = PersonalisationSettings(key_prefix=prefix, holdout_percent=0.0)
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
    profile_settings = ProfileSettings(key_prefix=prefix)
    return PersonalisationServicer(
        settings,
        CatalogueFile(settings.catalogue_file),
        ReaderProfileSource(ProfileReader(client, profile_settings), []),
        ContactLedger(client, prefix),
        DecisionStore(client, prefix, settings.decision_ttl_s),
        None,
        TouchpointPublisher.connect(kafka_servers, f"{prefix}touchpoints"),
    )


def serve(servicer: PersonalisationServicer) -> tuple[ServiceServer, grpc.Channel]:
    client = servicer.ledger.client
    server = build_server(servicer, client, "127.0.0.1:0")
    server.start()
    return server, grpc.insecure_channel(f"127.0.0.1:{server.port}")


DECIDE = npb.DecideRequest(
    identifier=pb.Identifier(type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value="c-outage"),
    placement="web.home.hero",
    channel=ev.CHANNEL_WEB,
)


def test_redis_down_gives_unavailable_for_every_call_that_needs_it() -> None:
    servicer = servicer_on("redis://127.0.0.1:1/0", "127.0.0.1:1", "outage:")
    server, channel = serve(servicer)
    try:
        stub = personalisation_pb2_grpc.PersonalisationServiceStub(channel)
        outcome = npb.ReportOutcomeRequest(
            decision_id="d" * 32, action_id="x", outcome=ev.OfferOutcome.OUTCOME_CLICK
        )
        calls: list[Callable[[], object]] = [
            lambda: stub.Decide(DECIDE, timeout=10),
            lambda: stub.ReportOutcome(outcome, timeout=10),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == "Redis unavailable: retry"
            assert time.monotonic() - started < 3.0
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="redis"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The catalogue needs no dependency.
        assert stub.ListActions(npb.ListActionsRequest(), timeout=5).actions
    finally:
        server.stop(grace_s=0)
        channel.close()


def test_kafka_down_gives_unavailable_outcomes_and_decisions_go_on() -> None:
    prefix = f"outage-{uuid.uuid4().hex[:8]}:"
    servicer = servicer_on(redis_settings().redis_url, "127.0.0.1:1", prefix)
    server, channel = serve(servicer)
    try:
        stub = personalisation_pb2_grpc.PersonalisationServiceStub(channel)
        decision = stub.Decide(DECIDE, timeout=10)
        assert decision.basis == npb.BASIS_UNKNOWN_PROFILE
        assert decision.actions
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ReportOutcome(
                npb.ReportOutcomeRequest(
                    decision_id=decision.decision_id,
                    action_id=decision.actions[0].action_id,
                    outcome=ev.OfferOutcome.OUTCOME_CLICK,
                ),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Kafka" in (caught.value.details() or "")
        assert time.monotonic() - started < 3.0
    finally:
        server.stop(grace_s=0)
        channel.close()
        client = servicer.ledger.client
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
