"""The profile service down: a decision that needs a profile fails fast with UNAVAILABLE
(retryable), health says NOT_SERVING, and decisions come back when it does."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import KafkaSettings, redis_settings
from services.profile.server import build_server as build_profile
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
