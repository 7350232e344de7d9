"""Ingest throughput and latency against the real broker, with a raw producer baseline.

Runs against the ingest process `make up` started (INGEST_GRPC_PORT), so the server has
its own interpreter as in production. The baseline sends the same serialised events with
the same keys and producer settings straight to Kafka with kafka-python.
"""

from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.ingest.v1 import ingest_pb2 as pb
from cx.ingest.v1 import ingest_pb2_grpc

from bench.stats import Figures, print_ratio, print_table
from services.common.kafka_io import reliable_producer, send_touchpoint, touchpoint_headers
from services.common.settings import grpc_address, kafka_settings
from services.ingest.settings import IngestSettings

GOAL_BATCH_VS_RAW = 0.5


def make_events(count: int, people: int = 1000) -> list[ev.TouchpointEvent]:
    base = datetime.now(UTC) - timedelta(minutes=10)
    events = []
    for i in range(count):
        event = ev.TouchpointEvent(
            event_id=f"bench-{uuid.uuid4()}",
            channel=ev.CHANNEL_WEB,
            touchpoint="catalogue.product",
            journey_stage=ev.JOURNEY_STAGE_CONSIDERATION,
            source_system="bench",
            identities=ev.Identities(
                customer_id=f"bench-c{i % people}", email=f"bench{i % people}@example.com"
            ),
            product_view=ev.ProductView(
                product_id=f"sku-{i % 500}",
                category="shoes",
                price=ev.Money(currency_code="EUR", units=59, nanos=990_000_000),
            ),
        )
        event.occurred_at.FromDatetime(base + timedelta(milliseconds=i))
        events.append(event)
    return events


def raw_producer(events: list[ev.TouchpointEvent]) -> Figures:
    kafka = kafka_settings()
    producer = reliable_producer(kafka.kafka_bootstrap_servers, client_id="bench-raw")
    producer.send(kafka.touchpoints_topic, key=b"warm", value=b"").get(timeout=30)
    start = time.perf_counter()
    headers = touchpoint_headers()
    for event in events:
        send_touchpoint(producer, kafka.touchpoints_topic, event, headers)
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return Figures("raw kafka-python producer", len(events), elapsed)


def track_batch(
    stub: ingest_pb2_grpc.IngestServiceStub,
    events: list[ev.TouchpointEvent],
    batch_size: int,
    clients: int,
) -> Figures:
    batches = [events[i : i + batch_size] for i in range(0, len(events), batch_size)]

    def call(batch: list[ev.TouchpointEvent]) -> float:
        t0 = time.perf_counter()
        reply = stub.TrackBatch(pb.TrackBatchRequest(events=batch), timeout=60)
        if reply.rejected_count:
            raise RuntimeError(f"{reply.rejected_count} events rejected: {reply.results}")
        return time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(call, batches))
    elapsed = time.perf_counter() - start
    return Figures(
        f"TrackBatch ({batch_size}/call, {clients} clients)", len(events), elapsed, latencies
    )


def track(
    stub: ingest_pb2_grpc.IngestServiceStub, events: list[ev.TouchpointEvent], clients: int
) -> Figures:
    def call(event: ev.TouchpointEvent) -> float:
        t0 = time.perf_counter()
        stub.Track(pb.TrackRequest(event=event), timeout=30)
        return time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(call, events))
    elapsed = time.perf_counter() - start
    return Figures(f"Track (1/call, {clients} clients)", len(events), elapsed, latencies)


def run(events_count: int = 30_000, track_count: int = 3_000) -> None:
    target = grpc_address(IngestSettings().grpc_port)
    with grpc.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        track(stub, make_events(200), clients=4)  # warm up connections and code paths
        batch = track_batch(stub, make_events(events_count), batch_size=500, clients=4)
        single = track(stub, make_events(track_count), clients=8)
    raw = raw_producer(make_events(events_count))
    print_table(
        f"ingest: {target} -> Kafka {kafka_settings().kafka_bootstrap_servers}",
        [raw, batch, single],
    )
    print_ratio("TrackBatch / raw producer", batch.rate / raw.rate, GOAL_BATCH_VS_RAW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--track-events", type=int, default=3_000)
    args = parser.parse_args()
    run(args.events, args.track_events)


if __name__ == "__main__":
    main()
