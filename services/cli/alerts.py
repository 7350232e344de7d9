"""`cx alerts`: experience incidents and silences, from the alerts service
(`cx.alerts.v1.AlertsService`)."""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer
from cx.alerts.v1 import alerts_pb2 as pb
from cx.alerts.v1 import alerts_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from services.alerts.settings import AlertsSettings
from services.cli import alerts_render as render
from services.cli.common import duration_seconds, stdout_console, stub_for
from services.common.settings import grpc_address

app = typer.Typer(
    help="Experience incidents: list, show, acknowledge, resolve; silences.",
    no_args_is_help=True,
)
silence_app = typer.Typer(
    help="Silences: hold the pages of matching incidents for a while.", no_args_is_help=True
)
app.add_typer(silence_app, name="silence")


class StateName(StrEnum):
    """cx.alerts.v1.State in lower case without the prefix (a unit test holds it to the
    proto)."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


STATES: tuple[str, ...] = tuple(s.value for s in StateName)
# Silence matcher names (services/alerts/domain/incidents.py MATCHER_NAMES).
MATCHERS = ("team", "rule", "touchpoint", "profile_id", "severity")

CALL = "Call"
Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The alerts service's gRPC address; by default GRPC_HOST and ALERTS_GRPC_PORT.",
        show_default="127.0.0.1:50054",
        rich_help_panel=CALL,
    ),
]
Timeout = Annotated[
    float, typer.Option(min=0.1, help="Seconds to wait for the reply.", rich_help_panel=CALL)
]
Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the reply as JSON (protobuf JSON mapping).", rich_help_panel=CALL
    ),
]
By = Annotated[
    str | None,
    typer.Option(help="Who does it; by default the current user.", show_default=False),
]
DEFAULT_TIMEOUT_S = 10.0


def _stub(address: str | None) -> AbstractContextManager[alerts_pb2_grpc.AlertsServiceStub]:
    return stub_for(
        address or grpc_address(AlertsSettings().grpc_port),
        alerts_pb2_grpc.AlertsServiceStub,
    )


def print_json(message: Message) -> None:
    print(json_format.MessageToJson(message, indent=2))


def who(by: str | None) -> str:
    return by if by else getpass.getuser()


def _now() -> datetime:
    return datetime.now(UTC)


# --- incidents ------------------------------------------------------------------------


@app.command("list")
def list_incidents(
    state: Annotated[
        list[StateName] | None,
        typer.Option(help="Only incidents in this state (repeatable).", show_default=False),
    ] = None,
    open_only: Annotated[
        bool, typer.Option("--open", help="Only open incidents (triggered or acknowledged).")
    ] = False,
    team: Annotated[str, typer.Option(help="Only this team's incidents.")] = "",
    rule: Annotated[str, typer.Option(help="Only this rule's incidents.")] = "",
    profile_id: Annotated[str, typer.Option(help="Only this person's incidents.")] = "",
    limit: Annotated[
        int, typer.Option(min=1, max=200, help="Incidents per page (at most 200).")
    ] = 50,
    page_token: Annotated[
        str, typer.Option(help="Continue a listing (its caption says the token).")
    ] = "",
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """List incidents, newest change first.

    One line each: state, severity, rule, team, the person (or touchpoint), how many
    triggers it folded in, when it was last seen, and its summary (with why it was not
    paged: inhibited or silenced).
    """
    if open_only and state:
        raise typer.BadParameter("--open already says which states", param_hint="'--state'")
    names = ["triggered", "acknowledged"] if open_only else [s.value for s in state or []]
    request = pb.ListIncidentsRequest(
        states=[pb.State.Value(f"STATE_{s.upper()}") for s in names],
        team=team,
        rule=rule,
        profile_id=profile_id,
        page_size=limit,
        page_token=page_token,
    )
    with _stub(address) as stub:
        reply: pb.ListIncidentsResponse = stub.ListIncidents(request, timeout=timeout)
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.incidents_table(reply, _now()))


IncidentId = Annotated[str, typer.Argument(help="The incident's id (from list).")]


@app.command()
def show(
    incident_id: IncidentId,
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Show one incident: its state and who changed it, evidence and deliveries."""
    with _stub(address) as stub:
        reply: pb.GetIncidentResponse = stub.GetIncident(
            pb.GetIncidentRequest(incident_id=incident_id), timeout=timeout
        )
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.incident_detail(reply.incident, _now()))


