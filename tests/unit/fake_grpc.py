"""In-memory stand-ins for what a servicer is given: a touchpoint publisher that records
what it publishes, and a servicer context that only knows the client's deadline."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.touchpoint_publisher import BrokerUnavailable, Published


class RecordingPublisher:
    def __init__(self, fail_ids: frozenset[str] = frozenset()) -> None:
        self.published: list[ev.TouchpointEvent] = []
        self.fail_ids = fail_ids
        self.timeouts: list[float | None] = []

    def publish(
        self, events: Sequence[ev.TouchpointEvent], timeout_s: float | None = None
    ) -> list[Published]:
        self.timeouts.append(timeout_s)
        if any(event.event_id in self.fail_ids for event in events):
            raise BrokerUnavailable("Kafka is unreachable")
        out: list[Published] = []
        for event in events:
            self.published.append(event)
            out.append(Published(partition=0, offset=len(self.published) - 1))
        return out


class FakeContext:
    """Handlers raise a ServiceError (the interceptor answers it); they only ask the
    context for the client's deadline."""

    def __init__(self, time_remaining: float | None = None) -> None:
        self._remaining = time_remaining

    def time_remaining(self) -> float | None:
        return self._remaining


def ctx(time_remaining: float | None = None) -> grpc.ServicerContext:
    return FakeContext(time_remaining)  # type: ignore[return-value]
