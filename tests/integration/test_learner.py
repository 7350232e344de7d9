"""The personalisation learner through its real process (tests/integration/learner_harness.py):
the no-click timeout settles to reward 0 once, however often the decision comes again; an
accept settles at once with the configured reward, also when it came before its decision;
unreadable decision records are dead-lettered; a strong simple signal makes a checkpoint
whose model prefers the rewarded action for that pattern; and a learner SIGKILLed after
a checkpoint resumes from it without training anything twice.

The tests share one learner (its start, joining the consumer group, is most of the time);
the kill test runs last."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb

from services.common.dead_letter import CONSUMER_HEADER, REASON_HEADER
from services.common.settings import KafkaSettings, redis_settings
from services.personalisation import decision_records
from services.personalisation.adapters.learning_store import CheckpointInfo, load_current
from services.personalisation.domain.learning import Model, context_features, load_learning
from tests.integration.learner_harness import LearnerHarness, decision, outcome_event

pytestmark = pytest.mark.integration

ARMS = (("upgrade_plan", "upsell"), ("care_survey", "survey"))
ACCEPT = ev.OfferOutcome.OUTCOME_ACCEPT
DISMISS = ev.OfferOutcome.OUTCOME_DISMISS
CLICK = ev.OfferOutcome.OUTCOME_CLICK


@pytest.fixture(scope="module")
def harness(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LearnerHarness]:
    h = LearnerHarness(kafka, redis_settings().redis_url, tmp_path_factory.mktemp("learner"))
    try:
        h.start_learner()
        yield h
    finally:
        h.cleanup()


def test_no_click_within_the_window_is_reward_zero_once(harness: LearnerHarness) -> None:
    record = decision(ARMS, 0)
    harness.send_decisions([record])
    [entry] = harness.wait_settled([record.decision_id])
    assert entry.fields["reason"] == "timeout"
    assert float(entry.fields["reward"]) == 0.0
    assert entry.fields["outcomes"] == ""
    # Settled when its window (2 s) had passed, not before.
    assert int(entry.fields["settled_ms"]) >= int(entry.fields["due_ms"])

    # The record redelivered (twice) and a late click: nothing changes. A probe on the
    # same key (so the same partition, read after them) says they were read.
    late = outcome_event(record, CLICK)
    harness.send_decisions([record, record])
    harness.send_outcomes([late])
    probe = decision(ARMS, 1, profile_id=record.profile_id)
    harness.send_decisions([probe])
    harness.wait_for(
        "the probe decision",
        lambda: (
            harness.redis.exists(harness.store.pending_key(probe.decision_id))
            or harness.store.settled_reason(probe.decision_id)
        ),
    )
    assert [e.fields["decision_id"] for e in harness.settled([record.decision_id])] == [
        record.decision_id
    ]
    assert harness.store.settled_reason(record.decision_id) == "timeout"
    assert not harness.redis.exists(harness.store.pending_key(record.decision_id))


def test_an_accept_settles_at_once_with_the_configured_reward(harness: LearnerHarness) -> None:
    record = decision(ARMS, 0, value=35.0)
    harness.send_decisions([record])
    harness.wait_for(
        "the decision pending",
        lambda: harness.redis.exists(harness.store.pending_key(record.decision_id)),
    )
    harness.send_outcomes([outcome_event(record, CLICK), outcome_event(record, ACCEPT)])
    [entry] = harness.wait_settled([record.decision_id])
    assert entry.fields["reason"] == "accept"
    # accept = "value": 35 / value_scale 50.
    rewards = load_learning(harness.learning_file).rewards
    assert float(entry.fields["reward"]) == pytest.approx(rewards.of("accept", 35.0)) == 0.7
    assert int(entry.fields["settled_ms"]) < int(entry.fields["due_ms"])


def test_an_outcome_before_its_decision_is_joined(harness: LearnerHarness) -> None:
    record = decision(ARMS, 1, value=10.0)
    harness.decision_ids.add(record.decision_id)
    # An outcome of another (not the first chosen) action is not learned from.
    harness.send_outcomes(
        [outcome_event(record, ACCEPT), outcome_event(record, CLICK, action_id="upgrade_plan")]
    )
    harness.wait_for(
        "the outcome kept for its decision",
        lambda: harness.redis.hlen(harness.store.early_key(record.decision_id)) == 2,
    )
    harness.send_decisions([record])
    [entry] = harness.wait_settled([record.decision_id])
    assert (entry.fields["reason"], entry.fields["outcomes"]) == ("accept", "accept")
    assert float(entry.fields["reward"]) == pytest.approx(10.0 / 50.0)
    assert not harness.redis.exists(harness.store.early_key(record.decision_id))


def test_unreadable_decisions_are_dead_lettered_and_others_go_on(harness: LearnerHarness) -> None:
    bad = b"\xff\xff not a decision record"
    harness.send_raw_decision(bad)
    anonymous = decision(ARMS, 0, basis=pb.BASIS_ANONYMOUS)
    good = decision(ARMS, 0)
    harness.send_decisions([anonymous, good])
    harness.send_outcomes([outcome_event(anonymous, DISMISS), outcome_event(good, DISMISS)])
    [entry] = harness.wait_settled([good.decision_id])
    assert entry.fields["reason"] == "dismiss"

    letters = harness.wait_for(
        "the dead letter", lambda: [v for v in harness.dead_letters() if v[1] == bad]
    )
    [(_key, _value, headers)] = letters
    assert b"DecisionRecord" in headers[REASON_HEADER]
    assert headers[CONSUMER_HEADER] == f"{harness.run}-learner".encode()
    # Decisions without a profile are not learned from (the outcome waits, then expires).
    assert harness.settled([anonymous.decision_id]) == []
    assert not harness.redis.exists(harness.store.pending_key(anonymous.decision_id))


def test_a_strong_simple_signal_makes_a_model_that_prefers_the_rewarded_action(
    harness: LearnerHarness,
) -> None:
    # VIPs take the upgrade and dismiss the survey; new customers the other way round.
    # Each decision showed either action with probability 0.5.
    records, outcomes = [], []
    for i in range(240):
        tier = "vip" if i % 2 else "new"
        shown = (i // 2) % 2
        record = decision(ARMS, shown, value=50.0, features={"value_tier": tier})
        liked = (tier == "vip") == (ARMS[shown][0] == "upgrade_plan")
        records.append(record)
        outcomes.append(outcome_event(record, ACCEPT if liked else DISMISS))
    harness.send_decisions(records)
    harness.send_outcomes(outcomes)
    entries = harness.wait_settled([r.decision_id for r in records])
    assert {e.fields["reason"] for e in entries} == {"accept", "dismiss"}
    last = max(stream_id(e.entry_id) for e in entries)
    harness.wait_for(
        "a checkpoint with every example",
        lambda: (info := harness.current()) is not None and stream_id(info.cursor) >= last,
    )
    checkpoint = load_current(harness.redis, harness.prefix)
    assert checkpoint is not None
    model = Model(load_learning(harness.learning_file).model.vw_args, "", checkpoint.model_bytes)
    try:
        for tier, favourite in (("vip", 0), ("new", 1)):
            probe = decision(ARMS, 0, features={"value_tier": tier})
            shared = context_features(decision_records.decision_fields(probe))
            pmf = model.predict(shared, decision_records.arms(probe))
            assert pmf[favourite] > 0.8, (tier, pmf)
    finally:
        model.close()


def test_a_killed_learner_resumes_from_its_checkpoint_without_training_twice(
    harness: LearnerHarness,
) -> None:
    # Everything settled so far in a checkpoint (every_decisions 5, every_s 3)...
    first = [decision(ARMS, i % 2) for i in range(6)]
    harness.send_decisions(first)
    harness.send_outcomes([outcome_event(r, DISMISS) for r in first])
    harness.wait_settled([r.decision_id for r in first])
    harness.wait_for(
        "a checkpoint of everything settled",
        lambda: (info := harness.current()) is not None and info.trained == len(harness.settled()),
    )
    # ...then a few examples trained after it, and the learner killed before it writes them.
    started_from = 0  # the first learner started without a checkpoint
    killed_at: CheckpointInfo | None = None
    total = 0
    for _ in range(3):
        after = [decision(ARMS, 0) for _ in range(3)]
        harness.send_decisions(after)
        harness.send_outcomes([outcome_event(r, ACCEPT) for r in after])
        harness.wait_settled([r.decision_id for r in after])
        total = len(harness.settled())
        harness.wait_for(
            "the learner trained them",
            functools.partial(trained_since_start, harness, total - started_from),
            tolerate=(OSError,),
        )
        harness.kill_learner()
        killed_at = harness.current()
        assert killed_at is not None
        if killed_at.trained < total:
            break
        # It checkpointed them before it was killed: again.
        started_from = killed_at.trained
        harness.start_learner()
    assert killed_at is not None
    assert killed_at.trained < total, "the learner always checkpointed before it was killed"
    checkpoint = killed_at

    harness.start_learner()

    def resumed() -> CheckpointInfo | None:
        info = harness.current()
        return info if info is not None and info.sequence > checkpoint.sequence else None

    info = harness.wait_for("a checkpoint of the restarted learner", resumed, timeout_s=30)
    # It started from the checkpoint and trained what came after its cursor: every example
    # settled up to its cursor once, none twice, none lost; the versions go on from it.
    # (Decisions still in their window when it was killed may have settled since.)
    entries = harness.settled()
    trained = [e for e in entries if stream_id(e.entry_id) <= stream_id(info.cursor)]
    assert info.trained == len(trained) >= total
    assert info.sequence == checkpoint.sequence + 1
    assert harness.metric("cx_personalisation_learner_leader") == 1.0
    assert harness.metric("cx_personalisation_learner_trained_total") >= total - checkpoint.trained
    ids = [e.fields["decision_id"] for e in entries]
    assert len(ids) == len(set(ids))


def trained_since_start(harness: LearnerHarness, count: int) -> bool:
    return harness.metric("cx_personalisation_learner_trained_total") >= count


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
