"""gRPC client channels that carry the caller's trace context."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

# A server that comes back is found within a second: gRPC's default reconnect backoff
# grows to 120 s, during which every call fails UNAVAILABLE although the server answers.
SERVICE_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def traced_channel(target: str) -> grpc.Channel:
    # The OpenTelemetry interceptor implements its own interceptor interface (grpcext),
    # so it is attached with grpcext.intercept_channel, not grpc.intercept_channel.
    channel = grpc.insecure_channel(target, options=SERVICE_CHANNEL_OPTIONS)
    interceptor = client_interceptor()  # type: ignore[no-untyped-call]
    traced: grpc.Channel = grpcext.intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]
    return traced
