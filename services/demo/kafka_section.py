"""The broker's part of the demo summary: records on the touchpoint topic, before and after."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition

from services.common.settings import kafka_settings
from services.demo.summary import DemoRun, SectionUnavailable, reason


class KafkaTouchpoints:
    """Number of records on the touchpoint topic (sum of end offsets), before and after."""

    title = "Kafka"

    def __init__(self, bootstrap: str | None = None, topic: str | None = None) -> None:
        settings = kafka_settings()
        self.bootstrap = bootstrap or settings.kafka_bootstrap_servers
        self.topic = topic or settings.touchpoints_topic
        self.start: int | None = None
        self.start_error = ""

    def count(self) -> int:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=[s.strip() for s in self.bootstrap.split(",") if s.strip()],
                client_id="cx-demo-summary",
                bootstrap_timeout_ms=3000,
                request_timeout_ms=5000,
            )
        except Exception as exc:
            raise RuntimeError(
                f"Kafka at {self.bootstrap} is not reachable ({reason(exc)})"
            ) from exc
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise SectionUnavailable(f"topic {self.topic} does not exist on {self.bootstrap}")
            offsets = consumer.end_offsets(
                [TopicPartition(self.topic, p) for p in partitions], timeout_ms=5000
            )
            return sum(int(v) for v in offsets.values())
        finally:
            consumer.close()

    def before(self) -> None:
        # A failure here still lets the section show the count after the run.
        try:
            self.start = self.count()
        except Exception as exc:
            self.start_error = reason(exc)

    def lines(self, run: DemoRun) -> list[str]:
        end = self.count()
        if self.start is None:
            before = f"unknown before ({self.start_error or 'not measured'})"
            return [f"records on {self.topic}: {end:,} now, {before}"]
        added = end - self.start
        ours = run.accepted + run.outcome_events
        note = "" if added == ours else " (other producers wrote too)"
        outcomes = (
            f", personalisation wrote {run.outcome_events:,} outcome events"
            if run.outcome_events
            else ""
        )
        return [
            f"records on {self.topic}: {self.start:,} before, {end:,} after (+{added:,})",
            f"ingestion accepted {run.accepted:,}{outcomes}{note}",
        ]
