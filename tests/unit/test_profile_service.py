"""ProfileServicer's handlers on an in-memory reader (no Redis): what each answers, and the
ServiceError (with the field it names) each raises. The real path is in
tests/integration/test_profile_flow.py and test_profile_admin.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from google.protobuf.field_mask_pb2 import FieldMask

from services.common.grpc_errors import (
    DependencyUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
)
from services.common.touchpoint_publisher import TouchpointPublisher
from services.profile.adapters.layout import Keys, Lineage, Stat, split_member
from services.profile.adapters.reader import LoadedProfile, ProfileReader
from services.profile.domain.segments import Condition, Segment
from services.profile.service import DEADLINE_MARGIN_S, ProfileServicer, decode_token
from services.profile.settings import ProfileSettings
from tests.factories import home_page_view, identify, nps, order
from tests.unit.fake_grpc import RecordingPublisher, ctx
from tests.unit.fake_stores import stored

SEGMENTS = [
    Segment("buyers", "", all_of=(Condition("orders", ">=", 1),)),
    Segment("detractors", "", all_of=(Condition("nps_category", "==", "detractor"),)),
]
EMAIL, CUSTOMER = pb.IDENTIFIER_TYPE_EMAIL, pb.IDENTIFIER_TYPE_CUSTOMER_ID


class FakeRedis:
    """The two calls the servicer's collaborators make on the client when built or asked
    for stats (the splitter registers its script)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}

    def register_script(self, script: str) -> object:
        return object()

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return self.hashes.get(key, {})


@dataclass
class MemoryReader:
    """ProfileReader's reads, held in memory."""

    settings: ProfileSettings = field(default_factory=ProfileSettings)
    client: FakeRedis = field(default_factory=FakeRedis)
    profiles: dict[str, LoadedProfile] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    # Newest first, as the reader returns them.
    timeline: dict[str, list[ev.TouchpointEvent]] = field(default_factory=dict)
    segments: dict[str, list[str]] = field(default_factory=dict)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    def add(self, pid: str, events: list[ev.TouchpointEvent]) -> None:
        held = stored(events, pid)
        lineage = [Lineage(split_member(m), "", 0, "") for m in sorted(held.ids)]
        self.profiles[pid] = LoadedProfile(held, lineage)
        self.owners.update({split_member(m): pid for m in held.ids})
        self.timeline[pid] = sorted(events, key=lambda e: e.occurred_at.ToMilliseconds())[::-1]

    def profile_id(self, id_type: str, value: str) -> str | None:
        if id_type == "pid":
            return value if value in self.profiles else None
        return self.owners.get((id_type, value))

    def load(self, pid: str) -> LoadedProfile | None:
        return self.profiles.get(pid)

    def load_identified(self, id_type: str, value: str) -> LoadedProfile | None:
        pid = self.profile_id(id_type, value)
        return None if pid is None else self.load(pid)

    def events(self, pid: str, start: int = 0, stop: int = -1) -> list[ev.TouchpointEvent]:
        held = self.timeline.get(pid, [])
        return held[start:] if stop == -1 else held[start : stop + 1]

    def segment_members(self, name: str, start: int, count: int) -> tuple[list[str], int]:
        members = self.segments.get(name, [])
        return members[start : start + count], len(members)


def servicer(reader: MemoryReader, publisher: RecordingPublisher | None = None) -> ProfileServicer:
    return ProfileServicer(
        cast(ProfileReader, reader), SEGMENTS, cast(TouchpointPublisher | None, publisher)
    )


def ident(t: pb.IdentifierType.ValueType, value: str) -> pb.Identifier:
    return pb.Identifier(type=t, value=value)


def ann() -> tuple[MemoryReader, list[ev.TouchpointEvent]]:
    """Ann, cust-1 with an email: a login, a page view, an order and a detractor score."""
    events = [
        identify(0, identities=ev.Identities(customer_id="cust-1", email="ann@example.org")),
        home_page_view(1),
        order(2, 120, "o-1"),
        nps(3, 2),
    ]
    reader = MemoryReader()
    reader.add("p-ann", events)
    return reader, events


def raised(call: Any, *args: Any) -> ServiceError:
    """The ServiceError a handler raises (the interceptor answers its code)."""
    with pytest.raises(ServiceError) as caught:
        call(*args)
    return caught.value


# --- GetProfile -----------------------------------------------------------------------


