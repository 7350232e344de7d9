"""Change events: differences from the published snapshot plus outbox signals, with stages,
bands, tiers and severities as enums."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.profile.domain.changes import ProfileChanges, compute_changes, enum_value
from services.profile.domain.derive import DEFAULT_CONFIG, Derived, derive
from services.profile.domain.state import ProfileState

NOW = 1_780_000_000_000
# What a new profile derives to: awareness, low churn, no value.
NEW = derive(ProfileState("p-1"), NOW)


def derived(**fields: Any) -> Derived:
    return replace(NEW, **fields)


def changes(
    previous: Mapping[str, str],
    now: Derived = NEW,
    segments: set[str] | None = None,
    outbox: Sequence[Mapping[str, Any]] = (),
    version: str = "evt-9",
) -> ProfileChanges:
    return compute_changes("p-1", previous, now, segments or set(), outbox, NOW, version)


def snapshot(stage: str, churn: str, tier: str, segments: str = "") -> dict[str, str]:
    return {"stage": stage, "churn_band": churn, "value_tier": tier, "segments": segments}


def of_kind(result: ProfileChanges, kind: str) -> list[pb.ProfileChange]:
    return [c for c in result.changes if c.WhichOneof("change") == kind]


def test_a_new_profile_publishes_its_stage_but_not_its_baseline_band_and_tier() -> None:
    assert (NEW.journey_stage, NEW.churn_band, NEW.value_tier) == ("awareness", "low", "none")
    result = changes({})
    (stage,) = result.changes
    assert stage.WhichOneof("change") == "journey_stage"
    assert stage.journey_stage == pb.StageChanged(
        previous=ev.JOURNEY_STAGE_UNSPECIFIED, current=ev.JOURNEY_STAGE_AWARENESS
    )
    assert stage.profile_id == "p-1"
    assert stage.changed_at.ToMilliseconds() == NOW
    assert result.snapshot == snapshot("awareness", "low", "none")
    assert (result.segments_entered, result.segments_left) == ((), ())


def test_a_new_profile_above_the_baseline_publishes_its_band_and_tier_from_unspecified() -> None:
    result = changes({}, derived(churn_band="medium", churn_risk=0.45, value_tier="low"))
    (churn,) = of_kind(result, "churn_risk")
    assert churn.churn_risk == pb.ChurnBandChanged(
        previous=pb.CHURN_BAND_UNSPECIFIED, current=pb.CHURN_BAND_MEDIUM, score=0.45
    )
    (tier,) = of_kind(result, "value_tier")
    assert tier.value_tier.previous == pb.VALUE_TIER_UNSPECIFIED
    assert tier.value_tier.current == pb.VALUE_TIER_LOW


def test_differences_from_the_snapshot_become_typed_changes() -> None:
    previous = snapshot("purchase", "low", "medium", "at_risk,newcomers")
    now = derived(
        journey_stage="support",
        churn_band="high",
        churn_risk=0.72,
        value_tier="vip",
        clv_total=2400.0,
    )
    result = changes(previous, now, {"newcomers", "vip", "detractors"})

    assert [c.WhichOneof("change") for c in result.changes] == [
        "segment",
        "segment",
        "segment",
        "journey_stage",
        "churn_risk",
        "value_tier",
    ]
    assert [(c.segment.segment, c.segment.entered) for c in of_kind(result, "segment")] == [
        ("detractors", True),
        ("vip", True),
        ("at_risk", False),
    ]
    (stage,) = of_kind(result, "journey_stage")
    assert stage.journey_stage == pb.StageChanged(
        previous=ev.JOURNEY_STAGE_PURCHASE, current=ev.JOURNEY_STAGE_SUPPORT
    )
    (churn,) = of_kind(result, "churn_risk")
    assert churn.churn_risk == pb.ChurnBandChanged(
        previous=pb.CHURN_BAND_LOW, current=pb.CHURN_BAND_HIGH, score=0.72
    )
    (tier,) = of_kind(result, "value_tier")
    assert tier.value_tier == pb.ValueTierChanged(
        previous=pb.VALUE_TIER_MEDIUM, current=pb.VALUE_TIER_VIP, clv_total=2400.0
    )
    assert result.snapshot == snapshot("support", "high", "vip", "detractors,newcomers,vip")
    assert result.segments_entered == ("detractors", "vip")
    assert result.segments_left == ("at_risk",)


def test_a_band_back_to_the_baseline_is_a_change_once_something_was_published() -> None:
    result = changes(snapshot("awareness", "medium", "low"))
    (churn,) = of_kind(result, "churn_risk")
    assert (churn.churn_risk.previous, churn.churn_risk.current) == (
        pb.CHURN_BAND_MEDIUM,
        pb.CHURN_BAND_LOW,
    )
    (tier,) = of_kind(result, "value_tier")
    assert (tier.value_tier.previous, tier.value_tier.current) == (
        pb.VALUE_TIER_LOW,
        pb.VALUE_TIER_NONE,
    )


def test_nothing_changed_means_no_change_events_and_the_same_snapshot() -> None:
    previous = snapshot("awareness", "low", "none", "newcomers")
    result = changes(previous, segments={"newcomers"})
    assert result.changes == []
    assert result.snapshot == previous


def test_change_ids_are_stable_for_the_same_state_and_differ_for_another() -> None:
    previous = snapshot("purchase", "low", "none", "a")
    now = derived(journey_stage="usage")
    first = [c.change_id for c in changes(previous, now, {"b"}).changes]
    again = [c.change_id for c in changes(previous, now, {"b"}).changes]
    later = [c.change_id for c in changes(previous, now, {"b"}, version="evt-10").changes]
    assert len(first) == 3
    assert len(set(first)) == 3
    assert first == again
    assert not set(first) & set(later)


def test_outbox_signals_become_change_events_in_order() -> None:
    outbox: list[dict[str, Any]] = [
        {"k": "nps_detractor", "e": "evt-1", "score": 2, "comment": "slow"},
        {
            "k": "complaint_opened",
            "e": "evt-2",
            "complaint_id": "c-1",
            "severity": "critical",
            "category": "delivery",
        },
        {"k": "complaint_closed", "e": "evt-3", "complaint_id": "c-1", "severity": "low"},
        {"k": "merged", "e": "evt-4", "loser": "p-0"},
        {"k": "something_new", "e": "evt-5"},
    ]
    same = snapshot("awareness", "low", "none")
    result = changes(same, outbox=outbox)
    assert [c.WhichOneof("change") for c in result.changes] == [
        "detractor",
        "complaint",
        "complaint",
        "merged",
    ]
    detractor, opened, closed, merged = result.changes
    assert detractor.detractor == pb.DetractorScored(score=2, event_id="evt-1", comment="slow")
    assert opened.complaint == pb.ComplaintChanged(
        complaint_id="c-1",
        open=True,
        severity=ev.Complaint.SEVERITY_CRITICAL,
        category="delivery",
        event_id="evt-2",
    )
    assert closed.complaint == pb.ComplaintChanged(
        complaint_id="c-1", open=False, severity=ev.Complaint.SEVERITY_LOW, event_id="evt-3"
    )
    assert merged.merged == pb.ProfileMerged(merged_profile_id="p-0", event_id="evt-4")
    assert len({c.change_id for c in result.changes}) == 4
    # The same signal again (a redelivered outbox) keeps its id.
    assert changes(same, outbox=outbox[:1]).changes[0].change_id == detractor.change_id


@pytest.mark.parametrize(
    ("enum", "names"),
    [
        (
            ev.JourneyStage,
            [
                "awareness",
                "consideration",
                "purchase",
                "onboarding",
                "usage",
                "support",
                "renewal",
                "advocacy",
            ],
        ),
        (pb.ChurnBand, ["low", "medium", "high"]),
        (pb.ValueTier, [name for name, _ in DEFAULT_CONFIG.value_tiers] + ["low", "none"]),
        (ev.Complaint.Severity, ["low", "medium", "high", "critical"]),
    ],
)
def test_every_name_the_profile_stores_has_its_own_enum_member(enum: Any, names: list[str]) -> None:
    members = [enum_value(enum, name) for name in names]
    assert 0 not in members
    assert len(set(members)) == len(names)
    assert [enum.Name(m).lower().rsplit("_", 1)[-1] for m in members] == names


def test_no_name_or_an_unknown_one_is_unspecified() -> None:
    assert enum_value(ev.JourneyStage, "") == ev.JOURNEY_STAGE_UNSPECIFIED
    assert enum_value(pb.ValueTier, "platinum") == pb.VALUE_TIER_UNSPECIFIED
    assert enum_value(ev.Complaint.Severity, "unspecified") == ev.Complaint.SEVERITY_UNSPECIFIED
