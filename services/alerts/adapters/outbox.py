"""The notifier's side of the outbox (the Redis stream `al:outbox`, consumer group
`notifier`): reading entries, recovering the entries of a notifier that died, markers,
delivery history and acknowledgements. Key names from services/alerts/adapters/layout.py.

- Each notifier process is one consumer of the group, named after its host and pid, and
  beats into a heartbeat sorted set (`al:notifiers`) every second.
- Recovery: the pending entries (delivered to a consumer, never acknowledged) of a
  consumer whose heartbeat expired are claimed (XPENDING, then XCLAIM) in id order,
  before anything new is read, so a restarted notifier resumes where the dead one
  stopped, in the order the changes happened. As a backstop, XAUTOCLAIM takes any entry
  idle longer than a few minutes; a notifier refreshes the idle time of its own
  in-flight entries (XCLAIM JUSTID to itself) so a long retry is never taken from it.
- Idempotency: `al:delivered:{entry id}:{target}` is set (with a TTL longer than an
  entry can stay pending) when a target's delivery of an entry is over; a claimed or
  re-read entry skips the targets it names. The marker and the history field are
  written in one Lua call (lua/delivery.lua).
- The entry is acknowledged (XACK) once every target is over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from services.alerts.adapters.layout import (
    DELIVERED,
    OUTBOX_GROUP,
    OUTBOX_KEEP_MS,
    AlertKeys,
    OutboxEntry,
    as_text,
    decode_outbox_entry,
    lua_script,
)
from services.alerts.domain.incidents import (
    DELIVERY_FIELD,
    Delivery,
    delivery_field,
    delivery_json,
)
from services.common.heartbeat import WORKER_NAME

log = logging.getLogger(__name__)

DELIVERED_MARK, FAILED_MARK = "delivered", "failed"


class Outbox:
    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        consumer: str = WORKER_NAME,
        group: str = OUTBOX_GROUP,
        marker_ttl_ms: int = OUTBOX_KEEP_MS,
    ) -> None:
        self.client = client
        self.keys = AlertKeys(key_prefix)
        self.stream = self.keys.outbox
        self.heartbeats = self.keys.notifiers
        self.consumer = consumer
        self.group = group
        self.marker_ttl_ms = marker_ttl_ms
        self._delivery = client.register_script(lua_script("delivery.lua"))

    # --- the group and the heartbeat ----------------------------------------------------

    async def ensure_group(self) -> None:
        """The consumer group, from the stream's start (entries written before any
        notifier ran are delivered too)."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def beat(self, every_s: float) -> None:
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.heartbeats, {self.consumer: now + every_s * 3})
            pipe.zremrangebyscore(self.heartbeats, "-inf", now - 3600)
            await pipe.execute()

    async def leave(self) -> None:
        """Says this notifier is gone (a graceful stop): the next one claims its pending
        entries without waiting for the heartbeat to expire."""
        await self.client.zrem(self.heartbeats, self.consumer)

    async def _beats(self) -> dict[str, float]:
        raw: Any = await self.client.zrange(self.heartbeats, 0, -1, withscores=True)
        return {as_text(name): float(score) for name, score in raw}

    # --- reading ---------------------------------------------------------------------------

    def _decode(self, raw: Iterable[Any]) -> list[OutboxEntry | str]:
        """Entries, or the bare id of an entry that cannot be decoded (trimmed or
        corrupt), which the caller acknowledges."""
        out: list[OutboxEntry | str] = []
        for entry_id, fields in raw:
            if not fields:
                out.append(as_text(entry_id))
                continue
            try:
                out.append(decode_outbox_entry(entry_id, fields))
            except Exception:
                log.exception("outbox entry %s cannot be decoded; dropped", as_text(entry_id))
                out.append(as_text(entry_id))
        return out

    async def read_new(self, count: int, block_ms: int) -> list[OutboxEntry | str]:
        reply: Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        out: list[OutboxEntry | str] = []
        for _stream, entries in reply or []:
            out.extend(self._decode(entries))
        return out

    async def read_own_pending(self) -> list[OutboxEntry | str]:
        """Entries delivered to this consumer name and not acknowledged."""
        out: list[OutboxEntry | str] = []
        after = "0"
        while True:
            reply: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: after}, count=500
            )
            entries = reply[0][1] if reply else []
            if not entries:
                return out
            out.extend(self._decode(entries))
            after = as_text(entries[-1][0])

    async def dead_consumers(self) -> tuple[list[str], float]:
        """Consumers of the group with pending entries and no live heartbeat, and how
        long until the next live-looking one's beat expires (0 when none)."""
        consumers: Any = await self.client.xinfo_consumers(self.stream, self.group)
        beats = await self._beats()
        now = time.time()
        dead, wait = [], 0.0
        for c in consumers:
            name = as_text(c["name"])
            if name == self.consumer or int(c.get("pending", 0)) == 0:
                continue
            expires = beats.get(name, 0.0)
            if expires <= now:
                dead.append(name)
            else:
                wait = max(wait, expires - now)
        return dead, wait

    async def claim_from(self, consumer: str) -> list[OutboxEntry | str]:
        """Every pending entry of `consumer`, now this consumer's, oldest first."""
        out: list[OutboxEntry | str] = []
        tried: set[str] = set()
        while True:
            pending: Any = await self.client.xpending_range(
                self.stream, self.group, "-", "+", 500, consumername=consumer
            )
            ids: list[Any] = [as_text(p["message_id"]) for p in pending]
            if not ids or tried.issuperset(ids):
                break
            tried.update(ids)
            # Entries trimmed from the stream meanwhile are not returned (Redis 7 drops
            # them from the pending list): nothing is left to deliver for them.
            claimed: Any = await self.client.xclaim(self.stream, self.group, self.consumer, 0, ids)
            out.extend(self._decode(claimed))
        # Its pending list is empty now: the consumer can go.
        left: Any = await self.client.xpending_range(
            self.stream, self.group, "-", "+", 1, consumername=consumer
        )
        if not left:
            with contextlib.suppress(aioredis.ResponseError):
                await self.client.xgroup_delconsumer(self.stream, self.group, consumer)
        out.sort(key=lambda e: _id_key(e if isinstance(e, str) else e.entry_id))
        return out

    async def claim_idle(self, min_idle_ms: int) -> list[OutboxEntry | str]:
        """The backstop: any entry idle longer than `min_idle_ms` (XAUTOCLAIM)."""
        out: list[OutboxEntry | str] = []
        start = "0-0"
        while True:
            reply: Any = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start, count=200
            )
            start, entries = as_text(reply[0]), reply[1]
            out.extend(self._decode(entries))
            if len(reply) > 2:
                out.extend(as_text(i) for i in reply[2])
            if start == "0-0":
                return out

    async def touch(self, entry_ids: Sequence[str], min_idle_ms: int) -> None:
        """Resets the idle time of this consumer's in-flight entries. Only entries idle
        for `min_idle_ms` are touched, so one that another notifier has just claimed (it
        took this one for dead) is not taken back."""
        for i in range(0, len(entry_ids), 500):
            ids: list[Any] = list(entry_ids[i : i + 500])
            await self.client.xclaim(
                self.stream, self.group, self.consumer, min_idle_ms, ids, justid=True
            )

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self.client.xack(self.stream, self.group, *entry_ids)

    async def pending_count(self) -> int:
        info: Any = await self.client.xpending(self.stream, self.group)
        return int(info.get("pending", 0)) if isinstance(info, dict) else 0

    # --- markers and history ------------------------------------------------------------

    def marker(self, entry_id: str, target: str) -> str:
        return self.keys.delivered(entry_id, target)

    async def done_targets(self, entry_id: str, targets: Sequence[str]) -> set[str]:
        """The targets whose delivery of this entry is already over."""
        if not targets:
            return set()
        async with self.client.pipeline(transaction=False) as pipe:
            for target in targets:
                pipe.exists(self.marker(entry_id, target))
            found = await pipe.execute()
        return {t for t, n in zip(targets, found, strict=True) if n}

    async def record(
        self,
        entry: OutboxEntry,
        target: str,
        delivery: Delivery | None,
        final: str = "",
        only_if_missing: bool = False,
    ) -> bool:
        """Writes the history field of `delivery` (if any) and, with `final` (delivered |
        failed), the marker saying this target is done with the entry."""
        field = delivery_field(delivery.receiver, delivery.change) if delivery else ""
        reply = await self._delivery(
            keys=[self.marker(entry.entry_id, target), self.keys.incident(entry.incident_id)],
            args=[
                final,
                self.marker_ttl_ms,
                field,
                delivery_json(delivery) if delivery else "",
                delivery.status if delivery else "",
                "1" if only_if_missing else "0",
            ],
        )
        return int(reply) == 1

    async def paged_receivers(self, incident_id: str) -> dict[str, str]:
        """Receivers that were paged the incident's OPENED or ESCALATED change (their
        history field), with the status of that delivery."""
        fields: Any = await self.client.hgetall(self.keys.incident(incident_id))
        out: dict[str, str] = {}
        for raw_name, raw_value in fields.items():
            name = as_text(raw_name)
            if not name.startswith(DELIVERY_FIELD):
                continue
            receiver, _, change = name[len(DELIVERY_FIELD) :].rpartition("|")
            if change in ("OPENED", "ESCALATED"):
                value = as_text(raw_value)
                status = "suppressed" if '"status":"suppressed"' in value else "paged"
                if out.get(receiver) != "paged":
                    out[receiver] = status
        return out


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["DELIVERED", "DELIVERED_MARK", "FAILED_MARK", "Outbox"]