def test_get_profile_finds_the_person_by_any_identifier_normalised_as_at_ingestion() -> None:
    reader, events = ann()
    s = servicer(reader)
    request = pb.GetProfileRequest(identifier=ident(EMAIL, "  Ann@Example.org "))
    profile = s.GetProfile(request, ctx()).profile
    assert profile.profile_id == "p-ann"
    assert profile.activity.events == len(events)
    assert profile.commerce.orders == 1
    assert profile.segments == ["buyers", "detractors"]
    by_id = s.GetProfile(pb.GetProfileRequest(identifier=ident(CUSTOMER, "cust-1")), ctx())
    assert by_id.profile.profile_id == "p-ann"


def test_get_profile_keeps_only_the_read_mask_paths() -> None:
    reader, _ = ann()
    request = pb.GetProfileRequest(
        identifier=ident(CUSTOMER, "cust-1"), read_mask=FieldMask(paths=["commerce.orders"])
    )
    profile = servicer(reader).GetProfile(request, ctx()).profile
    assert profile == pb.Profile(commerce=pb.Commerce(orders=1))


def test_get_profile_refuses_an_unknown_read_mask_path_naming_the_field() -> None:
    reader, _ = ann()
    request = pb.GetProfileRequest(
        identifier=ident(CUSTOMER, "cust-1"), read_mask=FieldMask(paths=["no_such_field"])
    )
    error = raised(servicer(reader).GetProfile, request, ctx())
    assert isinstance(error, InvalidArgument)
    assert error.field == "read_mask"


@pytest.mark.parametrize(
    ("identifier", "field"),
    [
        (pb.Identifier(value="cust-1"), "identifier.type"),
        (ident(CUSTOMER, ""), "identifier.value"),
        (ident(EMAIL, "not an email"), "identifier.value"),
    ],
)
def test_an_invalid_identifier_is_invalid_argument_naming_its_part(
    identifier: pb.Identifier, field: str
) -> None:
    reader, _ = ann()
    error = raised(servicer(reader).GetProfile, pb.GetProfileRequest(identifier=identifier), ctx())
    assert isinstance(error, InvalidArgument)
    assert error.field == field


def test_an_unknown_identifier_is_not_found() -> None:
    reader, _ = ann()
    request = pb.GetProfileRequest(identifier=ident(CUSTOMER, "cust-404"))
    assert isinstance(raised(servicer(reader).GetProfile, request, ctx()), NotFound)


# --- GetFeatures ----------------------------------------------------------------------


def features(
    reader: MemoryReader, identifier: pb.Identifier, *names: str
) -> pb.GetFeaturesResponse:
    request = pb.GetFeaturesRequest(identifier=identifier, names=names)
    return servicer(reader).GetFeatures(request, ctx())


def test_get_features_answers_the_fields_get_profile_derives() -> None:
    reader, events = ann()
    reply = features(reader, ident(EMAIL, " Ann@Example.org"))
    profile = (
        servicer(reader)
        .GetProfile(pb.GetProfileRequest(identifier=ident(CUSTOMER, "cust-1")), ctx())
        .profile
    )
    assert reply.profile_id == profile.profile_id == "p-ann"
    assert reply.features["orders"] == profile.commerce.orders == 1
    assert reply.features["nps_category"] == profile.cx.nps_category == "detractor"
    assert reply.features["journey_stage"] == profile.journey_stage
    assert reply.features["value_tier"] == profile.value_tier
    assert list(reply.segments) == list(profile.segments) == ["buyers", "detractors"]
    assert reply.as_of.ToMilliseconds() == events[-1].occurred_at.ToMilliseconds()
    assert reply.computed_at.ToMilliseconds() > 0


def test_get_features_keeps_only_the_names_asked_for() -> None:
    reader, _ = ann()
    reply = features(reader, ident(CUSTOMER, "cust-1"), "orders", "csat_last", "unknown")
    assert dict(reply.features) == {"orders": 1.0}
    assert list(reply.segments) == ["buyers", "detractors"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GetFeaturesRequest(), "identifier.type"),
        (pb.GetFeaturesRequest(identifier=ident(EMAIL, "not an email")), "identifier.value"),
        (pb.GetFeaturesRequest(identifier=ident(CUSTOMER, "cust-1"), names=["x"] * 201), "names"),
        (
            pb.GetFeaturesRequest(identifier=ident(CUSTOMER, "cust-1"), names=["ok", "x" * 201]),
            "names",
        ),
    ],
)
def test_get_features_requests_are_checked_field_by_field(
    request_: pb.GetFeaturesRequest, field: str
) -> None:
    reader, _ = ann()
    error = raised(servicer(reader).GetFeatures, request_, ctx())
    assert isinstance(error, InvalidArgument)
    assert error.field == field


