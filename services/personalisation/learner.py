"""The learner (Faust): `python -m services.personalisation.learner`.

It joins decisions with their outcomes, settles each decision's reward once, and trains
the contextual bandit the Decide servers sample from. In its own consumer group
(`PERSONALISATION_LEARNER_CONSUMER_GROUP`, cx-personalisation-learner):
- `decisions` reads `cx.decisions.v1`. A decision made from a profile (basis PROFILE) that
  showed at least one action, whatever its group and policy, is stored as pending (its
  training example but for the reward: `learning.context_features` of
  `decision_records.decision_fields`, the logged arms and the first chosen action with
  its probability and business value), due when `window.settle_after_s` has passed;
  outcomes that came before it are joined;
- `outcomes` reads `cx.touchpoints.v1` and keeps the `offer_outcome` events of each
  decision's first chosen action (outcomes of later slots are not learned from). An
  accept or a dismiss settles the decision at once; an outcome for a decision not read
  yet is kept until it comes (`LearningStore.early_ttl_ms`);
- a timer settles the decisions whose window passed with the best outcome seen, or
  `rewards.no_outcome` without one (no click is a signal). It settles only up to what
  the outcome stream has been read to (when it is behind: a backlog, a replay), so a
  late-read accept is not settled as "no outcome";
- the trainer (a thread of its own: it does not wait for Kafka) reads settled examples
  from the rewards stream after the checkpoint's cursor, trains `learning.Model` and
  writes a checkpoint every `checkpoint.every_decisions` examples or `checkpoint.every_s`
  seconds with at least one (and when the learner stops). Only the learner holding the
  lease (`nba:learner:lease`, SET NX PX, renewed) trains. It starts from the current
  checkpoint (model, cursor, trained count), so a restarted learner loses nothing beyond
  its last checkpoint (the examples after its cursor are trained again from the stream)
  and never trains an example twice into one model lineage. Settling is the same in
  every learner process (idempotent scripts).

Settling is once per decision (services/personalisation/adapters/learning_store.py has
the keys and why), and as in every worker of the platform (services/common/
stream_worker.py, batches.py) a batch's offsets are committed after its effects are in
Redis; an infrastructure failure is retried in place; a decision record that cannot be
read goes to `PERSONALISATION_LEARNER_DLQ_TOPIC` with the reason (original bytes and
headers, `cx-dlq-*` headers); a touchpoint that is not a valid event is skipped and
counted (the profile worker dead-letters that topic's invalid records), and a record
whose processing fails on its own is dead-lettered to its topic's dead-letter topic.

Metrics (`PERSONALISATION_LEARNER_METRICS_PORT`): records by topic and result, decisions
pending and settled by reason, examples trained, whether this learner trains (holds the
lease), the current checkpoint's sequence, version, lineage count and age. The learner
beats into `nba:learner:workers` (services/common/heartbeat.py) for the server's health.

Nothing is built at import: `create_app(settings, ...)` builds the app.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import faust
import redis
import redis.asyncio as aioredis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from google.protobuf.message import DecodeError
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Info

from services.common.batches import (
    failure_reason,
    is_infrastructure_failure,
    process_isolating,
    retry_infrastructure,
    send_dead_letters,
)
from services.common.dead_letter import (
    DeadLetter,
    InvalidRecord,
    SourceRecord,
    dead_letter,
    decode_touchpoint,
    record_time,
)
from services.common.gc_tuning import freeze_startup_heap
from services.common.heartbeat import WORKER_NAME, beat_from
from services.common.kafka_admin import ensure_topics
from services.common.process import start_process
from services.common.settings import (
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    kafka_settings,
    process_settings,
    redis_settings,
)
from services.common.stream_worker import FaustSender, batch_span, each_batch, faust_app, raw_topic
from services.common.topics import TOUCHPOINT_RETENTION_MS, TopicSpec
from services.common.validation import DEFAULT_LIMITS
from services.personalisation import decision_records
from services.personalisation.adapters.learning_store import (
    NOT_TRAINED,
    TIMEOUT,
    CheckpointInfo,
    Due,
    LearningStore,
    Outcome,
    PendingDecision,
    RewardEntry,
    Settlement,
    current_info,
    load_current,
)
from services.personalisation.domain.learning import (
    FINAL_OUTCOMES,
    LearningConfig,
    Model,
    context_features,
    load_learning,
    model_version,
)
from services.personalisation.settings import PersonalisationSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("cx.personalisation.learner")

# Records a batch takes at most, and how long it waits to fill.
BATCH_SIZE = 500
BATCH_WITHIN_S = 0.05
# Due decisions settled per round trip, and rounds per timer tick at most.
SETTLE_BATCH = 500
SETTLE_ROUNDS = 20
# Settled examples the trainer reads at once; it sleeps this long when it has caught up.
TRAIN_BATCH = 1000
TRAIN_IDLE_S = 0.2
# The touchpoint stream counts as caught up after this long without a batch.
OUTCOMES_IDLE_S = 2.0
# A final outcome whose settlement raced with another outcome is settled again this often.
SETTLE_ATTEMPTS = 3

RECORDS = Counter(
    "cx_personalisation_learner_records",
    "Records read by the learner, by topic and result: decisions (stored, duplicate, "
    "settled, no_profile, nothing_shown, dead_lettered), touchpoints (ignored: not an "
    "offer outcome, invalid, recorded, early, other_action, settled, dead_lettered)",
    ["topic", "result"],
)
SETTLED = Counter(
    "cx_personalisation_learner_settled",
    "Decisions this learner settled, by reason (accept, dismiss, timeout)",
    ["reason"],
)
TRAINED = Counter("cx_personalisation_learner_trained", "Examples this learner trained")
BAD_EXAMPLES = Counter(
    "cx_personalisation_learner_bad_examples", "Rewards-stream entries skipped: not an example"
)
PENDING = Gauge("cx_personalisation_learner_pending", "Decisions waiting for their outcomes")
LEADER = Gauge(
    "cx_personalisation_learner_leader",
    "1 while this learner holds the training lease (trains and checkpoints), else 0",
)
CHECKPOINT_SEQUENCE = Gauge(
    "cx_personalisation_learner_checkpoint_sequence", "Sequence of the current model checkpoint"
)
CHECKPOINT_TRAINED = Gauge(
    "cx_personalisation_learner_checkpoint_trained",
    "Examples trained into the current checkpoint's lineage",
)
CHECKPOINT_VERSION = Info(
    "cx_personalisation_learner_checkpoint", "The current model checkpoint's version"
)
CHECKPOINTS = Counter(
    "cx_personalisation_learner_checkpoints",
    "Checkpoints this learner tried to write, by result (ok, not_leader, lineage)",
    ["result"],
)
_checkpoint_created_ms = 0.0
CHECKPOINT_AGE = Gauge(
    "cx_personalisation_learner_checkpoint_age_seconds",
    "Seconds since the current model checkpoint was written (0: none yet)",
)
CHECKPOINT_AGE.set_function(
    lambda: max(time.time() - _checkpoint_created_ms / 1000, 0.0) if _checkpoint_created_ms else 0.0
)


def _show_checkpoint(info: CheckpointInfo | None) -> None:
    global _checkpoint_created_ms
    if info is None:
        return
    _checkpoint_created_ms = float(info.created_ms)
    CHECKPOINT_SEQUENCE.set(info.sequence)
    CHECKPOINT_TRAINED.set(info.trained)
    CHECKPOINT_VERSION.info({"version": info.version})


def now_ms() -> int:
    return int(time.time() * 1000)


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def reason_of(outcomes: frozenset[str]) -> str:
    """Why a decision with these outcomes settles: its final outcome, else the window."""
    if "accept" in outcomes:
        return "accept"
    if "dismiss" in outcomes:
        return "dismiss"
    return TIMEOUT


def pending_of(record: pb.DecisionRecord, record_ms: int | None) -> PendingDecision | None:
    """A decision's training example but for its reward, or None when it is not learned
    from (no profile, nothing shown)."""
    if record.basis != pb.BASIS_PROFILE:
        return None
    first = decision_records.first_choice(record)
    if first is None:
        return None
    index, probability, value = first
    arms = decision_records.arms(record)
    # Records logged before probabilities were: a deterministic choice.
    if not probability > 0 or not math.isfinite(probability):
        probability = 1.0
    decided_ms = record.decided_at.ToMilliseconds() or record_ms or now_ms()
    return PendingDecision(
        decision_id=record.decision_id,
        shared=context_features(decision_records.decision_fields(record)),
        arms=arms,
        chosen=index,
        probability=min(probability, 1.0),
        business_value=value if math.isfinite(value) else 0.0,
        decided_ms=decided_ms,
        group=_enum_name(pb.Group.Name(record.group), "GROUP_"),
        placement=record.placement,
        policy=_enum_name(pb.DecisionPolicy.Name(record.policy), "DECISION_POLICY_"),
        model_version=record.model_version,
    )


def decode_decision(record: SourceRecord, clock_ms: int | None = None) -> pb.DecisionRecord:
    """The record's DecisionRecord; InvalidRecord when it is not one, or when its time is
    out of range (`clock_ms`: now, by default the wall clock)."""
    if record.value is None:
        raise InvalidRecord("record has no value (tombstone)", "value")
    decision = pb.DecisionRecord()
    try:
        decision.ParseFromString(record.value)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise InvalidRecord(f"not a protobuf DecisionRecord: {exc}", "value") from exc
    if not decision.decision_id:
        raise InvalidRecord("is required", "decision_id")
    if decision.HasField("decided_at"):
        # The same bounds as an event's time (services/common/validation.py): a decision
        # dated 1970 would train as a timed-out one, one dated ahead would never settle.
        decided_ms = decision.decided_at.ToMilliseconds()
        limits = DEFAULT_LIMITS
        if decided_ms > (now_ms() if clock_ms is None else clock_ms) + _ms(limits.max_future_skew):
            raise InvalidRecord(
                f"is more than {limits.max_future_skew} in the future", "decided_at"
            )
        if decided_ms < limits.earliest_occurred_at.timestamp() * 1000:
            raise InvalidRecord(f"is before {limits.earliest_occurred_at.date()}", "decided_at")
    return decision


def _ms(span: timedelta) -> int:
    return int(span.total_seconds() * 1000)


OUTCOME_NAMES = {
    ev.OfferOutcome.OUTCOME_IMPRESSION: "impression",
    ev.OfferOutcome.OUTCOME_CLICK: "click",
    ev.OfferOutcome.OUTCOME_ACCEPT: "accept",
    ev.OfferOutcome.OUTCOME_DISMISS: "dismiss",
}


@dataclass
class _Touchpoints:
    """How far the touchpoint stream has been read (what the timer may settle up to)."""

    # The newest record time read, and when the last batch came (None: not yet asked).
    seen_ms: int = 0
    batch_at: float | None = None


class LearnerPipeline:
    """The learner's batch and timer steps, synchronous (run in worker threads)."""

    def __init__(
        self,
        store: LearningStore,
        config: LearningConfig,
        *,
        dlq_topic: str,
        touchpoints_dlq_topic: str,
        consumer: str,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.config = config
        self.dlq_topic = dlq_topic
        self.touchpoints_dlq_topic = touchpoints_dlq_topic
        self.consumer = consumer
        self.clock = clock
        self._touchpoints = _Touchpoints()
        self._lock = threading.Lock()

    # --- decisions -----------------------------------------------------------------------

    def decisions(self, records: Sequence[SourceRecord]) -> list[DeadLetter]:
        """Stores the learnable decisions of a batch; the dead letters of unreadable ones."""
        letters: list[DeadLetter] = []
        pending: list[PendingDecision] = []
        no_profile = nothing_shown = 0
        for record in records:
            try:
                decision = decode_decision(record)
            except InvalidRecord as error:
                letters.append(self._letter(record, error, self.dlq_topic, "decisions"))
                continue
            item = pending_of(decision, record.timestamp_ms)
            if item is not None:
                pending.append(item)
            elif decision.basis != pb.BASIS_PROFILE:
                no_profile += 1
            else:
                nothing_shown += 1
        if no_profile:
            RECORDS.labels("decisions", "no_profile").inc(no_profile)
        if nothing_shown:
            RECORDS.labels("decisions", "nothing_shown").inc(nothing_shown)
        results = self.store.store(pending, self.clock())
        _count_records("decisions", (r.status for r in results))
        self._settle_final(
            [
                Due(item.decision_id, result.outcomes, item.business_value)
                for item, result in zip(pending, results, strict=True)
                if result.outcomes & FINAL_OUTCOMES
            ]
        )
        return letters

    def dead_letter_decision(self, record: SourceRecord, exc: Exception) -> DeadLetter:
        return self._letter(record, InvalidRecord(failure_reason(exc)), self.dlq_topic, "decisions")

    # --- outcomes ------------------------------------------------------------------------

    def outcomes(self, records: Sequence[SourceRecord]) -> None:
        """Records the offer outcomes of a batch of touchpoints; settles on accept/dismiss."""
        outcomes: list[Outcome] = []
        ignored = invalid = 0
        newest = 0
        for record in records:
            newest = max(newest, record.timestamp_ms or 0)
            outcome = self._outcome(record)
            if outcome is None:
                ignored += 1
            elif isinstance(outcome, InvalidRecord):
                invalid += 1
                log.debug("invalid outcome %s/%d@%d: %s", *_where(record), outcome)
            else:
                outcomes.append(outcome)
        if ignored:
            RECORDS.labels("touchpoints", "ignored").inc(ignored)
        if invalid:
            RECORDS.labels("touchpoints", "invalid").inc(invalid)
        results = self.store.record(outcomes)
        _count_records("touchpoints", (r.status for r in results))
        self._settle_final(
            [
                Due(outcome.decision_id, result.outcomes, result.business_value)
                for outcome, result in zip(outcomes, results, strict=True)
                if result.status == "recorded" and outcome.outcome in FINAL_OUTCOMES
            ]
        )
        with self._lock:
            self._touchpoints.seen_ms = max(self._touchpoints.seen_ms, newest)
            self._touchpoints.batch_at = time.monotonic()

    def _outcome(self, record: SourceRecord) -> Outcome | InvalidRecord | None:
        if record.value is None:
            return None
        event = ev.TouchpointEvent()
        try:
            event.ParseFromString(record.value)
        except (DecodeError, ValueError, RecursionError):
            return InvalidRecord("not a protobuf TouchpointEvent", "value")
        if event.WhichOneof("payload") != "offer_outcome":
            return None
        try:
            event = decode_touchpoint(
                record.value, record.headers, record_time=record_time(record.timestamp_ms)
            )
        except InvalidRecord as error:
            return error
        outcome = event.offer_outcome
        name = OUTCOME_NAMES.get(outcome.outcome)
        if name is None or not outcome.decision_id or not outcome.offer_id:
            return InvalidRecord("offer_outcome needs decision_id, offer_id and outcome")
        return Outcome(
            outcome.decision_id, outcome.offer_id, name, event.occurred_at.ToMilliseconds()
        )

    def dead_letter_touchpoint(self, record: SourceRecord, exc: Exception) -> DeadLetter:
        error = InvalidRecord(failure_reason(exc))
        return self._letter(record, error, self.touchpoints_dlq_topic, "touchpoints")

    # --- settling ------------------------------------------------------------------------

    def _settlements(self, due: Sequence[Due]) -> list[Settlement]:
        """Each decision's reason and reward, from the outcomes it has now."""
        rewards = self.config.rewards
        return [
            Settlement(
                d.decision_id,
                reason_of(d.outcomes),
                rewards.settle(d.outcomes, d.business_value),
                d.outcomes,
            )
            for d in due
        ]

    def _settle_final(self, finals: Sequence[Due]) -> None:
        """Settles decisions that have a final outcome now; one whose outcomes changed
        meanwhile is read again and settled with all of them."""
        todo = list(finals)
        for _ in range(SETTLE_ATTEMPTS):
            if not todo:
                return
            settlements = self._settlements(todo)
            results = self.store.settle(settlements, self.clock())
            changed = [
                s.decision_id for s, r in zip(settlements, results, strict=True) if r == "changed"
            ]
            self._count(settlements, results)
            todo = self.store.pending(changed)
        if todo:
            # Left for the timer (still due at its window's end, with every outcome).
            log.warning(
                "%d decisions kept changing while settled; the timer settles them", len(todo)
            )

    def horizon_ms(self, now: int) -> int:
        """What the timer may settle up to: how far the touchpoint stream has been read
        (its newest record's time), or now once no batch came for OUTCOMES_IDLE_S (caught
        up). Nothing before the first batch or that idle time: a learner that starts
        behind (a backlog, a new consumer group) reads outcomes before it times out."""
        with self._lock:
            tp = self._touchpoints
            if tp.batch_at is None:
                tp.batch_at = time.monotonic()
            idle = time.monotonic() - tp.batch_at > OUTCOMES_IDLE_S
            return now if idle else min(now, tp.seen_ms)

    def settle_due(self) -> int:
        """Settles the decisions whose window has passed; returns how many."""
        settled = 0
        for _ in range(SETTLE_ROUNDS):
            now = self.clock()
            due = self.store.due(self.horizon_ms(now), SETTLE_BATCH)
            if not due:
                break
            settlements = self._settlements(due)
            results = self.store.settle(settlements, now)
            settled += self._count(settlements, results)
            if len(due) < SETTLE_BATCH or "changed" in results:
                break
        PENDING.set(self.store.pending_count())
        return settled

    def _count(self, settlements: Sequence[Settlement], results: Sequence[str]) -> int:
        settled = 0
        for s, result in zip(settlements, results, strict=True):
            if result == "settled":
                SETTLED.labels(s.reason).inc()
                settled += 1
        return settled

    def _letter(
        self, record: SourceRecord, error: InvalidRecord, topic: str, source: str
    ) -> DeadLetter:
        RECORDS.labels(source, "dead_lettered").inc()
        log.warning("record %s/%d@%d dead-lettered: %s", *_where(record), error)
        return dead_letter(record, error, dlq_topic=topic, consumer=self.consumer)


def _count_records(topic: str, results: Iterable[str]) -> None:
    """Counts a batch's records by result (one metric update per result, not per record)."""
    for result, count in collections.Counter(results).items():
        RECORDS.labels(topic, result).inc(count)


def _where(record: SourceRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


# --- training ------------------------------------------------------------------------------


class Trainer:
    """Trains the model from the rewards stream while this process holds the lease.

    `step` (called in a loop, from one thread at a time) takes or renews the lease, on
    taking it loads the current checkpoint, trains what the stream has after the cursor
    and writes a checkpoint when one is due. Losing the lease (or finding `current`
    moved on) drops the model: the next lease starts again from the checkpoint."""

    def __init__(
        self,
        store: LearningStore,
        config: LearningConfig,
        lease_s: float,
        name: str = WORKER_NAME,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.config = config
        self.lease_ms = max(int(lease_s * 1000), 1)
        self.renew_every_s = lease_s / 3
        self.token = f"{name}#{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.model: Model | None = None
        self.sequence = 0
        self.cursor = NOT_TRAINED
        self.trained = 0
        # Examples and entries read since the last checkpoint.
        self.since = 0
        self.dirty = False
        self._checkpointed_at = time.monotonic()
        self._renew_at = 0.0
        self._lock = threading.Lock()

    @property
    def leader(self) -> bool:
        return self.model is not None

    def step(self) -> int:
        """One round: returns the entries read (0 when idle or not the leader)."""
        with self._lock:
            now = time.monotonic()
            if now >= self._renew_at:
                held = self.store.hold_lease(self.token, self.lease_ms)
                self._renew_at = now + self.renew_every_s
                if held and self.model is None:
                    self._lead()
                elif not held and self.model is not None:
                    self._follow("the lease is another learner's")
            if self.model is None:
                return 0
            entries = self.store.read_rewards(self.cursor, TRAIN_BATCH)
            for entry in entries:
                self._learn(self.model, entry)
            if self._checkpoint_due():
                self._checkpoint()
            return len(entries)

    def _learn(self, model: Model, entry: RewardEntry) -> None:
        try:
            model.learn(entry.example())
        except Exception as exc:  # a bad entry must not stop training (VW raises plain errors)
            BAD_EXAMPLES.inc()
            log.error("rewards entry %s skipped: %s: %s", entry.entry_id, type(exc).__name__, exc)
        else:
            self.trained += 1
            self.since += 1
            TRAINED.inc()
        self.cursor = entry.entry_id
        self.dirty = True

    def _checkpoint_due(self) -> bool:
        if not self.dirty:
            return False
        every = self.config.checkpoint
        waited = time.monotonic() - self._checkpointed_at
        return self.since >= every.every_decisions or waited >= every.every_s

    def _lead(self) -> None:
        checkpoint = load_current(self.store.client, self.store.prefix)
        vw_args = self.config.model.vw_args
        if checkpoint is None:
            self.model = Model(vw_args)
            self.sequence, self.cursor, self.trained = 0, NOT_TRAINED, 0
            log.info("learner %s trains: no checkpoint yet, from the start", self.token)
        else:
            info = checkpoint.info
            self.model = Model(vw_args, info.version, checkpoint.model_bytes)
            self.sequence, self.cursor, self.trained = info.sequence, info.cursor, info.trained
            _show_checkpoint(info)
            log.info(
                "learner %s trains from checkpoint %s (sequence %d, %d examples, cursor %s)",
                self.token,
                info.version,
                info.sequence,
                info.trained,
                info.cursor,
            )
        self.since, self.dirty = 0, False
        self._checkpointed_at = time.monotonic()
        LEADER.set(1)

    def _follow(self, why: str) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None
        LEADER.set(0)
        log.warning("learner %s stopped training: %s", self.token, why)

    def _checkpoint(self) -> None:
        assert self.model is not None
        model_bytes = self.model.to_bytes()
        sequence = self.sequence + 1
        info = CheckpointInfo(
            version=model_version(sequence, model_bytes),
            sequence=sequence,
            cursor=self.cursor,
            trained=self.trained,
            created_ms=self.clock(),
        )
        result = self.store.write_checkpoint(
            self.token, info, model_bytes, self.config.checkpoint.keep_versions
        )
        CHECKPOINTS.labels(result).inc()
        if result == "ok":
            self.sequence = sequence
            self.model.version = info.version
            self.since, self.dirty = 0, False
            self._checkpointed_at = time.monotonic()
            _show_checkpoint(info)
            log.info(
                "checkpoint %s: %d examples, cursor %s", info.version, info.trained, info.cursor
            )
        elif result == "not_leader":
            self._follow("the lease expired before the checkpoint")
        else:
            # Another learner checkpointed since this model was loaded: start again from
            # the current checkpoint (what this one trained since is in the stream).
            self._follow("the current checkpoint is not the one this model grew from")
            self._renew_at = 0.0

    def stop(self) -> None:
        """Writes what was trained since the last checkpoint and gives up the lease."""
        with self._lock:
            if self.model is None:
                return
            try:
                if self.dirty:
                    self._checkpoint()
            finally:
                self.store.release_lease(self.token)
                self._follow("stopping")


class TrainingThread(threading.Thread):
    """Runs `Trainer.step` until stopped; a failed step is logged and tried again."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(name="trainer", daemon=True)
        self.trainer = trainer
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                read = self.trainer.step()
            except Exception as exc:
                level = logging.WARNING if is_infrastructure_failure(exc) else logging.ERROR
                log.log(level, "training failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
                self._stopping.wait(1.0)
                continue
            if read < TRAIN_BATCH:
                self._stopping.wait(TRAIN_IDLE_S)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the loop, then writes a last checkpoint and gives up the lease."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout_s)
        try:
            self.trainer.stop()
        except Exception as exc:
            log.warning("last checkpoint not written: %s: %s", type(exc).__name__, exc)


# --- the Faust app -------------------------------------------------------------------------


def create_app(
    settings: PersonalisationSettings,
    kafka: KafkaSettings,
    redis_config: RedisSettings,
    process: ProcessSettings,
) -> faust.App:
    """The composition root: the Faust app, its topics, agents, timers and trainer."""
    config = load_learning(settings.learning_file)
    group = settings.learner_consumer_group
    app = faust_app(group, kafka, process.cx_var_dir / "faust")
    decisions_topic = raw_topic(app, kafka.decisions_topic)
    touchpoints_topic = raw_topic(app, kafka.touchpoints_topic)
    sender = FaustSender(
        [raw_topic(app, settings.learner_dlq_topic), raw_topic(app, kafka.touchpoints_dlq_topic)]
    )

    client = redis.Redis.from_url(redis_config.redis_url)
    store = LearningStore(client, settings.key_prefix, config.window.settle_after_s)
    pipeline = LearnerPipeline(
        store,
        config,
        dlq_topic=settings.learner_dlq_topic,
        touchpoints_dlq_topic=kafka.touchpoints_dlq_topic,
        consumer=group,
    )
    trainer = Trainer(store, config, settings.learner_lease_s)
    LEADER.set(0)
    log.info(
        "learner: window %gs, checkpoint every %d examples or %gs, lease %gs, model %r",
        config.window.settle_after_s,
        config.checkpoint.every_decisions,
        config.checkpoint.every_s,
        settings.learner_lease_s,
        config.model.vw_args,
    )

    async def run_decisions(records: Sequence[SourceRecord]) -> None:
        letters = await retry_infrastructure(
            "learner decisions", lambda: asyncio.to_thread(pipeline.decisions, records)
        )
        await send_dead_letters(letters, sender)

    async def poison_decision(record: SourceRecord, exc: Exception) -> None:
        await send_dead_letters([pipeline.dead_letter_decision(record, exc)], sender)

    async def decisions_batch(records: list[SourceRecord]) -> None:
        with batch_span(tracer, "learner.decisions", records):
            await process_isolating(records, run_decisions, poison_decision, what="decisions")

    async def run_outcomes(records: Sequence[SourceRecord]) -> None:
        await retry_infrastructure(
            "learner outcomes", lambda: asyncio.to_thread(pipeline.outcomes, records)
        )

    async def poison_outcome(record: SourceRecord, exc: Exception) -> None:
        await send_dead_letters([pipeline.dead_letter_touchpoint(record, exc)], sender)

    async def outcomes_batch(records: list[SourceRecord]) -> None:
        with batch_span(tracer, "learner.outcomes", records):
            await process_isolating(records, run_outcomes, poison_outcome, what="outcomes")

    @app.agent(decisions_topic, name="decisions")
    async def decisions(stream: Any) -> None:
        await each_batch(stream, BATCH_SIZE, BATCH_WITHIN_S, decisions_batch)

    @app.agent(touchpoints_topic, name="outcomes")
    async def outcomes(stream: Any) -> None:
        await each_batch(stream, BATCH_SIZE, BATCH_WITHIN_S, outcomes_batch)

    settle_every_s = min(max(config.window.settle_after_s / 10, 0.1), 1.0)

    @app.timer(interval=settle_every_s)  # type: ignore[untyped-decorator]
    async def settle() -> None:
        """Decisions whose window passed: the best outcome seen, or no outcome."""
        try:
            await asyncio.to_thread(pipeline.settle_due)
            _show_checkpoint(await asyncio.to_thread(current_info, client, settings.key_prefix))
        except Exception as exc:
            # The next tick tries again: nothing due is lost while Redis is away.
            level = logging.WARNING if is_infrastructure_failure(exc) else logging.ERROR
            log.log(level, "settling failed: %s: %s", type(exc).__name__, exc, exc_info=exc)

    # The trainer does not wait for Kafka: it runs in a thread of its own from the
    # worker's start (Faust starts tasks and timers only once partitions are assigned,
    # which after a killed learner takes the group's session timeout).
    training = TrainingThread(trainer)

    @app.on_worker_init.connect
    def start_training(sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        if training.ident is None:
            training.start()

    @app.on_before_shutdown.connect
    async def stop_training(sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        """A stopped learner writes what it trained and frees the lease for the next."""
        await asyncio.to_thread(training.stop)

    # Tells the personalisation server this learner is alive (its health can report it).
    beat_from(app, aioredis.Redis.from_url(redis_config.redis_url), store.workers_key)

    @app.task  # type: ignore[untyped-decorator]
    async def freeze_heap_once_started() -> None:
        freeze_startup_heap()

    return app


def ensure_dlq_topic(settings: PersonalisationSettings, kafka: KafkaSettings) -> None:
    """The decision records' dead-letter topic (the broker creates no topics itself)."""
    spec = TopicSpec(
        settings.learner_dlq_topic,
        kafka.kafka_topic_partitions,
        kafka.kafka_replication_factor,
        {"retention.ms": str(TOUCHPOINT_RETENTION_MS)},
    )
    try:
        ensure_topics(kafka.kafka_bootstrap_servers, [spec])
    except Exception as exc:  # Kafka not up yet: dead letters wait for the topic
        log.warning("could not make sure %s exists: %s: %s", spec.name, type(exc).__name__, exc)


def main() -> None:
    settings, process, kafka = PersonalisationSettings(), process_settings(), kafka_settings()
    start_process("personalisation-learner", settings.learner_metrics_port, process)
    ensure_dlq_topic(settings, kafka)
    app = create_app(settings, kafka, redis_settings(), process)
    if len(sys.argv) == 1:
        sys.argv += ["worker", "--without-web", "--loglevel", process.log_level.lower()]
    app.main()


if __name__ == "__main__":
    main()
