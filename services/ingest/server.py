"""Ingest gRPC server: `python -m services.ingest.server`."""

from __future__ import annotations

import grpc
from cx.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.common.grpc_server import ServiceServer
from services.common.process import GrpcProcess, run_grpc_process
from services.common.settings import KafkaSettings, ProcessSettings, grpc_address, kafka_settings
from services.common.touchpoint_publisher import TouchpointPublisher
from services.ingest.service import IngestServicer
from services.ingest.settings import IngestSettings

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
# Health name of the broker's reachability; while it is NOT_SERVING, so is the service.
KAFKA_HEALTH_NAME = "kafka"


def build_server(
    publisher: TouchpointPublisher, address: str, settings: IngestSettings | None = None
) -> ServiceServer:
    """The server around a given publisher (tests pass their own)."""
    settings = settings or IngestSettings()
    servicer = IngestServicer(publisher, max_batch=settings.max_batch)

    def register(server: grpc.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)

    server = ServiceServer(register, [SERVICE_NAME], address, max_workers=settings.workers)
    server.add_dependency(KAFKA_HEALTH_NAME, publisher.available)
    return server


def create_server(
    settings: IngestSettings, kafka: KafkaSettings, process: ProcessSettings
) -> GrpcProcess:
    """The composition root: the publisher and the server, from settings."""
    publisher = TouchpointPublisher.connect(
        kafka.kafka_bootstrap_servers, kafka.touchpoints_topic, ack_timeout_s=settings.ack_timeout_s
    )
    server = build_server(publisher, grpc_address(settings.grpc_port, process), settings)
    return GrpcProcess(server, [publisher.close])


def main() -> None:
    settings = IngestSettings()
    run_grpc_process(
        "ingest",
        settings.metrics_port,
        lambda process: create_server(settings, kafka_settings(), process),
    )


if __name__ == "__main__":
    main()
