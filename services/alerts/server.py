"""Alerts gRPC server: `python -m services.alerts.server`."""

from __future__ import annotations

import grpc
import redis
from cx.alerts.v1 import alerts_pb2, alerts_pb2_grpc

from services.alerts.adapters.incidents import IncidentStore
from services.alerts.adapters.layout import AlertKeys
from services.alerts.service import AlertsServicer
from services.alerts.settings import AlertsSettings
from services.common.grpc_server import ServiceServer
from services.common.heartbeat import alive
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
# The detection worker's and the notifier's heartbeats, reported without making the server
# NOT_SERVING (incidents can be read and acknowledged without them; nothing new is
# detected or paged meanwhile, which is what these say).
WORKER_HEALTH_NAME = "cx.alerts.v1.AlertsWorker"
NOTIFIER_HEALTH_NAME = "cx.alerts.v1.AlertsNotifier"
REDIS_CONNECT_TIMEOUT_S = 1.0
# Longer than WatchIncidents' XREAD block (service.WATCH_BLOCK_MS).
REDIS_SOCKET_TIMEOUT_S = 3.0


def build_server(
    servicer: AlertsServicer, client: redis.Redis, address: str, keys: AlertKeys | None = None
) -> ServiceServer:
    """The server around a servicer built from given parts (tests pass their own); with
    `keys`, health also reports the worker's and the notifier's heartbeats under them."""

    def register(server: grpc.Server) -> None:
        alerts_pb2_grpc.add_AlertsServiceServicer_to_server(servicer, server)

    server = ServiceServer(register, [SERVICE_NAME], address)
    server.add_dependency(REDIS_HEALTH_NAME, lambda: bool(client.ping()))
    if keys is not None:
        beats = keys
        server.add_component(WORKER_HEALTH_NAME, lambda: alive(client, beats.workers) > 0)
        server.add_component(NOTIFIER_HEALTH_NAME, lambda: alive(client, beats.notifiers) > 0)
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
    address = grpc_address(settings.grpc_port, process)
    server = build_server(servicer, client, address, AlertKeys(settings.key_prefix))
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
