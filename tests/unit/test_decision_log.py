"""The decision log's process side without a broker: stopping never fails."""

from __future__ import annotations

import pytest
from cx.personalisation.v1 import personalisation_pb2 as pb
from kafka.errors import KafkaTimeoutError

from services.personalisation.adapters import decisions
from services.personalisation.adapters.decisions import DecisionLog


class UnacknowledgingProducer:
    """A producer whose broker never acknowledges: close() times out as kafka-python's does."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, topic: str, key: bytes, value: bytes, headers: object) -> object:
        self.sent.append(value)

        class Future:
            def add_callback(self, _: object) -> None: ...
            def add_errback(self, _: object) -> None: ...

        return Future()

    def close(self, timeout: float) -> None:
        raise KafkaTimeoutError("Timeout waiting for future")


def test_close_with_unacknowledged_records_counts_them_and_does_not_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = UnacknowledgingProducer()
    monkeypatch.setattr(DecisionLog, "_connect", lambda self: producer)
    failed = decisions.LOG_RECORDS.labels("failed")._value.get()
    log = DecisionLog("127.0.0.1:1", "decisions", timeout_s=1.0)
    log.append("p_1", pb.DecisionRecord(decision_id="d-1"))
    log.close(timeout_s=1.0)
    assert [pb.DecisionRecord.FromString(v).decision_id for v in producer.sent] == ["d-1"]
    assert decisions.LOG_RECORDS.labels("failed")._value.get() == failed + 1
