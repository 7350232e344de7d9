"""Change events of a profile (pure): snapshot differences plus outbox signals.

The worker compares what it last published (the `s:` snapshot stored with the profile)
with what the profile derives to now, so a change lost to a crash is published by the
next batch that touches the profile: change events are at least once, and their ids are
stable so consumers can drop repeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cx.profile.v1 import profile_pb2 as pb

from services.profile.domain.derive import Derived

# Bands whose first appearance is not news: every new profile starts there.
BASELINE = {"churn_band": "low", "value_tier": "none"}


def snapshot_of(derived: Derived, segments: set[str]) -> dict[str, str]:
    return {
        "stage": derived.journey_stage,
        "churn_band": derived.churn_band,
        "value_tier": derived.value_tier,
        "segments": ",".join(sorted(segments)),
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
    before = set(filter(None, previous.get("segments", "").split(",")))
    entered, left = sorted(segments - before), sorted(before - segments)
    for name in entered:
        c = _change(profile_id, at_ms, "segment", name, "in", version)
        c.segment.CopyFrom(pb.SegmentChanged(segment=name, entered=True))
        changes.append(c)
    for name in left:
        c = _change(profile_id, at_ms, "segment", name, "out", version)
        c.segment.CopyFrom(pb.SegmentChanged(segment=name, entered=False))
        changes.append(c)
    if previous.get("stage", "") != current["stage"]:
        c = _change(
            profile_id, at_ms, "stage", previous.get("stage", ""), current["stage"], version
        )
        c.journey_stage.CopyFrom(
            pb.StageChanged(previous=previous.get("stage", ""), current=current["stage"])
        )
        changes.append(c)
    for key, field, value in (
        ("churn_band", "churn_risk", derived.churn_risk),
        ("value_tier", "value_tier", derived.clv_total),
    ):
        old, new = previous.get(key), current[key]
        if old != new and not (old is None and new == BASELINE[key]):
            c = _change(profile_id, at_ms, key, old or "", new, version)
            getattr(c, field).CopyFrom(pb.BandChanged(previous=old or "", current=new, value=value))
            changes.append(c)
    for signal in outbox:
        change = _signal_change(profile_id, signal, at_ms)
        if change is not None:
            changes.append(change)
    return ProfileChanges(changes, current, tuple(entered), tuple(left))


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
                severity=str(signal.get("severity", "")),
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
