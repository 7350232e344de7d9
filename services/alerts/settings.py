"""Alerts service settings (environment variables with local defaults).

One class for the service's four processes: the stream worker (detection), the notifier
(delivery), the gRPC server and the local receiver sink.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_DIR = Path(__file__).parent / "config"


class AlertsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALERTS_", extra="ignore")

    grpc_port: int = 50054
    # Prometheus /metrics of the gRPC server, the stream worker and the notifier (0 turns
    # one off).
    metrics_port: int = 9467
    worker_metrics_port: int = 9469
    notifier_metrics_port: int = 9470
    # The local receiver sink (PagerDuty, Alertmanager webhook, Slack and webhook
    # endpoints) that the local stack's receivers point at.
    sink_port: int = 9471
    # Alertmanager's API (v2); the local stack runs one on this port.
    alertmanager_url: str = "http://127.0.0.1:9095"
    # Detection rules and the teams, routing and receivers (reloaded when they change).
    rules_file: Path = CONFIG_DIR / "rules.toml"
    owners_file: Path = CONFIG_DIR / "owners.toml"
    # Redis keys of incidents, windows, timers, silences and the outbox start with this.
    key_prefix: str = "cx:"
    # Faust app id and consumer group of the stream worker on the touchpoint topic.
    consumer_group: str = "cx-alerts"
    # The profile service (ProfileService.GetFeatures); empty: this stack's profile port.
    profile_address: str = ""
    # A profile read that takes longer fails the batch, which is retried (as when the profile
    # service is down): nothing is paged with a severity that ignores who the person is.
    profile_timeout_s: float = 0.5
    # A page is retried for as long as its outbox entry is younger than this.
    delivery_max_age_s: int = 86400
    # How often the worker runs its time-based checks (SLA timers, spike clears,
    # escalations).
    timer_every_s: float = 1.0
