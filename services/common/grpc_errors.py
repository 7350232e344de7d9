"""Infrastructure failures become a retryable UNAVAILABLE, for every servicer.

A handler that meets an unreachable Redis or Kafka (or any refused or timed-out
connection) should not answer UNKNOWN with a traceback: the client can do nothing with
that, and the log fills with stack traces for one known condition. `UnavailableInterceptor`
answers such calls `UNAVAILABLE` with a short message naming the dependency, and logs one
line; every server built with `services.common.grpc_server.ServiceServer` has it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import redis.exceptions

log = logging.getLogger(__name__)


class DependencyUnavailable(Exception):
    """A dependency cannot be reached now; the call may succeed if retried.

    The message is shown to clients, so it says what is unavailable and nothing about
    hosts or data.
    """

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


# Exceptions that mean "a dependency is unreachable", with the name clients are told.
# Order matters: the first match names the dependency.
UNAVAILABLE_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (redis.exceptions.ConnectionError, "Redis"),
    (redis.exceptions.TimeoutError, "Redis"),
    # Built-in OSError subclasses: refused, reset or aborted connections, broken pipes,
    # socket timeouts. Other OSErrors (a missing file) are bugs, not outages.
    (ConnectionError, "a dependency"),
    (TimeoutError, "a dependency"),
)


def unavailable_details(exc: BaseException) -> str | None:
    """What to tell the client when `exc` means a dependency is unreachable, else None."""
    if isinstance(exc, DependencyUnavailable):
        return f"{exc}: retry"
    for kind, dependency in UNAVAILABLE_ERRORS:
        if isinstance(exc, kind):
            return f"{dependency} unavailable: retry"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


@contextlib.contextmanager
def unavailable_on_outage(method: str, context: grpc.ServicerContext) -> Iterator[None]:
    """Turns an infrastructure exception raised inside the block into UNAVAILABLE."""
    try:
        yield
    except Exception as exc:
        details = unavailable_details(exc)
        if details is None:
            raise
        log.warning("%s: UNAVAILABLE (%s)", method, _short(exc))
        context.abort(grpc.StatusCode.UNAVAILABLE, details)


Guard = Callable[[str, grpc.ServicerContext], contextlib.AbstractContextManager[None]]


def guarded(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, guard: Guard
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with each call's behaviour run inside `guard(method, context)`.

    For streaming responses the guard holds until the last message is sent.
    """
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, method, guard), **kwargs
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, method, guard), **kwargs
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream(handler.unary_stream, method, guard), **kwargs
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream(handler.stream_stream, method, guard), **kwargs
        )
    return handler


def _unary(
    behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str, guard: Guard
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        with guard(method, context):
            return behaviour(request, context)

    return call


def _stream(
    behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str, guard: Guard
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with guard(method, context):
            yield from behaviour(request, context)

    return call


class UnavailableInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Maps infrastructure exceptions of any handler to UNAVAILABLE (see the module doc)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return guarded(handler, handler_call_details.method, unavailable_on_outage)
