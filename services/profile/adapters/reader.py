"""Synchronous reads for the profile gRPC server: resolving identifiers, loading a
profile's structures, its events and segment members. Key names and encodings are
`layout.py`'s; erasure (`erasure.py`) and split and unmerge (`split.py`) have their own
modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from cx.events.v1 import touchpoint_pb2 as ev
from redis.client import Pipeline

from services.common.heartbeat import alive
from services.profile.adapters.layout import (
    COMPLAINTS,
    CONSENT,
    FOLLOW_HOPS,
    INCIDENTS,
    LATEST_HASHES,
    TRAITS,
    Keys,
    Lineage,
    StoredProfile,
    as_text,
    decode_lineage,
    text_map,
)
from services.profile.settings import ProfileSettings


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
        self._queue_load(pipe, pid)
        return self._loaded(pid, pipe.execute())

    def load_identified(self, id_type: str, value: str) -> LoadedProfile | None:
        """`load(profile_id(id_type, value))` in two round trips when the identifier's
        profile was not merged: a GET of the identity key, then one transaction reading
        the alias of its profile and the structures `load` reads. Only when the alias
        says the profile was merged is the survivor loaded the same way (at most
        FOLLOW_HOPS times, as `follow`). A profile id (id_type `pid`) skips the GET."""
        if id_type == "pid":
            pid = value
        else:
            owner = self.client.get(self.keys.identity(id_type, value))
            if owner is None:
                return None
            pid = as_text(owner)
        for _ in range(FOLLOW_HOPS):
            # One snapshot: a merge cannot fall between the alias and the structures.
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(self.keys.alias, pid)
            self._queue_load(pipe, pid)
            survivor, *replies = pipe.execute()
            if survivor is None:
                return self._loaded(pid, replies)
            pid = as_text(survivor)
        return self.load(pid)

    def _queue_load(self, pipe: Pipeline, pid: str) -> None:
        """The reads of a profile's structures, in the order `_loaded` takes them."""
        pipe.hgetall(self.keys.profile(pid))
        pipe.hgetall(self.keys.profile(pid, "ids"))
        for sub in LATEST_HASHES:
            pipe.hgetall(self.keys.profile(pid, sub))
        pipe.zrange(self.keys.profile(pid, "contacts"), 0, -1, withscores=True)
        pipe.hgetall(self.keys.profile(pid, "touchpoints"))

    @staticmethod
    def _loaded(pid: str, replies: Sequence[Any]) -> LoadedProfile | None:
        """The profile of `_queue_load`'s replies; None when it has no identifiers (it
        does not exist, was merged away or erased)."""
        main, ids, *latest, contacts, touchpoints = replies
        if not ids:
            return None
        links = text_map(ids)
        hashes = {sub: text_map(raw) for sub, raw in zip(LATEST_HASHES, latest, strict=True)}
        stored = StoredProfile(
            pid,
            text_map(main),
            set(links),
            hashes[TRAITS],
            hashes[CONSENT],
            hashes[COMPLAINTS],
            {as_text(m): float(s) for m, s in contacts},
            touchpoints=text_map(touchpoints),
            incidents=hashes[INCIDENTS],
        )
        return LoadedProfile(stored, [decode_lineage(m, links[m]) for m in sorted(links)])

    def workers_alive(self) -> int:
        """Stream workers whose heartbeat has not expired."""
        return alive(self.client, self.keys.workers)

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
