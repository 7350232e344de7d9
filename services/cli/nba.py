"""`cx nba`: next-best-action decisions, outcomes and the catalogue, from the
personalisation service (`cx.personalisation.v1.PersonalisationService`)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

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
from services.cli.common import stdout_console, stub_for
from services.common.settings import grpc_address
from services.personalisation.settings import PersonalisationSettings

app = typer.Typer(
    help="Next-best-action: decisions, outcomes and the action catalogue.",
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
