"""A gRPC server with what every service needs: health, reflection, tracing, shutdown.

Health never queues behind work: the thread pool has `max_workers` threads for calls plus
a few reserved ones, and at most `max_workers` calls other than health and reflection run
at once; the excess is refused at once with RESOURCE_EXHAUSTED (retryable with backoff)
instead of waiting for a thread. Health is honest: dependencies registered with
`add_dependency` (Kafka, Redis) are checked in the background, and while one does not
answer the server and its services report NOT_SERVING. Infrastructure exceptions of any
handler become UNAVAILABLE, domain errors their codes, and every call is counted by code
(`services.common.grpc_errors`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import server_interceptor
from prometheus_client import Counter

from services.common.grpc_errors import Guard, GuardingInterceptor, StatusInterceptor

log = logging.getLogger(__name__)

# Threads kept for health checks and reflection (and for refusing excess calls at once).
RESERVED_WORKERS = 4
# Methods that are always admitted: they are quick and must answer while work is stuck.
UNLIMITED_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# How long start() waits for the first answer of every dependency check.
FIRST_CHECK_WAIT_S = 3.0

BUSY_REFUSALS = Counter(
    "cx_grpc_busy_refusals",
    "Calls refused with RESOURCE_EXHAUSTED because every worker was busy",
    ["method"],
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AdmissionInterceptor(GuardingInterceptor):
    """Admits at most `limit` concurrent calls other than health and reflection.

    A call beyond that is refused at once with RESOURCE_EXHAUSTED, which clients may
    retry with backoff, rather than waiting in the thread pool's queue behind calls that
    may be blocked on an unreachable dependency.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def guard_for(self, method: str) -> Guard | None:
        return None if method.startswith(UNLIMITED_METHOD_PREFIXES) else self._admit

    @contextlib.contextmanager
    def _admit(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            BUSY_REFUSALS.labels(method).inc()
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: all {self.limit} workers are in use; retry with backoff",
            )
        try:
            yield
        finally:
            self._slots.release()


@dataclass
class _Dependency:
    name: str
    check: Callable[[], bool]
    every_s: float
    ok: bool = False
    checked_at: float | None = None  # time.monotonic() when the last check finished

    @property
    def stale_after_s(self) -> float:
        # A check still running after this long counts as failing.
        return 3 * self.every_s + 1.0

    def healthy(self, now: float) -> bool:
        return (
            self.ok and self.checked_at is not None and now - self.checked_at <= self.stale_after_s
        )


class ServiceServer:
    """Wraps grpc.Server: health reports SERVING while it runs and its dependencies
    answer, NOT_SERVING otherwise and on stop."""

    def __init__(
        self,
        register: Callable[[grpc.Server], None],
        service_names: Sequence[str],
        address: str,
        max_workers: int = 16,
        reserved_workers: int = RESERVED_WORKERS,
    ) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=max_workers + reserved_workers, thread_name_prefix="grpc"
            ),
            # Outermost first: every call is traced, its outcome mapped to a status code
            # and counted (refusals of admission included), then admitted.
            interceptors=[
                server_interceptor(),  # type: ignore[no-untyped-call]
                StatusInterceptor(),
                AdmissionInterceptor(max_workers),
            ],
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
        self._serving = False
        self._dependencies: list[_Dependency] = []
        self._health_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._published: dict[str, int] = {}
        self._refresh_health()

    def set_status(self, name: str, serving: bool) -> None:
        """Reports a component's health under its own service name."""
        self._publish(name, SERVING if serving else NOT_SERVING)

    def add_dependency(self, name: str, check: Callable[[], bool], every_s: float = 1.0) -> None:
        """Registers something the service cannot work without (call before start()).

        `check` runs every `every_s` in its own thread and says whether the dependency
        answers; it should bound its own wait. An exception, False, or a check still
        running after three periods counts as "does not answer". While any dependency
        does not answer, health is NOT_SERVING for the server ("") and its services;
        each dependency's state is also reported under its own `name`.
        """
        self._dependencies.append(_Dependency(name, check, every_s))

    def add_component(self, name: str, check: Callable[[], bool], every_s: float = 2.0) -> None:
        """Reports a component's health under `name` (NOT_SERVING until it first answers),
        without making the server NOT_SERVING: for parts the service works without, such
        as a stream worker behind a read API. An exception counts as not serving."""
        self.set_status(name, False)

        def report() -> None:
            try:
                ok = bool(check())
            except Exception as exc:
                log.debug("health check of %s failed: %s", name, exc)
                ok = False
            self.set_status(name, ok)

        self.every(every_s, report)

    def every(self, seconds: float, task: Callable[[], None]) -> None:
        """Runs `task` now and then every `seconds` in a thread, until the server stops."""

        def loop() -> None:
            while True:
                task()
                if self._stopped.wait(seconds):
                    return

        threading.Thread(target=loop, name="periodic", daemon=True).start()

    def _publish(self, name: str, status: int) -> None:
        with self._health_lock:
            if self._published.get(name) != status:
                self._published[name] = status
                self.health.set(name, status)

    def _refresh_health(self) -> None:
        with self._refresh_lock:
            now = time.monotonic()
            healthy = True
            for dep in self._dependencies:
                ok = dep.healthy(now)
                healthy = healthy and ok
                before = self._published.get(dep.name)
                self.set_status(dep.name, ok)
                if before != self._published[dep.name] and dep.checked_at is not None:
                    if ok and before is not None:
                        log.info("%s answers again: health SERVING", dep.name)
                    elif not ok:
                        log.warning("%s does not answer: health NOT_SERVING", dep.name)
            status = SERVING if self._serving and healthy else NOT_SERVING
            for name in ["", *self._service_names]:
                self._publish(name, status)

    def _watch(self, dep: _Dependency, first: threading.Event) -> None:
        while True:
            try:
                ok = bool(dep.check())
            except Exception as exc:
                log.debug("health check of %s failed: %s", dep.name, exc)
                ok = False
            dep.ok, dep.checked_at = ok, time.monotonic()
            first.set()
            self._refresh_health()
            if self._stopped.wait(dep.every_s):
                return

    def start(self) -> None:
        self.server.start()
        self._serving = True
        answered = []
        for dep in self._dependencies:
            first = threading.Event()
            threading.Thread(
                target=self._watch, args=(dep, first), name=f"check-{dep.name}", daemon=True
            ).start()
            answered.append(first)
        deadline = time.monotonic() + FIRST_CHECK_WAIT_S
        for first in answered:
            first.wait(max(deadline - time.monotonic(), 0.0))
        self._refresh_health()
        if self._dependencies:
            # Notices checks that hang: their last answer goes stale.
            self.every(min(d.every_s for d in self._dependencies) / 2, self._refresh_health)

    def stop(self, grace_s: float = 5.0) -> None:
        self._serving = False
        self._refresh_health()
        self.server.stop(grace_s).wait()
        self._stopped.set()

    def serve_until_signalled(self, on_stop: Callable[[], None] = lambda: None) -> None:
        """Blocks until SIGTERM or SIGINT, then drains in-flight calls and runs on_stop."""

        def handle(signum: int, _frame: object) -> None:
            log.info("signal %s: stopping", signum)
            threading.Thread(target=self._shutdown, args=(on_stop,), daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        self._stopped.wait()

    def _shutdown(self, on_stop: Callable[[], None]) -> None:
        try:
            self.stop()
        finally:
            on_stop()
            self._stopped.set()