def test_get_features_takes_200_names_of_200_characters() -> None:
    reader, _ = ann()
    names = ["orders", *(f"{i}".ljust(200, "x") for i in range(199))]
    assert dict(features(reader, ident(CUSTOMER, "cust-1"), *names).features) == {"orders": 1.0}


def test_get_features_of_an_unknown_identifier_is_not_found() -> None:
    reader, _ = ann()
    request = pb.GetFeaturesRequest(identifier=ident(CUSTOMER, "cust-404"))
    assert isinstance(raised(servicer(reader).GetFeatures, request, ctx()), NotFound)


# --- GetTimeline ----------------------------------------------------------------------


def test_the_timeline_pages_newest_first_and_filters_by_event_type() -> None:
    reader, events = ann()
    s = servicer(reader)
    who = ident(CUSTOMER, "cust-1")
    first = s.GetTimeline(pb.GetTimelineRequest(identifier=who, page_size=3), ctx())
    assert [e.event for e in first.entries] == events[::-1][:3]
    assert decode_token(first.next_page_token) == 3
    second = s.GetTimeline(
        pb.GetTimelineRequest(identifier=who, page_size=3, page_token=first.next_page_token),
        ctx(),
    )
    assert [e.event for e in second.entries] == events[:1]
    assert second.next_page_token == ""
    orders = s.GetTimeline(
        pb.GetTimelineRequest(identifier=who, event_types=["order_placed"]), ctx()
    )
    assert [e.event for e in orders.entries] == [events[2]]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"event_types": ["no_such_payload"]}, "event_types"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_size": -1}, "page_size"),
    ],
)
def test_timeline_requests_are_checked_field_by_field(
    request_fields: dict[str, Any], field: str
) -> None:
    reader, _ = ann()
    request = pb.GetTimelineRequest(identifier=ident(CUSTOMER, "cust-1"), **request_fields)
    error = raised(servicer(reader).GetTimeline, request, ctx())
    assert isinstance(error, InvalidArgument)
    assert error.field == field


# --- ListSegmentMembers and GetStats --------------------------------------------------


def test_segment_members_page_with_the_total() -> None:
    reader = MemoryReader(segments={"buyers": ["p-3", "p-2", "p-1"]})
    s = servicer(reader)
    first = s.ListSegmentMembers(pb.ListSegmentMembersRequest(segment="buyers", page_size=2), ctx())
    assert (list(first.profile_ids), first.total) == (["p-3", "p-2"], 3)
    rest = s.ListSegmentMembers(
        pb.ListSegmentMembersRequest(segment="buyers", page_token=first.next_page_token), ctx()
    )
    assert (list(rest.profile_ids), rest.next_page_token) == (["p-1"], "")


def test_an_unknown_segment_is_invalid_argument() -> None:
    request = pb.ListSegmentMembersRequest(segment="nope")
    error = raised(servicer(MemoryReader()).ListSegmentMembers, request, ctx())
    assert isinstance(error, InvalidArgument)
    assert error.field == "segment"


def test_stats_are_the_stream_counters_and_every_segment_size() -> None:
    reader = MemoryReader(segments={"detractors": ["p-1", "p-2"]})
    counters = {
        Stat.APPLIED: 40,
        Stat.SUPPRESSED: 3,
        Stat.BLOCKED: 2,
        Stat.PROFILES_CREATED: 12,
        Stat.MERGES: 4,
        Stat.STITCHED: 9,
    }
    reader.client.hashes[reader.keys.stats] = {
        k.encode(): str(v).encode() for k, v in counters.items()
    }
    assert servicer(reader).GetStats(pb.GetStatsRequest(), ctx()) == pb.GetStatsResponse(
        events_applied=40,
        events_suppressed=3,
        events_blocked=2,
        profiles_created=12,
        profiles_merged=4,
        identifiers_stitched=9,
        segments=[
            pb.SegmentSize(segment="buyers", members=0),
            pb.SegmentSize(segment="detractors", members=2),
        ],
    )


