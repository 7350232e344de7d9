"""Profile gRPC server: `python -m services.profile.server`."""

from __future__ import annotations

import logging

import grpc
import redis
from cx.profile.v1 import profile_pb2, profile_pb2_grpc

from services.common.grpc_server import ServiceServer
from services.common.logs import setup_logging
from services.common.settings import grpc_ports, kafka_settings, metrics_ports, redis_settings
from services.common.telemetry import setup_tracing, start_metrics_server
from services.common.touchpoint_publisher import TouchpointPublisher
from services.profile.adapters.reader import ProfileReader
from services.profile.domain.segments import load_segments
from services.profile.service import ProfileServicer
from services.profile.settings import ProfileSettings

log = logging.getLogger(__name__)
SERVICE_NAME = profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name


# Health name under which the stream worker's heartbeat is reported.
WORKER_HEALTH_NAME = "cx.profile.v1.ProfileWorker"
WORKER_CHECK_EVERY_S = 2.0
# Health name of Redis's reachability; while it is NOT_SERVING, so is the service.
REDIS_HEALTH_NAME = "redis"
# A Redis that does not answer fails a call after this long instead of holding a thread.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0


def build_server(
    reader: ProfileReader, publisher: TouchpointPublisher | None, address: str
) -> ServiceServer:
    servicer = ProfileServicer(reader, load_segments(), publisher)

    def register(server: grpc.Server) -> None:
        profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server)

    server = ServiceServer(register, [SERVICE_NAME], address)
    server.set_status(WORKER_HEALTH_NAME, False)
    server.add_dependency(REDIS_HEALTH_NAME, lambda: bool(reader.client.ping()))

    def check_workers() -> None:
        try:
            server.set_status(WORKER_HEALTH_NAME, reader.workers_alive() > 0)
        except redis.RedisError:
            server.set_status(WORKER_HEALTH_NAME, False)

    server.every(WORKER_CHECK_EVERY_S, check_workers)
    return server


def main() -> None:
    setup_logging("profile")
    setup_tracing("cx-profile")
    ports, kafka, metrics = grpc_ports(), kafka_settings(), metrics_ports()
    start_metrics_server(metrics.metrics_host, metrics.profile_metrics_port)
    client = redis.Redis.from_url(
        redis_settings().redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    reader = ProfileReader(client, ProfileSettings())
    publisher = TouchpointPublisher.connect(kafka.kafka_bootstrap_servers, kafka.touchpoints_topic)
    server = build_server(reader, publisher, f"{ports.grpc_host}:{ports.profile_grpc_port}")
    server.start()
    log.info("profile serving on %s:%s", ports.grpc_host, server.port)
    server.serve_until_signalled(on_stop=publisher.close)


if __name__ == "__main__":
    main()
