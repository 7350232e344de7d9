"""Reading the decision log back without a broker: a fake topic reader hands over the
records, and the reader keeps the decisions within the filters, joins each one's
outcomes by decision id and FIRST chosen action, and settles it (or counts it
unsettled)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb

from services.common.settings import KafkaSettings
from services.personalisation.adapters import decision_log_reader as reader
from services.personalisation.domain.learning import LearningConfig

NOW_MS = int(time.time() * 1000)
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
KAFKA = KafkaSettings(decisions_topic="t.decisions", touchpoints_topic="t.touchpoints")


@dataclass
class Message:
    value: bytes


class FakeReader:
    """Stands in for TopicReader: the records of each topic, and what was asked."""

    def __init__(self, topics: Mapping[str, Sequence[bytes]]) -> None:
        self.topics = topics
        self.asked: list[tuple[str, int | None]] = []

    def records(self, topic: str, since_ms: int | None = None) -> Iterator[Message]:
        self.asked.append((topic, since_ms))
        return iter([Message(v) for v in self.topics.get(topic, ())])

    def __enter__(self) -> FakeReader:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def decision(
    decision_id: str,
    decided_ms: int,
    chosen: Sequence[str] = ("a",),
    placement: str = "web.home.hero",
    value: float = 25.0,
) -> pb.DecisionRecord:
    out = pb.DecisionRecord(decision_id=decision_id, placement=placement)
    for i, action_id in enumerate(chosen, start=1):
        out.chosen.add(
            action_id=action_id,
            rank=i,
            probability=1.0,
            score=pb.ScoreParts(business_value=value),
        )
    out.decided_at.FromMilliseconds(decided_ms)
    return out


OUTCOMES = {
    "impression": ev.OfferOutcome.OUTCOME_IMPRESSION,
    "click": ev.OfferOutcome.OUTCOME_CLICK,
    "accept": ev.OfferOutcome.OUTCOME_ACCEPT,
    "dismiss": ev.OfferOutcome.OUTCOME_DISMISS,
}


def outcome(
    decision_id: str, action_id: str, what: str, at_ms: int, event_id: str | None = None
) -> ev.TouchpointEvent:
    event = ev.TouchpointEvent(
        event_id=event_id or f"{decision_id}/{action_id}/{what}",
        identities=ev.Identities(customer_id="c1"),
        channel=ev.CHANNEL_WEB,
        touchpoint="web.home.hero",
        source_system="personalisation",
        offer_outcome=ev.OfferOutcome(
            decision_id=decision_id,
            offer_id=action_id,
            outcome=OUTCOMES[what],
            placement="web.home.hero",
        ),
    )
    event.occurred_at.FromMilliseconds(at_ms)
    return event


def page_view(at_ms: int) -> ev.TouchpointEvent:
    event = ev.TouchpointEvent(
        event_id="pv-1",
        identities=ev.Identities(customer_id="c1"),
        page_view=ev.PageView(url="https://shop.example/"),
    )
    event.occurred_at.FromMilliseconds(at_ms)
    return event


def bytes_of(*messages: Any) -> list[bytes]:
    return [m.SerializeToString() for m in messages]


def test_every_outcome_event_carries_the_key_the_reader_looks_for() -> None:
    for what in OUTCOMES:
        assert reader.OFFER_OUTCOME_KEY in outcome("d", "a", what, NOW_MS).SerializeToString()
    assert reader.OFFER_OUTCOME_KEY not in page_view(NOW_MS).SerializeToString()


def test_decisions_are_kept_within_the_time_and_placement_filters_once_each() -> None:
    old = decision("old", NOW_MS - 3 * HOUR_MS)
    kept = decision("kept", NOW_MS - 2 * HOUR_MS)
    late = decision("late", NOW_MS - HOUR_MS)
    elsewhere = decision("elsewhere", NOW_MS - 2 * HOUR_MS, placement="app.home.banner")
    fake = FakeReader({"d": [*bytes_of(old, kept, late, elsewhere, kept), b"\xff garbage"]})
    got = reader.read_decisions(
        fake,  # type: ignore[arg-type]
        "d",
        since_ms=NOW_MS - 150 * MINUTE_MS,
        until_ms=NOW_MS - 90 * MINUTE_MS,
        placement="web.home.hero",
    )
    assert list(got) == ["kept"]
    assert fake.asked == [("d", NOW_MS - 150 * MINUTE_MS)]


def test_outcomes_join_by_decision_and_first_action_each_event_once() -> None:
    decisions = {
        "d1": decision("d1", NOW_MS - HOUR_MS, chosen=("a", "b")),
        "d2": decision("d2", NOW_MS - HOUR_MS, chosen=()),
    }
    at = NOW_MS - HOUR_MS + 1000
    events = bytes_of(
        outcome("d1", "a", "click", at),
        outcome("d1", "a", "click", at),  # the same report twice
        outcome("d1", "b", "accept", at),  # not the first action
        outcome("d2", "a", "accept", at),  # nothing was shown
        outcome("d9", "a", "accept", at),  # not a decision read
        page_view(at),
    )
    fake = FakeReader({"t": events})
    got = reader.read_outcomes(fake, "t", decisions, since_ms=NOW_MS - HOUR_MS)  # type: ignore[arg-type]
    assert dict(got) == {"d1": [(at, "click")]}
    assert fake.asked == [("t", NOW_MS - HOUR_MS - reader.SINCE_MARGIN_MS)]


def test_read_settled_settles_what_it_can_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    long_ago = NOW_MS - 2 * HOUR_MS
    just_now = NOW_MS - MINUTE_MS
    records = bytes_of(
        decision("accepted", long_ago, value=25.0),
        decision("clicked", long_ago),
        decision("nothing", long_ago),
        decision("fresh", just_now),
        decision("fresh-dismissed", just_now),
    )
    events = bytes_of(
        outcome("accepted", "a", "accept", long_ago + 5 * MINUTE_MS),
        outcome("clicked", "a", "click", long_ago + 5 * MINUTE_MS),
        outcome("fresh", "a", "click", just_now + 1000),
        outcome("fresh-dismissed", "a", "dismiss", just_now + 1000),
    )
    fake = FakeReader({KAFKA.decisions_topic: records, KAFKA.touchpoints_topic: events})
    monkeypatch.setattr(reader, "TopicReader", lambda *_: fake)
    got = reader.read_settled(KAFKA, LearningConfig(), now_ms=NOW_MS)
    rewards = {d.record.decision_id: d.reward for d in got.decisions}
    assert rewards == pytest.approx(
        {"accepted": 0.5, "clicked": 0.1, "nothing": 0.0, "fresh-dismissed": 0.0}
    )
    assert got.summary() == {"read": 5, "settled": 4, "unsettled": 1, "outcomes": 4}
    # Outcomes are read from a little before the oldest decision.
    assert fake.asked[1] == (KAFKA.touchpoints_topic, long_ago - reader.SINCE_MARGIN_MS)


def test_an_empty_log_reads_no_outcomes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeReader({})
    monkeypatch.setattr(reader, "TopicReader", lambda *_: fake)
    got = reader.read_settled(KAFKA, LearningConfig())
    assert got.summary() == {"read": 0, "settled": 0, "unsettled": 0, "outcomes": 0}
    assert fake.asked == [(KAFKA.decisions_topic, None)]


def test_an_unreachable_broker_is_unavailable_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(reader.DecisionLogUnavailable, match="does not answer"):
        reader.TopicReader("127.0.0.1:1", connect_timeout_s=1.0)
    assert time.monotonic() - started < 5
