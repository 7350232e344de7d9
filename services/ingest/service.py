"""IngestService: validate, normalise, publish. Domain logic without a network."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc
from prometheus_client import Counter, Histogram

from services.common.touchpoint_publisher import Published, PublishError
from services.common.validation import DEFAULT_LIMITS, Limits, Violation, normalise_and_validate

EVENTS = Counter("cx_ingest_events", "Events received by ingestion", ["rpc", "status"])
REJECTIONS = Counter("cx_ingest_rejections", "Rejected events by field", ["field"])
PUBLISH_SECONDS = Histogram(
    "cx_ingest_publish_seconds",
    "Time from the first send to the last broker acknowledgement of one call",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

MAX_BATCH = 1000


class Publisher(Protocol):
    def publish(self, events: Sequence[ev.TouchpointEvent]) -> list[Published | PublishError]: ...


def _violations_pb(violations: Sequence[Violation]) -> list[pb.FieldViolation]:
    return [pb.FieldViolation(field=v.field, description=v.description) for v in violations]


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, publisher: Publisher, limits: Limits = DEFAULT_LIMITS, max_batch: int = MAX_BATCH
    ) -> None:
        self._publisher = publisher
        self._limits = limits
        self._max_batch = max_batch

    def _check(self, event: ev.TouchpointEvent, now: datetime) -> list[Violation]:
        violations = normalise_and_validate(event, now=now, limits=self._limits)
        for v in violations:
            REJECTIONS.labels(field=v.field).inc()
        if not violations:
            event.received_at.FromDatetime(now)
        return violations

    def _publish(
        self, events: Sequence[ev.TouchpointEvent], context: grpc.ServicerContext
    ) -> list[Published | PublishError]:
        with PUBLISH_SECONDS.time():
            return self._publisher.publish(events)

    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        if not request.HasField("event"):
            EVENTS.labels("Track", "rejected").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event: is required")
        event = request.event
        violations = self._check(event, datetime.now(UTC))
        if violations:
            EVENTS.labels("Track", "rejected").inc()
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid event: " + "; ".join(f"event.{v}" for v in violations),
            )
        (outcome,) = self._publish([event], context)
        if isinstance(outcome, PublishError):
            EVENTS.labels("Track", "failed").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, str(outcome))
        EVENTS.labels("Track", "accepted").inc()
        return pb.TrackResponse(
            result=pb.EventResult(
                index=0,
                event_id=event.event_id,
                status=pb.EventResult.STATUS_ACCEPTED,
                partition=outcome.partition,
                offset=outcome.offset,
            )
        )

    def TrackBatch(
        self, request: pb.TrackBatchRequest, context: grpc.ServicerContext
    ) -> pb.TrackBatchResponse:
        count = len(request.events)
        if not 1 <= count <= self._max_batch:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"events: must hold 1 to {self._max_batch} events, got {count}",
            )
        now = datetime.now(UTC)
        results = [
            pb.EventResult(index=i, event_id=event.event_id)
            for i, event in enumerate(request.events)
        ]
        accepted: list[int] = []
        for i, event in enumerate(request.events):
            violations = self._check(event, now)
            if violations:
                results[i].status = pb.EventResult.STATUS_REJECTED
                results[i].violations.extend(_violations_pb(violations))
            else:
                accepted.append(i)
        outcomes = self._publish([request.events[i] for i in accepted], context) if accepted else []
        for i, outcome in zip(accepted, outcomes, strict=True):
            if isinstance(outcome, PublishError):
                results[i].status = pb.EventResult.STATUS_REJECTED
                results[i].violations.append(pb.FieldViolation(field="", description=str(outcome)))
            else:
                results[i].status = pb.EventResult.STATUS_ACCEPTED
                results[i].partition = outcome.partition
                results[i].offset = outcome.offset
        accepted_count = sum(r.status == pb.EventResult.STATUS_ACCEPTED for r in results)
        EVENTS.labels("TrackBatch", "accepted").inc(accepted_count)
        EVENTS.labels("TrackBatch", "rejected").inc(count - accepted_count)
        return pb.TrackBatchResponse(
            results=results, accepted_count=accepted_count, rejected_count=count - accepted_count
        )
