"""A gRPC server with what every service needs: health, reflection, tracing, shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import server_interceptor

from services.common.gc_tuning import freeze_startup_heap

log = logging.getLogger(__name__)


class ServiceServer:
    """Wraps grpc.Server: health reports SERVING while it runs, NOT_SERVING on stop."""

    def __init__(
        self,
        register: Callable[[grpc.Server], None],
        service_names: Sequence[str],
        address: str,
        max_workers: int = 16,
    ) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            interceptors=[server_interceptor()],  # type: ignore[no-untyped-call]
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        register(self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address}")
        self._stopped = threading.Event()

    def set_status(self, name: str, serving: bool) -> None:
        """Reports a component's health under its own service name."""
        self.health.set(
            name,
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    def every(self, seconds: float, task: Callable[[], None]) -> None:
        """Runs `task` now and then every `seconds` in a thread, until the server stops."""

        def loop() -> None:
            while True:
                task()
                if self._stopped.wait(seconds):
                    return

        threading.Thread(target=loop, name="periodic", daemon=True).start()

    def _set_status(self, status: int) -> None:
        for name in ["", *self._service_names]:
            self.health.set(name, status)

    def start(self) -> None:
        self.server.start()
        self._set_status(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 5.0) -> None:
        self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace_s).wait()
        self._stopped.set()

    def serve_until_signalled(self, on_stop: Callable[[], None] = lambda: None) -> None:
        """Blocks until SIGTERM or SIGINT, then drains in-flight calls and runs on_stop."""

        def handle(signum: int, _frame: object) -> None:
            log.info("signal %s: stopping", signum)
            threading.Thread(target=self._shutdown, args=(on_stop,), daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        freeze_startup_heap()
        self._stopped.wait()

    def _shutdown(self, on_stop: Callable[[], None]) -> None:
        try:
            self.stop()
        finally:
            on_stop()
            self._stopped.set()
