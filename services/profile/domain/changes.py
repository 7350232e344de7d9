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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.profile.domain.codec import SEGMENTS, decode_segment_list, encode_segment_list
from services.profile.domain.derive import Derived

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

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
    old_stage, new_stage = previous.get("stage", ""), current["stage"]
    if old_stage != new_stage:
        c = _change(profile_id, at_ms, "stage", old_stage, new_stage, version)
        c.journey_stage.CopyFrom(
            pb.StageChanged(
                previous=enum_value(ev.JourneyStage, old_stage),
                current=enum_value(ev.JourneyStage, new_stage),
            )
        )
        changes.append(c)
    if _band_changed(previous, current, "churn_band"):
        old, new = previous.get("churn_band", ""), current["churn_band"]
        c = _change(profile_id, at_ms, "churn_band", old, new, version)
        c.churn_risk.CopyFrom(
            pb.ChurnBandChanged(
                previous=enum_value(pb.ChurnBand, old),
                current=enum_value(pb.ChurnBand, new),
                score=derived.churn_risk,
            )
        )
        changes.append(c)
    if _band_changed(previous, current, "value_tier"):
        old, new = previous.get("value_tier", ""), current["value_tier"]
        c = _change(profile_id, at_ms, "value_tier", old, new, version)
        c.value_tier.CopyFrom(
            pb.ValueTierChanged(
                previous=enum_value(pb.ValueTier, old),
                current=enum_value(pb.ValueTier, new),
                clv_total=derived.clv_total,
            )
        )
        changes.append(c)
    for signal in outbox:
        change = _signal_change(profile_id, signal, at_ms)
        if change is not None:
            changes.append(change)
    return ProfileChanges(changes, current, tuple(entered), tuple(left))


def _band_changed(previous: Mapping[str, str], current: Mapping[str, str], key: str) -> bool:
    """A band differs from the one published, unless it is a new profile's baseline."""
    old, new = previous.get(key), current[key]
    return old != new and not (old is None and new == BASELINE[key])


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
