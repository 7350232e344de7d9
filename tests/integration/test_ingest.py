"""Track and TrackBatch through a real gRPC server into the real Kafka broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common.grpc_client import traced_channel
from services.common.kafka_io import SCHEMA_HEADER, SCHEMA_VERSION_HEADER, TOUCHPOINT_SCHEMA
from services.common.settings import KafkaSettings, grpc_address
from services.common.telemetry import header_value
from services.common.validation import partition_key
from services.ingest.settings import IngestSettings
from tests.factories import page_view, survey
from tests.integration.conftest import read_record

REPO = Path(__file__).resolve().parents[2]


def test_track_lands_the_normalised_event_on_the_topic_with_headers_and_trace(
    kafka: KafkaSettings, ingest_channel: grpc.Channel, spans: InMemorySpanExporter
) -> None:
    event = page_view(customer_id="c-track", email="Track.Me@Example.com")
    reply = ingest_pb2_grpc.IngestServiceStub(ingest_channel).Track(pb.TrackRequest(event=event))
    assert reply.result.status == pb.EventResult.STATUS_ACCEPTED

    record = read_record(
        kafka.kafka_bootstrap_servers,
        kafka.touchpoints_topic,
        reply.result.partition,
        reply.result.offset,
    )
    landed = ev.TouchpointEvent.FromString(record.value)
    assert landed.event_id == event.event_id
    assert landed.identities.email == "track.me@example.com"
    assert landed.HasField("received_at")
    assert record.key == partition_key(landed)
    assert header_value(record.headers, SCHEMA_HEADER) == TOUCHPOINT_SCHEMA
    assert header_value(record.headers, SCHEMA_VERSION_HEADER) == "1"

    traceparent = header_value(record.headers, "traceparent")
    assert traceparent is not None
    server_spans = [
        s
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.SERVER and s.name.endswith("IngestService/Track")
    ]
    assert server_spans, "the gRPC server span was not recorded"
    trace_ids = {f"{s.context.trace_id:032x}" for s in server_spans}
    assert traceparent.split("-")[1] in trace_ids


def test_invalid_event_is_rejected_with_invalid_argument_naming_the_field(
    ingest_channel: grpc.Channel,
) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Track(pb.TrackRequest(event=survey(ev.SurveyResponse.METRIC_CSAT, 9)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.survey_response.score: 9 is outside the scale 1 to 5" in (
        info.value.details() or ""
    )


def test_batch_keeps_one_persons_events_in_order_on_one_partition(
    kafka: KafkaSettings, ingest_channel: grpc.Channel
) -> None:
    events = [page_view(customer_id="c-ordered") for _ in range(5)]
    events.insert(2, page_view(phone="12"))
    reply = ingest_pb2_grpc.IngestServiceStub(ingest_channel).TrackBatch(
        pb.TrackBatchRequest(events=events)
    )
    assert (reply.accepted_count, reply.rejected_count) == (5, 1)
    rejected = reply.results[2]
    assert rejected.status == pb.EventResult.STATUS_REJECTED
    assert [v.field for v in rejected.violations] == ["identities.phone"]

    accepted = [r for r in reply.results if r.status == pb.EventResult.STATUS_ACCEPTED]
    assert len({r.partition for r in accepted}) == 1
    offsets = [r.offset for r in accepted]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 5
    last = read_record(
        kafka.kafka_bootstrap_servers, kafka.touchpoints_topic, accepted[-1].partition, offsets[-1]
    )
    assert ev.TouchpointEvent.FromString(last.value).event_id == events[-1].event_id


def test_empty_batch_is_invalid_argument(ingest_channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ingest_pb2_grpc.IngestServiceStub(ingest_channel).TrackBatch(pb.TrackBatchRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events:" in (info.value.details() or "")


def test_health_and_reflection(ingest_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(ingest_channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="cx.ingest.v1.IngestService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    services = ProtoReflectionDescriptorDatabase(ingest_channel).get_services()
    assert "cx.ingest.v1.IngestService" in services
    assert "grpc.health.v1.Health" in services


def test_the_stacks_ingest_process_serves_on_its_configured_port() -> None:
    with grpc.insecure_channel(grpc_address(IngestSettings().grpc_port)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="cx.ingest.v1.IngestService"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_cli_sends_json_lines_and_reports_rejects_by_line(
    tmp_path: Path, ingest_address: str
) -> None:
    good = [json_format.MessageToJson(page_view(), indent=None) for _ in range(2)]
    bad = json_format.MessageToJson(survey(ev.SurveyResponse.METRIC_NPS, 11), indent=None)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([good[0], bad, "{not json", good[1]]) + "\n")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "events",
            "send",
            str(path),
            "--target",
            ingest_address,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "4 events read, 2 accepted, 2 rejected" in result.stdout
    assert "line 2: rejected" in result.stderr
    assert "survey_response.score" in result.stderr
    assert "line 3: rejected: not a TouchpointEvent in JSON" in result.stderr


def test_trace_continues_from_the_calling_client_into_the_server(
    ingest_address: str, spans: InMemorySpanExporter
) -> None:
    with traced_channel(ingest_address) as channel:
        ingest_pb2_grpc.IngestServiceStub(channel).Track(pb.TrackRequest(event=page_view()))
    finished = spans.get_finished_spans()
    client = next(s for s in reversed(finished) if s.kind == SpanKind.CLIENT)
    server = next(
        s
        for s in finished
        if s.kind == SpanKind.SERVER and s.context.trace_id == client.context.trace_id
    )
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
