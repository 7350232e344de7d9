"""How `cx nba` shows the personalisation service's replies (pure: messages in, rich
renderables out). Every text from the server goes in as `Text`, never as markup."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from google.protobuf import timestamp_pb2
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from services.personalisation.domain.evaluation import (
    OVERALL,
    Comparison,
    Estimate,
    OffPolicy,
    Rate,
)

NONE = Text("-", style="dim")
# The widest a table's text column (titles, reasons, conditions, ...) grows, and the
# narrowest it is made on a narrow terminal while the other columns keep their width.
TEXT_MAX = 48
TEXT_MIN = 10
# A table cell's padding, left and right.
CELL_PADDING = 2
# Wider than any terminal: to measure a table's natural width.
NATURAL_WIDTH = 10_000


def enum_label(name_of: Callable[[Any], str], value: int, prefix: str) -> str:
    """`STAGE_CONTACT_POLICY` as `contact_policy`; a number the client does not know as
    itself (a newer server)."""
    try:
        return name_of(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def channel_label(value: int) -> str:
    return enum_label(ev.Channel.Name, value, "CHANNEL_")


def channels_text(channels: Iterable[int], sep: str = "\n") -> Text:
    """The action's channels; none means every channel."""
    names = [channel_label(c) for c in channels]
    return Text(sep.join(names)) if names else Text("any", style="dim")


def num(value: float) -> str:
    """A score part: four significant digits, no exponent for everyday sizes."""
    return f"{value:.4g}"


