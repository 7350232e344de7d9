"""How every servicer's outcomes become status codes, in one interceptor.

Handlers do not call `context.abort`: they return a reply or raise.
- A `ServiceError` (`InvalidArgument` naming the field, `NotFound`, `FailedPrecondition`,
  `Aborted`, `DependencyUnavailable`) is answered with its code and details.
- An infrastructure exception (an unreachable Redis or Kafka, any refused or timed-out
  connection) is answered `UNAVAILABLE` with a short message naming the dependency, and
  one log line, rather than UNKNOWN with a traceback the client can do nothing with.
- Every call is counted by method and code (`cx_grpc_server_calls_total`).
`StatusInterceptor` does this for every server built with
`services.common.grpc_server.ServiceServer`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc
import redis.exceptions
from prometheus_client import Counter

log = logging.getLogger(__name__)

CALLS = Counter(
    "cx_grpc_server_calls", "gRPC calls answered, by method and status code", ["method", "code"]
)


class ServiceError(Exception):
    """An outcome other than OK that a handler decided; its message is the details."""

    code = grpc.StatusCode.UNKNOWN

    @property
    def details(self) -> str:
        return str(self)


class InvalidRequest(ServiceError):
    """The request is wrong; the details name each field and what is wrong with it."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidArgument(InvalidRequest):
    """One request field is wrong: details are `field: what is wrong`."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """A concurrent change got in the way; the client may retry the call."""

    code = grpc.StatusCode.ABORTED


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(ServiceError):
    """Retryable: the service cannot answer now."""

    code = grpc.StatusCode.UNAVAILABLE


class DependencyUnavailable(Unavailable):
    """A dependency cannot be reached now; the call may succeed if retried.

    The message is shown to clients, so it says what is unavailable and nothing about
    hosts or data.
    """

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency

    @property
    def details(self) -> str:
        return f"{self}: retry"


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
        return exc.details
    for kind, dependency in UNAVAILABLE_ERRORS:
        if isinstance(exc, kind):
            return f"{dependency} unavailable: retry"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


@contextlib.contextmanager
def answer_status(method: str, context: grpc.ServicerContext) -> Iterator[None]:
    """Answers what the handler inside raised with its status code, and counts the call."""
    code = "OK"
    try:
        yield
    except ServiceError as exc:
        code = exc.code.name
        if isinstance(exc, Unavailable):
            log.warning("%s: UNAVAILABLE (%s)", method, exc)
        context.abort(exc.code, exc.details)
    except Exception as exc:
        details = unavailable_details(exc)
        if details is not None:
            code = "UNAVAILABLE"
            log.warning("%s: UNAVAILABLE (%s)", method, _short(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, details)
        # Aborted by another interceptor (the code is set), or a bug (UNKNOWN).
        # grpcio's context has code(); its type stubs omit it.
        aborted = cast(Any, context).code()
        code = aborted.name if aborted is not None else "UNKNOWN"
        raise
    finally:
        CALLS.labels(method, code).inc()


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
    for kind, handler_of, wrap in _KINDS:
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return handler_of(wrap(behaviour, method, guard), **kwargs)
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


# A handler's behaviour, the factory that makes a handler of it again, and how a guard
# wraps it (held until it returns, or until its last message is sent).
_KINDS: tuple[
    tuple[str, Callable[..., grpc.RpcMethodHandler[Any, Any]], Callable[[Any, str, Guard], Any]],
    ...,
] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, _unary),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, _unary),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, _stream),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, _stream),
)


class GuardingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Runs the calls of every method inside the guard `guard_for(method)` gives
    (`guarded`); a method it gives None for runs as it is."""

    def guard_for(self, method: str) -> Guard | None:
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        guard = self.guard_for(method)
        if handler is None or guard is None:
            return handler
        return guarded(handler, method, guard)


class StatusInterceptor(GuardingInterceptor):
    """Maps every handler's outcome to its status code and counts it (see the module doc)."""

    def guard_for(self, method: str) -> Guard | None:
        return answer_status
