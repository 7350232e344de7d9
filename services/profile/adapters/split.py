"""RemoveIdentifier and UnmergeProfile: identifiers (and the events that are theirs
alone) split off a profile, both sides rebuilt from their own events by the reference
fold and written by `split.lua` with an optimistic check on the source's event count."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

from cx.events.v1 import touchpoint_pb2 as ev

from services.common.identifiers import identifiers_of
from services.profile.adapters.layout import (
    CREATED,
    EVENTS,
    IDENTITY_UPDATED,
    SNAPSHOT,
    as_text,
    decode_merge,
    id_count_field,
    identifier_member,
    lua_script,
    main_field,
    split_member,
    state_to_redis,
)
from services.profile.domain.effects import timestamp_ms
from services.profile.domain.fold import fold

if TYPE_CHECKING:
    from services.profile.adapters.reader import ProfileReader


class SplitConflict(Exception):
    """The profile kept changing while it was being split; the caller may retry."""


def _kept(main: dict[str, str]) -> dict[str, str]:
    """Fields a rebuild keeps from the stored profile: they are not derived from its
    events (the published snapshot, creation, the last identity change)."""
    return {
        k: v
        for k, v in main.items()
        if k.startswith(main_field(SNAPSHOT, "")) or k in (CREATED, IDENTITY_UPDATED)
    }


def _id_counts(ids: set[str]) -> dict[str, str]:
    counts: dict[str, int] = {}
    for member in ids:
        t, _ = split_member(member)
        counts[t] = counts.get(t, 0) + 1
    return {id_count_field(t): str(n) for t, n in counts.items()}


def _members(event: ev.TouchpointEvent) -> set[str]:
    return {identifier_member(t, v) for t, v in identifiers_of(event)}


class ProfileSplitter:
    """RemoveIdentifier and UnmergeProfile: both sides rebuilt from their own events."""

    def __init__(self, reader: ProfileReader) -> None:
        self.reader = reader
        self._split = reader.client.register_script(lua_script("split.lua"))

    def split(self, pid: str, moving: set[str], target: str, record: str = "") -> str:
        for _ in range(5):
            loaded = self.reader.load(pid)
            if loaded is None:
                return "gone"
            events = self.reader.events(pid)
            remaining = loaded.stored.ids - moving
            theirs = [e for e in events if _members(e) & moving and not _members(e) & remaining]
            ours = [e for e in events if e not in theirs]
            source_side = state_to_redis(fold(ours, pid))
            source_side["main"].update(_kept(loaded.stored.main))
            source_side["main"].update(_id_counts(remaining))
            target_side = state_to_redis(fold(theirs, target))
            first = min((timestamp_ms(e) for e in theirs), default=int(time.time() * 1000))
            target_side["main"].update({CREATED: str(first), **_id_counts(moving)})
            plan = {
                "source": source_side,
                "target": target_side,
                "ids": sorted(moving),
                "record": record,
            }
            outcome = as_text(
                self._split(
                    args=[
                        self.reader.settings.key_prefix,
                        pid,
                        target,
                        loaded.stored.main.get(EVENTS, ""),
                        json.dumps(plan),
                        *[e.SerializeToString() for e in theirs],
                    ]
                )
            )
            if outcome != "conflict":
                return outcome
        raise SplitConflict(f"profile {pid} kept changing; try again")

    def remove_identifier(self, pid: str, identifier: str) -> str:
        target = "p_" + hashlib.sha1(f"split|{identifier}|{pid}".encode()).hexdigest()[:20]
        outcome = self.split(pid, {identifier}, target)
        if outcome != "ok":
            raise SplitConflict(f"could not split {pid}: {outcome}")
        return target

    def unmerge(self, pid: str, merged_pid: str) -> str | None:
        """Restores `merged_pid` with the identifiers it brought; None if no such merge."""
        for raw in self.reader.client.lrange(self.reader.keys.profile(pid, "merges"), 0, -1):
            record = as_text(raw)
            entry = decode_merge(record)
            if entry.loser != merged_pid:
                continue
            loaded = self.reader.load(pid)
            ids = set(entry.ids) & (loaded.stored.ids if loaded else set())
            if not ids:
                return None
            outcome = self.split(pid, ids, merged_pid, record)
            if outcome != "ok":
                raise SplitConflict(f"could not unmerge {merged_pid} from {pid}: {outcome}")
            return merged_pid
        return None
