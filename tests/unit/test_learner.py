"""The learner's steps that need no broker or Redis: which decisions it learns from and the
example it keeps, reading records, why a decision settles, and how far the timer may
settle while the outcome stream is behind."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
from cx.personalisation.v1 import personalisation_pb2 as pb

from services.common.dead_letter import InvalidRecord, SourceRecord
from services.personalisation import decision_records
from services.personalisation.adapters.learning_store import LearningStore
from services.personalisation.domain.learning import context_features, load_learning
from services.personalisation.learner import (
    OUTCOMES_IDLE_S,
    LearnerPipeline,
    decode_decision,
    pending_of,
    reason_of,
)
from tests.support.learner import decision

NOW_MS = int(time.time() * 1000)
ARMS = (("upgrade_plan", "upsell"), ("care_survey", "survey"))


def record_of(value: bytes | None) -> SourceRecord:
    return SourceRecord("cx.decisions.v1", 0, 7, b"k", value, [], None)


def test_a_profile_decision_is_kept_as_its_training_example_but_for_the_reward() -> None:
    record = decision(ARMS, 1, probability=0.25, value=35.0, features={"value_tier": "vip"})
    pending = pending_of(record, None)
    assert pending is not None
    assert pending.shared == context_features(decision_records.decision_fields(record))
    assert pending.arms == decision_records.arms(record)
    assert (pending.chosen, pending.action_id) == (1, "care_survey")
    assert (pending.probability, pending.business_value) == (0.25, 35.0)
    assert (pending.group, pending.policy) == ("treatment", "learned")
    assert pending.decided_ms == record.decided_at.ToMilliseconds()


@pytest.mark.parametrize(
    "basis", [pb.BASIS_ANONYMOUS, pb.BASIS_UNKNOWN_PROFILE, pb.BASIS_NO_PERSONALISATION_CONSENT]
)
def test_decisions_without_a_profile_are_not_learned_from(basis: Any) -> None:
    assert pending_of(decision(ARMS, 0, basis=basis), None) is None


def test_a_decision_that_showed_nothing_is_not_learned_from() -> None:
    record = decision(ARMS, 0)
    del record.chosen[:]
    assert pending_of(record, None) is None


def test_a_record_without_a_probability_counts_as_a_deterministic_choice() -> None:
    record = decision(ARMS, 0)
    record.chosen[0].probability = 0.0
    pending = pending_of(record, None)
    assert pending is not None
    assert pending.probability == 1.0


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (None, "value"),
        (b"\xff\xff not protobuf", "value"),
        (pb.DecisionRecord().SerializeToString(), "decision_id"),
    ],
)
def test_unreadable_decision_records_say_why(value: bytes | None, field: str) -> None:
    with pytest.raises(InvalidRecord) as error:
        decode_decision(record_of(value))
    assert error.value.field == field


@pytest.mark.parametrize(
    ("decided_ms", "reason"),
    [(1_000, "is before 2000-01-01"), (NOW_MS + 3_600_000, "in the future")],
)
def test_decision_records_dated_out_of_range_say_why(decided_ms: int, reason: str) -> None:
    record = pb.DecisionRecord(decision_id="d-1")
    record.decided_at.FromMilliseconds(decided_ms)
    with pytest.raises(InvalidRecord, match=reason) as error:
        decode_decision(record_of(record.SerializeToString()), clock_ms=NOW_MS)
    assert error.value.field == "decided_at"
    # Within the bounds (a replayed decision of last week, a little clock skew): read.
    for ok_ms in (NOW_MS - 7 * 86_400_000, NOW_MS + 60_000):
        record.decided_at.FromMilliseconds(ok_ms)
        decode_decision(record_of(record.SerializeToString()), clock_ms=NOW_MS)


def test_a_decision_settles_by_its_final_outcome_else_by_its_window() -> None:
    assert reason_of(frozenset({"click", "accept"})) == "accept"
    assert reason_of(frozenset({"dismiss"})) == "dismiss"
    assert reason_of(frozenset({"click", "impression"})) == "timeout"
    assert reason_of(frozenset()) == "timeout"


class _NoOutcomes:
    def record(self, outcomes: Any) -> list[Any]:
        return []


def test_the_timer_settles_only_as_far_as_outcomes_were_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = cast(LearningStore, _NoOutcomes())
    pipeline = LearnerPipeline(
        store, load_learning(), dlq_topic="d", touchpoints_dlq_topic="t", consumer="c"
    )
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    now = 5_000_000
    # Before any outcome was read: nothing, until the stream has been quiet a while.
    assert pipeline.horizon_ms(now) == 0
    clock[0] += OUTCOMES_IDLE_S + 0.1
    assert pipeline.horizon_ms(now) == now
    # Reading a backlog: as far as its newest record.
    behind = SourceRecord("cx.touchpoints.v1", 0, 1, b"k", b"", [], now - 60_000)
    pipeline.outcomes([behind])
    assert pipeline.horizon_ms(now) == now - 60_000
    # Caught up (no batch for a while): now.
    clock[0] += OUTCOMES_IDLE_S + 0.1
    assert pipeline.horizon_ms(now) == now
