"""The profile as stored: aggregates that any order of events (and any merge) agrees on.

The Redis layout is generic so that applying and merging need no per-metric code in Lua:

- main hash `cx:p:{id}`, fields named by how they combine:
  `c:<name>` sums (counters, money), `mn:<name>` minimum, `mx:<name>` maximum,
  `l:<name>` = `<ts_ms>|<value>` latest value by event time, `s:<name>` the derived snapshot
  last published as change events;
- sub-hashes (traits, consent, complaints) whose values are `<ts_ms>|<value>`, latest wins;
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
        cls,
        profile_id: str,
        main: Mapping[str, str],
        *,
        identities: set[str] | frozenset[str] = frozenset(),
        traits: Mapping[str, str] | None = None,
        consent: Mapping[str, str] | None = None,
        complaints: Mapping[str, str] | None = None,
        contacts: Mapping[str, float] | None = None,
        touchpoints: Mapping[str, str] | None = None,
    ) -> ProfileState:
        state = cls(profile_id)
        for key, value in main.items():
            kind, _, name = key.partition(":")
            if kind == "c":
                state.sums[name] = float(value)
            elif kind == "mn":
                state.minima[name] = float(value)
            elif kind == "mx":
                state.maxima[name] = float(value)
            elif kind == "l":
                ts, _, latest = value.partition("|")
                state.latest[name] = Latest(latest, int(ts))
            elif kind == "s":
                state.snapshot[name] = value
        state.identities = {tuple(i.split(":", 1)) for i in identities}  # type: ignore[misc]
        state.traits = _latest_map(traits)
        state.consent = _latest_map(consent)
        state.complaints = _latest_map(complaints)
        state.touchpoints = {k: int(v) for k, v in (touchpoints or {}).items()}
        state.contacts = sorted(
            (_contact(member, score) for member, score in (contacts or {}).items()),
            key=lambda c: c.ts_ms,
        )
        return state


def _latest_map(raw: Mapping[str, str] | None) -> dict[str, Latest]:
    out = {}
    for key, packed in (raw or {}).items():
        ts, _, value = packed.partition("|")
        out[key] = Latest(value, int(ts))
    return out


def _contact(member: str, score: float) -> Contact:
    # member: "<contact_id>|<reason>|<resolved 0/1>"
    contact_id, reason, resolved = [*member.split("|"), "", ""][:3]
    return Contact(int(score), contact_id, reason, resolved == "1")
