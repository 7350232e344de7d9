"""The alerts gRPC server as `create_server` builds it, on the real Redis: an incident the
detection side opens is listed, watched live (WatchIncidents reads the outbox stream with
XREAD BLOCK), acknowledged and resolved over gRPC, with each change in the outbox once;
silences hold pages; health and reflection answer."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis
from cx.alerts.v1 import alerts_pb2 as pb
from cx.alerts.v1 import alerts_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.alerts.adapters.incidents import IncidentStore
from services.alerts.adapters.layout import AlertKeys
from services.alerts.server import (
    NOTIFIER_HEALTH_NAME,
    SERVICE_NAME,
    WORKER_HEALTH_NAME,
    create_server,
)
from services.alerts.settings import AlertsSettings
from services.common.process import GrpcProcess
from services.common.settings import process_settings, redis_settings
from tests.support.alerts import RecordingKeys, clean, make_trigger

pytestmark = pytest.mark.integration


@pytest.fixture
def settings() -> AlertsSettings:
    return AlertsSettings(key_prefix=f"test-alerts-{uuid.uuid4().hex[:8]}:", grpc_port=0)


@pytest.fixture
def store(settings: AlertsSettings) -> Iterator[IncidentStore]:
    client = redis.Redis.from_url(redis_settings().redis_url)
    store = IncidentStore(client, settings.key_prefix)
    store.keys = RecordingKeys(settings.key_prefix)
    yield store
    clean(client, store)
    client.close()


@pytest.fixture
def served(settings: AlertsSettings) -> Iterator[GrpcProcess]:
    built = create_server(settings, redis_settings(), process_settings())
    built.server.start()
    yield built
    built.server.stop(0)
    built.close()


@pytest.fixture
def channel(served: GrpcProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served.server.port}") as channel:
        yield channel


def now_ms() -> int:
    return int(time.time() * 1000)


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME, "redis"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert SERVICE_NAME in names


def test_incident_lifecycle_over_grpc(channel: grpc.Channel, store: IncidentStore) -> None:
    stub = alerts_pb2_grpc.AlertsServiceStub(channel)
    stream = stub.WatchIncidents(pb.WatchIncidentsRequest(profile_id="p-watch"), timeout=20)
    seen: list[pb.IncidentChange] = []

    def watch() -> None:
        for reply in stream:
            seen.append(reply.change)
            if len(seen) == 3:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)  # the watch reads from the outbox's tail at the time it starts
    opened = store.trigger(make_trigger("e1", profile_id="p-watch", now_ms=now_ms()))
    store.trigger(make_trigger("other", profile_id="p-other", now_ms=now_ms()))
    listed = stub.ListIncidents(pb.ListIncidentsRequest(profile_id="p-watch"), timeout=5)
    assert [i.incident_id for i in listed.incidents] == [opened.incident_id]
    stub.AcknowledgeIncident(
        pb.AcknowledgeIncidentRequest(incident_id=opened.incident_id, by="alice"), timeout=5
    )
    resolved = stub.ResolveIncident(
        pb.ResolveIncidentRequest(incident_id=opened.incident_id, by="alice", note="sorted"),
        timeout=5,
    ).incident
    assert resolved.state == pb.STATE_RESOLVED
    watcher.join(15)
    stream.cancel()  # type: ignore[no-untyped-call]
    assert [c.change for c in seen] == [
        pb.CHANGE_OPENED,
        pb.CHANGE_ACKNOWLEDGED,
        pb.CHANGE_RESOLVED,
    ]
    assert seen[-1].incident == resolved
    changes = [(e.change, e.incident_id) for e in store.read_outbox("0-0", 0)]
    assert changes.count(("ACKNOWLEDGED", opened.incident_id)) == 1
    with pytest.raises(grpc.RpcError) as caught:
        stub.ResolveIncident(
            pb.ResolveIncidentRequest(incident_id=opened.incident_id, by="bob"), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_silence_over_grpc_holds_pages(channel: grpc.Channel, store: IncidentStore) -> None:
    stub = alerts_pb2_grpc.AlertsServiceStub(channel)
    silence = pb.Silence(
        matchers=[pb.Matcher(name="touchpoint", value="web.", prefix=True)],
        created_by="alice",
        comment="web release",
    )
    silence.ends_at.FromMilliseconds(now_ms() + 3_600_000)
    created = stub.CreateSilence(pb.CreateSilenceRequest(silence=silence), timeout=5).silence
    held = store.trigger(make_trigger("e1", now_ms=now_ms()))
    assert held.suppressed_by == f"silence:{created.silence_id}"
    stub.ExpireSilence(pb.ExpireSilenceRequest(silence_id=created.silence_id), timeout=5)
    assert store.trigger(make_trigger("e2", profile_id="p2", now_ms=now_ms() + 1)).paged
    store.keys.silence(created.silence_id)  # recorded for the clean-up


def test_health_reports_the_worker_and_the_notifier_by_their_heartbeats(
    channel: grpc.Channel, settings: AlertsSettings
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    keys = AlertKeys(settings.key_prefix)
    client = redis.Redis.from_url(redis_settings().redis_url)

    def status(name: str) -> int:
        request = health_pb2.HealthCheckRequest(service=name)
        return int(health.Check(request, timeout=5).status)

    names = (WORKER_HEALTH_NAME, NOTIFIER_HEALTH_NAME)
    try:
        # Nobody beats under this run's prefix: reported, but the server still serves.
        for name in names:
            assert status(name) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert status("") == health_pb2.HealthCheckResponse.SERVING
        for key in (keys.workers, keys.notifiers):
            client.zadd(key, {"test-process": time.time() + 60})
        deadline = time.monotonic() + 10
        while any(status(n) != health_pb2.HealthCheckResponse.SERVING for n in names):
            assert time.monotonic() < deadline, "heartbeats not reported within 10 s"
            time.sleep(0.2)
    finally:
        client.delete(keys.workers, keys.notifiers)
        client.close()
