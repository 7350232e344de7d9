"""The personalisation learner through its real process, on its own topics, key prefix and
consumer group (tests/support/isolation.py), with a quick learning file (a window of
seconds, small checkpoints) and a short lease, so a test can SIGKILL it and start it
again. Tests write decision records and offer outcomes straight onto the run's topics,
as the Decide server and ReportOutcome do.

A plain module, not a test module (tests/integration/test_learner.py imports it).
Cleanup deletes the run's Redis keys by name (never a SCAN of the shared Redis).
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import UnknownTopicOrPartitionError

from services.common.settings import KafkaSettings
from services.common.topics import platform_topics
from services.personalisation.adapters.learning_store import (
    CheckpointInfo,
    LearningStore,
    RewardEntry,
    current_info,
    model_blob_key,
)
from services.personalisation.domain.learning import DEFAULT_LEARNING_FILE
from tests.support.isolation import IsolatedPipeline
from tests.support.learner import decision as decision
from tests.support.learner import outcome_event as outcome_event
from tests.support.processes import free_port, metric

LEARNER = "learner"


def quick_learning(path: Path, settle_after_s: float, every_decisions: int, every_s: float) -> Path:
    """The shipped learning file with a window of seconds and small checkpoints."""
    text = DEFAULT_LEARNING_FILE.read_text()
    for shipped, quick in (
        ("settle_after_s = 1800.0", f"settle_after_s = {settle_after_s}"),
        ("every_decisions = 200", f"every_decisions = {every_decisions}"),
        ("every_s = 10.0", f"every_s = {every_s}"),
    ):
        assert shipped in text, shipped
        text = text.replace(shipped, quick)
    path.write_text(text)
    return path


def learner_env(
    run: str, prefix: str, learning_file: Path, metrics_port: int, lease_s: float = 2.0
) -> dict[str, str]:
    """The environment of a learner process for an isolated run (on top of the run's own
    `IsolatedPipeline.env`): its keys, learning file, consumer group and dead-letter topic
    (named `{run}-...`, so the run's cleanup deletes them), /metrics port and lease. For a
    learner beside a PersonalisationHarness: `h.env.update(learner_env(h.run, ...))`, then
    `h.start_worker("services.personalisation.learner", "learner")`."""
    return {
        "PERSONALISATION_KEY_PREFIX": prefix,
        "PERSONALISATION_LEARNING_FILE": str(learning_file),
        "PERSONALISATION_LEARNER_CONSUMER_GROUP": f"{run}-learner",
        "PERSONALISATION_LEARNER_METRICS_PORT": str(metrics_port),
        "PERSONALISATION_LEARNER_DLQ_TOPIC": f"{run}-decisions-dlq",
        "PERSONALISATION_LEARNER_LEASE_S": str(lease_s),
    }


class LearnerHarness(IsolatedPipeline):
    def __init__(
        self,
        base: KafkaSettings,
        redis_url: str,
        log_dir: Path,
        *,
        settle_after_s: float = 2.0,
        every_decisions: int = 5,
        every_s: float = 3.0,
        lease_s: float = 2.0,
    ) -> None:
        super().__init__(base, redis_url, log_dir, name="learn")
        self.prefix = self.settings.key_prefix
        self.learning_file = quick_learning(
            log_dir / f"{self.run}-learning.toml", settle_after_s, every_decisions, every_s
        )
        self.metrics_port = free_port()
        self.dlq_topic = f"{self.run}-decisions-dlq"
        self.env.update(
            learner_env(self.run, self.prefix, self.learning_file, self.metrics_port, lease_s)
        )
        self.store = LearningStore(self.redis, self.prefix, settle_after_s)
        self.producer = KafkaProducer(bootstrap_servers=base.kafka_bootstrap_servers, linger_ms=5)
        # Every decision id a test used and every model version seen: cleanup deletes
        # their keys by name.
        self.decision_ids: set[str] = set()
        self.versions: set[str] = set()

    # --- the learner process --------------------------------------------------------------

    def start_learner(self) -> None:
        self.start_worker("services.personalisation.learner", LEARNER)

    def kill_learner(self, sig: int = signal.SIGKILL) -> int | None:
        return self.kill_worker(sig, LEARNER)

    def metric(self, name: str, **labels: str) -> float:
        """A metric of the learner, from its /metrics (0 when not yet counted)."""
        return metric(self.metrics_port, name, **labels)

    # --- writing ------------------------------------------------------------------------------

    def send_decisions(self, records: Sequence[pb.DecisionRecord]) -> None:
        for record in records:
            self.decision_ids.add(record.decision_id)
            self.producer.send(
                self.kafka.decisions_topic,
                key=record.profile_id.encode(),
                value=record.SerializeToString(),
            )
        self.producer.flush(timeout=10)

    def send_outcomes(self, events: Sequence[ev.TouchpointEvent]) -> None:
        for event in events:
            self.producer.send(
                self.kafka.touchpoints_topic,
                key=event.identities.customer_id.encode(),
                value=event.SerializeToString(),
            )
        self.producer.flush(timeout=10)

    def send_raw_decision(self, value: bytes, key: bytes = b"raw") -> None:
        self.producer.send(self.kafka.decisions_topic, key=key, value=value).get(timeout=10)

    # --- reading ------------------------------------------------------------------------------

    def settled(self, decision_ids: Sequence[str] | None = None) -> list[RewardEntry]:
        """Rewards-stream entries (of these decisions), oldest first."""
        entries = self.store.rewards()
        if decision_ids is None:
            return entries
        wanted = set(decision_ids)
        return [e for e in entries if e.fields["decision_id"] in wanted]

    def wait_settled(self, decision_ids: Sequence[str], timeout_s: float = 30) -> list[RewardEntry]:
        def check() -> list[RewardEntry] | None:
            entries = self.settled(decision_ids)
            return (
                entries if {e.fields["decision_id"] for e in entries} >= set(decision_ids) else None
            )

        return self.wait_for(f"{len(decision_ids)} decisions settled", check, timeout_s)

    def current(self) -> CheckpointInfo | None:
        info = current_info(self.redis, self.prefix)
        if info is not None:
            self.versions.add(info.version)
        return info

    def dead_letters(self) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
        """The records on the learner's dead-letter topic (small in tests)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.kafka.kafka_bootstrap_servers, enable_auto_commit=False
        )
        try:
            parts = [
                TopicPartition(self.dlq_topic, p)
                for p in consumer.partitions_for_topic(self.dlq_topic) or ()
            ]
            if not parts:
                return []
            consumer.assign(parts)
            consumer.seek_to_beginning()
            ends = consumer.end_offsets(parts)
            out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
            while any(consumer.position(tp) < ends[tp] for tp in parts):
                for batch in consumer.poll(timeout_ms=500).values():
                    out.extend((r.key, r.value, dict(r.headers)) for r in batch)
            return out
        finally:
            consumer.close()

    # --- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stops the learner, deletes the run's keys by name and its topics (once)."""
        if self._cleaned:
            return
        self._cleaned = True
        self.stop_workers(signal.SIGTERM)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.producer.close()
        self.current()
        raw = self.redis.lrange(self.store.versions_key, 0, -1)
        self.versions |= {v.decode() for v in raw}  # type: ignore[union-attr]
        keys = self.store.shared_keys()
        keys += [k for d in sorted(self.decision_ids) for k in self.store.decision_keys(d)]
        keys += [model_blob_key(self.prefix, v) for v in sorted(self.versions)]
        for i in range(0, len(keys), 1000):
            self.redis.delete(*keys[i : i + 1000])
        admin = KafkaAdminClient(bootstrap_servers=self.kafka.kafka_bootstrap_servers)
        try:
            ours = {s.name for s in platform_topics(self.kafka)}
            ours |= {t for t in admin.list_topics() if t.startswith(f"{self.run}-")}
            admin.delete_topics(sorted(ours))
        except UnknownTopicOrPartitionError:
            pass
        finally:
            admin.close()
        self.redis.close()
