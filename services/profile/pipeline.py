"""The profile worker's two batch steps, without Kafka: tests call them directly.

1. `resolve`: decode records (bad ones become dead letters), find or create each event's
   profile in one script call, and return the events to forward keyed by profile id.
2. `apply`: apply a batch of re-keyed events in one script call, derive each touched
   profile and compute its change events; the caller publishes the changes, then records
   them with `store.publish`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.internal.v1 import stream_pb2
from cx.profile.v1 import profile_pb2 as pb
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from services.common.batches import (
    OutRecord,
    RecordSender,
    failure_reason,
    process_isolating,
    retry_infrastructure,
    send_dead_letters,
)
from services.common.dead_letter import (
    DeadLetter,
    InvalidRecord,
    SourceRecord,
    TouchpointDecoder,
    dead_letter,
    decode_touchpoint,
    record_time,
)
from services.common.telemetry import header_value, inject_kafka_headers
from services.profile.adapters.store import ProfileStore, SnapshotUpdate, ToApply
from services.profile.domain.changes import compute_changes
from services.profile.domain.derive import derive
from services.profile.domain.effects import effects_of
from services.profile.domain.segments import Segment, evaluate

log = logging.getLogger(__name__)
RECORDS = Counter(
    "cx_profile_records", "Touchpoint records read by the profile worker", ["outcome"]
)
APPLIED = Counter("cx_profile_events", "Re-keyed events by apply status", ["status"])
CHANGES = Counter("cx_profile_changes", "Profile change events published", ["kind"])
MERGES = Counter("cx_profile_merges", "Profiles merged into another")


class _ListSink:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


@dataclass(frozen=True)
class Forward:
    profile_id: str
    event: ev.TouchpointEvent


# A bundle stays well under Kafka's limits (the producer's 1,000,000-byte request, the
# topic's 1 MiB message): an event is at most 64 KiB (validation), so a bundle is split
# before the one that would take it past this size, however large its events are.
MAX_BUNDLE_BYTES = 512 * 1024
# What one entry costs besides the event's and profile id's bytes (tags and lengths).
_ENTRY_OVERHEAD = 16


def bundle_forwards(
    forwards: Sequence[Forward],
    partition_of: Callable[[bytes], int],
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> list[tuple[int, bytes]]:
    """Serialized `ProfileEventBundle`s with their target partitions, events in batch order.

    One bundle per partition unless its events exceed `max_bytes`, then as many as it
    takes, in order. `partition_of` maps a profile id (as the record key it stands for)
    to its partition.
    """
    bundles: list[tuple[int, stream_pb2.ProfileEventBundle]] = []
    open_bundle: dict[int, tuple[stream_pb2.ProfileEventBundle, list[int]]] = {}
    for f in forwards:
        raw = f.event.SerializeToString()
        cost = len(raw) + len(f.profile_id) + _ENTRY_OVERHEAD
        partition = partition_of(f.profile_id.encode())
        current = open_bundle.get(partition)
        if current is None or (current[0].events and current[1][0] + cost > max_bytes):
            bundle = stream_pb2.ProfileEventBundle()
            bundles.append((partition, bundle))
            current = open_bundle[partition] = (bundle, [0])
        current[0].events.add(profile_id=f.profile_id, event=raw)
        current[1][0] += cost
    return [(partition, b.SerializeToString()) for partition, b in bundles]


def read_bundle(value: bytes | None, key: bytes | None = None) -> list[tuple[str, bytes]]:
    """The (profile id, serialized event) pairs of one bundle record.

    Raises InvalidRecord only when the record itself is not a bundle: the events are
    bytes, so a bundle parses whatever they hold, and each is decoded on its own.
    Bundles have no key, so a keyed record is not one.
    """
    if value is None:
        raise InvalidRecord("record has no value (tombstone)", "value")
    if key:
        raise InvalidRecord("a keyed record is not a bundle (bundles have no key)", "key")
    bundle = stream_pb2.ProfileEventBundle()
    try:
        bundle.ParseFromString(value)
    except DecodeError as exc:
        raise InvalidRecord(f"not a protobuf ProfileEventBundle: {exc}", "value") from exc
    return [(item.profile_id, item.event) for item in bundle.events]


# Set by identity resolution on the bundles it writes: their events passed the validator
# there. A bundle without it (another writer on the topic) is judged again, event by event.
VALIDATED_HEADER = "cx-validated"


def decode_bundled(
    profile_id: str, raw: bytes, when: datetime | None = None, *, validated: bool = False
) -> ev.TouchpointEvent:
    """One event of a bundle; InvalidRecord if it cannot be read or, unless a worker's
    resolution stage already `validated` it, if the shared validator refuses it."""
    if not profile_id:
        raise InvalidRecord("profile id is empty", "profile_id")
    if validated:
        event = ev.TouchpointEvent()
        try:
            event.ParseFromString(raw)
        except (DecodeError, ValueError, RecursionError) as exc:
            raise InvalidRecord(f"not a protobuf TouchpointEvent: {exc}", "event") from exc
        if not event.event_id:
            raise InvalidRecord("is required", "event.event_id")
        return event
    try:
        return decode_touchpoint(raw, record_time=when)
    except InvalidRecord as error:
        field = "event" if error.field == "value" else f"event.{error.field}"
        raise InvalidRecord(error.reason, field) from error


@dataclass(frozen=True)
class BundledEvent:
    """One event read from a bundle, with where it came from (for its dead letter)."""

    profile_id: str
    event: ev.TouchpointEvent
    bundle: SourceRecord
    raw: bytes

    @property
    def source(self) -> SourceRecord:
        """The bundle's position with this event's bytes as the value: a dead letter of
        one event keeps that event's original bytes, not the whole bundle (built only
        when needed: this is per event)."""
        return replace(self.bundle, key=self.profile_id.encode(), value=self.raw)


@dataclass
class ResolveOutcome:
    forwards: list[Forward] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class Unbundled:
    items: list[BundledEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class ApplyOutcome:
    statuses: list[str]
    changes: list[pb.ProfileChange]
    updates: list[SnapshotUpdate]


class ProfilePipeline:
    """The worker's two stages on batches of consumed records, without Kafka.

    `process_touchpoints` and `process_bundles` are what the worker runs per batch: they
    return once every effect is stored and every record they produce is acknowledged, so
    the caller may commit the batch's offsets. Infrastructure failures are retried in
    place; a record or event that fails for any other reason is dead-lettered alone.
    """

    def __init__(
        self,
        store: ProfileStore,
        segments: Sequence[Segment],
        *,
        dlq_topic: str,
        events_topic: str = "",
        changes_topic: str = "",
        partition_of: Callable[[bytes], int] = lambda _: 0,
        batch_size: int = 500,
        consumer: str = "cx-profile",
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.segments = list(segments)
        self.dlq_topic = dlq_topic
        self.events_topic = events_topic
        self.changes_topic = changes_topic
        self.partition_of = partition_of
        self.batch_size = batch_size
        self.consumer = consumer
        self.now_ms = now_ms

    async def process_touchpoints(
        self, records: Sequence[SourceRecord], sender: RecordSender
    ) -> None:
        """Stage 1: resolve profiles, forward bundles, dead-letter what is not valid."""

        async def resolve_and_forward(batch: Sequence[SourceRecord]) -> None:
            outcome = await retry_infrastructure("identity resolution", lambda: self.resolve(batch))
            headers = inject_kafka_headers([(VALIDATED_HEADER, b"1")])
            bundles = [
                OutRecord(self.events_topic, bundle, partition=partition, headers=headers)
                for partition, bundle in bundle_forwards(outcome.forwards, self.partition_of)
            ]
            await retry_infrastructure("forward", lambda: sender.send(bundles))
            await self.send_dead_letters(outcome.dead_letters, sender)

        async def poison(record: SourceRecord, exc: Exception) -> None:
            log.error(
                "%s/%s@%s dead-lettered: %r", record.topic, record.partition, record.offset, exc
            )
            await self.send_dead_letters([self.dead_letter_failed(record, exc)], sender)

        await process_isolating(records, resolve_and_forward, poison, what="resolve")

    async def process_bundles(self, records: Sequence[SourceRecord], sender: RecordSender) -> None:
        """Stage 2: apply bundled events, publish change events, dead-letter bad events."""
        unbundled = self.unbundle(records)
        await self.send_dead_letters(unbundled.dead_letters, sender)

        async def apply_and_publish(items: Sequence[BundledEvent]) -> None:
            outcome = await retry_infrastructure("apply", lambda: self.apply(items))
            changes = [
                OutRecord(self.changes_topic, c.SerializeToString(), key=c.profile_id.encode())
                for c in outcome.changes
            ]
            await retry_infrastructure("change events", lambda: sender.send(changes))
            await retry_infrastructure("publish", lambda: self.store.publish(outcome.updates))

        async def poison(item: BundledEvent, exc: Exception) -> None:
            log.error("event %s dead-lettered: %r", item.event.event_id, exc)
            await self.send_dead_letters([self.dead_letter_failed(item.source, exc)], sender)

        items = unbundled.items
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            await process_isolating(chunk, apply_and_publish, poison, what="apply")

    async def send_dead_letters(self, letters: Sequence[DeadLetter], sender: RecordSender) -> None:
        await send_dead_letters(letters, sender)

    async def resolve(self, records: Sequence[SourceRecord]) -> ResolveOutcome:
        sink = _ListSink()
        decoder = TouchpointDecoder(sink, dlq_topic=self.dlq_topic, consumer=self.consumer)
        valid: list[tuple[SourceRecord, ev.TouchpointEvent]] = []
        for record in records:
            event = decoder.decode(record)
            if event is not None:
                valid.append((record, event))
        outcome = ResolveOutcome(dead_letters=sink.letters)
        RECORDS.labels("dead_lettered").inc(len(sink.letters))
        if not valid:
            return outcome
        resolved = await self.store.resolve([e for _, e in valid])
        for (record, event), result in zip(valid, resolved, strict=True):
            if result.profile_id is not None:
                outcome.forwards.append(Forward(result.profile_id, event))
                MERGES.inc(len(result.merged))
            elif result.reason == "erased":
                # Deliberate: the person asked to be erased; counted, not re-created.
                RECORDS.labels("suppressed").inc()
            else:
                error = InvalidRecord(
                    "no identifier can be linked: every identifier is on the blocked list",
                    "identities",
                )
                outcome.dead_letters.append(self._dead_letter(record, error))
        RECORDS.labels("forwarded").inc(len(outcome.forwards))
        return outcome

    def unbundle(self, records: Sequence[SourceRecord]) -> Unbundled:
        """The events of bundle records; a record or an event that cannot be read is a
        dead letter on its own, the rest go on."""
        out = Unbundled()
        for record in records:
            try:
                pairs = read_bundle(record.value, record.key)
            except InvalidRecord as error:
                out.dead_letters.append(self._dead_letter(record, error))
                continue
            validated = header_value(record.headers, VALIDATED_HEADER) == "1"
            when = record_time(record.timestamp_ms)
            for i, (profile_id, raw) in enumerate(pairs):
                try:
                    event = decode_bundled(profile_id, raw, when, validated=validated)
                except InvalidRecord as error:
                    located = InvalidRecord(error.reason, f"events[{i}].{error.field}")
                    source = replace(record, key=profile_id.encode(), value=raw)
                    out.dead_letters.append(self._dead_letter(source, located))
                    continue
                out.items.append(BundledEvent(profile_id, event, record, raw))
        return out

    def dead_letter_failed(self, record: SourceRecord, exc: Exception) -> DeadLetter:
        """The dead letter of a record (or bundled event) whose processing failed."""
        return self._dead_letter(record, InvalidRecord(failure_reason(exc)))

    def _dead_letter(self, record: SourceRecord, error: InvalidRecord) -> DeadLetter:
        RECORDS.labels("dead_lettered").inc()
        return dead_letter(record, error, dlq_topic=self.dlq_topic, consumer=self.consumer)

    async def apply(self, items: Sequence[BundledEvent]) -> ApplyOutcome:
        statuses, profiles = await self.store.apply(
            [ToApply(item.profile_id, item.event, effects_of(item.event)) for item in items]
        )
        for status, count in collections.Counter(statuses).items():
            APPLIED.labels(status).inc(count)
        now = self.now_ms()
        changes: list[pb.ProfileChange] = []
        updates: list[SnapshotUpdate] = []
        for stored in profiles:
            state = stored.state()
            derived = derive(state, now)
            members = evaluate(self.segments, derived.fields())
            version = state.latest.get("u.activity")
            result = compute_changes(
                stored.profile_id,
                state.snapshot,
                derived,
                members,
                stored.outbox,
                now,
                version.value if version else "",
            )
            if result.snapshot == state.snapshot and not stored.outbox:
                continue
            changes.extend(result.changes)
            updates.append(
                SnapshotUpdate(
                    stored.profile_id,
                    result.snapshot,
                    result.segments_entered,
                    result.segments_left,
                    len(stored.outbox),
                    now,
                )
            )
        kinds = collections.Counter(c.WhichOneof("change") or "unknown" for c in changes)
        for kind, count in kinds.items():
            CHANGES.labels(kind).inc(count)
        return ApplyOutcome(statuses, changes, updates)
