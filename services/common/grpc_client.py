"""gRPC client channels that carry the caller's trace context."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext


def traced_channel(target: str) -> grpc.Channel:
    # The OpenTelemetry interceptor implements its own interceptor interface (grpcext),
    # so it is attached with grpcext.intercept_channel, not grpc.intercept_channel.
    channel = grpc.insecure_channel(target)
    interceptor = client_interceptor()  # type: ignore[no-untyped-call]
    traced: grpc.Channel = grpcext.intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]
    return traced
