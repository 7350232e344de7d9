"""Redis adapter of the profile service: every key, script and round trip lives here.

Keys (prefix `cx:` by default):
  p:{id}               hash of aggregates (see domain/state.py)
  p:{id}:ids           hash: "t:value" identifier (t: c customer, e email, p phone, a anon)
                       -> lineage of its link "<event id>|<ts ms>|<source system>"
  p:{id}:traits|consent|complaints   hashes of "<ts_ms>|<value>", latest wins
  p:{id}:contacts      sorted set of support contacts by time
  p:{id}:touchpoints   hash: events per touchpoint
  p:{id}:events        sorted set of the profile's stored events (protobuf) by time
  p:{id}:outbox        list of signals not yet published as change events
  p:{id}:merges        list of merges into this profile (for UnmergeProfile)
  p:{id}:apart         profiles split off this one, never merged back automatically
  id:{t}:{value}       string: the owning profile
  alias                hash: merged profile id -> surviving profile id
  seen:{event id}      applied event ids, expiring after the dedup window
  seg:{name}           sorted set of segment members by entry time
  erased:{hash}        salted hashes of erased identifiers, expiring after suppression
  stats                counts: profiles_created, merges, stitched (identifiers linked to a
                       known profile), applied events, and events not
                       applied: suppressed (erased), blocked
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.identifiers import identifiers_of
from services.profile.domain.effects import Effects, timestamp_ms
from services.profile.domain.state import ProfileState
from services.profile.settings import Guardrails, ProfileSettings

LUA_DIR = Path(__file__).parent / "lua"
SUBKEYS = (
    "ids",
    "traits",
    "consent",
    "complaints",
    "contacts",
    "touchpoints",
    "events",
    "outbox",
    "merges",
    "apart",
)


def lua_script(name: str) -> str:
    """A script with the shared prelude (key helpers, latest-value rule) in front."""
    return (LUA_DIR / "prelude.lua").read_text() + "\n" + (LUA_DIR / name).read_text()


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def profile(self, pid: str, sub: str = "") -> str:
        return f"{self.prefix}p:{pid}" + (f":{sub}" if sub else "")

    def identity(self, t: str, value: str) -> str:
        return f"{self.prefix}id:{t}:{value}"

    def segment(self, name: str) -> str:
        return f"{self.prefix}seg:{name}"

    @property
    def alias(self) -> str:
        return f"{self.prefix}alias"

    @property
    def workers(self) -> str:
        """Stream workers, scored by when their heartbeat expires (epoch seconds)."""
        return f"{self.prefix}workers"

    @property
    def salt(self) -> str:
        return f"{self.prefix}erasure-salt"

    def all_of_profile(self, pid: str) -> list[str]:
        return [self.profile(pid)] + [self.profile(pid, s) for s in SUBKEYS]


@dataclass(frozen=True)
class Resolved:
    profile_id: str | None
    reason: str | None = None
    merged: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToApply:
    profile_id: str
    event: ev.TouchpointEvent
    effects: Effects


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes | str] | dict[str, Any]) -> dict[str, str]:
    # Lua's cjson encodes an empty array as {}.
    if isinstance(flat, dict):
        return {}
    return {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _items(raw: Sequence[Any] | dict[str, Any]) -> Sequence[Any]:
    return [] if isinstance(raw, dict) else raw


@dataclass
class StoredProfile:
    """A profile's structures as the apply script returned them."""

    profile_id: str
    main: dict[str, str]
    ids: set[str]
    traits: dict[str, str]
    consent: dict[str, str]
    complaints: dict[str, str]
    contacts: dict[str, float]
    outbox: list[dict[str, Any]] = field(default_factory=list)
    touchpoints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, raw: Sequence[Any]) -> StoredProfile:
        contacts_flat = _items(raw[6])
        return cls(
            profile_id=as_text(raw[0]),
            main=_pairs(raw[1]),
            ids={as_text(m) for m in _items(raw[2])},
            traits=_pairs(raw[3]),
            consent=_pairs(raw[4]),
            complaints=_pairs(raw[5]),
            contacts={
                as_text(contacts_flat[i]): float(contacts_flat[i + 1])
                for i in range(0, len(contacts_flat), 2)
            },
            outbox=[json.loads(item) for item in _items(raw[7])],
        )

    def state(self) -> ProfileState:
        return ProfileState.from_redis(
            self.profile_id,
            self.main,
            identities=self.ids,
            traits=self.traits,
            consent=self.consent,
            complaints=self.complaints,
            contacts=self.contacts,
            touchpoints=self.touchpoints,
        )


