"""The profile worker's two batch steps, without Kafka: tests call them directly.

1. `resolve`: decode records (bad ones become dead letters), find or create each event's
   profile in one script call, and return the events to forward keyed by profile id.
2. `apply`: apply a batch of re-keyed events in one script call, derive each touched
   profile and compute its change events; the caller publishes the changes, then records
   them with `store.publish`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import stream_pb2
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from services.common.dead_letter import (
    DeadLetter,
    InvalidRecord,
    SourceRecord,
    TouchpointDecoder,
    dead_letter,
    decode_touchpoint,
)
from services.profile.adapters.store import ProfileStore, SnapshotUpdate, ToApply
from services.profile.domain.changes import compute_changes
from services.profile.domain.derive import derive
from services.profile.domain.effects import effects_of
from services.profile.domain.segments import Segment, evaluate

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


def bundle_forwards(
    forwards: Sequence[Forward], partition_of: Callable[[bytes], int]
) -> dict[int, bytes]:
    """One serialized `ProfileEventBundle` per target partition, events in batch order.

    `partition_of` maps a profile id (as the record key it stands for) to its partition.
    """
    bundles: dict[int, stream_pb2.ProfileEventBundle] = {}
    for f in forwards:
        partition = partition_of(f.profile_id.encode())
        bundle = bundles.get(partition)
        if bundle is None:
            bundle = bundles[partition] = stream_pb2.ProfileEventBundle()
        bundle.events.add(profile_id=f.profile_id, event=f.event)
    return {partition: b.SerializeToString() for partition, b in bundles.items()}


def read_bundle(
    value: bytes | None, key: bytes | None = None
) -> list[tuple[str, ev.TouchpointEvent]]:
    """The (profile id, event) pairs of one bundle record; InvalidRecord when corrupt.

    Bundles have no key. A keyed record is one event keyed by its profile id, as workers
    before the bundles wrote them: still applied, so an upgrade loses nothing in flight.
    """
    if value is None:
        raise InvalidRecord("record has no value (tombstone)", "value")
    if key:
        return [(key.decode(errors="replace"), decode_touchpoint(value))]
    bundle = stream_pb2.ProfileEventBundle()
    try:
        bundle.ParseFromString(value)
    except DecodeError as exc:
        raise InvalidRecord(f"not a protobuf ProfileEventBundle: {exc}", "value") from exc
    items = []
    for i, item in enumerate(bundle.events):
        if not item.profile_id:
            raise InvalidRecord("profile id is empty", f"events[{i}].profile_id")
        if not item.event.event_id:
            raise InvalidRecord("event id is empty", f"events[{i}].event.event_id")
        items.append((item.profile_id, item.event))
    return items


@dataclass
class ResolveOutcome:
    forwards: list[Forward] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    suppressed: int = 0


@dataclass
class Unbundled:
    items: list[tuple[str, ev.TouchpointEvent]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class ApplyOutcome:
    statuses: list[str]
    changes: list[pb.ProfileChange]
    updates: list[SnapshotUpdate]


class ProfilePipeline:
    def __init__(
        self,
        store: ProfileStore,
        segments: Sequence[Segment],
        *,
        dlq_topic: str,
        consumer: str = "cx-profile",
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.segments = list(segments)
        self.dlq_topic = dlq_topic
        self.consumer = consumer
        self.now_ms = now_ms

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
                outcome.suppressed += 1
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
        out = Unbundled()
        for record in records:
            try:
                out.items.extend(read_bundle(record.value, record.key))
            except InvalidRecord as error:
                out.dead_letters.append(self._dead_letter(record, error))
        return out

    def _dead_letter(self, record: SourceRecord, error: InvalidRecord) -> DeadLetter:
        RECORDS.labels("dead_lettered").inc()
        return dead_letter(record, error, dlq_topic=self.dlq_topic, consumer=self.consumer)

    async def apply(self, items: Sequence[tuple[str, ev.TouchpointEvent]]) -> ApplyOutcome:
        statuses, profiles = await self.store.apply(
            [ToApply(pid, event, effects_of(event)) for pid, event in items]
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
