"""The real path: Track -> Kafka -> profile worker -> Redis -> GetProfile."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from google.protobuf.field_mask_pb2 import FieldMask
from kafka import KafkaProducer

from services.common.dead_letter import REASON_HEADER, SOURCE_OFFSET_HEADER
from services.common.telemetry import header_value
from services.profile.domain.fold import differences, fold
from tests.factories import (
    recent_complaint,
    recent_login,
    recent_nps,
    recent_order,
    recent_page,
)

# Re-exported for tests/integration/faults.py until it imports the harness's.
from tests.integration.profile_harness import ANON, CUSTOMER, EMAIL, ProfileHarness, aggregates


def test_journey_across_channels_builds_one_profile_with_metrics_segments_and_changes(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    tag = uuid.uuid4().hex[:6]
    anon, customer, email = f"anon-{tag}", f"cust-{tag}", f"ada-{tag}@example.com"
    # The person is known from a store visit before browsing anonymously; the login then
    # merges two existing profiles.
    store_visit = recent_page(-60, email=email)
    store_visit.channel = ev.CHANNEL_STORE
    h.track([store_visit])
    known = h.wait_for_profile(EMAIL, email, events=1)
    journey = [
        store_visit,
        recent_page(0, anonymous_id=anon),
        recent_page(1, anonymous_id=anon),
        recent_page(2, anonymous_id=anon),
        recent_login(3, anonymous_id=anon, customer_id=customer, email=email),
        recent_order(10, 120, customer_id=customer),
        recent_order(60, 80, customer_id=customer, email=email),
        recent_nps(120, 3, email=email),
        recent_complaint(130, customer_id=customer),
    ]

    # Events on different partition keys may be resolved in any order: the anonymous
    # profile must exist before the login for the login to merge two profiles.
    h.track(journey[1:4])
    h.wait_for_profile(ANON, anon, events=3)
    h.track(journey[4:])
    profile = h.wait_for_profile(EMAIL, email, events=len(journey))
    by_anon = h.profile(ANON, anon)
    assert by_anon is not None
    assert by_anon.profile_id == profile.profile_id == known.profile_id
    assert {(i.identifier.type, i.identifier.value) for i in profile.identities} == {
        (ANON, anon),
        (CUSTOMER, customer),
        (EMAIL, email),
    }
    assert profile.traits["first_name"] == "Ada"
    assert profile.commerce.orders == 2
    assert profile.commerce.revenue == pytest.approx(200)
    assert profile.commerce.clv_historic == pytest.approx(200)
    assert profile.commerce.average_order_value == pytest.approx(100)
    assert profile.cx.nps_last == 3
    assert profile.cx.nps_category == "detractor"
    assert profile.cx.open_complaints == 1
    assert profile.journey_stage == "support"
    codes = [r.code for r in profile.churn_risk.reasons]
    assert "nps_detractor" in codes
    assert "open_complaints" in codes
    assert {"detractors", "open_complaint"} <= set(profile.segments)
    assert profile.cx.updated.event_id == journey[-1].event_id
    assert profile.commerce.updated.event_id == journey[6].event_id

    # The stored aggregates equal the reference fold of the same events.
    assert (
        differences(
            aggregates(fold(journey, profile.profile_id)), aggregates(h.state(profile.profile_id))
        )
        == []
    )

    def changes() -> list[pb.ProfileChange] | None:
        found = [
            pb.ProfileChange.FromString(value)
            for key, value, _ in h.records(h.kafka.profile_changes_topic)
            if key == profile.profile_id.encode()
        ]
        kinds = {c.WhichOneof("change") for c in found}
        seen_kinds.append(kinds)
        wanted = {"merged", "detractor", "complaint", "segment", "journey_stage"}
        return found if wanted <= kinds else None

    seen_kinds: list[set[Any]] = []

    published = h.wait_for(f"change events (seen: {seen_kinds[-1:]})", changes)
    entered = {
        c.segment.segment
        for c in published
        if c.WhichOneof("change") == "segment" and c.segment.entered
    }
    assert {"detractors", "open_complaint"} <= entered
    (detractor,) = [c for c in published if c.WhichOneof("change") == "detractor"]
    assert detractor.detractor.score == 3
    assert detractor.detractor.event_id == journey[7].event_id
    (merged,) = [c for c in published if c.WhichOneof("change") == "merged"]
    assert merged.merged.event_id == journey[4].event_id
    # Stages, tiers and severities are enums; one profile's changes are on one partition,
    # in order.
    stages = [c.journey_stage for c in published if c.WhichOneof("change") == "journey_stage"]
    assert (stages[0].previous, stages[0].current) == (
        ev.JOURNEY_STAGE_UNSPECIFIED,
        ev.JOURNEY_STAGE_AWARENESS,
    )
    assert stages[-1].current == ev.JOURNEY_STAGE_SUPPORT
    (opened,) = [c.complaint for c in published if c.WhichOneof("change") == "complaint"]
    assert (opened.open, opened.severity, opened.category, opened.event_id) == (
        True,
        ev.Complaint.SEVERITY_HIGH,
        "delivery",
        journey[8].event_id,
    )
    tiers = [c.value_tier for c in published if c.WhichOneof("change") == "value_tier"]
    assert tiers[0].previous == pb.VALUE_TIER_NONE
    assert tiers[-1].current > pb.VALUE_TIER_NONE
    assert tiers[-1].clv_total > 0

    # Redelivery of the same events changes nothing. Markers on both partition keys come
    # after the repeats, so once they are applied the repeats were processed too.
    markers = [recent_page(200, anonymous_id=anon), recent_page(201, customer_id=customer)]
    h.track(journey + markers)
    after = h.wait_for_profile(EMAIL, email, events=len(journey) + 2)
    assert after.commerce.orders == 2
    assert after.cx.open_complaints == 1
    assert (
        differences(
            aggregates(fold(journey + markers, profile.profile_id)),
            aggregates(h.state(profile.profile_id)),
        )
        == []
    )


def test_poison_record_is_dead_lettered_and_the_stream_continues(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    raw = KafkaProducer(bootstrap_servers=h.kafka.kafka_bootstrap_servers)
    poison = raw.send(
        h.kafka.touchpoints_topic, key=b"k", value=b"\x00not-protobuf", partition=0
    ).get(timeout=10)
    after = recent_page(300, customer_id=f"after-poison-{uuid.uuid4().hex[:6]}")
    raw.send(h.kafka.touchpoints_topic, key=b"k", value=after.SerializeToString(), partition=0)
    raw.flush()
    raw.close()

    h.wait_for(
        "the event after the poison record",
        lambda: h.profile(CUSTOMER, after.identities.customer_id),
    )
    letters = h.dead_letters(b"\x00not-protobuf")
    assert len(letters) == 1
    assert "not a protobuf TouchpointEvent" in (header_value(letters[0], REASON_HEADER) or "")
    assert header_value(letters[0], SOURCE_OFFSET_HEADER) == str(poison.offset)


def test_corrupt_bundle_on_the_repartition_topic_is_dead_lettered_and_apply_continues(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    raw = KafkaProducer(bootstrap_servers=h.kafka.kafka_bootstrap_servers)
    corrupt = raw.send(h.kafka.profile_events_topic, value=b"\xffcorrupt", partition=0).get(
        timeout=10
    )
    raw.close()
    after = recent_page(301, customer_id=f"after-bundle-{uuid.uuid4().hex[:6]}")
    h.track([after])

    h.wait_for(
        "the event after the corrupt bundle",
        lambda: h.profile(CUSTOMER, after.identities.customer_id),
    )
    letters = h.wait_for("the corrupt bundle's dead letter", lambda: h.dead_letters(b"\xffcorrupt"))
    assert len(letters) == 1
    assert "not a protobuf ProfileEventBundle" in (header_value(letters[0], REASON_HEADER) or "")
    assert header_value(letters[0], SOURCE_OFFSET_HEADER) == str(corrupt.offset)


def test_profile_reads_validate_and_page(profile_harness: ProfileHarness) -> None:
    h = profile_harness
    customer = f"reader-{uuid.uuid4().hex[:6]}"
    events = [recent_page(i, customer_id=customer) for i in range(7)] + [
        recent_order(8, 30, customer_id=customer)
    ]
    h.track(events)
    profile = h.wait_for_profile(CUSTOMER, customer, events=8)
    ident = pb.Identifier(type=CUSTOMER, value=customer)

    masked = h.profiles.GetProfile(
        pb.GetProfileRequest(
            identifier=ident, read_mask=FieldMask(paths=["commerce.orders", "profile_id"])
        )
    )
    assert masked.profile.commerce.orders == 1
    assert masked.profile.profile_id == profile.profile_id
    assert not masked.profile.identities
    assert masked.profile.activity.events == 0

    first = h.profiles.GetTimeline(pb.GetTimelineRequest(identifier=ident, page_size=3))
    assert [e.event.event_id for e in first.entries] == [e.event_id for e in events[::-1][:3]]
    second = h.profiles.GetTimeline(
        pb.GetTimelineRequest(identifier=ident, page_size=3, page_token=first.next_page_token)
    )
    assert [e.event.event_id for e in second.entries] == [e.event_id for e in events[::-1][3:6]]
    orders_only = h.profiles.GetTimeline(
        pb.GetTimelineRequest(identifier=ident, event_types=["order_placed"])
    )
    assert [e.event.event_id for e in orders_only.entries] == [events[-1].event_id]
    assert orders_only.next_page_token == ""

    for request, field in (
        (
            pb.GetProfileRequest(identifier=pb.Identifier(type=EMAIL, value="nope")),
            "identifier.value",
        ),
        (
            pb.GetProfileRequest(identifier=ident, read_mask=FieldMask(paths=["nonsense"])),
            "read_mask",
        ),
        (pb.GetProfileRequest(identifier=pb.Identifier(value="x")), "identifier.type"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            h.profiles.GetProfile(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(field)
    with pytest.raises(grpc.RpcError) as info:
        h.profiles.GetTimeline(pb.GetTimelineRequest(identifier=ident, page_token="bad"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        h.profiles.GetProfile(
            pb.GetProfileRequest(
                identifier=pb.Identifier(type=CUSTOMER, value="nobody-" + customer)
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