@app.command()
def ack(
    incident_id: IncidentId,
    by: By = None,
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Acknowledge a triggered incident: its receivers are told, escalation stops."""
    with _stub(address) as stub:
        reply: pb.AcknowledgeIncidentResponse = stub.AcknowledgeIncident(
            pb.AcknowledgeIncidentRequest(incident_id=incident_id, by=who(by)), timeout=timeout
        )
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.incident_detail(reply.incident, _now()))


@app.command()
def resolve(
    incident_id: IncidentId,
    by: By = None,
    note: Annotated[str, typer.Option(help="How it was resolved.")] = "",
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Resolve an incident (triggered or acknowledged): its receivers are told."""
    with _stub(address) as stub:
        reply: pb.ResolveIncidentResponse = stub.ResolveIncident(
            pb.ResolveIncidentRequest(incident_id=incident_id, by=who(by), note=note),
            timeout=timeout,
        )
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.incident_detail(reply.incident, _now()))


@app.command()
def watch(
    team: Annotated[str, typer.Option(help="Only this team's incidents.")] = "",
    rule: Annotated[str, typer.Option(help="Only this rule's incidents.")] = "",
    profile_id: Annotated[str, typer.Option(help="Only this person's incidents.")] = "",
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many changes.", show_default=False)
    ] = None,
    json_out: Json = False,
    address: Address = None,
) -> None:
    """Print every incident change from now on, one line each (Ctrl-C stops)."""
    request = pb.WatchIncidentsRequest(team=team, rule=rule, profile_id=profile_id)
    seen = 0
    # Leaving the block closes the channel, which cancels the stream.
    with _stub(address) as stub:
        try:
            for reply in stub.WatchIncidents(request):
                if json_out:
                    print(json_format.MessageToJson(reply.change, indent=None))
                else:
                    stdout_console().print(render.change_line(reply.change, _now()))
                seen += 1
                if count is not None and seen >= count:
                    break
        except KeyboardInterrupt:
            pass


# --- silences -------------------------------------------------------------------------


def matchers(items: Iterable[str]) -> list[pb.Matcher]:
    """`name=value` pairs; a value ending in `*` matches anything starting with it."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in MATCHERS:
            raise typer.BadParameter(
                f"{item!r} is not NAME=VALUE with NAME one of {', '.join(MATCHERS)}",
                param_hint="'--match'",
            )
        prefix = value.endswith("*")
        out.append(pb.Matcher(name=name, value=value.removesuffix("*"), prefix=prefix))
    return out


def duration_s(text: str) -> int:
    """`90s`, `30m`, `2h`, `7d` in seconds."""
    seconds = duration_seconds(text)
    if not seconds:
        raise typer.BadParameter(f"{text!r} is not a duration such as 30m, 2h or 1d")
    return seconds


def instant(text: str, option: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not an ISO date-time such as 2026-11-23T18:00", param_hint=option
        ) from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@silence_app.command("add")
def add_silence(
    match: Annotated[
        list[str],
        typer.Option(
            metavar="NAME=VALUE",
            help="What to silence (repeatable; all must match): team, rule, touchpoint, "
            "profile_id or severity; a value ending in * matches by prefix.",
        ),
    ],
    duration: Annotated[
        str | None,
        typer.Option("--for", help="How long, for example 30m, 2h, 1d.", show_default=False),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Until this ISO date-time (UTC unless given).")
    ] = None,
    starts: Annotated[
        str | None,
        typer.Option(help="From this ISO date-time (default: now).", show_default=False),
    ] = None,
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    by: By = None,
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Create a silence: matching incidents are still recorded, but not paged."""
    if (duration is None) == (until is None):
        raise typer.BadParameter("give one of --for and --until", param_hint="'--for'")
    silence = pb.Silence(matchers=matchers(match), created_by=who(by), comment=comment)
    start = instant(starts, "'--starts'") if starts else _now()
    if starts:
        silence.starts_at.FromDatetime(start)
    if until is not None:
        silence.ends_at.FromDatetime(instant(until, "'--until'"))
    else:
        silence.ends_at.FromSeconds(int(start.timestamp()) + duration_s(duration or ""))
    with _stub(address) as stub:
        reply: pb.CreateSilenceResponse = stub.CreateSilence(
            pb.CreateSilenceRequest(silence=silence), timeout=timeout
        )
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.silences_table([reply.silence], _now()))


@silence_app.command("list")
def list_silences(
    include_expired: Annotated[bool, typer.Option("--all", help="Expired silences too.")] = False,
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """List active and pending silences (with --all, expired ones too)."""
    with _stub(address) as stub:
        reply: pb.ListSilencesResponse = stub.ListSilences(
            pb.ListSilencesRequest(include_expired=include_expired), timeout=timeout
        )
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.silences_table(reply.silences, _now()))


@silence_app.command("expire")
def expire_silence(
    silence_id: Annotated[str, typer.Argument(help="The silence's id.")],
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """End a silence now."""
    with _stub(address) as stub:
        reply: pb.ExpireSilenceResponse = stub.ExpireSilence(
            pb.ExpireSilenceRequest(silence_id=silence_id), timeout=timeout
        )
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.silences_table([reply.silence], _now()))
