"""Personalisation service settings (environment variables with local defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_DIR = Path(__file__).parent / "config"


class PersonalisationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PERSONALISATION_", extra="ignore")

    grpc_port: int = 50053
    # Prometheus /metrics of the gRPC server (0 turns it off).
    metrics_port: int = 9466
    catalogue_file: Path = CONFIG_DIR / "catalogue.toml"
    # How often the catalogue file is checked for changes (hot reload).
    catalogue_check_every_s: float = 2.0
    # How decisions read the profile: `grpc` (ProfileService.GetFeatures) or `reader`
    # (the profile service's reader as a library, straight from its Redis).
    profile_source: Literal["grpc", "reader"] = "grpc"
    # The profile service, for profile_source=grpc; empty: this stack's profile port.
    profile_address: str = ""
    # A profile read that takes longer fails the decision with UNAVAILABLE.
    profile_timeout_s: float = 0.5
    # Share of people (stable hash of the profile id) served by the control policy.
    holdout_percent: float = 10.0
    # Changing the salt reshuffles who is in the holdout.
    holdout_salt: str = "holdout-1"
    # Outcomes may be reported for a decision this long after it was made.
    decision_ttl_s: int = 7 * 24 * 3600
    # Redis keys of the contact ledger and the decisions start with this.
    key_prefix: str = "cx:"
    # The decision log's producer keeps records this long while Kafka is away.
    decision_log_timeout_s: float = 300.0
    # Rewards, settling window, the model's options and checkpoints (learning.toml).
    learning_file: Path = CONFIG_DIR / "learning.toml"
    # How often a Decide server checks for a new model version (no restart needed).
    model_check_every_s: float = 2.0
    # The learner (services/personalisation/learner.py): Faust app id and consumer group
    # on the decision log and the touchpoint topic, its /metrics (0 turns it off), the
    # topic its undecodable decision records go to, and how long its training lease lasts
    # unrenewed (a killed learner's successor waits this long to train).
    learner_consumer_group: str = "cx-personalisation-learner"
    learner_metrics_port: int = 9472
    learner_dlq_topic: str = "cx.decisions.dlq.v1"
    learner_lease_s: float = 10.0
