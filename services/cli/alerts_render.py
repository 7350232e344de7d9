"""How `cx alerts` shows the alerts service's replies (pure: messages in, rich renderables
out). Every text from the server goes in as `Text`, never as markup."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from cx.alerts.v1 import alerts_pb2 as pb
from google.protobuf import timestamp_pb2
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from services.cli.nba_render import NONE, TEXT_MAX, Fitted, age, enum_label, when

STATE_STYLES = {
    pb.STATE_TRIGGERED: "bold red",
    pb.STATE_ACKNOWLEDGED: "yellow",
    pb.STATE_RESOLVED: "green",
}
SEVERITY_STYLES = {
    pb.SEVERITY_CRITICAL: "bold red",
    pb.SEVERITY_ERROR: "red",
    pb.SEVERITY_WARNING: "yellow",
    pb.SEVERITY_INFO: "blue",
}
SILENCE_STYLES = {
    pb.SILENCE_STATE_ACTIVE: "green",
    pb.SILENCE_STATE_PENDING: "yellow",
    pb.SILENCE_STATE_EXPIRED: "dim",
}


def state_text(state: pb.State.ValueType) -> Text:
    return Text(enum_label(pb.State.Name, state, "STATE_"), style=STATE_STYLES.get(state, ""))


def severity_text(severity: pb.Severity.ValueType) -> Text:
    label = enum_label(pb.Severity.Name, severity, "SEVERITY_")
    return Text(label, style=SEVERITY_STYLES.get(severity, ""))


def kind_label(kind: pb.RuleKind.ValueType) -> str:
    return enum_label(pb.RuleKind.Name, kind, "RULE_KIND_")


def change_label(change: pb.Change.ValueType) -> str:
    return enum_label(pb.Change.Name, change, "CHANGE_")


def ago(ts: timestamp_pb2.Timestamp, now: datetime) -> Text:
    if not ts.seconds and not ts.nanos:
        return NONE.copy()
    return Text(age((now - ts.ToDatetime(tzinfo=UTC)).total_seconds()))


def subject(incident: pb.Incident) -> Text:
    """Whom or where it is about: the person, else the touchpoint (in magenta)."""
    if incident.profile_id:
        return Text(incident.profile_id)
    return Text(incident.touchpoint or "-", style="magenta")


def suppression(incident: pb.Incident) -> Text:
    if incident.inhibited_by:
        return Text(f"inhibited by {incident.inhibited_by}", style="dim")
    if incident.silenced_by:
        return Text(f"silenced by {incident.silenced_by}", style="dim")
    return Text("")


def _table(title: str, columns: Iterable[tuple[str, str]]) -> Table:
    """Columns (header, how): `id` and `num` stay on one line, `word` and `text` wrap
    (a text column at most TEXT_MAX wide); nothing is cut off, only folded."""
    table = Table(title=title, title_justify="left", caption_justify="left")
    for header, how in columns:
        table.add_column(
            header,
            style="cyan" if how == "id" else "",
            justify="right" if how == "num" else "left",
            no_wrap=how in ("id", "num"),
            overflow="fold",
            max_width=TEXT_MAX if how == "text" else None,
            ratio=1 if how == "text" else None,
        )
    return table


def _fields(rows: Iterable[tuple[str, Text | str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, value if isinstance(value, Text) else Text(value))
    return grid


def incidents_table(reply: pb.ListIncidentsResponse, now: datetime) -> RenderableType:
    if not reply.incidents:
        return Text("No incidents.", style="dim")
    table = _table(
        "Incidents",
        [
            ("incident", "id"),
            ("state", "word"),
            ("severity", "word"),
            ("rule", "word"),
            ("team", "word"),
            ("who / where", "word"),
            ("count", "num"),
            ("last seen", "word"),
            ("summary", "text"),
        ],
    )
    for i in reply.incidents:
        summary = Text(i.summary)
        note = suppression(i)
        if note.plain:
            summary.append("\n")
            summary.append_text(note)
        table.add_row(
            Text(i.incident_id),
            state_text(i.state),
            severity_text(i.severity),
            Text(i.rule),
            Text(i.team),
            subject(i),
            str(i.count + i.grouped),
            ago(i.last_seen, now),
            summary,
        )
    shown = len(reply.incidents)
    table.caption = f"{shown} of {reply.total}" + (
        f"; more with --page-token {reply.next_page_token}" if reply.next_page_token else ""
    )
    return Fitted(table)


def incident_detail(incident: pb.Incident, now: datetime) -> RenderableType:
    i = incident
    rows: list[tuple[str, Text | str]] = [
        ("incident", Text(i.incident_id, style="cyan")),
        ("state", state_text(i.state)),
        ("severity", severity_text(i.severity)),
        ("rule", Text(f"{i.rule} ({kind_label(i.kind)})")),
        ("team", i.team),
        ("summary", i.summary),
        ("dedup key", i.dedup_key),
        ("profile", i.profile_id or NONE.copy()),
        ("touchpoint", i.touchpoint or NONE.copy()),
        ("count", f"{i.count}" + (f" (+{i.grouped} grouped)" if i.grouped else "")),
        ("first seen", when(i.first_seen, now)),
        ("last seen", when(i.last_seen, now)),
    ]
    if i.acknowledged_by:
        rows.append(("acknowledged", f"by {i.acknowledged_by}, {when(i.acknowledged_at, now)}"))
    if i.resolved_by:
        rows.append(("resolved", f"by {i.resolved_by}, {when(i.resolved_at, now)}"))
        rows.append(("resolution", i.resolution or NONE.copy()))
    if i.escalation_level:
        rows.append(("escalation", f"level {i.escalation_level}"))
    note = suppression(i)
    rows.append(("pages", note if note.plain else Text("paged", style="green")))
    rows.append(("version", str(i.version)))
    parts: list[RenderableType] = [_fields(rows)]
    if i.evidence:
        evidence = _table(
            "Evidence (newest first)",
            [
                ("event", "id"),
                ("at", "word"),
                ("touchpoint", "word"),
                ("payload", "word"),
                ("negative", "word"),
                ("scores", "text"),
            ],
        )
        for e in i.evidence:
            scores = ", ".join(f"{k}={v:g}" for k, v in sorted(e.scores.items()))
            evidence.add_row(
                Text(e.event_id),
                ago(e.occurred_at, now),
                Text(e.touchpoint),
                Text(e.payload),
                Text(e.negative),
                Text(scores) if scores else NONE.copy(),
            )
        parts += [Text(""), Fitted(evidence)]
    if i.deliveries:
        deliveries = _table(
            "Deliveries",
            [
                ("receiver", "id"),
                ("change", "word"),
                ("status", "word"),
                ("attempts", "num"),
                ("delivered", "word"),
                ("last error", "text"),
            ],
        )
        for d in i.deliveries:
            deliveries.add_row(
                Text(d.receiver),
                Text(d.change),
                Text(d.status, style="green" if d.status == "delivered" else "yellow"),
                str(d.attempts),
                ago(d.delivered_at, now),
                Text(d.last_error) if d.last_error else NONE.copy(),
            )
        parts += [Text(""), Fitted(deliveries)]
    return Group(*parts)


def matchers_text(matchers: Iterable[pb.Matcher]) -> Text:
    return Text(", ".join(f"{m.name}={m.value}{'*' if m.prefix else ''}" for m in matchers))


def silences_table(silences: Iterable[pb.Silence], now: datetime) -> RenderableType:
    listed = list(silences)
    if not listed:
        return Text("No silences.", style="dim")
    table = _table(
        "Silences",
        [
            ("silence", "id"),
            ("state", "word"),
            ("matchers", "text"),
            ("starts", "word"),
            ("ends", "word"),
            ("by", "word"),
            ("comment", "text"),
        ],
    )
    for s in listed:
        label = enum_label(pb.SilenceState.Name, s.state, "SILENCE_STATE_")
        table.add_row(
            Text(s.silence_id),
            Text(label, style=SILENCE_STYLES.get(s.state, "")),
            matchers_text(s.matchers),
            Text(when(s.starts_at)),
            Text(when(s.ends_at)),
            Text(s.created_by),
            Text(s.comment) if s.comment else NONE.copy(),
        )
    return Fitted(table)


def change_line(change: pb.IncidentChange, now: datetime) -> Text:
    """One line per watched change."""
    i = change.incident
    at = change.at.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S") if change.HasField("at") else "-"
    text = Text(f"{at} ")
    text.append(f"{change_label(change.change):<12}", style="bold")
    text.append(f" {i.incident_id} ", style="cyan")
    text.append_text(severity_text(i.severity))
    text.append(f" {i.rule} {i.team} ")
    text.append_text(subject(i))
    text.append(f"  {i.summary}", style="dim")
    return text
