"""OpenTelemetry tracing and Prometheus metrics, set up the same way in every service.

Trace context crosses gRPC through the OpenTelemetry gRPC interceptors and crosses Kafka
in record headers (W3C `traceparent`/`tracestate`), so one trace follows an event from
the ingest call to every consumer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from prometheus_client import start_http_server

KafkaHeaders = list[tuple[str, bytes]]

_configured = False


def _exporter_processor() -> SpanProcessor | None:
    """Honours the standard OTEL_* variables; exports nothing unless asked to."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower()
    if exporter == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    if exporter == "otlp" and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    return None


def setup_tracing(
    service_name: str, extra_processors: Sequence[SpanProcessor] = ()
) -> TracerProvider:
    """Installs the global tracer provider once per process and returns it."""
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        for processor in extra_processors:
            current.add_span_processor(processor)
        return current
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    exporting = _exporter_processor()
    if exporting is not None:
        provider.add_span_processor(exporting)
    for extra in extra_processors:
        provider.add_span_processor(extra)
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def inject_kafka_headers(headers: KafkaHeaders | None = None) -> KafkaHeaders:
    """Adds the current trace context to Kafka record headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = list(headers or [])
    out.extend((key, value.encode()) for key, value in carrier.items())
    return out


def extract_kafka_context(headers: Iterable[tuple[str, bytes | None]] | None) -> Context:
    """The trace context a producer put into Kafka record headers."""
    carrier = {key: value.decode("latin-1") for key, value in headers or () if value is not None}
    return propagate.extract(carrier)


def header_value(headers: Iterable[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None


def start_metrics_server(host: str, port: int) -> None:
    """Serves Prometheus metrics on http://host:port/metrics (0 disables)."""
    if port:
        start_http_server(port, addr=host)
