"""`cx nba`: next-best-action decisions, outcomes and the catalogue, from the
personalisation service (`cx.personalisation.v1.PersonalisationService`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import typer
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.personalisation.v1 import personalisation_pb2_grpc
from cx.profile.v1 import profile_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.table import Table
from rich.text import Text

from services.cli import nba_render as render
from services.cli.common import EXIT_FAILED, duration_seconds, stdout_console, stub_for
from services.common.conditions import RuleConfigError
from services.common.settings import grpc_address, kafka_settings
from services.personalisation.adapters.decision_log_reader import (
    DecisionLogRead,
    DecisionLogUnavailable,
    read_settled,
)
from services.personalisation.domain import evaluation
from services.personalisation.domain.catalogue import load_catalogue
from services.personalisation.domain.learning import (
    LearningConfig,
    LearningConfigError,
    Model,
    load_learning,
)
from services.personalisation.settings import PersonalisationSettings

app = typer.Typer(
    help="Next-best-action: decisions, outcomes, the action catalogue, and the evidence "
    "from the decision log (report, evaluate).",
    no_args_is_help=True,
)

# cx.events.v1.Channel and cx.events.v1.OfferOutcome.Outcome in lower case, without
# the prefix (a unit test holds them to the protos).
ChannelName = Literal[
    "web", "app", "store", "phone", "chat", "email", "social", "sms", "push", "field", "other"
]
OutcomeName = Literal["impression", "click", "accept", "dismiss"]
CHANNELS: tuple[str, ...] = get_args(ChannelName)
OUTCOMES: tuple[str, ...] = get_args(OutcomeName)

# The identifier options of `decide`, by option, in cx.profile.v1.IdentifierType order.
IDENTIFIER_OPTIONS = {
    "--customer-id": profile_pb2.IDENTIFIER_TYPE_CUSTOMER_ID,
    "--anonymous-id": profile_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID,
    "--email": profile_pb2.IDENTIFIER_TYPE_EMAIL,
    "--phone": profile_pb2.IDENTIFIER_TYPE_PHONE,
    "--profile-id": profile_pb2.IDENTIFIER_TYPE_PROFILE_ID,
}

WHO = "Who (at most one; none for an anonymous visitor)"
CONTEXT = "Request context"
CALL = "Call"

Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The personalisation service's gRPC address; by default GRPC_HOST and "
        "PERSONALISATION_GRPC_PORT.",
        show_default="127.0.0.1:50053",
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
Who = Annotated[str | None, typer.Option(metavar="ID", rich_help_panel=WHO, show_default=False)]
DEFAULT_TIMEOUT_S = 10.0


def _stub(
    address: str | None,
) -> AbstractContextManager[personalisation_pb2_grpc.PersonalisationServiceStub]:
    return stub_for(
        address or grpc_address(PersonalisationSettings().grpc_port),
        personalisation_pb2_grpc.PersonalisationServiceStub,
    )


def print_json(message: Message) -> None:
    print(json_format.MessageToJson(message, indent=2))


# --- decide ---------------------------------------------------------------------------


def identifier(given: dict[str, str | None]) -> profile_pb2.Identifier | None:
    """The identifier from whichever one option of IDENTIFIER_OPTIONS was given."""
    chosen = {option: value for option, value in given.items() if value is not None}
    if len(chosen) > 1:
        raise typer.BadParameter(
            f"give at most one identifier, not {' and '.join(chosen)}",
            param_hint=" / ".join(f"'{o}'" for o in IDENTIFIER_OPTIONS),
        )
    if not chosen:
        return None
    ((option, value),) = chosen.items()
    return profile_pb2.Identifier(type=IDENTIFIER_OPTIONS[option], value=value)


def attributes(items: Iterable[str]) -> dict[str, str]:
    """`k=v` pairs; a key given twice keeps its last value."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="'--attr'")
        out[key.strip()] = value
    return out


def cart(items: Iterable[str]) -> list[str]:
    """Product ids from `p1,p2` (the option may also be repeated)."""
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


def decide_request(
    *,
    placement: str,
    channel: str,
    who: profile_pb2.Identifier | None = None,
    max_actions: int | None = None,
    explain: bool = False,
    device: str = "",
    page: str = "",
    locale: str = "",
    cart_ids: Iterable[str] = (),
    attrs: dict[str, str] | None = None,
) -> pb.DecideRequest:
    request = pb.DecideRequest(
        placement=placement,
        channel=ev.Channel.Value(f"CHANNEL_{channel.upper()}"),
        max_actions=max_actions or 0,
        explain=explain,
        context=pb.RequestContext(
            device=device,
            page=page,
            locale=locale,
            cart_product_ids=list(cart_ids),
            attributes=attrs or {},
        ),
    )
    if who is not None:
        request.identifier.CopyFrom(who)
    return request


