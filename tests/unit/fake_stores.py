"""In-memory stand-ins for the profile's Redis structures: the worker's store
(`ProfileStore`) for unit tests of the pipeline, and the stored profile of some events for
the views and the gRPC servicer, without Redis."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from cx.events.v1 import touchpoint_pb2 as ev

from services.profile.adapters.store import (
    Resolved,
    SnapshotUpdate,
    StoredProfile,
    ToApply,
    state_to_redis,
)
from services.profile.domain.effects import timestamp_ms
from services.profile.domain.fold import apply_effects, fold, identifiers_of
from services.profile.domain.state import ProfileState


def stored_profile(
    state: ProfileState, outbox: Sequence[dict[str, Any]] | None = None
) -> StoredProfile:
    """The structures Redis holds for a profile state, its published snapshot (`s:`
    fields) included: as the reader loads them, or with `outbox` as apply.lua replies
    them (a reply has no touchpoint counts)."""
    raw = state_to_redis(state)
    return StoredProfile(
        state.profile_id,
        main=raw["main"] | {f"s:{k}": v for k, v in state.snapshot.items()},
        ids={f"{t}:{value}" for t, value in state.identities},
        traits=raw["traits"],
        consent=raw["consent"],
        complaints=raw["complaints"],
        contacts={member: float(score) for member, score in raw["contacts"]},
        outbox=[] if outbox is None else list(outbox),
        touchpoints=raw["touchpoints"] if outbox is None else {},
        incidents=raw["incidents"],
    )


def stored(events: Sequence[ev.TouchpointEvent], profile_id: str = "p-1") -> StoredProfile:
    """The structures the store would hold for these events (the reference fold)."""
    return stored_profile(fold(events, profile_id))


@dataclass
class StoreFailingOn:
    """Applies everything except events whose id is in `poison` (a data error), and
    fails the first `outages` calls with a connection error."""

    poison: set[str]
    outages: int = 0
    applied: list[str] = field(default_factory=list)

    async def resolve(self, events: Sequence[ev.TouchpointEvent]) -> list[Resolved]:
        await self._maybe_down()
        if any(e.event_id in self.poison for e in events):
            raise ValueError("cannot resolve")
        return [Resolved(f"p-{e.event_id}") for e in events]

    async def apply(self, batch: Sequence[Any]) -> tuple[list[str], list[StoredProfile]]:
        await self._maybe_down()
        if any(item.event.event_id in self.poison for item in batch):
            raise redis.exceptions.ResponseError("ERR user_script: bad value")
        self.applied += [item.event.event_id for item in batch]
        return ["applied"] * len(batch), []

    async def publish(self, updates: Sequence[Any]) -> None:
        return None

    async def _maybe_down(self) -> None:
        if self.outages:
            self.outages -= 1
            raise redis.exceptions.ConnectionError("Error 111 connecting")


@dataclass
class _Profile:
    state: ProfileState
    outbox: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MemoryStore:
    """`apply` and `publish` with the scripts' semantics (apply.lua, publish.lua): an
    event id applies once; each new event's operations (the reference fold) and outbox
    signals are kept; the reply holds every touched profile, the published snapshot (`s:`
    fields) and the outbox included; `publish` records a snapshot and trims the outbox.
    Profiles in `gone` (merged or erased) take nothing."""

    gone: set[str] = field(default_factory=set)
    profiles: dict[str, _Profile] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    published: list[SnapshotUpdate] = field(default_factory=list)
    segments: dict[str, set[str]] = field(default_factory=dict)

    async def apply(self, batch: Sequence[ToApply]) -> tuple[list[str], list[StoredProfile]]:
        statuses: list[str] = []
        touched: list[str] = []
        for item in batch:
            pid, event = item.profile_id, item.event
            if pid in self.gone:
                statuses.append("gone")
                continue
            profile = self.profiles.setdefault(pid, _Profile(ProfileState(pid)))
            if event.event_id in self.seen:
                statuses.append("duplicate")
            else:
                self.seen.add(event.event_id)
                statuses.append("applied")
                profile.state.identities.update(identifiers_of(event))
                apply_effects(profile.state, item.effects, timestamp_ms(event))
                profile.outbox += [
                    json.loads(json.dumps({"k": kind, "e": event.event_id, **payload}))
                    for kind, payload in item.effects.signals
                ]
            if pid not in touched:
                touched.append(pid)
        return statuses, [self.stored(pid) for pid in touched]

    async def publish(self, updates: Sequence[SnapshotUpdate]) -> None:
        for u in updates:
            profile = self.profiles.get(u.profile_id)
            if profile is None or u.profile_id in self.gone:
                continue
            self.published.append(u)
            profile.state.snapshot.update(u.snapshot)
            for name in u.segments_entered:
                self.segments.setdefault(name, set()).add(u.profile_id)
            for name in u.segments_left:
                self.segments.get(name, set()).discard(u.profile_id)
            del profile.outbox[: u.outbox_done]

    def stored(self, pid: str) -> StoredProfile:
        profile = self.profiles[pid]
        return stored_profile(profile.state, profile.outbox)
