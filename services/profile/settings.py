"""Profile service settings (environment variables with local defaults)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.identifiers import PERSON_TYPES
from services.profile.domain.segments import DEFAULT_PATH as DEFAULT_SEGMENTS_FILE

CONFIG_DIR = Path(__file__).parent / "config"


class ProfileSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROFILE_", extra="ignore")

    grpc_port: int = 50052
    # Prometheus /metrics of the gRPC server and of the stream worker (0 turns one off).
    metrics_port: int = 9465
    worker_metrics_port: int = 9468
    key_prefix: str = "cx:"
    # Event ids are remembered this long (longer than the touchpoint topic's retention).
    dedup_window_s: int = 8 * 24 * 3600
    # Events kept per profile: the timeline, and the source of unmerge rebuilds.
    events_kept: int = 500
    # The timeline shows the newest this many events, at most timeline_max_page a page.
    timeline_size: int = 200
    timeline_max_page: int = 200
    batch_size: int = 500
    # Bundles (one per partition and resolve batch) the apply step takes at once; about
    # batch_size events when one worker owns all partitions.
    bundles_per_apply: int = 8
    # How long a batch waits to fill: the latency a quiet stream pays at each stage.
    batch_within_s: float = 0.005
    erasure_suppression_days: int = 30
    # Salt for erased identifiers' hashes; generated once and kept in Redis when unset.
    erasure_salt: str = ""
    identity_file: Path = CONFIG_DIR / "identity.toml"
    segments_file: Path = DEFAULT_SEGMENTS_FILE
    consumer_group: str = "cx-profile"


@dataclass(frozen=True)
class Guardrails:
    """Identity-resolution limits by identifier code, and blocked (code, value) pairs."""

    limits: dict[str, int]
    blocked: frozenset[tuple[str, str]]

    @classmethod
    def load(cls, path: Path) -> Guardrails:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        codes = {t.name: t.code for t in PERSON_TYPES}
        limits: dict[str, int] = {}
        blocked: set[tuple[str, str]] = set()
        for name, limit in raw.get("limits", {}).items():
            if name not in codes:
                raise ValueError(f"{path}: [limits] {name} is not an identifier type")
            limits[codes[name]] = int(limit)
        for name, values in raw.get("blocked", {}).items():
            if name not in codes:
                raise ValueError(f"{path}: [blocked] {name} is not an identifier type")
            blocked.update((codes[name], v) for v in values)
        return cls(limits, frozenset(blocked))
