"""ProfileService: reads the unified view from Redis; writes go through the stream."""

from __future__ import annotations

import base64
import functools
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar, cast

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from cx.profile.v1 import profile_pb2_grpc
from prometheus_client import Counter

from services.common.grpc_errors import unavailable_on_outage
from services.common.touchpoint_publisher import (
    BrokerUnavailable,
    PublishError,
    TouchpointPublisher,
)
from services.common.validation import MAX_ID_LEN, normalise_and_validate
from services.profile.adapters.reader import (
    LoadedProfile,
    ProfileReader,
    ProfileSplitter,
    SplitConflict,
)
from services.profile.domain.segments import Segment
from services.profile.views import build_profile

REQUESTS = Counter("cx_profile_requests", "ProfileService calls", ["rpc", "code"])

ID_TYPES = {
    pb.IDENTIFIER_TYPE_CUSTOMER_ID: "c",
    pb.IDENTIFIER_TYPE_ANONYMOUS_ID: "a",
    pb.IDENTIFIER_TYPE_EMAIL: "e",
    pb.IDENTIFIER_TYPE_PHONE: "p",
    pb.IDENTIFIER_TYPE_PROFILE_ID: "pid",
}
PAYLOAD_NAMES = {f.name for f in ev.TouchpointEvent.DESCRIPTOR.oneofs_by_name["payload"].fields}
DEFAULT_TIMELINE_PAGE = 50
DEFAULT_MEMBERS_PAGE = 100
MAX_MEMBERS_PAGE = 1000


class BadRequest(Exception):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")


def _now_ms() -> int:
    return int(time.time() * 1000)


ID_TYPE_NAMES = ", ".join(
    pb.IdentifierType.Name(t).removeprefix("IDENTIFIER_TYPE_") for t in ID_TYPES
)
PERSON_ID_FIELDS = {"c": "customer_id", "a": "anonymous_id", "e": "email", "p": "phone"}
# Kept from the client's deadline for answering after the broker's acknowledgement.
DEADLINE_MARGIN_S = 0.2


def parse_identifier(identifier: pb.Identifier, field: str = "identifier") -> tuple[str, str]:
    if identifier.type == pb.IDENTIFIER_TYPE_UNSPECIFIED:
        raise BadRequest(f"{field}.type", f"is required (one of {ID_TYPE_NAMES})")
    kind = ID_TYPES.get(identifier.type)
    if kind is None:
        raise BadRequest(
            f"{field}.type", f"{identifier.type} is not a known IdentifierType ({ID_TYPE_NAMES})"
        )
    value = identifier.value.strip()
    if not value:
        raise BadRequest(f"{field}.value", "is required")
    if kind == "pid":
        if len(value) > MAX_ID_LEN:
            raise BadRequest(f"{field}.value", f"is longer than {MAX_ID_LEN} characters")
        return kind, value
    return kind, as_ingested(kind, value, f"{field}.value")


def as_ingested(kind: str, value: str, field: str) -> str:
    """A person's identifier normalised as ingestion stores it, judged by the ingest
    validator itself (lengths, email and E.164 forms): a read takes exactly the
    identifiers that events may carry, and no rule is copied here."""
    name = PERSON_ID_FIELDS[kind]
    probe = ev.TouchpointEvent(identities=ev.Identities(**{name: value}))
    for violation in normalise_and_validate(probe):
        if violation.field == "event" or violation.field.startswith("identities"):
            raise BadRequest(field, violation.description)
    return str(getattr(probe.identities, name))


def parse_person_identifier(identifier: pb.Identifier) -> tuple[str, str]:
    """An identifier of a person (not a profile id), for calls that act on one."""
    kind, value = parse_identifier(identifier)
    if kind == "pid":
        raise BadRequest("identifier.type", "must be a person's identifier, not PROFILE_ID")
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
        raise BadRequest(field, "is not a token this service issued") from exc
    if kind != "o" or offset < 0:
        raise BadRequest(field, "is not a token this service issued")
    return offset


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    if requested < 0:
        raise BadRequest(field, "must not be negative")
    return min(requested or default, maximum)


Request = TypeVar("Request")
Reply = TypeVar("Reply")
Servicer = TypeVar("Servicer")
Handler = Callable[[Servicer, Request, grpc.ServicerContext], Reply]


