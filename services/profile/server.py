"""Profile gRPC server: `python -m services.profile.server`."""

from __future__ import annotations

import grpc
import redis
from cx.profile.v1 import profile_pb2, profile_pb2_grpc

from services.common.grpc_server import ServiceServer
from services.common.process import GrpcProcess, run_grpc_process
from services.common.settings import (
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    grpc_address,
    kafka_settings,
    redis_settings,
)
from services.common.touchpoint_publisher import TouchpointPublisher
from services.profile.adapters.reader import ProfileReader
from services.profile.domain.segments import load_segments
from services.profile.service import ProfileServicer
from services.profile.settings import ProfileSettings

SERVICE_NAME = profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name

# Health name under which the stream workers' heartbeats are reported: SERVING while at
# least one worker beats. It does not make the server itself NOT_SERVING (reads work
# without a worker; they are only staler).
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
    """The server around a given reader and publisher (tests pass their own)."""
    servicer = ProfileServicer(reader, load_segments(reader.settings.segments_file), publisher)

    def register(server: grpc.Server) -> None:
        profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server)

    server = ServiceServer(register, [SERVICE_NAME], address)
    server.add_dependency(REDIS_HEALTH_NAME, lambda: bool(reader.client.ping()))
    server.add_component(
        WORKER_HEALTH_NAME, lambda: reader.workers_alive() > 0, every_s=WORKER_CHECK_EVERY_S
    )
    return server


def create_server(
    settings: ProfileSettings,
    kafka: KafkaSettings,
    redis_config: RedisSettings,
    process: ProcessSettings,
) -> GrpcProcess:
    """The composition root: Redis reader, consent publisher and server, from settings."""
    client = redis.Redis.from_url(
        redis_config.redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    reader = ProfileReader(client, settings)
    publisher = TouchpointPublisher.connect(kafka.kafka_bootstrap_servers, kafka.touchpoints_topic)
    server = build_server(reader, publisher, grpc_address(settings.grpc_port, process))
    return GrpcProcess(server, [publisher.close, client.close])


def main() -> None:
    settings = ProfileSettings()
    run_grpc_process(
        "profile",
        settings.metrics_port,
        lambda process: create_server(settings, kafka_settings(), redis_settings(), process),
    )


if __name__ == "__main__":
    main()
