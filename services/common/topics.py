"""The Kafka topics the platform owns, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.settings import KafkaSettings, kafka_settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)


# Seven days: the profile service deduplicates event ids for at least this long.
TOUCHPOINT_RETENTION_MS = 7 * 24 * 3600 * 1000


def platform_topics(settings: KafkaSettings | None = None) -> list[TopicSpec]:
    s = settings or kafka_settings()
    retention = {"retention.ms": str(TOUCHPOINT_RETENTION_MS)}
    names = (
        s.touchpoints_topic,
        s.touchpoints_dlq_topic,
        s.profile_events_topic,
        s.profile_changes_topic,
        s.decisions_topic,
        s.experience_incidents_topic,
    )
    return [
        TopicSpec(name, s.kafka_topic_partitions, s.kafka_replication_factor, retention)
        for name in names
    ]
