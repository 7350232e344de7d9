"""Synchronous Redis access for the profile gRPC server: reads, export and erasure."""

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
from services.profile.adapters.store import (
    Keys,
    StoredProfile,
    as_text,
    lua_script,
    state_to_redis,
)
from services.profile.domain.effects import timestamp_ms
from services.profile.domain.fold import fold
from services.profile.settings import ProfileSettings


@dataclass(frozen=True)
class Lineage:
    identifier: tuple[str, str]
    event_id: str
    linked_at_ms: int
    source_system: str


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
        for _ in range(16):
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
        for sub in ("traits", "consent", "complaints"):
            pipe.hgetall(self.keys.profile(pid, sub))
        pipe.zrange(self.keys.profile(pid, "contacts"), 0, -1, withscores=True)
        pipe.hgetall(self.keys.profile(pid, "touchpoints"))
        main, ids, traits, consent, complaints, contacts, touchpoints = pipe.execute()
        if not ids:
            return None
        links = {as_text(k): as_text(v) for k, v in ids.items()}
        idents = sorted(links)
        lineage = []
        for ident in idents:
            t, _, value = ident.partition(":")
            event_id, at, source = [*links[ident].split("|", 2), "", ""][:3]
            lineage.append(Lineage((t, value), event_id, int(at or 0), source))

        def text_map(raw: dict[bytes, bytes]) -> dict[str, str]:
            return {as_text(k): as_text(v) for k, v in raw.items()}

        stored = StoredProfile(
            pid,
            text_map(main),
            set(idents),
            text_map(traits),
            text_map(consent),
            text_map(complaints),
            {as_text(m): float(s) for m, s in contacts},
            touchpoints=text_map(touchpoints),
        )
        return LoadedProfile(stored, lineage)

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
        """Deletes every key of the profile and its identity links; identifiers are kept
        only as salted hashes that expire after the suppression period."""
        loaded = self.load(pid)
        if loaded is None:
            return 0, 0
        salt = self.erasure_salt()
        ttl = self.settings.erasure_suppression_days * 86_400
        segments = loaded.stored.main.get("s:segments", "")
        aliases = [
            as_text(k) for k, v in self.client.hgetall(self.keys.alias).items() if as_text(v) == pid
        ]
        pipe = self.client.pipeline(transaction=True)
        keys = self.keys.all_of_profile(pid)
        for t, value in (ln.identifier for ln in loaded.lineage):
            keys.append(self.keys.identity(t, value))
            digest = hashlib.sha1(f"{salt}{t}:{value}".encode()).hexdigest()
            pipe.set(f"{self.settings.key_prefix}erased:{digest}", 1, ex=ttl)
        for seg in filter(None, segments.split(",")):
            pipe.zrem(self.keys.segment(seg), pid)
        if aliases:
            pipe.hdel(self.keys.alias, *aliases)
        pipe.delete(*keys)
        results = pipe.execute()
        return int(results[-1]), len(loaded.lineage)


class SplitConflict(Exception):
    """The profile kept changing while it was being split; the caller may retry."""


# Fields a rebuild keeps from the stored profile: they are not derived from its events.
def _kept(main: dict[str, str]) -> dict[str, str]:
    return {
        k: v for k, v in main.items() if k.startswith("s:") or k in ("mn:created", "l:u.identity")
    }


def _id_counts(ids: set[str]) -> dict[str, str]:
    counts: dict[str, int] = {}
    for ident in ids:
        counts[ident[0]] = counts.get(ident[0], 0) + 1
    return {f"c:ids.{t}": str(n) for t, n in counts.items()}


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

            def idents(e: ev.TouchpointEvent) -> set[str]:
                return {f"{t}:{v}" for t, v in identifiers_of(e)}

            theirs = [e for e in events if idents(e) & moving and not idents(e) & remaining]
            ours = [e for e in events if e not in theirs]
            source_side = state_to_redis(fold(ours, pid))
            source_side["main"].update(_kept(loaded.stored.main))
            source_side["main"].update(_id_counts(remaining))
            target_side = state_to_redis(fold(theirs, target))
            first = min((timestamp_ms(e) for e in theirs), default=int(time.time() * 1000))
            target_side["main"].update({"mn:created": str(first), **_id_counts(moving)})
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
                        loaded.stored.main.get("c:events", ""),
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
            entry = json.loads(record)
            if entry.get("loser") != merged_pid:
                continue
            loaded = self.reader.load(pid)
            ids = set(entry.get("ids") or []) & (loaded.stored.ids if loaded else set())
            if not ids:
                return None
            outcome = self.split(pid, ids, merged_pid, record)
            if outcome != "ok":
                raise SplitConflict(f"could not unmerge {merged_pid} from {pid}: {outcome}")
            return merged_pid
        return None
