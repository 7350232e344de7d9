"""Records that are not TouchpointEvents go to the dead-letter topic with their reason,
the way the profile worker sends them (`ProfilePipeline.send_dead_letters`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from services.common import dead_letter as dl
from services.common.batches import OutRecord
from services.common.kafka_admin import ensure_topics
from services.common.settings import KafkaSettings
from services.common.telemetry import header_value
from services.common.topics import platform_topics
from services.profile.pipeline import ProfilePipeline
from tests.factories import page_view
from tests.integration.conftest import end_offsets, read_record
from tests.unit.fake_stores import StoreFailingOn


class KafkaSender:
    """A RecordSender on a kafka-python producer: returns once every record is acked."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer

    async def send(self, records: Sequence[OutRecord]) -> None:
        futures = [
            self.producer.send(
                r.topic, key=r.key, value=r.value, partition=r.partition, headers=r.headers
            )
            for r in records
        ]
        for future in futures:
            future.get(timeout=10)


def test_platform_topics_exist_and_creation_is_idempotent(kafka: KafkaSettings) -> None:
    assert ensure_topics(kafka.kafka_bootstrap_servers, platform_topics(kafka)) == []
    for topic in (kafka.touchpoints_topic, kafka.touchpoints_dlq_topic):
        assert (
            len(end_offsets(kafka.kafka_bootstrap_servers, topic)) == kafka.kafka_topic_partitions
        )


async def test_foreign_records_are_dead_lettered_and_valid_ones_pass(kafka: KafkaSettings) -> None:
    bootstrap = kafka.kafka_bootstrap_servers
    partition = 5
    marker = f"foreign-{uuid.uuid4()}".encode()
    valid = page_view()
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    sent = [
        raw.send(
            kafka.touchpoints_topic,
            key=marker,
            value=b'{"not": "protobuf"}',
            partition=partition,
            headers=[("origin", b"legacy-crm")],
        ).get(timeout=10),
        raw.send(
            kafka.touchpoints_topic,
            key=marker,
            value=valid.SerializeToString(),
            partition=partition,
        ).get(timeout=10),
    ]
    raw.close()

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(kafka.touchpoints_topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, sent[0].offset)
    records: list[ConsumerRecord] = []
    while len(records) < 2:
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    consumer.close()

    dlq_before = end_offsets(bootstrap, kafka.touchpoints_dlq_topic)
    pipeline = ProfilePipeline(
        StoreFailingOn(poison=set()),  # type: ignore[arg-type]
        [],
        dlq_topic=kafka.touchpoints_dlq_topic,
        consumer="tests",
    )
    outcome = await pipeline.resolve(
        [
            dl.SourceRecord(
                r.topic, r.partition, r.offset, r.key, r.value, list(r.headers), r.timestamp
            )
            for r in records[:2]
        ]
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await pipeline.send_dead_letters(outcome.dead_letters, KafkaSender(producer))
    producer.close()

    assert [f.event.event_id for f in outcome.forwards] == [valid.event_id]
    assert len(outcome.dead_letters) == 1
    dlq_after = end_offsets(bootstrap, kafka.touchpoints_dlq_topic)
    grown = [p for p in dlq_after if dlq_after[p] > dlq_before.get(p, 0)]
    assert len(grown) == 1
    letter = read_record(bootstrap, kafka.touchpoints_dlq_topic, grown[0], dlq_before[grown[0]])
    assert letter.key == marker
    assert letter.value == b'{"not": "protobuf"}'
    assert "not a protobuf TouchpointEvent" in (
        header_value(letter.headers, dl.REASON_HEADER) or ""
    )
    assert header_value(letter.headers, dl.SOURCE_OFFSET_HEADER) == str(sent[0].offset)
    assert header_value(letter.headers, "origin") == "legacy-crm"
