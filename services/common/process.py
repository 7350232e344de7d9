"""The skeleton every service process shares, so that each `main()` is one call.

A process is built by its composition root (`create_server(settings, ...)` for a gRPC
server, `create_app(settings, ...)` for a stream worker), which takes settings and
builds everything; nothing is built at import. These functions do the rest: logs,
tracing, metrics, the explicit GC freeze once the startup heap is built, serving until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.gc_tuning import freeze_startup_heap
from services.common.grpc_server import ServiceServer
from services.common.logs import setup_logging
from services.common.settings import ProcessSettings, grpc_address, process_settings
from services.common.telemetry import setup_tracing, start_metrics_server

log = logging.getLogger(__name__)


@dataclass
class GrpcProcess:
    """A built gRPC server and what to close after it stopped (producers, clients)."""

    server: ServiceServer
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Runs every closer; one that fails (a producer whose broker did not acknowledge
        in time) is logged and does not stop the others."""
        for close in self.closers:
            try:
                close()
            except Exception as exc:
                log.warning("closing %s failed: %s: %s", close, type(exc).__name__, exc)


def start_process(name: str, metrics_port: int, process: ProcessSettings) -> None:
    """Logs, traces (service `cx-<name>`) and Prometheus metrics (port 0: none)."""
    setup_logging(name, process.log_level)
    setup_tracing(f"cx-{name}")
    start_metrics_server(process.metrics_host, metrics_port)


def run_grpc_process(
    name: str, metrics_port: int, create: Callable[[ProcessSettings], GrpcProcess]
) -> None:
    """Builds the server with `create`, serves until signalled, then closes it."""
    process = process_settings()
    start_process(name, metrics_port, process)
    built = create(process)
    built.server.start()
    log.info("%s serving on %s", name, grpc_address(built.server.port, process))
    freeze_startup_heap()
    built.server.serve_until_signalled(on_stop=built.close)
