"""Synchronous Redis access for the profile gRPC server: reads, export and erasure.
Key names and encodings are `layout.py`'s."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import cast

import redis
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.identifiers import identifiers_of
from services.profile.adapters.layout import (
    CREATED,
    EVENTS,
    FOLLOW_HOPS,
    IDENTITY_UPDATED,
    LATEST_HASHES,
    SEGMENTS,
    SNAPSHOT,
    Keys,
    Lineage,
    StoredProfile,
    as_text,
    decode_lineage,
    decode_merge,
    decode_segment_list,
    erased_digest,
    id_count_field,
    identifier_member,
    lua_script,
    main_field,
    split_member,
    state_to_redis,
    text_map,
)
from services.profile.domain.effects import timestamp_ms
from services.profile.domain.fold import fold
from services.profile.settings import ProfileSettings

# Lineage is imported from here by callers written before layout.py.
__all__ = ["Lineage", "LoadedProfile", "ProfileReader", "ProfileSplitter", "SplitConflict"]


@dataclass
class LoadedProfile:
    stored: StoredProfile
    lineage: list[Lineage]


class ProfileReader:
    def __init__(self, client: redis.Redis, settings: ProfileSettings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)

    def follow(self, pid: str) -> str:
        for _ in range(FOLLOW_HOPS):
            nxt = self.client.hget(self.keys.alias, pid)
            if nxt is None:
                return pid
            pid = as_text(nxt)
        return pid

    def profile_id(self, id_type: str, value: str) -> str | None:
        """The live profile an identifier belongs to (id_type `pid` for a profile id)."""
        if id_type == "pid":
            pid = self.follow(value)
        else:
            owner = self.client.get(self.keys.identity(id_type, value))
            if owner is None:
                return None
            pid = self.follow(as_text(owner))
        return pid if self.client.exists(self.keys.profile(pid, "ids")) else None

    def load(self, pid: str) -> LoadedProfile | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.profile(pid))
        pipe.hgetall(self.keys.profile(pid, "ids"))
        for sub in LATEST_HASHES:
            pipe.hgetall(self.keys.profile(pid, sub))
        pipe.zrange(self.keys.profile(pid, "contacts"), 0, -1, withscores=True)
        pipe.hgetall(self.keys.profile(pid, "touchpoints"))
        main, ids, traits, consent, complaints, contacts, touchpoints = pipe.execute()
        if not ids:
            return None
        links = text_map(ids)
        stored = StoredProfile(
            pid,
            text_map(main),
            set(links),
            text_map(traits),
            text_map(consent),
            text_map(complaints),
            {as_text(m): float(s) for m, s in contacts},
            touchpoints=text_map(touchpoints),
        )
        return LoadedProfile(stored, [decode_lineage(m, links[m]) for m in sorted(links)])

    def workers_alive(self) -> int:
        """Stream workers whose heartbeat has not expired."""
        return int(self.client.zcount(self.keys.workers, time.time(), "+inf"))

    def events(self, pid: str, start: int = 0, stop: int = -1) -> list[ev.TouchpointEvent]:
        raw = self.client.zrevrange(self.keys.profile(pid, "events"), start, stop)
        return [ev.TouchpointEvent.FromString(cast(bytes, b)) for b in raw]

    def segment_members(self, name: str, start: int, count: int) -> tuple[list[str], int]:
        key = self.keys.segment(name)
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(key, start, start + count - 1)
        pipe.zcard(key)
        members, total = pipe.execute()
        return [as_text(m) for m in members], int(total)

    def erasure_salt(self) -> str:
        if self.settings.erasure_salt:
            return self.settings.erasure_salt
        self.client.set(self.keys.salt, secrets.token_hex(16), nx=True)
        return as_text(self.client.get(self.keys.salt) or b"")

    def erase(self, pid: str) -> tuple[int, int]:
        """Keys deleted and identifiers suppressed; (0, 0) when there is no such profile."""
        loaded = self.load(pid)
        if loaded is None:
            return 0, 0
        salt = self.erasure_salt()
        ttl = self.settings.erasure_suppression_days * 86_400
        segments = loaded.stored.main.get(main_field(SNAPSHOT, SEGMENTS), "")
        aliases = [
            as_text(k) for k, v in self.client.hgetall(self.keys.alias).items() if as_text(v) == pid
        ]
        pipe = self.client.pipeline(transaction=True)
        keys = self.keys.all_of_profile(pid)
        for t, value in (ln.identifier for ln in loaded.lineage):
            keys.append(self.keys.identity(t, value))
            pipe.set(self.keys.erased(erased_digest(salt, t, value)), 1, ex=ttl)
        for seg in decode_segment_list(segments):
            pipe.zrem(self.keys.segment(seg), pid)
        if aliases:
            pipe.hdel(self.keys.alias, *aliases)
        pipe.delete(*keys)
        results = pipe.execute()
        return int(results[-1]), len(loaded.lineage)


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
