"""Change events of a profile (pure): snapshot differences plus outbox signals.

The worker compares what it last published (the `s:` snapshot stored with the profile)
with what the profile derives to now, so a change lost to a crash is published by the
next batch that touches the profile: change events are at least once, and their ids are
stable so consumers can drop repeats.

The snapshot keeps stages, bands and tiers as the names `derive` gives them; the change
events carry them as enums (`cx.events.v1.JourneyStage`, `cx.profile.v1.ChurnBand`,
`cx.profile.v1.ValueTier`, `cx.events.v1.Complaint.Severity`), mapped here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.profile.domain.codec import SEGMENTS, decode_segment_list, encode_segment_list
from services.profile.domain.derive import Derived

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper
    from google.protobuf.message import Message

# Bands whose first appearance is not news: every new profile starts there.
BASELINE = {"churn_band": "low", "value_tier": "none"}

V = TypeVar("V", bound=int)


def enum_value(enum: _EnumTypeWrapper[V], name: str) -> V:
    """The member of a protobuf enum for a lower-case name, as the snapshot and the stored
    structures write them (`support` is `JOURNEY_STAGE_SUPPORT`). Unspecified for "" (no
    previous value) and for a name the enum does not have."""
    prefix = enum.DESCRIPTOR.values_by_number[0].name.removesuffix("UNSPECIFIED")
    try:
        return enum.Value(prefix + name.upper())
    except ValueError:
        return enum.Value(prefix + "UNSPECIFIED")


def snapshot_of(derived: Derived, segments: set[str]) -> dict[str, str]:
    return {
        "stage": derived.journey_stage,
        "churn_band": derived.churn_band,
        "value_tier": derived.value_tier,
        SEGMENTS: encode_segment_list(segments),
    }


class _Move(NamedTuple):
    """A snapshot value whose change is published: its key, the change's field, the
    message it is published as and the enum that message's values are."""

    key: str
    field: str
    message: Callable[..., Message]
    enum: _EnumTypeWrapper[Any]


_MOVES = (
    _Move("stage", "journey_stage", pb.StageChanged, ev.JourneyStage),
    _Move("churn_band", "churn_risk", pb.ChurnBandChanged, pb.ChurnBand),
    _Move("value_tier", "value_tier", pb.ValueTierChanged, pb.ValueTier),
)


@dataclass(frozen=True)
class ProfileChanges:
    changes: list[pb.ProfileChange]
    snapshot: dict[str, str]
    segments_entered: tuple[str, ...]
    segments_left: tuple[str, ...]


def _change_id(*parts: object) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=12).hexdigest()


def _change(profile_id: str, at_ms: int, *id_parts: object) -> pb.ProfileChange:
    change = pb.ProfileChange(profile_id=profile_id, change_id=_change_id(profile_id, *id_parts))
    change.changed_at.FromMilliseconds(at_ms)
    return change


def compute_changes(
    profile_id: str,
    previous: Mapping[str, str],
    derived: Derived,
    segments: set[str],
    outbox: Sequence[Mapping[str, Any]],
    at_ms: int,
    version: str,
) -> ProfileChanges:
    """Changes since the previous snapshot. `version` identifies the profile's state (the
    latest applied event id), so a re-published change keeps its id."""
    current = snapshot_of(derived, segments)
    changes: list[pb.ProfileChange] = []
    before = set(decode_segment_list(previous.get(SEGMENTS, "")))
    entered, left = sorted(segments - before), sorted(before - segments)
    for name in entered:
        c = _change(profile_id, at_ms, "segment", name, "in", version)
        c.segment.CopyFrom(pb.SegmentChanged(segment=name, entered=True))
        changes.append(c)
    for name in left:
        c = _change(profile_id, at_ms, "segment", name, "out", version)
        c.segment.CopyFrom(pb.SegmentChanged(segment=name, entered=False))
        changes.append(c)
    # What the band changes carry besides the bands.
    extra: dict[str, dict[str, float]] = {
        "churn_band": {"score": derived.churn_risk},
        "value_tier": {"clv_total": derived.clv_total},
    }
    for move in _MOVES:
        old, new = previous.get(move.key, ""), current[move.key]
        if _moved(previous, current, move.key):
            c = _change(profile_id, at_ms, move.key, old, new, version)
            moved = move.message(
                previous=enum_value(move.enum, old),
                current=enum_value(move.enum, new),
                **extra.get(move.key, {}),
            )
            getattr(c, move.field).CopyFrom(moved)
            changes.append(c)
    for signal in outbox:
        change = _signal_change(profile_id, signal, at_ms)
        if change is not None:
            changes.append(change)
    return ProfileChanges(changes, current, tuple(entered), tuple(left))


def _moved(previous: Mapping[str, str], current: Mapping[str, str], key: str) -> bool:
    """A value differs from the one published; with none published, from a new profile's
    baseline (bands) or from nothing (the stage)."""
    return previous.get(key, BASELINE.get(key, "")) != current[key]


def _signal_change(
    profile_id: str, signal: Mapping[str, Any], at_ms: int
) -> pb.ProfileChange | None:
    kind, event_id = signal.get("k"), str(signal.get("e", ""))
    c = _change(profile_id, at_ms, kind, event_id, signal.get("complaint_id", ""))
    if kind == "nps_detractor":
        c.detractor.CopyFrom(
            pb.DetractorScored(
                score=int(signal.get("score", 0)),
                event_id=event_id,
                comment=str(signal.get("comment", "")),
            )
        )
    elif kind in ("complaint_opened", "complaint_closed"):
        c.complaint.CopyFrom(
            pb.ComplaintChanged(
                complaint_id=str(signal.get("complaint_id", "")),
                open=kind == "complaint_opened",
                severity=enum_value(ev.Complaint.Severity, str(signal.get("severity", ""))),
                category=str(signal.get("category", "")),
                event_id=event_id,
            )
        )
    elif kind == "merged":
        c.merged.CopyFrom(
            pb.ProfileMerged(merged_profile_id=str(signal.get("loser", "")), event_id=event_id)
        )
    else:
        return None
    return c
