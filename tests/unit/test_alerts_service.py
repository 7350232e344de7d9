"""AlertsService over gRPC in-process, on the in-memory incident store: every RPC, the
status codes (INVALID_ARGUMENT naming the field, NOT_FOUND, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED for one watcher too many), WatchIncidents' filters, health."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import cast

import grpc
import pytest
from cx.alerts.v1 import alerts_pb2 as pb
from cx.alerts.v1 import alerts_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.alerts.adapters.incidents import MemoryIncidentStore
from services.alerts.server import SERVICE_NAME, build_server
from services.alerts.service import AlertsServicer
from tests.support.alerts import HOUR_MS, NOW, SequentialIds, make_trigger, spike_trigger


class FakeRedis:
    def ping(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def store() -> MemoryIncidentStore:
    return MemoryIncidentStore(SequentialIds(), SequentialIds("sil"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def channel(store: MemoryIncidentStore, clock: Clock) -> Iterator[grpc.Channel]:
    servicer = AlertsServicer(store, clock, max_watchers=2, watch_block_ms=50)
    server = build_server(servicer, FakeRedis(), "127.0.0.1:0")  # type: ignore[arg-type]
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    server.stop(0)


@pytest.fixture
def stub(channel: grpc.Channel) -> alerts_pb2_grpc.AlertsServiceStub:
    return alerts_pb2_grpc.AlertsServiceStub(channel)


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = cast(grpc.Call, caught.value)
    return error.code(), error.details() or ""


def test_health_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- incidents --------------------------------------------------------------------------


def test_list_and_get(stub: alerts_pb2_grpc.AlertsServiceStub, store: MemoryIncidentStore) -> None:
    for i in range(3):
        store.trigger(make_trigger(f"e{i}", profile_id=f"p{i}", now_ms=NOW + i))
    store.trigger(spike_trigger("s1", now_ms=NOW + 10))
    store.acknowledge("inc-0001", "alice", NOW + 20)
    reply = stub.ListIncidents(pb.ListIncidentsRequest(), timeout=5)
    assert reply.total == 4
    assert [i.incident_id for i in reply.incidents] == [
        "inc-0001",
        "inc-0004",
        "inc-0003",
        "inc-0002",
    ]
    page = stub.ListIncidents(pb.ListIncidentsRequest(page_size=3), timeout=5)
    assert len(page.incidents) == 3
    rest = stub.ListIncidents(
        pb.ListIncidentsRequest(page_size=3, page_token=page.next_page_token), timeout=5
    )
    assert [i.incident_id for i in rest.incidents] == ["inc-0002"]
    assert rest.next_page_token == ""
    triggered = stub.ListIncidents(
        pb.ListIncidentsRequest(states=[pb.STATE_TRIGGERED], team="cx"), timeout=5
    )
    assert [i.incident_id for i in triggered.incidents] == ["inc-0003", "inc-0002"]
    by_person = stub.ListIncidents(pb.ListIncidentsRequest(profile_id="p1"), timeout=5)
    assert [i.incident_id for i in by_person.incidents] == ["inc-0002"]
    by_rule = stub.ListIncidents(pb.ListIncidentsRequest(rule="payment_spike"), timeout=5)
    assert [i.incident_id for i in by_rule.incidents] == ["inc-0004"]
    got = stub.GetIncident(pb.GetIncidentRequest(incident_id="inc-0001"), timeout=5)
    assert got.incident.acknowledged_by == "alice"
    assert got.incident.evidence[0].event_id == "e0"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListIncidentsRequest(page_size=201), "page_size"),
        (pb.ListIncidentsRequest(page_size=-1), "page_size"),
        (pb.ListIncidentsRequest(states=[pb.STATE_UNSPECIFIED]), "states"),
        (pb.ListIncidentsRequest(states=[42]), "states"),  # type: ignore[list-item]
        (pb.ListIncidentsRequest(page_token="nonsense"), "page_token"),
        (pb.ListIncidentsRequest(team="x" * 201), "team"),
    ],
)
def test_list_refuses_bad_requests(
    stub: alerts_pb2_grpc.AlertsServiceStub, request_: pb.ListIncidentsRequest, field: str
) -> None:
    code, details = code_of(lambda: stub.ListIncidents(request_, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}:")


def test_get_unknown_and_missing(stub: alerts_pb2_grpc.AlertsServiceStub) -> None:
    code, details = code_of(
        lambda: stub.GetIncident(pb.GetIncidentRequest(incident_id="inc-nope"), timeout=5)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "inc-nope" in details
    code, details = code_of(lambda: stub.GetIncident(pb.GetIncidentRequest(), timeout=5))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "incident_id: is required")


def test_acknowledge_and_resolve(
    stub: alerts_pb2_grpc.AlertsServiceStub, store: MemoryIncidentStore, clock: Clock
) -> None:
    store.trigger(make_trigger("e1", escalate_after_s=60))
    clock.now = NOW + 30_000
    acked = stub.AcknowledgeIncident(
        pb.AcknowledgeIncidentRequest(incident_id="inc-0001", by="alice"), timeout=5
    ).incident
    assert acked.state == pb.STATE_ACKNOWLEDGED
    assert acked.acknowledged_at.ToMilliseconds() == NOW + 30_000
    code, details = code_of(
        lambda: stub.AcknowledgeIncident(
            pb.AcknowledgeIncidentRequest(incident_id="inc-0001", by="bob"), timeout=5
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already acknowledged (by alice)" in details
    # Acknowledged: no escalation.
    assert store.fire_due(NOW + HOUR_MS) == []
    clock.now = NOW + 60_000
    resolved = stub.ResolveIncident(
        pb.ResolveIncidentRequest(incident_id="inc-0001", by="alice", note="refund issued"),
        timeout=5,
    ).incident
    assert (resolved.state, resolved.resolution) == (pb.STATE_RESOLVED, "refund issued")
    for call in (
        lambda: stub.ResolveIncident(
            pb.ResolveIncidentRequest(incident_id="inc-0001", by="bob"), timeout=5
        ),
        lambda: stub.AcknowledgeIncident(
            pb.AcknowledgeIncidentRequest(incident_id="inc-0001", by="bob"), timeout=5
        ),
    ):
        assert code_of(call)[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert [e.change for e in store.outbox] == ["OPENED", "ACKNOWLEDGED", "RESOLVED"]


@pytest.mark.parametrize(
    ("call", "code", "starts"),
    [
        ("ack", grpc.StatusCode.INVALID_ARGUMENT, "by: is required"),
        ("resolve", grpc.StatusCode.INVALID_ARGUMENT, "by: is required"),
        ("resolve-auto", grpc.StatusCode.INVALID_ARGUMENT, "by: 'auto'"),
        ("ack-unknown", grpc.StatusCode.NOT_FOUND, "no incident"),
        ("resolve-unknown", grpc.StatusCode.NOT_FOUND, "no incident"),
        ("resolve-long-note", grpc.StatusCode.INVALID_ARGUMENT, "note:"),
    ],
)
def test_change_refusals(
    stub: alerts_pb2_grpc.AlertsServiceStub,
    store: MemoryIncidentStore,
    call: str,
    code: grpc.StatusCode,
    starts: str,
) -> None:
    store.trigger(make_trigger("e1"))
    requests = {
        "ack": lambda: stub.AcknowledgeIncident(
            pb.AcknowledgeIncidentRequest(incident_id="inc-0001", by=" "), timeout=5
        ),
        "resolve": lambda: stub.ResolveIncident(
            pb.ResolveIncidentRequest(incident_id="inc-0001"), timeout=5
        ),
        "resolve-auto": lambda: stub.ResolveIncident(
            pb.ResolveIncidentRequest(incident_id="inc-0001", by="auto"), timeout=5
        ),
        "ack-unknown": lambda: stub.AcknowledgeIncident(
            pb.AcknowledgeIncidentRequest(incident_id="inc-9", by="a"), timeout=5
        ),
        "resolve-unknown": lambda: stub.ResolveIncident(
            pb.ResolveIncidentRequest(incident_id="inc-9", by="a"), timeout=5
        ),
        "resolve-long-note": lambda: stub.ResolveIncident(
            pb.ResolveIncidentRequest(incident_id="inc-0001", by="a", note="x" * 2001), timeout=5
        ),
    }
    got_code, details = code_of(requests[call])
    assert got_code == code
    assert details.startswith(starts)


# --- silences ---------------------------------------------------------------------------


def silence_request(
    *,
    matchers: list[pb.Matcher] | None = None,
    starts_at_ms: int | None = None,
    ends_at_ms: int | None = NOW + HOUR_MS,
    created_by: str = "alice",
) -> pb.CreateSilenceRequest:
    s = pb.Silence(
        matchers=[pb.Matcher(name="team", value="cx")] if matchers is None else matchers,
        created_by=created_by,
        comment="deploy",
    )
    if starts_at_ms is not None:
        s.starts_at.FromMilliseconds(starts_at_ms)
    if ends_at_ms is not None:
        s.ends_at.FromMilliseconds(ends_at_ms)
    return pb.CreateSilenceRequest(silence=s)


def test_silences(
    stub: alerts_pb2_grpc.AlertsServiceStub, store: MemoryIncidentStore, clock: Clock
) -> None:
    created = stub.CreateSilence(silence_request(), timeout=5).silence
    assert created.silence_id == "sil-0001"
    assert created.state == pb.SILENCE_STATE_ACTIVE
    assert created.starts_at.ToMilliseconds() == NOW
    later = stub.CreateSilence(
        silence_request(starts_at_ms=NOW + 60_000, ends_at_ms=NOW + 120_000), timeout=5
    ).silence
    assert later.state == pb.SILENCE_STATE_PENDING
    held = store.trigger(make_trigger("e1"))
    assert held.suppressed_by == "silence:sil-0001"
    listed = stub.ListSilences(pb.ListSilencesRequest(), timeout=5).silences
    assert [s.silence_id for s in listed] == ["sil-0001", "sil-0002"]
    clock.now = NOW + 1000
    ended = stub.ExpireSilence(pb.ExpireSilenceRequest(silence_id="sil-0001"), timeout=5).silence
    assert ended.state == pb.SILENCE_STATE_EXPIRED
    assert ended.ends_at.ToMilliseconds() == NOW + 1000
    assert [
        s.silence_id for s in stub.ListSilences(pb.ListSilencesRequest(), timeout=5).silences
    ] == ["sil-0002"]
    everything = stub.ListSilences(pb.ListSilencesRequest(include_expired=True), timeout=5)
    assert [s.state for s in everything.silences] == [
        pb.SILENCE_STATE_EXPIRED,
        pb.SILENCE_STATE_PENDING,
    ]
    assert (
        code_of(lambda: stub.ExpireSilence(pb.ExpireSilenceRequest(silence_id="sil-9"), timeout=5))[
            0
        ]
        == grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"matchers": []}, "silence.matchers"),
        ({"matchers": [pb.Matcher(name="colour", value="red")]}, "silence.matchers[0].name"),
        ({"matchers": [pb.Matcher(name="team", value="")]}, "silence.matchers[0].value"),
        ({"matchers": [pb.Matcher(name="severity", value="loud")]}, "silence.matchers[0].value"),
        ({"ends_at_ms": None}, "silence.ends_at"),
        ({"ends_at_ms": NOW - 1}, "silence.ends_at"),
        ({"starts_at_ms": NOW + HOUR_MS}, "silence.ends_at"),
        ({"created_by": ""}, "silence.created_by"),
    ],
)
def test_create_silence_refusals(
    stub: alerts_pb2_grpc.AlertsServiceStub, kw: dict[str, object], field: str
) -> None:
    code, details = code_of(
        lambda: stub.CreateSilence(silence_request(**kw), timeout=5)  # type: ignore[arg-type]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}:")


def test_create_silence_needs_a_silence(stub: alerts_pb2_grpc.AlertsServiceStub) -> None:
    code, details = code_of(lambda: stub.CreateSilence(pb.CreateSilenceRequest(), timeout=5))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "silence: is required")


# --- watching ---------------------------------------------------------------------------


def test_watch_streams_matching_changes_from_now_on(
    stub: alerts_pb2_grpc.AlertsServiceStub, store: MemoryIncidentStore
) -> None:
    store.trigger(make_trigger("before"))
    stream = stub.WatchIncidents(pb.WatchIncidentsRequest(team="cx"), timeout=10)
    received: list[pb.IncidentChange] = []

    def read() -> None:
        for reply in stream:
            received.append(reply.change)
            if len(received) == 2:
                break

    reader = threading.Thread(target=read)
    reader.start()
    # The stream starts at the outbox's tail: wait until the server reads.
    threading.Event().wait(0.3)
    store.trigger(spike_trigger("s1"))  # team payments: filtered out
    store.trigger(make_trigger("e1", profile_id="p2"))
    store.acknowledge("inc-0003", "alice", NOW + 1)
    reader.join(10)
    stream.cancel()  # type: ignore[no-untyped-call]
    assert [(c.change, c.incident.incident_id) for c in received] == [
        (pb.CHANGE_OPENED, "inc-0003"),
        (pb.CHANGE_ACKNOWLEDGED, "inc-0003"),
    ]


def test_watch_refuses_one_watcher_too_many(stub: alerts_pb2_grpc.AlertsServiceStub) -> None:
    streams = [stub.WatchIncidents(pb.WatchIncidentsRequest(), timeout=10) for _ in range(2)]
    threading.Event().wait(0.3)
    third = stub.WatchIncidents(pb.WatchIncidentsRequest(), timeout=10)
    code, details = code_of(lambda: list(third))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("2 watchers already")
    for s in streams:
        s.cancel()  # type: ignore[no-untyped-call]
