"""ProfilePipeline.apply on an in-memory store: statuses, change events computed against
the published snapshot, and the snapshot updates the worker records after sending them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import redis.exceptions
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.common.dead_letter import SourceRecord
from services.profile.adapters.store import SnapshotUpdate
from services.profile.domain.segments import Condition, Segment
from services.profile.pipeline import BundledEvent, ProfilePipeline
from tests.factories import at, complaint, home_page_view, nps, order, product_view
from tests.unit.fake_stores import MemoryStore, StoreFailingOn

NOW = at(5)
SEGMENTS = [Segment("shoppers", "", all_of=(Condition("orders", ">=", 1),))]


def pipeline(store: MemoryStore | StoreFailingOn) -> ProfilePipeline:
    return ProfilePipeline(
        store,  # type: ignore[arg-type]
        SEGMENTS,
        dlq_topic="dlq",
        now_ms=lambda: NOW,
    )


def items(profile_id: str, events: Sequence[ev.TouchpointEvent]) -> list[BundledEvent]:
    return [
        BundledEvent(
            profile_id, e, SourceRecord("events", 0, i, None, b"", []), e.SerializeToString()
        )
        for i, e in enumerate(events)
    ]


def kinds(changes: Sequence[pb.ProfileChange]) -> list[str | None]:
    return [c.WhichOneof("change") for c in changes]


async def test_a_new_profile_publishes_its_first_stage_and_a_snapshot_to_record() -> None:
    store = MemoryStore()
    outcome = await pipeline(store).apply(items("p-1", [home_page_view(0), product_view(1)]))

    assert outcome.statuses == ["applied", "applied"]
    (stage,) = outcome.changes
    assert stage.profile_id == "p-1"
    assert stage.changed_at.ToMilliseconds() == NOW
    assert stage.journey_stage == pb.StageChanged(
        previous=ev.JOURNEY_STAGE_UNSPECIFIED, current=ev.JOURNEY_STAGE_CONSIDERATION
    )
    assert outcome.updates == [
        SnapshotUpdate(
            "p-1",
            {"stage": "consideration", "churn_band": "low", "value_tier": "none", "segments": ""},
            at_ms=NOW,
        )
    ]


async def test_once_recorded_nothing_is_published_again_and_redeliveries_change_nothing() -> None:
    store = MemoryStore()
    p = pipeline(store)
    first = [home_page_view(0), product_view(1)]
    await store.publish((await p.apply(items("p-1", first))).updates)

    again = await p.apply(items("p-1", first))

    assert again.statuses == ["duplicate", "duplicate"]
    assert again.changes == []
    assert again.updates == []


async def test_changes_sent_but_not_recorded_are_sent_again_with_the_same_ids() -> None:
    # The worker died between sending the change events and recording the snapshot; the
    # redelivered batch is all duplicates, and the same changes go out again.
    store = MemoryStore()
    p = pipeline(store)
    first = [home_page_view(0), product_view(1)]
    sent = await p.apply(items("p-1", first))

    again = await p.apply(items("p-1", first))

    assert again.statuses == ["duplicate", "duplicate"]
    assert again.changes == sent.changes
    assert [c.change_id for c in again.changes] == [c.change_id for c in sent.changes]
    assert again.updates == sent.updates


async def test_later_events_publish_what_changed_since_the_recorded_snapshot() -> None:
    store = MemoryStore()
    p = pipeline(store)
    await store.publish((await p.apply(items("p-1", [home_page_view(0), product_view(1)]))).updates)

    outcome = await p.apply(items("p-1", [order(2, 100)]))

    assert kinds(outcome.changes) == ["segment", "journey_stage", "value_tier"]
    segment, stage, tier = outcome.changes
    assert segment.segment == pb.SegmentChanged(segment="shoppers", entered=True)
    assert stage.journey_stage == pb.StageChanged(
        previous=ev.JOURNEY_STAGE_CONSIDERATION, current=ev.JOURNEY_STAGE_ONBOARDING
    )
    # 100 so far plus 2 orders a year at 100 times (1 - churn of about 5%): about 290.
    assert (tier.value_tier.previous, tier.value_tier.current) == (
        pb.VALUE_TIER_NONE,
        pb.VALUE_TIER_MEDIUM,
    )
    assert tier.value_tier.clv_total == pytest.approx(290.5, abs=0.1)
    (update,) = outcome.updates
    assert update.snapshot == {
        "stage": "onboarding",
        "churn_band": "low",
        "value_tier": "medium",
        "segments": "shoppers",
    }
    assert (update.segments_entered, update.segments_left, update.outbox_done) == (
        ("shoppers",),
        (),
        0,
    )
    await store.publish(outcome.updates)
    assert store.segments == {"shoppers": {"p-1"}}


async def test_outbox_signals_are_published_once_and_then_trimmed() -> None:
    store = MemoryStore()
    p = pipeline(store)
    await store.publish((await p.apply(items("p-1", [home_page_view(0)]))).updates)
    detractor, opened = nps(3, 2), complaint(4, "c-1", ev.Complaint.STATUS_OPENED)

    outcome = await p.apply(items("p-1", [detractor, opened]))

    assert kinds(outcome.changes) == ["journey_stage", "churn_risk", "detractor", "complaint"]
    stage, churn, scored, complained = outcome.changes
    assert stage.journey_stage.current == ev.JOURNEY_STAGE_SUPPORT
    # Churn: bias -3, detractor 1.5, one open complaint 1.
    assert (churn.churn_risk.previous, churn.churn_risk.current) == (
        pb.CHURN_BAND_LOW,
        pb.CHURN_BAND_MEDIUM,
    )
    assert churn.churn_risk.score == pytest.approx(1 / (1 + math.exp(0.5)))
    assert scored.detractor == pb.DetractorScored(score=2, event_id=detractor.event_id)
    assert complained.complaint == pb.ComplaintChanged(
        complaint_id="c-1",
        open=True,
        severity=ev.Complaint.SEVERITY_HIGH,
        category="delivery",
        event_id=opened.event_id,
    )
    (update,) = outcome.updates
    assert update.outbox_done == 2
    await store.publish(outcome.updates)

    quiet = await p.apply(items("p-1", [home_page_view(4.5)]))
    assert quiet.statuses == ["applied"]
    assert quiet.changes == []
    assert quiet.updates == []


async def test_a_batch_of_several_profiles_skips_the_one_that_is_gone() -> None:
    store = MemoryStore(gone={"p-merged"})
    batch = [
        *items("p-merged", [home_page_view(0, customer_id="old")]),
        *items("p-1", [home_page_view(0, customer_id="one")]),
        *items("p-2", [order(1, 20, customer_id="two")]),
    ]

    outcome = await pipeline(store).apply(batch)

    assert outcome.statuses == ["gone", "applied", "applied"]
    assert [u.profile_id for u in outcome.updates] == ["p-1", "p-2"]
    by_profile = {(c.profile_id, c.WhichOneof("change")) for c in outcome.changes}
    assert by_profile == {
        ("p-1", "journey_stage"),
        ("p-2", "journey_stage"),
        ("p-2", "segment"),
        # 20 of CLV: tier low, not the baseline none.
        ("p-2", "value_tier"),
    }


async def test_a_store_error_reaches_the_caller_which_isolates_it() -> None:
    e = home_page_view(0)
    with pytest.raises(redis.exceptions.ResponseError):
        await pipeline(StoreFailingOn(poison={e.event_id})).apply(items("p-1", [e]))
