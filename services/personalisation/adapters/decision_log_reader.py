"""Reads the decision log back for `cx nba report` and `cx nba evaluate`: every
`DecisionRecord` on `cx.decisions.v1` and every `OfferOutcome` touchpoint event on
`cx.touchpoints.v1`, joined by decision id and settled with the learning file's rewards
and window (`evaluation.settle`, the learner's semantics).

Reading is bounded: the decisions are read from the beginning (or from `since`), the
touchpoints from a minute before the oldest decision read, each topic up to its end
offsets as they were when reading it started, with a plain consumer (no group, nothing
committed), so a report terminates while the service keeps deciding. A broker that does
not answer ends the read with `DecisionLogUnavailable` within `connect_timeout_s`, or
`stall_timeout_s` once reading stopped making progress.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from services.common.kafka_io import quiet_repeated_kafka_logs
from services.common.settings import KafkaSettings
from services.personalisation.domain.evaluation import Logged, settle
from services.personalisation.domain.learning import LearningConfig

OUTCOME_NAMES = {
    ev.OfferOutcome.OUTCOME_IMPRESSION: "impression",
    ev.OfferOutcome.OUTCOME_CLICK: "click",
    ev.OfferOutcome.OUTCOME_ACCEPT: "accept",
    ev.OfferOutcome.OUTCOME_DISMISS: "dismiss",
}
# TouchpointEvent.offer_outcome is field 37, length-delimited: its key on the wire is the
# varint of 37 << 3 | 2 = 298, the bytes AA 02. An event without them has no outcome and
# is not parsed (most of the touchpoint topic is page views, orders and the like).
OFFER_OUTCOME_KEY = b"\xaa\x02"
# Outcome events are sent after their decision: the touchpoint topic is read from a little
# before `since` (clocks of different hosts).
SINCE_MARGIN_MS = 60_000
CLIENT_ID = "cx-nba-evidence"


class DecisionLogUnavailable(Exception):
    """Kafka did not answer, stopped answering, or lacks a topic."""


@dataclass
class DecisionLogRead:
    """The settled decisions and what reading found."""

    decisions: list[Logged] = field(default_factory=list)
    # Decisions read within the filters.
    read: int = 0
    # Decisions whose window has not ended and that had no accept or dismiss yet.
    unsettled: int = 0
    # Outcome events of the decisions' first actions (each event id once).
    outcomes: int = 0
    # When reading started: decisions are settled as of then.
    now_ms: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "read": self.read,
            "settled": len(self.decisions),
            "unsettled": self.unsettled,
            "outcomes": self.outcomes,
        }


class TopicReader:
    """One plain consumer for bounded reads of whole topics."""

    def __init__(
        self, bootstrap_servers: str, connect_timeout_s: float = 5.0, stall_timeout_s: float = 15.0
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.stall_timeout_s = stall_timeout_s
        timeout_ms = max(int(connect_timeout_s * 1000), 100)
        # Requests (offsets, metadata) get at least five seconds.
        self._timeout_ms = max(timeout_ms, 5_000)
        quiet_repeated_kafka_logs()
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=[s.strip() for s in bootstrap_servers.split(",") if s.strip()],
                client_id=CLIENT_ID,
                group_id=None,
                enable_auto_commit=False,
                allow_auto_create_topics=False,
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=self._timeout_ms,
                reconnect_backoff_max_ms=1_000,
                max_partition_fetch_bytes=8 * 1024 * 1024,
                fetch_max_bytes=64 * 1024 * 1024,
                max_poll_records=10_000,
            )
        except (KafkaError, OSError) as exc:
            raise DecisionLogUnavailable(
                f"Kafka at {bootstrap_servers} does not answer: {exc}"
            ) from exc

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _partitions(self, topic: str) -> list[TopicPartition]:
        try:
            topics = self._consumer.topics()
        except (KafkaError, OSError) as exc:
            raise DecisionLogUnavailable(f"Kafka at {self.bootstrap_servers}: {exc}") from exc
        if topic not in topics:
            raise DecisionLogUnavailable(
                f"no topic {topic} on Kafka at {self.bootstrap_servers} (is the stack up?)"
            )
        ids = self._consumer.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(ids)]

    def records(self, topic: str, since_ms: int | None = None) -> Iterator[Any]:
        """Every record of `topic` (from the first with a timestamp at or after `since_ms`)
        up to the end offsets as they are now, partition by partition in offset order."""
        consumer = self._consumer
        parts = self._partitions(topic)
        try:
            ends: dict[TopicPartition, int] = consumer.end_offsets(parts, self._timeout_ms)
            if since_ms is None:
                starts: dict[TopicPartition, int] = consumer.beginning_offsets(
                    parts, self._timeout_ms
                )
            else:
                found = consumer.offsets_for_times(
                    dict.fromkeys(parts, max(since_ms, 0)), self._timeout_ms
                )
                starts = {tp: ends[tp] if at is None else at.offset for tp, at in found.items()}
        except (KafkaError, OSError) as exc:
            raise DecisionLogUnavailable(f"Kafka at {self.bootstrap_servers}: {exc}") from exc
        left = {tp for tp in parts if starts[tp] < ends[tp]}
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, starts[tp])
        consumer.pause(*(tp for tp in parts if tp not in left))
        progress_at = time.monotonic()
        while left:
            try:
                batches = consumer.poll(timeout_ms=500)
            except (KafkaError, OSError) as exc:
                raise DecisionLogUnavailable(f"reading {topic}: {exc}") from exc
            for tp, batch in batches.items():
                for record in batch:
                    if record.offset < ends[tp]:
                        yield record
            if batches:
                progress_at = time.monotonic()
                for tp in [tp for tp in left if tp in batches]:
                    if consumer.position(tp, timeout_ms=self._timeout_ms) >= ends[tp]:
                        left.discard(tp)
                        consumer.pause(tp)
            if left and time.monotonic() - progress_at > self.stall_timeout_s:
                raise DecisionLogUnavailable(
                    f"reading {topic}: Kafka at {self.bootstrap_servers} sent nothing for "
                    f"{self.stall_timeout_s:g}s with {len(left)} partition(s) unread"
                )
        consumer.unsubscribe()


def read_decisions(
    reader: TopicReader,
    topic: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    placement: str | None = None,
) -> dict[str, pb.DecisionRecord]:
    """The decisions decided in [since, until) at `placement` (all when None), by id (a
    decision logged twice counts once)."""
    out: dict[str, pb.DecisionRecord] = {}
    for message in reader.records(topic, since_ms):
        record = pb.DecisionRecord()
        try:
            record.ParseFromString(message.value)
        except DecodeError:
            continue
        decided_ms = record.decided_at.ToMilliseconds()
        if since_ms is not None and decided_ms < since_ms:
            continue
        if until_ms is not None and decided_ms >= until_ms:
            continue
        if placement is not None and record.placement != placement:
            continue
        out.setdefault(record.decision_id, record)
    return out


def read_outcomes(
    reader: TopicReader,
    topic: str,
    decisions: dict[str, pb.DecisionRecord],
    since_ms: int | None = None,
) -> dict[str, list[tuple[int, str]]]:
    """The outcomes (occurred_at ms, outcome) of each decision's FIRST chosen action, by
    decision id; an event id counts once."""
    firsts = {d: r.chosen[0].action_id for d, r in decisions.items() if r.chosen}
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    seen: set[str] = set()
    start = None if since_ms is None else since_ms - SINCE_MARGIN_MS
    for message in reader.records(topic, start):
        value = message.value
        if not value or OFFER_OUTCOME_KEY not in value:
            continue
        event = ev.TouchpointEvent()
        try:
            event.ParseFromString(value)
        except DecodeError:
            continue
        if event.WhichOneof("payload") != "offer_outcome":
            continue
        outcome = event.offer_outcome
        name = OUTCOME_NAMES.get(outcome.outcome)
        if name is None or firsts.get(outcome.decision_id) != outcome.offer_id:
            continue
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        out[outcome.decision_id].append((event.occurred_at.ToMilliseconds(), name))
    return out


def read_settled(
    kafka: KafkaSettings,
    config: LearningConfig,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    placement: str | None = None,
    now_ms: int | None = None,
    connect_timeout_s: float = 5.0,
    stall_timeout_s: float = 15.0,
) -> DecisionLogRead:
    """The settled decisions of the log, in the order they were decided."""
    result = DecisionLogRead(now_ms=now_ms if now_ms is not None else int(time.time() * 1000))
    with TopicReader(kafka.kafka_bootstrap_servers, connect_timeout_s, stall_timeout_s) as reader:
        decisions = read_decisions(
            reader,
            kafka.decisions_topic,
            since_ms=since_ms,
            until_ms=until_ms,
            placement=placement,
        )
        # Outcomes come after their decision: none is older than the oldest decision.
        oldest = min((r.decided_at.ToMilliseconds() for r in decisions.values()), default=None)
        if oldest is None:
            outcomes: dict[str, list[tuple[int, str]]] = {}
        else:
            outcomes = read_outcomes(reader, kafka.touchpoints_topic, decisions, oldest)
    result.read = len(decisions)
    result.outcomes = sum(len(v) for v in outcomes.values())
    for record in sorted(decisions.values(), key=lambda r: r.decided_at.ToMilliseconds()):
        reward = settle(record, outcomes.get(record.decision_id, ()), config, result.now_ms)
        if reward is None:
            result.unsettled += 1
        else:
            result.decisions.append(Logged(record, reward))
    return result


__all__ = [
    "DecisionLogRead",
    "DecisionLogUnavailable",
    "TopicReader",
    "read_decisions",
    "read_outcomes",
    "read_settled",
]