@app.command()
def decide(
    placement: Annotated[
        str, typer.Option(help="Where the actions will be shown, for example web.home.hero.")
    ],
    channel: Annotated[ChannelName, typer.Option(help="The channel of the request.")],
    customer_id: Who = None,
    email: Who = None,
    phone: Who = None,
    anonymous_id: Who = None,
    profile_id: Who = None,
    max_actions: Annotated[
        int | None,
        typer.Option(min=1, help="How many actions to return (1 to 10).", show_default="1"),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="Also show every action that was filtered out, and why."),
    ] = False,
    device: Annotated[
        str, typer.Option(help="desktop, mobile, tablet, ...", rich_help_panel=CONTEXT)
    ] = "",
    page: Annotated[
        str, typer.Option(help="The page or screen, for example /basket.", rich_help_panel=CONTEXT)
    ] = "",
    locale: Annotated[
        str, typer.Option(help="BCP 47, for example en-GB.", rich_help_panel=CONTEXT)
    ] = "",
    cart_ids: Annotated[
        list[str] | None,
        typer.Option(
            "--cart",
            metavar="P1,P2",
            help="Product ids in the cart (repeatable).",
            rich_help_panel=CONTEXT,
        ),
    ] = None,
    attr: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="A context attribute (repeatable); conditions read it as "
            "context.attributes.<key>.",
            rich_help_panel=CONTEXT,
        ),
    ] = None,
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Decide the next best actions for a person at a placement.

    Prints the decision (id, basis, treatment or holdout, policy version, the profile and
    how fresh it was, experience signals) and the ranked actions with their score parts;
    with --explain, also every action that was filtered out and the policy that did it.
    """
    request = decide_request(
        placement=placement,
        channel=channel,
        who=identifier(
            {
                "--customer-id": customer_id,
                "--anonymous-id": anonymous_id,
                "--email": email,
                "--phone": phone,
                "--profile-id": profile_id,
            }
        ),
        max_actions=max_actions,
        explain=explain,
        device=device,
        page=page,
        locale=locale,
        cart_ids=cart(cart_ids or []),
        attrs=attributes(attr or []),
    )
    with _stub(address) as stub:
        reply: pb.DecideResponse = stub.Decide(request, timeout=timeout)
    if json_out:
        print_json(reply)
        return
    stdout_console().print(render.decision(reply, explain, datetime.now(UTC)))


# --- outcome --------------------------------------------------------------------------


@app.command()
def outcome(
    decision_id: Annotated[str, typer.Argument(help="The decision's id, from decide.")],
    action_id: Annotated[str, typer.Argument(help="One of the actions the decision chose.")],
    what: Annotated[
        OutcomeName, typer.Argument(metavar="OUTCOME", help="What the person did with it.")
    ],
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Report what the person did with a decided action.

    It is recorded as an OfferOutcome touchpoint event (printed: its id is the same for a
    repeated report, which counts once) and in the person's contact ledger.
    """
    request = pb.ReportOutcomeRequest(
        decision_id=decision_id,
        action_id=action_id,
        outcome=ev.OfferOutcome.Outcome.Value(f"OUTCOME_{what.upper()}"),
    )
    with _stub(address) as stub:
        reply: pb.ReportOutcomeResponse = stub.ReportOutcome(request, timeout=timeout)
    if json_out:
        print_json(reply)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("event", Text(reply.event_id, style="cyan"))
    grid.add_row("profile", Text(reply.profile_id) if reply.profile_id else render.NONE)
    stdout_console().print(grid)


# --- actions --------------------------------------------------------------------------


