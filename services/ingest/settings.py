"""Ingest service settings: environment variables `INGEST_*`, with local defaults."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.touchpoint_publisher import DEFAULT_ACK_TIMEOUT_S
from services.ingest.service import MAX_BATCH


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    grpc_port: int = 50051
    # Prometheus /metrics (0 turns it off).
    metrics_port: int = 9464
    # Most events in one TrackBatch.
    max_batch: int = MAX_BATCH
    # Calls (other than health and reflection) served at once; more are refused with
    # RESOURCE_EXHAUSTED instead of queueing behind calls blocked on Kafka.
    workers: int = 16
    # Longest a call waits for Kafka's acknowledgements (less when the client's deadline
    # is nearer); then it answers UNAVAILABLE.
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
