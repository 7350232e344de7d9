"""ServiceServer during outages: health never queues behind work, dependencies drive
health, infrastructure exceptions are UNAVAILABLE. In-process servers, no stack."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_errors import DependencyUnavailable
from services.common.grpc_server import ServiceServer

SERVICE = "test.Blocking"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Handlers:
    """Raw-bytes methods: Wait blocks until released; Fail raises what it is told to."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0
        self.lock = threading.Lock()
        self.raises: BaseException = RuntimeError("unset")

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.waiting += 1
        self.release.wait(30)
        return b"done"

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise self.raises

    def fail_streaming(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        raise self.raises

    def register(self, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Wait": grpc.unary_unary_rpc_method_handler(self.wait),
                        "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                        "FailStreaming": grpc.unary_stream_rpc_method_handler(self.fail_streaming),
                    },
                ),
            )
        )


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def make_server(handlers: Handlers) -> Iterator[Callable[..., ServiceServer]]:
    made: list[ServiceServer] = []

    def make(**kwargs: object) -> ServiceServer:
        server = ServiceServer(handlers.register, [SERVICE], "127.0.0.1:0", **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    handlers.release.set()
    for server in made:
        server.stop(grace_s=0)


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status)


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Polls until `check` holds; a bound against hanging, not a speed goal."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_health_answers_while_every_worker_is_blocked(
    handlers: Handlers, make_server: Callable[..., ServiceServer]
) -> None:
    workers, calls = 16, 24
    server = make_server(max_workers=workers)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        wait = channel.unary_unary(f"/{SERVICE}/Wait", None, None)
        with ThreadPoolExecutor(calls) as pool:
            pending = [pool.submit(wait, b"", timeout=30) for _ in range(calls)]
            wait_until("every worker to be blocked", lambda: handlers.waiting == workers)
            # Before: the pool had `workers` threads, all blocked, and health queued.
            assert health_status(channel, timeout=2.0) == SERVING
            assert health_status(channel, SERVICE, timeout=2.0) == SERVING
            wait_until(
                "the excess calls to be refused",
                lambda: sum(f.done() for f in pending) == calls - workers,
            )
            handlers.release.set()
            codes, details = [], []
            for future in pending:
                try:
                    future.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                    details.append(exc.details() or "")
    assert codes.count(grpc.StatusCode.OK) == workers
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == calls - workers
    assert all("retry" in d for d in details)


def test_dependencies_drive_health(make_server: Callable[..., ServiceServer]) -> None:
    state = {"kafka": False}
    server = make_server()
    server.add_dependency("kafka", lambda: state["kafka"], every_s=0.05)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for name in ("", SERVICE, "kafka"):
            assert health_status(channel, name) == NOT_SERVING
        state["kafka"] = True
        wait_until("SERVING", lambda: health_status(channel) == SERVING)
        assert health_status(channel, SERVICE) == SERVING
        assert health_status(channel, "kafka") == SERVING
        state["kafka"] = False
        wait_until("NOT_SERVING", lambda: health_status(channel) == NOT_SERVING)
        server.stop(grace_s=0)


def test_a_check_that_raises_or_hangs_counts_as_not_answering(
    make_server: Callable[..., ServiceServer],
) -> None:
    hang = threading.Event()
    release = threading.Event()

    def hanging() -> bool:
        if hang.is_set():
            release.wait(30)
        return True

    def raising() -> bool:
        raise ConnectionRefusedError("refused")

    server = make_server()
    server.add_dependency("hangs", hanging, every_s=0.05)
    server.add_dependency("raises", raising, every_s=0.05)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert health_status(channel, "raises") == NOT_SERVING
            assert health_status(channel, "hangs") == SERVING
            hang.set()
            wait_until(
                "a stuck check to count", lambda: health_status(channel, "hangs") == NOT_SERVING
            )
            assert health_status(channel) == NOT_SERVING
    finally:
        release.set()


def test_stop_reports_not_serving(make_server: Callable[..., ServiceServer]) -> None:
    server = make_server()
    server.start()
    assert server.health.Check(health_pb2.HealthCheckRequest(), None).status == SERVING  # type: ignore[arg-type]
    server.stop(grace_s=0)
    assert server.health.Check(health_pb2.HealthCheckRequest(), None).status == NOT_SERVING  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raised", "details"),
    [
        (
            redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1."),
            "Redis unavailable: retry",
        ),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "Redis unavailable: retry"),
        (DependencyUnavailable("Kafka", "Kafka is unreachable"), "Kafka is unreachable: retry"),
        (ConnectionRefusedError(111, "Connection refused"), "a dependency unavailable: retry"),
    ],
)
def test_infrastructure_exceptions_are_unavailable_with_a_short_message(
    handlers: Handlers,
    make_server: Callable[..., ServiceServer],
    raised: Exception,
    details: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handlers.raises = raised
    server = make_server()
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(f"/{SERVICE}/Fail", None, None)(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == details
        stream = channel.unary_stream(f"/{SERVICE}/FailStreaming", None, None)(b"", timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    logged = [r for r in caplog.records if "UNAVAILABLE" in r.getMessage()]
    assert len(logged) == 2  # one line per call
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in logged)


def test_other_exceptions_are_not_disguised_as_outages(
    handlers: Handlers, make_server: Callable[..., ServiceServer]
) -> None:
    handlers.raises = ValueError("a bug")
    server = make_server()
    server.start()
    with (
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        channel.unary_unary(f"/{SERVICE}/Fail", None, None)(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
