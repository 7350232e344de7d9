"""IngestService: validate, normalise, publish. Domain logic without a network."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc
from google.protobuf.descriptor import Descriptor
from prometheus_client import Counter, Histogram

from services.common.grpc_errors import Internal, InvalidArgument, InvalidRequest, Unavailable
from services.common.touchpoint_publisher import BrokerUnavailable, Published, PublishError
from services.common.validation import DEFAULT_LIMITS, Limits, Violation, normalise_and_validate

EVENTS = Counter("cx_ingest_events", "Events received by ingestion", ["rpc", "status"])
REJECTIONS = Counter(
    "cx_ingest_rejections", "Rejected events by field (schema path, see field_label)", ["field"]
)
PUBLISH_SECONDS = Histogram(
    "cx_ingest_publish_seconds",
    "Time from the first send to the last broker acknowledgement of one call",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

MAX_BATCH = 1000
# Violations reported per event; the rest are counted. An event can break hundreds of
# rules (one per list item), and a batch's answer must stay well below the 4 MiB a
# client accepts by default.
MAX_VIOLATIONS_SHOWN = 20
# Kept from the client's deadline for answering after the broker's acknowledgements.
DEADLINE_MARGIN_S = 0.2
RETRY_HINT = "retry with the same event ids (consumers drop duplicates by event_id)"

_FREE_FORM = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}


def field_label(path: str) -> str:
    """The schema path of a violation's field, as a metric label.

    List indices become `[]` and the path stops at the first name that is not a field of
    the schema (keys of free-form structs such as `properties` are client data), so the
    label's values are bounded by the schema whatever clients send:
    `order_placed.items[17].product_id` -> `order_placed.items[].product_id`,
    `properties.some_key` -> `properties`, `event` -> `event`.
    """
    descriptor: Descriptor | None = ev.TouchpointEvent.DESCRIPTOR
    kept: list[str] = []
    for part in path.split("."):
        name, bracket, _ = part.partition("[")
        field = descriptor.fields_by_name.get(name) if descriptor is not None else None
        if field is None:
            break
        kept.append(name + ("[]" if bracket else ""))
        message = field.message_type
        descriptor = (
            message if message is not None and message.full_name not in _FREE_FORM else None
        )
    return ".".join(kept) or "event"


class Publisher(Protocol):
    def publish(
        self, events: Sequence[ev.TouchpointEvent], timeout_s: float | None = None
    ) -> list[Published]: ...


def _shown(violations: Sequence[Violation]) -> list[Violation]:
    if len(violations) <= MAX_VIOLATIONS_SHOWN:
        return list(violations)
    hidden = len(violations) - MAX_VIOLATIONS_SHOWN
    return [*violations[:MAX_VIOLATIONS_SHOWN], Violation("event", f"{hidden} more violations")]


def _violations_pb(violations: Sequence[Violation]) -> list[pb.FieldViolation]:
    return [pb.FieldViolation(field=v.field, description=v.description) for v in _shown(violations)]


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        publisher: Publisher,
        limits: Limits = DEFAULT_LIMITS,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._publisher = publisher
        self._limits = limits
        self._max_batch = max_batch

    def _check(self, event: ev.TouchpointEvent, now: datetime) -> list[Violation]:
        violations = normalise_and_validate(event, now=now, limits=self._limits)
        for label in {field_label(v.field) for v in violations}:
            REJECTIONS.labels(field=label).inc()
        if not violations:
            event.received_at.FromDatetime(now)
        return violations

    def _publish(
        self, rpc: str, events: Sequence[ev.TouchpointEvent], context: grpc.ServicerContext
    ) -> list[Published]:
        """Publishes within the client's deadline (and the publisher's ack timeout); an
        outage is UNAVAILABLE for the whole call."""
        remaining = context.time_remaining()
        timeout = None if remaining is None else max(remaining - DEADLINE_MARGIN_S, 0.0)
        try:
            with PUBLISH_SECONDS.time():
                return self._publisher.publish(events, timeout_s=timeout)
        except BrokerUnavailable as exc:
            EVENTS.labels(rpc, "unavailable").inc(len(events))
            raise Unavailable(f"{exc}: {RETRY_HINT}") from exc
        except PublishError as exc:
            EVENTS.labels(rpc, "failed").inc(len(events))
            raise Internal(str(exc)) from exc

    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        if not request.HasField("event"):
            EVENTS.labels("Track", "rejected").inc()
            raise InvalidArgument("event", "is required")
        event = request.event
        violations = self._check(event, datetime.now(UTC))
        if violations:
            EVENTS.labels("Track", "rejected").inc()
            raise InvalidRequest(
                "invalid event: " + "; ".join(f"event.{v}" for v in _shown(violations))
            )
        (outcome,) = self._publish("Track", [event], context)
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
        """Invalid events are rejected one by one; the valid ones are published together,
        and if Kafka does not take all of them the whole call is UNAVAILABLE."""
        count = len(request.events)
        if not 1 <= count <= self._max_batch:
            raise InvalidArgument("events", f"must hold 1 to {self._max_batch} events, got {count}")
        now = datetime.now(UTC)
        results = [
            pb.EventResult(index=i, event_id=event.event_id)
            for i, event in enumerate(request.events)
        ]
        valid: list[int] = []
        for i, event in enumerate(request.events):
            violations = self._check(event, now)
            if violations:
                results[i].status = pb.EventResult.STATUS_REJECTED
                results[i].violations.extend(_violations_pb(violations))
            else:
                valid.append(i)
        if valid:
            outcomes = self._publish("TrackBatch", [request.events[i] for i in valid], context)
            for i, outcome in zip(valid, outcomes, strict=True):
                results[i].status = pb.EventResult.STATUS_ACCEPTED
                results[i].partition = outcome.partition
                results[i].offset = outcome.offset
        accepted = len(valid)
        EVENTS.labels("TrackBatch", "accepted").inc(accepted)
        EVENTS.labels("TrackBatch", "rejected").inc(count - accepted)
        return pb.TrackBatchResponse(
            results=results, accepted_count=accepted, rejected_count=count - accepted
        )
