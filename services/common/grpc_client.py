"""gRPC client channels that carry the caller's trace context."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import client_interceptor


def traced_channel(target: str) -> grpc.Channel:
    channel = grpc.insecure_channel(target)
    interceptor = client_interceptor()  # type: ignore[no-untyped-call]
    return grpc.intercept_channel(channel, interceptor)