def test_stats_of_an_empty_store_are_zero() -> None:
    reply = servicer(MemoryReader()).GetStats(pb.GetStatsRequest(), ctx())
    assert reply.events_applied == reply.profiles_created == 0
    assert [s.segment for s in reply.segments] == ["buyers", "detractors"]


# --- Identity management and privacy ---------------------------------------------------


def test_the_only_identifier_of_a_profile_cannot_be_removed() -> None:
    reader = MemoryReader()
    reader.add("p-solo", [home_page_view(0, customer_id="solo")])
    request = pb.RemoveIdentifierRequest(identifier=ident(CUSTOMER, "solo"))
    assert isinstance(raised(servicer(reader).RemoveIdentifier, request, ctx()), FailedPrecondition)


def test_calls_on_a_person_refuse_a_profile_id() -> None:
    reader, _ = ann()
    profile_id = ident(pb.IDENTIFIER_TYPE_PROFILE_ID, "p-ann")
    s = servicer(reader, RecordingPublisher())
    for call, request in [
        (s.RemoveIdentifier, pb.RemoveIdentifierRequest(identifier=profile_id)),
        (
            s.UpdateConsent,
            pb.UpdateConsentRequest(
                identifier=profile_id, purpose=ev.ConsentChange.PURPOSE_MARKETING_EMAIL
            ),
        ),
    ]:
        error = raised(call, request, ctx())
        assert isinstance(error, InvalidArgument)
        assert error.field == "identifier.type"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"merged_profile_id": "p-2"}, "profile_id"),
        ({"profile_id": "p-ann"}, "merged_profile_id"),
    ],
)
def test_unmerge_requires_both_profile_ids(request_fields: dict[str, str], field: str) -> None:
    reader, _ = ann()
    request = pb.UnmergeProfileRequest(**request_fields)
    error = raised(servicer(reader).UnmergeProfile, request, ctx())
    assert isinstance(error, InvalidArgument)
    assert error.field == field


def test_unmerge_of_an_unknown_profile_is_not_found() -> None:
    request = pb.UnmergeProfileRequest(profile_id="p-404", merged_profile_id="p-2")
    assert isinstance(raised(servicer(MemoryReader()).UnmergeProfile, request, ctx()), NotFound)


def test_update_consent_publishes_a_valid_consent_event_within_the_deadline() -> None:
    publisher = RecordingPublisher()
    request = pb.UpdateConsentRequest(
        identifier=ident(EMAIL, "Ann@Example.org"),
        purpose=ev.ConsentChange.PURPOSE_MARKETING_EMAIL,
        granted=True,
        source_system="preference-centre",
    )
    reply = servicer(MemoryReader(), publisher).UpdateConsent(request, ctx(time_remaining=3.0))
    (event,) = publisher.published
    assert event.event_id == reply.event_id
    assert event.identities == ev.Identities(email="ann@example.org")
    assert event.consent_change == ev.ConsentChange(
        purpose=ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=True
    )
    assert event.source_system == "preference-centre"
    assert publisher.timeouts == [pytest.approx(3.0 - DEADLINE_MARGIN_S)]


def test_update_consent_needs_a_purpose_and_a_publisher() -> None:
    request = pb.UpdateConsentRequest(identifier=ident(CUSTOMER, "cust-1"))
    error = raised(servicer(MemoryReader(), RecordingPublisher()).UpdateConsent, request, ctx())
    assert isinstance(error, InvalidArgument)
    assert error.field == "purpose"
    request.purpose = ev.ConsentChange.PURPOSE_MARKETING_EMAIL
    error = raised(servicer(MemoryReader()).UpdateConsent, request, ctx())
    assert isinstance(error, DependencyUnavailable)


def test_export_returns_the_profile_and_every_stored_event() -> None:
    reader, events = ann()
    reply = servicer(reader).ExportProfile(
        pb.ExportProfileRequest(identifier=ident(CUSTOMER, "cust-1")), ctx()
    )
    assert reply.profile.profile_id == "p-ann"
    assert list(reply.events) == events[::-1]


def test_erasing_an_unknown_person_is_not_found() -> None:
    request = pb.EraseProfileRequest(identifier=ident(CUSTOMER, "cust-404"))
    assert isinstance(raised(servicer(MemoryReader()).EraseProfile, request, ctx()), NotFound)
