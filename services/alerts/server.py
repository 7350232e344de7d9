"""Alerts gRPC server: `python -m services.alerts.server`."""

from __future__ import annotations

import grpc
import redis
from cx.alerts.v1 import alerts_pb2, alerts_pb2_grpc

from services.alerts.adapters.incidents import IncidentStore
from services.alerts.service import AlertsServicer
from services.alerts.settings import AlertsSettings
from services.common.grpc_server import ServiceServer
from services.common.process import GrpcProcess, run_grpc_process
from services.common.settings import (
    ProcessSettings,
    RedisSettings,
    grpc_address,
    redis_settings,
)

SERVICE_NAME = alerts_pb2.DESCRIPTOR.services_by_name["AlertsService"].full_name
# Redis holds every incident, silence and the outbox: no answer without it.
REDIS_HEALTH_NAME = "redis"
REDIS_CONNECT_TIMEOUT_S = 1.0
# Longer than WatchIncidents' XREAD block (service.WATCH_BLOCK_MS).
REDIS_SOCKET_TIMEOUT_S = 3.0


def build_server(servicer: AlertsServicer, client: redis.Redis, address: str) -> ServiceServer:
    """The server around a servicer built from given parts (tests pass their own)."""

    def register(server: grpc.Server) -> None:
        alerts_pb2_grpc.add_AlertsServiceServicer_to_server(servicer, server)

    server = ServiceServer(register, [SERVICE_NAME], address)
    server.add_dependency(REDIS_HEALTH_NAME, lambda: bool(client.ping()))
    return server


def create_server(
    settings: AlertsSettings, redis_config: RedisSettings, process: ProcessSettings
) -> GrpcProcess:
    """The composition root: the Redis client, the incident store, the servicer and the
    server, from settings."""
    client = redis.Redis.from_url(
        redis_config.redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    servicer = AlertsServicer(IncidentStore(client, settings.key_prefix))
    server = build_server(servicer, client, grpc_address(settings.grpc_port, process))
    return GrpcProcess(server, [client.close])


def main() -> None:
    settings = AlertsSettings()
    run_grpc_process(
        "alerts",
        settings.metrics_port,
        lambda process: create_server(settings, redis_settings(), process),
    )


if __name__ == "__main__":
    main()
