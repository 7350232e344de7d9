"""Typed settings read from environment variables, with local defaults.

Only what every service shares is here (Kafka, Redis, the process's host, logs and var
directory); each service owns its own settings class next to its code. A test checks
the README's table of environment variables and `deploy/local/services.txt` against
these classes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Every next-best-action decision (cx.personalisation.v1.DecisionRecord).
    decisions_topic: str = "cx.decisions.v1"
    # Every change of an alerts incident (cx.alerts.v1.IncidentChange), keyed by profile id
    # (the incident's dedup key when it has no person).
    experience_incidents_topic: str = "cx.experience-incidents.v1"


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"


class ProcessSettings(BaseSettings):
    """What every service process shares: where it binds, how it logs, where its files go.

    Each service's own settings (ports, files, tuning) live in its package, for example
    `services.ingest.settings.IngestSettings` and `services.profile.settings.ProfileSettings`.
    """

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    grpc_host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    # Pids, logs and data of the local stack, and Faust's data directories.
    cx_var_dir: Path = Path("var")


@lru_cache(maxsize=1)
def kafka_settings() -> KafkaSettings:
    return KafkaSettings()


@lru_cache(maxsize=1)
def redis_settings() -> RedisSettings:
    return RedisSettings()


@lru_cache(maxsize=1)
def process_settings() -> ProcessSettings:
    return ProcessSettings()


def grpc_address(port: int, settings: ProcessSettings | None = None) -> str:
    """host:port of a gRPC server on this stack (clients and servers alike)."""
    return f"{(settings or process_settings()).grpc_host}:{port}"