@dataclass(frozen=True)
class SnapshotUpdate:
    """What the worker publishes after the change events of one profile were sent."""

    profile_id: str
    snapshot: dict[str, str]
    segments_entered: tuple[str, ...] = ()
    segments_left: tuple[str, ...] = ()
    outbox_done: int = 0
    at_ms: int = 0


class ProfileStore:
    """Asynchronous store used by the stream worker: one script call per batch."""

    def __init__(
        self, client: aioredis.Redis, settings: ProfileSettings, guardrails: Guardrails
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._resolve = client.register_script(lua_script("resolve.lua"))
        self._apply = client.register_script(lua_script("apply.lua"))
        self._publish = client.register_script(lua_script("publish.lua"))
        self._config = ""
        self._guardrails = guardrails

    async def erasure_salt(self) -> str:
        if self.settings.erasure_salt:
            return self.settings.erasure_salt
        import secrets

        await self.client.set(self.keys.salt, secrets.token_hex(16), nx=True)
        salt = await self.client.get(self.keys.salt)
        return as_text(salt or b"")

    async def _resolve_config(self) -> str:
        if not self._config:
            blocked = [f"{t}:{v}" for t, v in self._guardrails.blocked]
            self._config = json.dumps(
                {
                    "max": self._guardrails.limits,
                    "blocked": dict.fromkeys(blocked, True) or {"": True},
                    "salt": await self.erasure_salt(),
                }
            )
        return self._config

    async def resolve(self, events: Sequence[ev.TouchpointEvent]) -> list[Resolved]:
        items = [
            {
                "e": e.event_id,
                "t": timestamp_ms(e),
                "s": e.source_system,
                "ids": [list(pair) for pair in identifiers_of(e)],
            }
            for e in events
        ]
        reply = await self._resolve(
            args=[self.settings.key_prefix, await self._resolve_config(), json.dumps(items)]
        )
        results = []
        for item in json.loads(reply):
            if "p" in item:
                merged = item.get("m") or []
                results.append(Resolved(item["p"], merged=tuple(merged) if merged else ()))
            else:
                results.append(Resolved(None, reason=item.get("x", "unknown")))
        return results

    async def apply(self, batch: Sequence[ToApply]) -> tuple[list[str], list[StoredProfile]]:
        args: list[str | bytes | int] = [
            self.settings.key_prefix,
            self.settings.dedup_window_s,
            self.settings.events_kept,
        ]
        for item in batch:
            head = {
                "e": item.event.event_id,
                "p": item.profile_id,
                "t": timestamp_ms(item.event),
                "o": item.effects.ops,
                "g": [
                    json.dumps({"k": kind, "e": item.event.event_id, **payload})
                    for kind, payload in item.effects.signals
                ],
            }
            args.append(json.dumps(head))
            args.append(item.event.SerializeToString())
        statuses, profiles = json.loads(await self._apply(args=args))
        return list(statuses or []), [StoredProfile.from_reply(p) for p in profiles or []]

    async def publish(self, updates: Sequence[SnapshotUpdate]) -> None:
        if not updates:
            return
        items = [
            {
                "p": u.profile_id,
                "s": u.snapshot,
                "in": list(u.segments_entered),
                "out": list(u.segments_left),
                "done": u.outbox_done,
                "t": u.at_ms,
            }
            for u in updates
        ]
        await self._publish(args=[self.settings.key_prefix, json.dumps(items)])


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def state_to_redis(state: ProfileState) -> dict[str, Any]:
    """The inverse of ProfileState.from_redis for the aggregates (not ids or events)."""
    main: dict[str, str] = {}
    main.update({f"c:{k}": _number(v) for k, v in state.sums.items()})
    main.update({f"mn:{k}": _number(v) for k, v in state.minima.items()})
    main.update({f"mx:{k}": _number(v) for k, v in state.maxima.items()})
    main.update({f"l:{name}": f"{item.ts_ms}|{item.value}" for name, item in state.latest.items()})

    def packed(items: dict[str, Any]) -> dict[str, str]:
        return {k: f"{v.ts_ms}|{v.value}" for k, v in items.items()}

    return {
        "main": main,
        "traits": packed(state.traits),
        "consent": packed(state.consent),
        "complaints": packed(state.complaints),
        "touchpoints": {k: str(v) for k, v in state.touchpoints.items()},
        "contacts": [
            [f"{c.contact_id}|{c.reason}|{int(c.resolved)}", c.ts_ms] for c in state.contacts
        ],
    }
