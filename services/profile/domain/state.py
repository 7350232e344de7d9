"""The profile as stored: aggregates that any order of events (and any merge) agrees on.

The stored layout is generic so that applying and merging need no per-metric code in Lua
(key names and encodings: `services/profile/adapters/layout.py`, with the values
the domain packs itself in `codec.py`):

- a main hash, fields named by how they combine: sums (counters, money), minimum,
  maximum, latest value by event time, and the derived snapshot last published as change
  events;
- sub-hashes (traits, consent, complaints, incidents) of latest values by event time;
- sorted sets (support contacts, the event archive) scored by event time;
- a counter hash of events per touchpoint (summed on merge).

Time-decayed averages are kept as two sums, `c:<m>.sw` (sum of weights) and `c:<m>.swx`
(sum of weight x value), with weight = 2^((t - DECAY_EPOCH) / half-life): the average
favours recent answers, and it is a plain sum, so order and merges do not change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Reference time of the decay weights; weights stay well inside a double for decades.
DECAY_EPOCH_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
HALF_LIFE_DAYS = {"csat": 30.0, "sentiment": 14.0}


def decay_weight(metric: str, ts_ms: int) -> float:
    half_life_ms = HALF_LIFE_DAYS[metric] * 86_400_000
    return float(2.0 ** ((ts_ms - DECAY_EPOCH_MS) / half_life_ms))


@dataclass(frozen=True)
class Latest:
    value: str
    ts_ms: int


@dataclass(frozen=True)
class Contact:
    ts_ms: int
    contact_id: str
    reason: str
    resolved: bool


@dataclass
class ProfileState:
    """Everything derivations read, parsed from the Redis structures of one profile."""

    profile_id: str
    sums: dict[str, float] = field(default_factory=dict)
    minima: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)
    latest: dict[str, Latest] = field(default_factory=dict)
    snapshot: dict[str, str] = field(default_factory=dict)
    identities: set[tuple[str, str]] = field(default_factory=set)
    traits: dict[str, Latest] = field(default_factory=dict)
    consent: dict[str, Latest] = field(default_factory=dict)
    complaints: dict[str, Latest] = field(default_factory=dict)
    incidents: dict[str, Latest] = field(default_factory=dict)
    contacts: list[Contact] = field(default_factory=list)
    touchpoints: dict[str, int] = field(default_factory=dict)

    def sum(self, name: str) -> float:
        return self.sums.get(name, 0.0)

    def count(self, name: str) -> int:
        return int(self.sums.get(name, 0.0))

    def decayed_average(self, metric: str) -> float | None:
        weight = self.sums.get(f"{metric}.sw", 0.0)
        return self.sums[f"{metric}.swx"] / weight if weight > 0 else None

    def latest_number(self, name: str) -> float | None:
        item = self.latest.get(name)
        return float(item.value) if item is not None and item.value != "" else None

    @classmethod
    def from_redis(
        cls, profile_id: str, main: Mapping[str, str], **structures: Any
    ) -> ProfileState:
        """The state of a profile's stored structures: `layout.state_from_redis`, the
        codec of the stored format, imported here since the layout imports this module."""
        from services.profile.adapters.layout import state_from_redis

        return state_from_redis(profile_id, main, **structures)
