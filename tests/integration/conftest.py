"""Fixtures for tests against the real local stack (Kafka, Redis) started by `make up`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.kafka_admin import wait_for_broker
from services.common.settings import KafkaSettings, kafka_settings, redis_settings
from services.common.telemetry import setup_tracing
from services.common.touchpoint_publisher import TouchpointPublisher
from services.ingest.server import build_server
from services.profile.adapters.store import ProfileStore
from services.profile.settings import Guardrails, ProfileSettings
from tests.integration.faults import PrivateStack
from tests.integration.profile_harness import ProfileHarness


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    settings = kafka_settings()
    try:
        wait_for_broker(settings.kafka_bootstrap_servers, timeout_s=15)
    except TimeoutError as exc:
        pytest.fail(f"Kafka is not reachable ({exc}); start the stack with `make up`")
    return settings


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_tracing("cx-tests", extra_processors=[SimpleSpanProcessor(exporter)])
    return exporter


@pytest.fixture(scope="session")
def ingest_address(kafka: KafkaSettings, spans: InMemorySpanExporter) -> Iterator[str]:
    """An in-process ingest server on a free port, writing to the real broker."""
    publisher = TouchpointPublisher.connect(kafka.kafka_bootstrap_servers, kafka.touchpoints_topic)
    server = build_server(publisher, "127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{server.port}"
    server.stop(grace_s=1)
    publisher.close()


@pytest.fixture
def ingest_channel(ingest_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(ingest_address) as channel:
        yield channel


def read_record(bootstrap: str, topic: str, partition: int, offset: int) -> ConsumerRecord:
    """The record at one position, read with a plain consumer (no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for _ in range(20):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.offset == offset:
                        return record
        raise AssertionError(f"no record at {topic}/{partition}@{offset}")
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_settings().redis_url)
    try:
        await client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable ({exc}); start the stack with `make up`")
    yield client
    await client.aclose()


@pytest.fixture
async def profile_store(redis_client: aioredis.Redis) -> AsyncIterator[ProfileStore]:
    """A store on its own key prefix, deleted afterwards."""
    settings = ProfileSettings(key_prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield ProfileStore(redis_client, settings, Guardrails.load(settings.identity_file))
    keys = [k async for k in redis_client.scan_iter(match=f"{settings.key_prefix}*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(scope="session")
def profile_harness(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProfileHarness]:
    harness = ProfileHarness(kafka, redis_settings().redis_url, tmp_path_factory.mktemp("logs"))
    harness.start_worker()
    yield harness
    harness.close()


@pytest.fixture(scope="session")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    """A Kafka broker and a Redis of the tests' own, on other ports and with their own var
    dir, for the tests that kill them (the shared stack is never killed); stopped and
    deleted at the end of the session."""
    stack = PrivateStack(tmp_path_factory.mktemp("private-stack"))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
