"""ProfileService: reads the unified view from Redis; writes go through the stream."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc

from services.common.grpc_errors import (
    Aborted,
    DependencyUnavailable,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    InvalidRequest,
    NotFound,
)
from services.common.identifiers import PROFILE_ID, InvalidIdentifier, identities_of
from services.common.identifiers import parse_identifier as parse_request_identifier
from services.common.touchpoint_publisher import (
    BrokerUnavailable,
    PublishError,
    TouchpointPublisher,
)
from services.common.validation import normalise_and_validate
from services.profile.adapters.erasure import ProfileEraser
from services.profile.adapters.layout import Stat, decode_stats, identifier_member
from services.profile.adapters.reader import LoadedProfile, ProfileReader
from services.profile.adapters.split import ProfileSplitter, SplitConflict
from services.profile.domain.segments import Segment
from services.profile.views import build_profile, features_of, features_response

PAYLOAD_NAMES = {f.name for f in ev.TouchpointEvent.DESCRIPTOR.oneofs_by_name["payload"].fields}
DEFAULT_TIMELINE_PAGE = 50
DEFAULT_MEMBERS_PAGE = 100
MAX_MEMBERS_PAGE = 1000
# GetFeatures: most names one call may ask for, and their longest length.
MAX_FEATURE_NAMES = 200
MAX_FEATURE_NAME_CHARS = 200
NO_PROFILE = "no profile holds that identifier"
# Kept from the client's deadline for answering after the broker's acknowledgement.
DEADLINE_MARGIN_S = 0.2


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_identifier(identifier: pb.Identifier, field: str = "identifier") -> tuple[str, str]:
    """(code, value as stored) of a request's identifier; InvalidArgument naming the part."""
    try:
        kind, value = parse_request_identifier(identifier)
    except InvalidIdentifier as exc:
        raise InvalidArgument(f"{field}.{exc.part}", exc.description) from exc
    return kind.code, value