def age(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def when(ts: timestamp_pb2.Timestamp, now: datetime | None = None) -> str:
    """`2026-11-23 10:15:00 UTC`, with how long ago when `now` is given."""
    at = ts.ToDatetime(tzinfo=UTC)
    text = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if now is not None:
        text += f" ({age((now - at).total_seconds())})"
    return text


def _lines(items: Iterable[str]) -> Text:
    """One item a line; a dim dash for none."""
    text = Text("\n".join(items))
    return text if text.plain else NONE.copy()


def _fields(rows: Iterable[tuple[str, Text | str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, value if isinstance(value, Text) else Text(value))
    return grid


class Fitted:
    """A table that, on a terminal narrower than its natural width, fills the terminal
    instead: its id, word and number columns keep their width and the text columns
    share what is left, when that leaves TEXT_MIN characters a share. (Rich's own
    squeeze narrows every wrapping column alike, folding short words such as a kind;
    it is still what happens on a terminal too narrow for that.)"""

    def __init__(self, table: Table) -> None:
        self.table = table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table
        unbounded = options.update_width(NATURAL_WIDTH)

        def natural(renderable: RenderableType) -> int:
            return Measurement.get(console, unbounded, renderable).maximum

        fixed = sum(
            max(natural(cell) for cell in [column.header, *column.cells]) + CELL_PADDING
            for column in table.columns
            if not column.ratio
        )
        # A text column's share of the room is its ratio over all ratios.
        shares = sum(column.ratio or 0 for column in table.columns)
        room = options.max_width - fixed - (len(table.columns) + 1)
        table.expand = natural(table) > options.max_width and room >= TEXT_MIN * shares
        yield table


def _table(title: str, columns: Iterable[tuple[str, str]]) -> Table:
    """A table whose columns are (header, how): `id` (an action id) and `num`
    (right-aligned) stay on one line, `word` (short, such as a kind), `text` and `long`
    wrap, a text column at most TEXT_MAX characters wide. On a narrow terminal (see
    `Fitted`) a `long` column gets twice the room of a `text` one. Nothing is cut off:
    a value too long for its column is folded."""
    table = Table(title=title, title_justify="left", caption_justify="left")
    for header, how in columns:
        table.add_column(
            header,
            style="cyan" if how == "id" else "",
            justify="right" if how == "num" else "left",
            no_wrap=how in ("id", "num"),
            overflow="fold",
            max_width=TEXT_MAX if how in ("text", "long") else None,
            ratio={"text": 1, "long": 2}.get(how),
        )
    return table


# --- Decide ---------------------------------------------------------------------------


def group_text(reply: pb.DecideResponse) -> Text:
    label = enum_label(pb.Group.Name, reply.group, "GROUP_")
    return Text(label, style="yellow" if reply.group == pb.GROUP_HOLDOUT else "green")


def profile_text(reply: pb.DecideResponse, now: datetime) -> Text:
    if not reply.profile_id:
        return NONE.copy()
    text = Text(reply.profile_id)
    if reply.HasField("profile_as_of"):
        text.append(f"  as of {when(reply.profile_as_of, now)}", style="dim")
    else:
        text.append("  (no events yet)", style="dim")
    return text


def policy_text(reply: pb.DecideResponse) -> Text:
    """Which policy ordered the actions, with the learned model's version."""
    text = Text(enum_label(pb.DecisionPolicy.Name, reply.policy, "DECISION_POLICY_"))
    if reply.model_version:
        text.append(f"  model {reply.model_version}", style="dim")
    return text


def decision_summary(reply: pb.DecideResponse, now: datetime) -> Table:
    """Decision id, basis, group, catalogue version, policy (and model version), profile
    and freshness, signals."""
    return _fields(
        [
            ("decision", Text(reply.decision_id, style="cyan")),
            ("basis", enum_label(pb.Basis.Name, reply.basis, "BASIS_")),
            ("group", group_text(reply)),
            ("catalogue", reply.policy_version or NONE.copy()),
            ("policy", policy_text(reply)),
            ("profile", profile_text(reply, now)),
            (
                "signals",
                Text(", ".join(reply.experience_signals), style="magenta")
                if reply.experience_signals
                else Text("none", style="dim"),
            ),
        ]
    )


def reasons_text(reasons: Iterable[pb.Reason]) -> Text:
    text = Text()
    for i, reason in enumerate(reasons):
        if i:
            text.append("\n")
        text.append(reason.code)
        if reason.detail:
            text.append(f": {reason.detail}", style="dim")
    return text if text.plain else NONE.copy()


def actions_table(actions: Iterable[pb.RankedAction]) -> Fitted:
    """The ranked actions with their score parts: priority = P x C x V x L."""
    table = _table(
        "Actions",
        [("#", "num"), ("action", "id"), ("kind", "word"), ("title", "text")]
        + [(part, "num") for part in ("P", "C", "V", "L", "priority")]
        + [("reasons", "long")],
    )
    for action in actions:
        score = action.score
        table.add_row(
            str(action.rank),
            Text(action.action_id),
            Text(action.kind),
            Text(action.content.title),
            num(score.propensity),
            num(score.context_weight),
            num(score.business_value),
            num(score.lever),
            Text(num(score.priority), style="bold"),
            reasons_text(action.reasons),
        )
    # The learned policy's probability is among the reasons (policy.learned).
    table.caption = "P propensity, C context weight, V business value, L lever"
    return Fitted(table)


def filtered_table(filtered: Iterable[pb.FilteredAction]) -> Fitted:
    """Each action held back, at which stage, by which policy; its priority if scored."""
    table = _table(
        "Filtered out",
        [
            ("action", "id"),
            ("kind", "word"),
            ("stage", "word"),
            ("policy", "text"),
            ("reason", "long"),
            ("priority", "num"),
        ],
    )
    for item in filtered:
        table.add_row(
            Text(item.action_id),
            Text(item.kind),
            enum_label(pb.Stage.Name, item.stage, "STAGE_"),
            Text(item.policy),
            Text(item.reason),
            num(item.score.priority) if item.HasField("score") else NONE.copy(),
        )
    return Fitted(table)


def decision(reply: pb.DecideResponse, explain: bool, now: datetime) -> RenderableType:
    parts: list[RenderableType] = [decision_summary(reply, now), Text()]
    if reply.actions:
        parts.append(actions_table(reply.actions))
    else:
        parts.append(Text("No action may be shown.", style="yellow"))
    if explain:
        parts.append(Text())
        if reply.filtered:
            parts.append(filtered_table(reply.filtered))
        else:
            parts.append(Text("Nothing was filtered out.", style="dim"))
    return Group(*parts)


# --- the catalogue --------------------------------------------------------------------


def consent_text(action: pb.Action) -> Text:
    text = Text(action.consent_purpose)
    if action.marketing:
        text.append("\n" if text.plain else "")
        text.append("marketing", style="yellow")
    return text if text.plain else NONE.copy()


def active_text(action: pb.Action) -> Text:
    return Text("yes", style="green") if action.active else Text("no", style="red")


def conditions_text(action: pb.Action) -> Text:
    lines = list(action.conditions_all)
    if action.conditions_any:
        lines.append("any of:")
        lines.extend(f"  {c}" for c in action.conditions_any)
    return _lines(lines)


def catalogue_table(reply: pb.ListActionsResponse) -> Fitted:
    table = _table(
        f"Catalogue {reply.catalogue_version}",
        [
            ("action", "id"),
            ("kind", "word"),
            ("placements", "word"),
            ("channels", "word"),
            ("value", "num"),
            ("lever", "num"),
            ("consent", "word"),
            ("active", "word"),
            ("conditions", "long"),
        ],
    )
    for action in reply.actions:
        table.add_row(
            Text(action.action_id),
            Text(action.kind),
            _lines(action.placements),
            channels_text(action.channels),
            num(action.business_value),
            num(action.lever),
            consent_text(action),
            active_text(action),
            conditions_text(action),
        )
    loaded = f", loaded {when(reply.loaded_at)}" if reply.HasField("loaded_at") else ""
    table.caption = f"{len(reply.actions)} actions{loaded}"
    return Fitted(table)


def contact_policy_text(policy: pb.ContactPolicy) -> Text:
    parts = []
    if policy.max_impressions:
        parts.append(f"at most {policy.max_impressions} impressions in {policy.window_days:g} days")
    if policy.dismiss_cooloff_days:
        parts.append(f"none for {policy.dismiss_cooloff_days:g} days after a dismiss")
    if policy.stop_after_accept:
        parts.append("never again after an accept")
    return _lines(parts)


def propensity_text(action: pb.Action) -> Text:
    text = Text(f"{num(action.propensity_default)} by default")
    for segment, value in sorted(action.propensity_by_segment.items()):
        text.append(f"\n{num(value)} for segment {segment}")
    return text


def validity_text(action: pb.Action) -> Text:
    start = when(action.valid_from) if action.HasField("valid_from") else "always"
    end = when(action.valid_until) if action.HasField("valid_until") else "no end"
    return Text(f"from {start} to {end}")


def variants_table(variants: Iterable[pb.Content]) -> Fitted:
    table = _table(
        "Variants",
        [
            ("variant", "word"),
            ("title", "text"),
            ("body", "long"),
            ("call to action", "text"),
            ("deep link", "text"),
            ("image", "text"),
        ],
    )
    for v in variants:
        table.add_row(
            *(
                Text(value) if value else NONE.copy()
                for value in (
                    v.variant,
                    v.title,
                    v.body,
                    v.call_to_action,
                    v.deep_link,
                    v.image_url,
                )
            )
        )
    return Fitted(table)


def action_detail(reply: pb.GetActionResponse) -> RenderableType:
    action = reply.action
    fields = _fields(
        [
            ("action", Text(action.action_id, style="cyan")),
            ("kind", action.kind),
            ("description", action.description or NONE.copy()),
            ("placements", _lines(action.placements)),
            ("channels", channels_text(action.channels, ", ")),
            ("value", num(action.business_value)),
            ("lever", num(action.lever)),
            ("consent", consent_text(action)),
            ("active", active_text(action)),
            ("valid", validity_text(action)),
            ("all of", _lines(action.conditions_all)),
            ("any of", _lines(action.conditions_any)),
            ("contact policy", contact_policy_text(action.contact_policy)),
            ("propensity", propensity_text(action)),
            ("catalogue", reply.catalogue_version),
        ]
    )
    if not action.variants:
        return fields
    return Group(fields, Text(), variants_table(action.variants))


# --- evidence from the decision log ---------------------------------------------------


def rate(value: float) -> str:
    """A reward rate (mean reward per decision)."""
    return f"{value:.4f}"


def signed(value: float) -> str:
    return f"{value:+.4f}"


def percent(value: float) -> str:
    """A relative lift: one decimal below 100 %."""
    return f"{value * 100:+.1f}%" if abs(value) < 1 else f"{value * 100:+.0f}%"


def interval(estimate: Estimate, fmt: Callable[[float], str], style: str = "bold") -> Text:
    """The value, and the 95 % interval on a line of its own."""
    text = Text(fmt(estimate.value), style=style)
    text.append(f"\n[{fmt(estimate.low)},{fmt(estimate.high)}]", style="dim")
    return text


def difference_style(estimate: Estimate) -> str:
    """Green when the interval lies above 0, red below, plain when it holds 0."""
    if estimate.low > 0:
        return "bold green"
    if estimate.high < 0:
        return "bold red"
    return "bold"


def group_rate(group: Rate) -> Text:
    if not group.n:
        return Text("-\nn 0", style="dim")
    text = Text(rate(group.mean))
    text.append(f"\nn {group.n}", style="dim")
    return text


def _log_caption(summary: Mapping[str, int], filters: Mapping[str, Any]) -> str:
    span = []
    if filters.get("since"):
        span.append(f"since {filters['since']}")
    if filters.get("until"):
        span.append(f"until {filters['until']}")
    where = f" ({', '.join(span)})" if span else ""
    return (
        f"{summary['read']} decisions read{where}: {summary['settled']} settled, "
        f"{summary['unsettled']} not yet (within their {filters['settle_after_s']:g} s window "
        f"without an accept or dismiss); {summary['outcomes']} outcomes of first actions."
    )


def lift_report(
    rows: Sequence[Comparison], summary: Mapping[str, int], filters: Mapping[str, Any]
) -> RenderableType:
    """Treatment against the holdout, one row a placement and one for all of them."""
    table = Table(
        title="Reward rate (mean reward per decision): treatment against the holdout",
        title_justify="left",
        caption_justify="left",
        # Without the outer frame it fits 80 columns.
        show_edge=False,
    )
    table.add_column("placement", overflow="fold", max_width=TEXT_MAX)
    table.add_column("treatment", justify="right", no_wrap=True)
    table.add_column("holdout", justify="right", no_wrap=True)
    # Wide enough for an interval on one line ([-0.0007,+0.0066], [-12.5%,+30.1%]); a
    # note wraps.
    table.add_column("difference", justify="right", overflow="fold", min_width=17, max_width=21)
    table.add_column("lift", justify="right", overflow="fold", min_width=15, max_width=21)
    for i, row in enumerate(rows):
        if i == len(rows) - 1 and len(rows) > 1:
            table.add_section()
        if row.difference is None:
            difference = Text(row.note, style="yellow")
        else:
            difference = interval(row.difference, signed, difference_style(row.difference))
        if row.lift is not None:
            lift = interval(row.lift, percent, difference_style(row.lift))
        elif row.difference is not None:
            lift = Text(row.note, style="yellow")
        else:
            lift = NONE.copy()
        table.add_row(
            Text(row.placement, style="bold" if row.placement == OVERALL else ""),
            group_rate(row.treatment),
            group_rate(row.holdout),
            difference,
            lift,
        )
    table.caption = (
        "Decisions with a profile. Difference: treatment - holdout, Welch's 95% interval; "
        "lift: difference / holdout, 95% interval of the log ratio.\n"
        + _log_caption(summary, filters)
    )
    return table


def off_policy(
    policy: str, result: OffPolicy, summary: Mapping[str, int], filters: Mapping[str, Any]
) -> RenderableType:
    """A policy's estimated reward rate, IPS and SNIPS, against what the log earned."""
    fields = _fields(
        [
            ("policy", Text(policy, style="cyan")),
            ("placement", filters.get("placement") or "every placement"),
            ("evaluated", f"{result.n} decisions (treatment, with a profile, an action shown)"),
            ("matched", f"{result.matched} decided as the policy would"),
            ("effective size", f"{result.effective_sample_size:.1f}"),
        ]
    )
    table = _table(
        "Estimated reward rate (mean reward per decision)",
        [("estimator", "word"), ("value", "num"), ("95% interval", "num"), ("std err", "num")],
    )
    for name, estimate in (
        ("IPS", result.ips),
        ("SNIPS", result.snips),
        ("logged policy", result.logged),
    ):
        if estimate is None:
            table.add_row(name, NONE.copy(), NONE.copy(), NONE.copy())
            continue
        table.add_row(
            name,
            Text(rate(estimate.value), style="bold"),
            f"[{rate(estimate.low)}, {rate(estimate.high)}]",
            rate(estimate.stderr),
        )
    table.caption = (
        "IPS: mean of w x reward; SNIPS: sum(w x reward) / sum(w); w = the policy's "
        "probability of the logged action / the logged probability.\n"
        + _log_caption(summary, filters)
    )
    parts: list[RenderableType] = [fields, Text(), Fitted(table)]
    if result.note:
        parts.append(Text(result.note, style="yellow"))
    return Group(*parts)
