"""AlertsService: incidents (list, get, acknowledge, resolve), silences, and a live
stream of incident changes.

Handlers return a reply or raise a `ServiceError`; the shared `StatusInterceptor` answers
the code and counts every call (see services/common/grpc_errors.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
from cx.alerts.v1 import alerts_pb2 as pb
from cx.alerts.v1 import alerts_pb2_grpc

from services.alerts.adapters.incidents import (
    MAX_PAGE_SIZE,
    ConcurrentChange,
    IncidentStoreLike,
    InvalidPageToken,
)
from services.alerts.domain.incidents import (
    InvalidTransition,
    UnknownIncident,
    UnknownSilence,
    silence_message,
)
from services.alerts.views import (
    MAX_BY,
    MAX_FILTER,
    MAX_NOTE,
    required_id,
    silence_record,
    state_names,
    text,
    watch_matches,
)
from services.common.grpc_errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
)

# A watcher holds a server thread for as long as it watches: at most this many at once.
MAX_WATCHERS = 8
# How long one XREAD blocks; a cancelled watch ends within about this long.
WATCH_BLOCK_MS = 1000


class TooManyWatchers(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def _now_ms() -> int:
    return int(time.time() * 1000)


class AlertsServicer(alerts_pb2_grpc.AlertsServiceServicer):
    def __init__(
        self,
        store: IncidentStoreLike,
        clock: Callable[[], int] = _now_ms,
        max_watchers: int = MAX_WATCHERS,
        watch_block_ms: int = WATCH_BLOCK_MS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.watch_block_ms = watch_block_ms
        self._watchers = threading.BoundedSemaphore(max_watchers)
        self.max_watchers = max_watchers

    # --- incidents ----------------------------------------------------------------------

    def ListIncidents(
        self, request: pb.ListIncidentsRequest, context: grpc.ServicerContext
    ) -> pb.ListIncidentsResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be 1 to {MAX_PAGE_SIZE} (0 means 50)")
        for name in ("team", "rule", "profile_id"):
            text(getattr(request, name), name, MAX_FILTER)
        try:
            page = self.store.list_incidents(
                states=state_names(request.states),
                team=request.team,
                rule=request.rule,
                profile_id=request.profile_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        except InvalidPageToken as exc:
            raise InvalidArgument("page_token", str(exc)) from exc
        return pb.ListIncidentsResponse(
            incidents=page.incidents, next_page_token=page.next_page_token, total=page.total
        )

    def GetIncident(
        self, request: pb.GetIncidentRequest, context: grpc.ServicerContext
    ) -> pb.GetIncidentResponse:
        incident_id = required_id(request.incident_id, "incident_id")
        incident = self.store.get(incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id!r}")
        return pb.GetIncidentResponse(incident=incident)

    def _change(self, change: Callable[[], pb.Incident]) -> pb.Incident:
        try:
            return change()
        except UnknownIncident as exc:
            raise NotFound(str(exc)) from exc
        except InvalidTransition as exc:
            raise FailedPrecondition(str(exc)) from exc
        except ConcurrentChange as exc:
            raise Aborted(str(exc)) from exc

    def AcknowledgeIncident(
        self, request: pb.AcknowledgeIncidentRequest, context: grpc.ServicerContext
    ) -> pb.AcknowledgeIncidentResponse:
        incident_id = required_id(request.incident_id, "incident_id")
        by = text(request.by, "by", MAX_BY, "who acknowledges it")
        now = self.clock()
        incident = self._change(lambda: self.store.acknowledge(incident_id, by, now))
        return pb.AcknowledgeIncidentResponse(incident=incident)

    def ResolveIncident(
        self, request: pb.ResolveIncidentRequest, context: grpc.ServicerContext
    ) -> pb.ResolveIncidentResponse:
        incident_id = required_id(request.incident_id, "incident_id")
        by = text(request.by, "by", MAX_BY, "who resolves it")
        if by.strip() == "auto":
            raise InvalidArgument("by", "'auto' is kept for the rules' own resolutions")
        note = text(request.note, "note", MAX_NOTE)
        now = self.clock()
        incident = self._change(lambda: self.store.resolve(incident_id, by, note, now))
        return pb.ResolveIncidentResponse(incident=incident)

    # --- silences -----------------------------------------------------------------------

    def CreateSilence(
        self, request: pb.CreateSilenceRequest, context: grpc.ServicerContext
    ) -> pb.CreateSilenceResponse:
        if not request.HasField("silence"):
            raise InvalidArgument("silence", "is required")
        now = self.clock()
        created = self.store.create_silence(silence_record(request.silence, now), now)
        return pb.CreateSilenceResponse(silence=silence_message(created, now))

    def ListSilences(
        self, request: pb.ListSilencesRequest, context: grpc.ServicerContext
    ) -> pb.ListSilencesResponse:
        now = self.clock()
        found = self.store.list_silences(request.include_expired, now)
        return pb.ListSilencesResponse(silences=[silence_message(s, now) for s in found])

    def ExpireSilence(
        self, request: pb.ExpireSilenceRequest, context: grpc.ServicerContext
    ) -> pb.ExpireSilenceResponse:
        silence_id = required_id(request.silence_id, "silence_id")
        now = self.clock()
        try:
            ended = self.store.expire_silence(silence_id, now)
        except UnknownSilence as exc:
            raise NotFound(str(exc)) from exc
        return pb.ExpireSilenceResponse(silence=silence_message(ended, now))

    # --- the live stream ----------------------------------------------------------------

    def WatchIncidents(
        self, request: pb.WatchIncidentsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchIncidentsResponse]:
        for name in ("team", "rule", "profile_id"):
            text(getattr(request, name), name, MAX_FILTER)
        if not self._watchers.acquire(blocking=False):
            raise TooManyWatchers(
                f"{self.max_watchers} watchers already; retry later or use "
                "cx.experience-incidents.v1"
            )
        try:
            after = self.store.outbox_tail()
            while context.is_active():
                for entry in self.store.read_outbox(after, self.watch_block_ms):
                    after = entry.entry_id
                    if watch_matches(entry.message, request):
                        yield pb.WatchIncidentsResponse(change=entry.message)
        finally:
            self._watchers.release()