@app.command()
def actions(
    action_id: Annotated[
        str | None, typer.Argument(help="Show this one action in detail.", show_default=False)
    ] = None,
    placement: Annotated[str, typer.Option(help="Only actions for this placement.")] = "",
    kind: Annotated[str, typer.Option(help="Only actions of this kind, for example upsell.")] = "",
    json_out: Json = False,
    address: Address = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """List the action catalogue, or show one action (ACTION_ID) in detail."""
    if action_id is not None and (placement or kind):
        raise typer.BadParameter(
            "filters the list: give it without ACTION_ID",
            param_hint="'--placement' / '--kind'",
        )
    if action_id is not None:
        with _stub(address) as stub:
            one: pb.GetActionResponse = stub.GetAction(
                pb.GetActionRequest(action_id=action_id), timeout=timeout
            )
        if json_out:
            print_json(one)
        else:
            stdout_console().print(render.action_detail(one))
        return
    with _stub(address) as stub:
        listed: pb.ListActionsResponse = stub.ListActions(
            pb.ListActionsRequest(placement=placement, kind=kind), timeout=timeout
        )
    if json_out:
        print_json(listed)
    else:
        stdout_console().print(render.catalogue_table(listed))


# --- evidence: report and evaluate ----------------------------------------------------

LOG = "Decision log"
POLICY_FILES = ("model", "catalogue")
DEFAULT_KAFKA_TIMEOUT_S = 3.0

Since = Annotated[
    str | None,
    typer.Option(
        help="Only decisions made since then: a duration ago (30m, 24h, 7d) or an ISO "
        "date-time (UTC unless given).",
        show_default="the whole log",
        rich_help_panel=LOG,
    ),
]
Until = Annotated[
    str | None,
    typer.Option(
        help="Only decisions made before then: a duration ago or an ISO date-time.",
        show_default="now",
        rich_help_panel=LOG,
    ),
]
Placement = Annotated[
    str | None,
    typer.Option(help="Only decisions at this placement.", show_default="every placement"),
]
LearningFile = Annotated[
    Path | None,
    typer.Option(
        help="The learning file (rewards and settling window); by default "
        "PERSONALISATION_LEARNING_FILE.",
        show_default="the shipped learning.toml",
        rich_help_panel=LOG,
    ),
]
Bootstrap = Annotated[
    str | None,
    typer.Option(
        help="Kafka's bootstrap servers; by default KAFKA_BOOTSTRAP_SERVERS (the topics: "
        "DECISIONS_TOPIC and TOUCHPOINTS_TOPIC).",
        show_default="127.0.0.1:9092",
        rich_help_panel=LOG,
    ),
]
KafkaTimeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0.1,
        help="Seconds to wait for Kafka to answer (and to send more while reading).",
        rich_help_panel=LOG,
    ),
]
JsonOut = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON.", rich_help_panel=CALL)
]


def moment(text: str | None, option: str, now: datetime) -> datetime | None:
    """`--since`/`--until`: a duration before `now` (30m, 24h, 7d) or an ISO date-time."""
    if text is None:
        return None
    seconds = duration_seconds(text)
    if seconds is not None:
        if seconds == 0:
            raise typer.BadParameter(f"{text!r} is an empty duration", param_hint=option)
        return now - timedelta(seconds=seconds)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is neither a duration such as 24h or 7d nor an ISO date-time such "
            "as 2026-11-23T18:00",
            param_hint=option,
        ) from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def learning_config(path: Path | None) -> LearningConfig:
    try:
        return load_learning(path or PersonalisationSettings().learning_file)
    except LearningConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--learning-file'") from exc


