"""Redis store of the stream worker (asynchronous): identity resolution, applying events
and recording what was published, one script call per batch. Key names and encodings
are `layout.py`'s."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.identifiers import CUSTOMER_ID, PERSON_TYPES, identifiers_of
from services.profile.adapters.layout import (
    Keys,
    StoredProfile,
    as_text,
    encode_signal,
    identifier_member,
    lua_script,
    state_to_redis,
)
from services.profile.domain.effects import Effects, timestamp_ms
from services.profile.settings import Guardrails, ProfileSettings

# Imported from here by callers written before layout.py; new code imports layout.
__all__ = [
    "ProfileStore",
    "Resolved",
    "SnapshotUpdate",
    "StoredProfile",
    "ToApply",
    "as_text",
    "state_to_redis",
]


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
        await self.client.set(self.keys.salt, secrets.token_hex(16), nx=True)
        salt = await self.client.get(self.keys.salt)
        return as_text(salt or b"")

    async def _resolve_config(self) -> str:
        if not self._config:
            blocked = [identifier_member(*pair) for pair in self._guardrails.blocked]
            self._config = json.dumps(
                {
                    "max": self._guardrails.limits,
                    "blocked": dict.fromkeys(blocked, True) or {"": True},
                    "salt": await self.erasure_salt(),
                    "priority": {t.code: t.strength for t in PERSON_TYPES},
                    "customer": CUSTOMER_ID.code,
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
                    encode_signal(kind, item.event.event_id, payload)
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
