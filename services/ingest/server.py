"""Ingest gRPC server: `python -m services.ingest.server`."""

from __future__ import annotations

import logging

import grpc
from cx.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.grpc_server import ServiceServer
from services.common.logs import setup_logging
from services.common.settings import grpc_ports, kafka_settings, metrics_ports
from services.common.telemetry import setup_tracing, start_metrics_server
from services.common.touchpoint_publisher import DEFAULT_ACK_TIMEOUT_S, TouchpointPublisher
from services.ingest.service import MAX_BATCH, IngestServicer

log = logging.getLogger(__name__)
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
# Health name of the broker's reachability; while it is NOT_SERVING, so is the service.
KAFKA_HEALTH_NAME = "kafka"


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    max_batch: int = MAX_BATCH
    workers: int = 16
    # Longest a call waits for Kafka's acknowledgements (less when the client's deadline
    # is nearer); then it answers UNAVAILABLE.
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S


def build_server(publisher: TouchpointPublisher, address: str) -> ServiceServer:
    settings = IngestSettings()
    servicer = IngestServicer(publisher, max_batch=settings.max_batch)

    def register(server: grpc.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)

    server = ServiceServer(register, [SERVICE_NAME], address, max_workers=settings.workers)
    server.add_dependency(KAFKA_HEALTH_NAME, publisher.available)
    return server


def main() -> None:
    setup_logging("ingest")
    setup_tracing("cx-ingest")
    ports, kafka, metrics = grpc_ports(), kafka_settings(), metrics_ports()
    start_metrics_server(metrics.metrics_host, metrics.ingest_metrics_port)
    publisher = TouchpointPublisher.connect(
        kafka.kafka_bootstrap_servers,
        kafka.touchpoints_topic,
        ack_timeout_s=IngestSettings().ack_timeout_s,
    )
    server = build_server(publisher, f"{ports.grpc_host}:{ports.ingest_grpc_port}")
    server.start()
    log.info("ingest serving on %s:%s", ports.grpc_host, server.port)
    server.serve_until_signalled(on_stop=publisher.close)


if __name__ == "__main__":
    main()
