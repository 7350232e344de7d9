"""TouchpointPublisher during outages, with a stand-in producer (no broker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError

from services.common.touchpoint_publisher import (
    BrokerUnavailable,
    Published,
    PublishError,
    TouchpointPublisher,
)
from tests.factories import page_view


class Meta:
    def __init__(self, offset: int) -> None:
        self.partition, self.offset = 0, offset


class StandInFuture:
    """Resolves with `outcome` (metadata or an exception); None never resolves."""

    def __init__(self, outcome: Meta | Exception | None) -> None:
        self.outcome = outcome
        self.waited: list[float] = []
        self.errbacks: list[Callable[[Exception], Any]] = []

    def add_errback(self, f: Callable[..., Any], *args: Any) -> None:
        self.errbacks.append(lambda exc: f(*args, exc))

    def get(self, timeout: float) -> Meta:
        self.waited.append(timeout)
        if self.outcome is None:
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def fail_later(self, exc: Exception) -> None:
        for errback in self.errbacks:
            errback(exc)


class StandInProducer:
    def __init__(self, *outcomes: Meta | Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.futures: list[StandInFuture] = []

    def send(self, topic: str, **_: Any) -> StandInFuture:
        self.futures.append(StandInFuture(self.outcomes.pop(0)))
        return self.futures[-1]


def publisher(producer: StandInProducer, ack_timeout_s: float = 5.0) -> TouchpointPublisher:
    return TouchpointPublisher(producer, "topic", ack_timeout_s)


def test_every_acknowledged_event_is_published_in_order() -> None:
    p = publisher(StandInProducer(Meta(7), Meta(8)))
    assert p.publish([page_view(), page_view()]) == [Published(0, 7), Published(0, 8)]


def test_some_events_unacknowledged_makes_the_whole_call_unavailable() -> None:
    p = publisher(StandInProducer(Meta(1), None))
    with pytest.raises(BrokerUnavailable):
        p.publish([page_view(), page_view()], timeout_s=0.01)


def test_the_wait_is_bounded_by_the_callers_timeout_and_the_ack_timeout() -> None:
    producer = StandInProducer(None, None)
    with pytest.raises(BrokerUnavailable):
        publisher(producer, ack_timeout_s=5.0).publish([page_view(), page_view()], timeout_s=0.05)
    waited = [t for future in producer.futures for t in future.waited]
    assert waited
    assert all(t <= 0.05 for t in waited)
    producer = StandInProducer(None)
    with pytest.raises(BrokerUnavailable):
        publisher(producer, ack_timeout_s=0.02).publish([page_view()], timeout_s=60)
    assert producer.futures[0].waited[0] <= 0.02


def test_retriable_broker_errors_are_unavailable_and_others_are_publish_errors() -> None:
    with pytest.raises(BrokerUnavailable):
        publisher(StandInProducer(NotLeaderForPartitionError())).publish([page_view()])
    with pytest.raises(PublishError) as info:
        publisher(StandInProducer(MessageSizeTooLargeError())).publish([page_view()])
    assert not isinstance(info.value, BrokerUnavailable)


def test_a_producer_that_gave_up_on_a_record_is_not_used_again() -> None:
    # kafka-python 3.0.12 resets an idempotent producer's id when a sent batch expires and
    # never asks for a new one: that producer would time out every call from then on.
    producer = StandInProducer(Meta(1), Meta(2))
    p = publisher(producer)
    p.publish([page_view()])
    producer.futures[0].fail_later(KafkaTimeoutError("Expiring 1 record(s)"))
    assert not p.available()
    with pytest.raises(BrokerUnavailable):
        p.publish([page_view()])
    assert len(producer.futures) == 1  # nothing was sent to the broken producer


def test_a_publisher_of_an_unreachable_cluster_fails_at_once() -> None:
    p = TouchpointPublisher.connect("127.0.0.1:1", "topic")
    try:
        assert not p.available()
        with pytest.raises(BrokerUnavailable) as info:
            p.publish([page_view()], timeout_s=30)
        assert str(info.value) == "Kafka is unreachable"
        assert info.value.dependency == "Kafka"
    finally:
        p.close()