def rpc(method: Handler[Servicer, Request, Reply]) -> Handler[Servicer, Request, Reply]:
    """One place for what every call shares: a BadRequest anywhere in the handler is
    INVALID_ARGUMENT naming the field, a concurrent split is ABORTED, an unreachable
    dependency is UNAVAILABLE, and calls are counted by RPC and status code."""
    name = method.__name__

    def fail(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
        REQUESTS.labels(name, code.name).inc()
        context.abort(code, details)

    @functools.wraps(method)
    def handle(self: Servicer, request: Request, context: grpc.ServicerContext) -> Reply:
        try:
            # Redis or Kafka unreachable: UNAVAILABLE with a short message, one log line.
            with unavailable_on_outage(name, context):
                reply = method(self, request, context)
        except BadRequest as exc:
            fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except SplitConflict as exc:
            fail(context, grpc.StatusCode.ABORTED, str(exc))
        except Exception:
            # Set when the handler aborted; grpcio has code(), its type stubs omit it.
            code = cast(Any, context).code()
            REQUESTS.labels(name, code.name if code is not None else "UNKNOWN").inc()
            raise
        REQUESTS.labels(name, "OK").inc()
        return reply

    return handle


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
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

    def _profile_id(self, identifier: pb.Identifier, context: grpc.ServicerContext) -> str:
        kind, value = parse_identifier(identifier)
        pid = self.reader.profile_id(kind, value)
        if pid is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no profile holds that identifier")
        return pid

    def _load(self, pid: str, context: grpc.ServicerContext) -> LoadedProfile:
        loaded = self.reader.load(pid)
        if loaded is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no profile holds that identifier")
        return loaded

    @rpc
    def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.ServicerContext
    ) -> pb.GetProfileResponse:
        if request.HasField("read_mask") and not request.read_mask.IsValidForDescriptor(
            pb.Profile.DESCRIPTOR
        ):
            raise BadRequest("read_mask", f"unknown path in {list(request.read_mask.paths)}")
        pid = self._profile_id(request.identifier, context)
        loaded = self._load(pid, context)
        profile = build_profile(loaded, self.segments, _now_ms())
        if request.read_mask.paths:
            masked = pb.Profile()
            request.read_mask.MergeMessage(profile, masked)
            profile = masked
        return pb.GetProfileResponse(profile=profile)

    @rpc
    def GetTimeline(
        self, request: pb.GetTimelineRequest, context: grpc.ServicerContext
    ) -> pb.GetTimelineResponse:
        limit = self.reader.settings.timeline_max_page
        size = page_size(request.page_size, DEFAULT_TIMELINE_PAGE, limit)
        offset = decode_token(request.page_token)
        kinds = set(request.event_types)
        unknown = kinds - PAYLOAD_NAMES
        if unknown:
            raise BadRequest("event_types", f"unknown event types {sorted(unknown)}")
        pid = self._profile_id(request.identifier, context)
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

    @rpc
    def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, context: grpc.ServicerContext
    ) -> pb.ListSegmentMembersResponse:
        if request.segment not in self.segment_names:
            raise BadRequest("segment", f"unknown segment {request.segment!r}")
        size = page_size(request.page_size, DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE)
        offset = decode_token(request.page_token)
        members, total = self.reader.segment_members(request.segment, offset, size)
        following = offset + len(members)
        return pb.ListSegmentMembersResponse(
            profile_ids=members,
            total=total,
            next_page_token=encode_token(following) if following < total else "",
        )

    @rpc
    def RemoveIdentifier(
        self, request: pb.RemoveIdentifierRequest, context: grpc.ServicerContext
    ) -> pb.RemoveIdentifierResponse:
        kind, value = parse_person_identifier(request.identifier)
        pid = self._profile_id(request.identifier, context)
        loaded = self._load(pid, context)
        if len(loaded.stored.ids) < 2:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "identifier: it is the profile's only one"
            )
        new_pid = self.splitter.remove_identifier(pid, f"{kind}:{value}")
        return pb.RemoveIdentifierResponse(profile_id=pid, new_profile_id=new_pid)

    @rpc
    def UnmergeProfile(
        self, request: pb.UnmergeProfileRequest, context: grpc.ServicerContext
    ) -> pb.UnmergeProfileResponse:
        if not request.profile_id:
            raise BadRequest("profile_id", "is required")
        if not request.merged_profile_id:
            raise BadRequest("merged_profile_id", "is required")
        pid = self.reader.profile_id("pid", request.profile_id)
        if pid is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "profile_id: no such profile")
        restored = self.splitter.unmerge(pid, request.merged_profile_id)
        if restored is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"merged_profile_id: {request.merged_profile_id} was not merged into {pid}",
            )
        return pb.UnmergeProfileResponse(profile_id=pid, restored_profile_id=restored)

    @rpc
    def UpdateConsent(
        self, request: pb.UpdateConsentRequest, context: grpc.ServicerContext
    ) -> pb.UpdateConsentResponse:
        kind, value = parse_person_identifier(request.identifier)
        if request.purpose == ev.ConsentChange.PURPOSE_UNSPECIFIED:
            raise BadRequest("purpose", "is required")
        if self.publisher is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "consent updates are not configured")
        field = {"c": "customer_id", "a": "anonymous_id", "e": "email", "p": "phone"}[kind]
        event = ev.TouchpointEvent(
            event_id=f"consent-{uuid.uuid4()}",
            identities=ev.Identities(**{field: value}),
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
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(map(str, violations)))
        remaining = context.time_remaining()
        try:
            self.publisher.publish(
                [event], timeout_s=None if remaining is None else remaining - DEADLINE_MARGIN_S
            )
        except BrokerUnavailable:
            raise  # UNAVAILABLE, see rpc
        except PublishError as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return pb.UpdateConsentResponse(event_id=event.event_id)

    @rpc
    def ExportProfile(
        self, request: pb.ExportProfileRequest, context: grpc.ServicerContext
    ) -> pb.ExportProfileResponse:
        pid = self._profile_id(request.identifier, context)
        loaded = self._load(pid, context)
        return pb.ExportProfileResponse(
            profile=build_profile(loaded, self.segments, _now_ms()),
            events=self.reader.events(pid),
        )

    @rpc
    def EraseProfile(
        self, request: pb.EraseProfileRequest, context: grpc.ServicerContext
    ) -> pb.EraseProfileResponse:
        pid = self._profile_id(request.identifier, context)
        deleted, suppressed = self.reader.erase(pid)
        return pb.EraseProfileResponse(
            profile_id=pid, keys_deleted=deleted, identifiers_suppressed=suppressed
        )