def read_log(
    *,
    placement: str | None,
    since: str | None,
    until: str | None,
    learning_file: Path | None,
    bootstrap: str | None,
    timeout: float,
) -> tuple[DecisionLogRead, dict[str, Any]]:
    """The settled decisions, and the filters as the JSON output shows them."""
    now = datetime.now(UTC)
    start, end = moment(since, "'--since'", now), moment(until, "'--until'", now)
    if start is not None and end is not None and start >= end:
        raise typer.BadParameter("must be before --until", param_hint="'--since'")
    config = learning_config(learning_file)
    kafka = kafka_settings()
    if bootstrap:
        kafka = kafka.model_copy(update={"kafka_bootstrap_servers": bootstrap})
    try:
        read = read_settled(
            kafka,
            config,
            since_ms=_ms(start),
            until_ms=_ms(end),
            placement=placement,
            now_ms=_ms(now),
            connect_timeout_s=timeout,
            stall_timeout_s=max(timeout, 10.0),
        )
    except DecisionLogUnavailable as exc:
        print(f"error: UNAVAILABLE: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_FAILED) from exc
    filters = {
        "placement": placement,
        "since": start.isoformat() if start else None,
        "until": end.isoformat() if end else None,
        "settle_after_s": config.window.settle_after_s,
        "decisions_topic": kafka.decisions_topic,
        "touchpoints_topic": kafka.touchpoints_topic,
    }
    return read, filters


@app.command()
def report(
    placement: Placement = None,
    since: Since = None,
    until: Until = None,
    learning_file: LearningFile = None,
    bootstrap: Bootstrap = None,
    timeout: KafkaTimeout = DEFAULT_KAFKA_TIMEOUT_S,
    json_out: JsonOut = False,
) -> None:
    """Reward rate of the treatment against the holdout, per placement, from the decision
    log (`cx.decisions.v1` and the outcome events on `cx.touchpoints.v1`).

    The reward rate is the mean reward per decision with a profile (a decision's reward:
    the best outcome of its first action within the learning file's window, 0 without
    one). Shows the difference with Welch's 95 % interval and the relative lift
    (treatment - holdout) / holdout with the 95 % interval of the log ratio. Decisions whose
    window has not ended, without an accept or dismiss yet, are left out and counted.
    """
    read, filters = read_log(
        placement=placement,
        since=since,
        until=until,
        learning_file=learning_file,
        bootstrap=bootstrap,
        timeout=timeout,
    )
    rows = evaluation.report(read.decisions)
    if json_out:
        out = {**filters, "log": read.summary(), "placements": [r.as_dict() for r in rows]}
        print(json.dumps(out, indent=2))
        return
    stdout_console().print(render.lift_report(rows, read.summary(), filters))


def target_policy(spec: str) -> evaluation.Target:
    """`--policy`: static, control, logged, model:FILE or catalogue:FILE."""
    hint = "'--policy'"
    name, sep, path_text = spec.partition(":")
    if not sep:
        target = evaluation.TARGETS.get(spec)
        if target is None:
            raise typer.BadParameter(
                f"{spec!r} is not one of {', '.join(evaluation.TARGETS)}, model:FILE, "
                "catalogue:FILE",
                param_hint=hint,
            )
        return target
    if name not in POLICY_FILES or not path_text:
        raise typer.BadParameter(f"{spec!r}: give model:FILE or catalogue:FILE", param_hint=hint)
    path = Path(path_text)
    if name == "catalogue":
        try:
            return evaluation.catalogue_target(load_catalogue(path))
        except RuleConfigError as exc:
            raise typer.BadParameter(f"the candidate catalogue: {exc}", param_hint=hint) from exc
    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"the candidate model: {exc}", param_hint=hint) from exc
    try:
        model = Model("", path.name, model_bytes)
    except Exception as exc:  # VW raises plain RuntimeError and friends
        raise typer.BadParameter(
            f"{path} is not a Vowpal Wabbit model: {exc}", param_hint=hint
        ) from exc
    return evaluation.model_target(model)


@app.command()
def evaluate(
    policy: Annotated[
        str,
        typer.Option(
            metavar="POLICY",
            help="The policy to evaluate: static (the static rules, P x C x V x L), control "
            "(value x lever), logged (the policy that made the decisions), model:FILE (a "
            "Vowpal Wabbit model, greedy) or catalogue:FILE (a candidate catalogue's "
            "static rules).",
        ),
    ],
    placement: Placement = None,
    since: Since = None,
    until: Until = None,
    learning_file: LearningFile = None,
    bootstrap: Bootstrap = None,
    timeout: KafkaTimeout = DEFAULT_KAFKA_TIMEOUT_S,
    json_out: JsonOut = False,
) -> None:
    """Estimate what another policy would have earned per decision, from the decision log:
    IPS and self-normalised IPS with 95 % intervals, off the probabilities with which
    the logged actions were shown.

    Evaluated on the treatment's decisions with a profile that showed an action. Also
    shows what the logged policy earned on them, how many decisions the policy would
    have decided the same way (matched) and the effective sample size: a policy that
    rarely agrees with the log rests on few decisions. A candidate catalogue sees only
    the profile fields the log kept (those the catalogue in use and the learner read).
    """
    target = target_policy(policy)
    read, filters = read_log(
        placement=placement,
        since=since,
        until=until,
        learning_file=learning_file,
        bootstrap=bootstrap,
        timeout=timeout,
    )
    result = evaluation.off_policy(read.decisions, target)
    if json_out:
        out = {"policy": policy, **filters, "log": read.summary(), **result.as_dict()}
        print(json.dumps(out, indent=2))
        return
    stdout_console().print(render.off_policy(policy, result, read.summary(), filters))