def parse_person_identifier(identifier: pb.Identifier) -> tuple[str, str]:
    """An identifier of a person (not a profile id), for calls that act on one."""
    kind, value = parse_identifier(identifier)
    if kind == PROFILE_ID.code:
        raise InvalidArgument("identifier.type", "must be a person's identifier, not PROFILE_ID")
    return kind, value


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def decode_token(token: str, field: str = "page_token") -> int:
    if not token:
        return 0
    try:
        kind, _, number = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(field, "is not a token this service issued") from exc
    if kind != "o" or offset < 0:
        raise InvalidArgument(field, "is not a token this service issued")
    return offset


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    return min(requested or default, maximum)


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    """Handlers return a reply or raise a `ServiceError`; the shared `StatusInterceptor`
    answers the code and counts every call (see services/common/grpc_errors.py)."""

    def __init__(
        self,
        reader: ProfileReader,
        segments: Sequence[Segment],
        publisher: TouchpointPublisher | None,
    ) -> None:
        self.reader = reader
        self.segments = list(segments)
        self.segment_names = {s.name for s in segments}
        self.publisher = publisher
        self.splitter = ProfileSplitter(reader)
        self.eraser = ProfileEraser(reader)

    def _profile_id(self, identifier: pb.Identifier) -> str:
        kind, value = parse_identifier(identifier)
        pid = self.reader.profile_id(kind, value)
        if pid is None:
            raise NotFound(NO_PROFILE)
        return pid

    def _load(self, pid: str) -> LoadedProfile:
        loaded = self.reader.load(pid)
        if loaded is None:
            raise NotFound(NO_PROFILE)
        return loaded

    def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.ServicerContext
    ) -> pb.GetProfileResponse:
        if request.HasField("read_mask") and not request.read_mask.IsValidForDescriptor(
            pb.Profile.DESCRIPTOR
        ):
            raise InvalidArgument("read_mask", f"unknown path in {list(request.read_mask.paths)}")
        pid = self._profile_id(request.identifier)
        loaded = self._load(pid)
        profile = build_profile(loaded, self.segments, _now_ms())
        if request.read_mask.paths:
            masked = pb.Profile()
            request.read_mask.MergeMessage(profile, masked)
            profile = masked
        return pb.GetProfileResponse(profile=profile)

    def GetFeatures(
        self, request: pb.GetFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetFeaturesResponse:
        kind, value = parse_identifier(request.identifier)
        names = list(request.names)
        if len(names) > MAX_FEATURE_NAMES:
            raise InvalidArgument("names", f"{len(names)} names; at most {MAX_FEATURE_NAMES}")
        for i, name in enumerate(names):
            if len(name) > MAX_FEATURE_NAME_CHARS:
                raise InvalidArgument(
                    "names",
                    f"names[{i}] has {len(name)} characters; at most {MAX_FEATURE_NAME_CHARS}",
                )
        # The cheap read: identifier and profile in two Redis round trips, not four.
        loaded = self.reader.load_identified(kind, value)
        if loaded is None:
            raise NotFound(NO_PROFILE)
        return features_response(features_of(loaded, self.segments, _now_ms(), names))

    def GetTimeline(
        self, request: pb.GetTimelineRequest, context: grpc.ServicerContext
    ) -> pb.GetTimelineResponse:
        limit = self.reader.settings.timeline_max_page
        size = page_size(request.page_size, DEFAULT_TIMELINE_PAGE, limit)
        offset = decode_token(request.page_token)
        kinds = set(request.event_types)
        unknown = kinds - PAYLOAD_NAMES
        if unknown:
            raise InvalidArgument("event_types", f"unknown event types {sorted(unknown)}")
        pid = self._profile_id(request.identifier)
        window = self.reader.settings.timeline_size
        entries: list[pb.TimelineEntry] = []
        position = offset
        while len(entries) < size and position < window:
            chunk = self.reader.events(pid, position, min(position + 2 * size, window) - 1)
            if not chunk:
                position = window
                break
            for event in chunk:
                position += 1
                if not kinds or event.WhichOneof("payload") in kinds:
                    entries.append(pb.TimelineEntry(event=event))
                    if len(entries) == size:
                        break
        more = position < window and bool(self.reader.events(pid, position, position))
        return pb.GetTimelineResponse(
            entries=entries, next_page_token=encode_token(position) if more else ""
        )

    def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, context: grpc.ServicerContext
    ) -> pb.ListSegmentMembersResponse:
        if request.segment not in self.segment_names:
            raise InvalidArgument("segment", f"unknown segment {request.segment!r}")
        size = page_size(request.page_size, DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE)
        offset = decode_token(request.page_token)
        members, total = self.reader.segment_members(request.segment, offset, size)
        following = offset + len(members)
        return pb.ListSegmentMembersResponse(
            profile_ids=members,
            total=total,
            next_page_token=encode_token(following) if following < total else "",
        )

    def RemoveIdentifier(
        self, request: pb.RemoveIdentifierRequest, context: grpc.ServicerContext
    ) -> pb.RemoveIdentifierResponse:
        kind, value = parse_person_identifier(request.identifier)
        pid = self._profile_id(request.identifier)
        loaded = self._load(pid)
        if len(loaded.stored.ids) < 2:
            raise FailedPrecondition("identifier: it is the profile's only one")
        try:
            new_pid = self.splitter.remove_identifier(pid, identifier_member(kind, value))
        except SplitConflict as exc:
            raise Aborted(str(exc)) from exc
        return pb.RemoveIdentifierResponse(profile_id=pid, new_profile_id=new_pid)

    def UnmergeProfile(
        self, request: pb.UnmergeProfileRequest, context: grpc.ServicerContext
    ) -> pb.UnmergeProfileResponse:
        if not request.profile_id:
            raise InvalidArgument("profile_id", "is required")
        if not request.merged_profile_id:
            raise InvalidArgument("merged_profile_id", "is required")
        pid = self.reader.profile_id(PROFILE_ID.code, request.profile_id)
        if pid is None:
            raise NotFound("profile_id: no such profile")
        try:
            restored = self.splitter.unmerge(pid, request.merged_profile_id)
        except SplitConflict as exc:
            raise Aborted(str(exc)) from exc
        if restored is None:
            raise FailedPrecondition(
                f"merged_profile_id: {request.merged_profile_id} was not merged into {pid}"
            )
        return pb.UnmergeProfileResponse(profile_id=pid, restored_profile_id=restored)

    def UpdateConsent(
        self, request: pb.UpdateConsentRequest, context: grpc.ServicerContext
    ) -> pb.UpdateConsentResponse:
        kind, value = parse_person_identifier(request.identifier)
        if request.purpose == ev.ConsentChange.PURPOSE_UNSPECIFIED:
            raise InvalidArgument("purpose", "is required")
        if self.publisher is None:
            raise DependencyUnavailable("Kafka", "consent updates are not configured")
        event = ev.TouchpointEvent(
            event_id=f"consent-{uuid.uuid4()}",
            identities=identities_of(kind, value),
            channel=ev.CHANNEL_OTHER,
            touchpoint="profile.consent",
            journey_stage=ev.JOURNEY_STAGE_USAGE,
            source_system=request.source_system or "profile-service",
            consent_change=ev.ConsentChange(purpose=request.purpose, granted=request.granted),
        )
        now = datetime.now(UTC)
        event.occurred_at.FromDatetime(now)
        event.received_at.FromDatetime(now)
        violations = normalise_and_validate(event, now=now)
        if violations:
            raise InvalidRequest("; ".join(map(str, violations)))
        remaining = context.time_remaining()
        try:
            self.publisher.publish(
                [event], timeout_s=None if remaining is None else remaining - DEADLINE_MARGIN_S
            )
        except BrokerUnavailable:
            raise  # a DependencyUnavailable: UNAVAILABLE
        except PublishError as exc:
            raise Internal(str(exc)) from exc
        return pb.UpdateConsentResponse(event_id=event.event_id)

    def ExportProfile(
        self, request: pb.ExportProfileRequest, context: grpc.ServicerContext
    ) -> pb.ExportProfileResponse:
        pid = self._profile_id(request.identifier)
        loaded = self._load(pid)
        return pb.ExportProfileResponse(
            profile=build_profile(loaded, self.segments, _now_ms()),
            events=self.reader.events(pid),
        )

    def EraseProfile(
        self, request: pb.EraseProfileRequest, context: grpc.ServicerContext
    ) -> pb.EraseProfileResponse:
        pid = self._profile_id(request.identifier)
        deleted, suppressed = self.eraser.erase(pid)
        return pb.EraseProfileResponse(
            profile_id=pid, keys_deleted=deleted, identifiers_suppressed=suppressed
        )

    def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetStatsResponse:
        stats = decode_stats(self.reader.client.hgetall(self.reader.keys.stats))
        sizes = [
            pb.SegmentSize(segment=s.name, members=self.reader.segment_members(s.name, 0, 1)[1])
            for s in self.segments
        ]
        return pb.GetStatsResponse(
            events_applied=stats.get(Stat.APPLIED, 0),
            events_suppressed=stats.get(Stat.SUPPRESSED, 0),
            events_blocked=stats.get(Stat.BLOCKED, 0),
            profiles_created=stats.get(Stat.PROFILES_CREATED, 0),
            profiles_merged=stats.get(Stat.MERGES, 0),
            identifiers_stitched=stats.get(Stat.STITCHED, 0),
            segments=sizes,
        )
