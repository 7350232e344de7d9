"""Typed settings read from environment variables, with local defaults.

Every service reads its configuration through these classes, so the README's table of
environment variables and the code cannot drift apart.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Partitions for topics the platform creates; one person's events stay on one partition.
    kafka_topic_partitions: int = 8
    kafka_replication_factor: int = 1
    touchpoints_topic: str = "cx.touchpoints.v1"
    touchpoints_dlq_topic: str = "cx.touchpoints.dlq.v1"
    # Touchpoint events re-keyed by profile id (the profile service's repartition topic).
    profile_events_topic: str = "cx.profile-events.v1"
    profile_changes_topic: str = "cx.profile-changes.v1"


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"


class GrpcPorts(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    grpc_host: str = "127.0.0.1"
    ingest_grpc_port: int = 50051
    profile_grpc_port: int = 50052
    personalisation_grpc_port: int = 50053
    alerts_grpc_port: int = 50054


@lru_cache(maxsize=1)
def kafka_settings() -> KafkaSettings:
    return KafkaSettings()


@lru_cache(maxsize=1)
def redis_settings() -> RedisSettings:
    return RedisSettings()


@lru_cache(maxsize=1)
def grpc_ports() -> GrpcPorts:
    return GrpcPorts()


class MetricsPorts(BaseSettings):
    """Prometheus `/metrics` HTTP ports, one per service process."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    metrics_host: str = "127.0.0.1"
    ingest_metrics_port: int = 9464
    profile_metrics_port: int = 9465
    personalisation_metrics_port: int = 9466
    alerts_metrics_port: int = 9467


@lru_cache(maxsize=1)
def metrics_ports() -> MetricsPorts:
    return MetricsPorts()
