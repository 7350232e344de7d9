"""Synchronous reads for the profile gRPC server: resolving identifiers, loading a
profile's structures, its events and segment members. Key names and encodings are
`layout.py`'s; erasure (`erasure.py`) and split and unmerge (`split.py`) have their own
modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.heartbeat import alive
from services.profile.adapters.layout import (
    FOLLOW_HOPS,
    LATEST_HASHES,
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
