"""Requests of the AlertsService as the store's terms, checked field by field (an
`InvalidArgument` names the field); replies are built by services/alerts/domain/incidents.py
(`incident_message`, `silence_message`)."""

from __future__ import annotations

from collections.abc import Iterable

from cx.alerts.v1 import alerts_pb2 as pb

from services.alerts.domain.incidents import (
    MATCHER_NAMES,
    STATE_OF_ENUM,
    InvalidSilence,
    Matcher,
    SilenceRecord,
    check_silence,
)
from services.common.grpc_errors import InvalidArgument

MAX_ID = 100
MAX_BY = 200
MAX_NOTE = 2000
MAX_FILTER = 200


def required_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID:
        raise InvalidArgument(field, f"is longer than {MAX_ID} characters")
    return value


def text(value: str, field: str, limit: int, required: str = "") -> str:
    """`value` checked: at most `limit` characters, and present when `required` says
    what it is."""
    if required and not value.strip():
        raise InvalidArgument(field, f"is required: {required}")
    if len(value) > limit:
        raise InvalidArgument(field, f"is longer than {limit} characters")
    return value


def state_names(states: Iterable[pb.State.ValueType]) -> list[str]:
    names = []
    for value in states:
        name = STATE_OF_ENUM.get(value)
        if name is None:
            raise InvalidArgument(
                "states", f"{value} is not STATE_TRIGGERED, STATE_ACKNOWLEDGED or STATE_RESOLVED"
            )
        names.append(name)
    return sorted(set(names))


def silence_record(silence: pb.Silence, now_ms: int) -> SilenceRecord:
    """The silence to create: starts now when starts_at is unset; its id and state are
    the server's."""
    matchers = []
    for i, m in enumerate(silence.matchers):
        if m.name not in MATCHER_NAMES:
            raise InvalidArgument(
                f"silence.matchers[{i}].name",
                f"{m.name[:40]!r} is not one of {', '.join(MATCHER_NAMES)}",
            )
        matchers.append(Matcher(m.name, m.value, m.prefix))
    record = SilenceRecord(
        silence_id="",
        matchers=tuple(matchers),
        starts_at_ms=(
            silence.starts_at.ToMilliseconds() if silence.HasField("starts_at") else now_ms
        ),
        ends_at_ms=silence.ends_at.ToMilliseconds() if silence.HasField("ends_at") else 0,
        created_by=text(silence.created_by, "silence.created_by", MAX_BY, "who silences"),
        comment=silence.comment,
    )
    try:
        check_silence(record, now_ms)
    except InvalidSilence as exc:
        raise InvalidArgument(exc.field, exc.description) from exc
    return record


def watch_matches(change: pb.IncidentChange, request: pb.WatchIncidentsRequest) -> bool:
    incident = change.incident
    return (
        (not request.team or incident.team == request.team)
        and (not request.rule or incident.rule == request.rule)
        and (not request.profile_id or incident.profile_id == request.profile_id)
    )
