"""`cx nba` against an in-process fake of the personalisation service: what each command
sends, how the replies are shown (tables, JSON) and how failed calls end."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.personalisation.v1 import personalisation_pb2_grpc
from cx.profile.v1 import profile_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from typer.testing import CliRunner

from services.cli import app, main, nba, nba_render

# Wide enough that rich does not wrap what the tests look for.
runner = CliRunner(env={"COLUMNS": "240"})
NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
M = TypeVar("M", bound=Message)


def score(p: float, c: float, v: float, lever: float) -> pb.ScoreParts:
    return pb.ScoreParts(
        propensity=p,
        context_weight=c,
        business_value=v,
        lever=lever,
        priority=p * c * v * lever,
        propensity_source="prior:segment:vip",
    )


def decide_reply() -> pb.DecideResponse:
    reply = pb.DecideResponse(
        decision_id="d-7f3a",
        profile_id="p-42",
        policy_version="cat-2026-11-20",
        group=pb.GROUP_TREATMENT,
        basis=pb.BASIS_PROFILE,
        experience_signals=["open_complaint", "delivery_late"],
        policy=pb.DECISION_POLICY_LEARNED,
        model_version="m3-1a2b3c4d",
        actions=[
            pb.RankedAction(
                action_id="recovery-apology",
                kind="service_recovery",
                rank=1,
                probability=0.92,
                content=pb.Content(variant="a", title="Sorry about your order"),
                score=score(0.5, 1.2, 30, 2),
                reasons=[
                    pb.Reason(code="suitability.recovery_first", detail="open complaint"),
                    pb.Reason(code="eligibility.passed"),
                ],
            ),
            pb.RankedAction(
                action_id="survey-nps",
                kind="survey",
                rank=2,
                content=pb.Content(title="[bold]Tell us[/bold]"),
                score=score(0.25, 1, 4, 1),
            ),
        ],
        filtered=[
            pb.FilteredAction(
                action_id="upsell-premium",
                kind="upsell",
                stage=pb.STAGE_SUITABILITY,
                policy="suitability:open_complaint",
                reason="no selling while a complaint is open",
            ),
            pb.FilteredAction(
                action_id="xsell-cable",
                kind="cross_sell",
                stage=pb.STAGE_PRIORITISATION,
                policy="prioritisation:rank",
                reason="ranked 3rd of 2 wanted",
                score=score(0.1, 1, 8, 1),
            ),
        ],
    )
    reply.profile_as_of.FromDatetime(NOW - timedelta(minutes=4))
    return reply


def catalogue_action() -> pb.Action:
    action = pb.Action(
        action_id="upsell-premium",
        kind="upsell",
        description="Premium plan for engaged customers",
        placements=["web.home.hero", "app.home.banner"],
        channels=[ev.CHANNEL_WEB, ev.CHANNEL_APP],
        variants=[
            pb.Content(variant="a", title="Go premium", call_to_action="Upgrade"),
            pb.Content(variant="b", title="Try premium free", deep_link="app://premium"),
        ],
        business_value=40,
        lever=1.5,
        consent_purpose="marketing_email",
        marketing=True,
        conditions_all=["lifecycle.stage == 'active'", "orders.count >= 2"],
        conditions_any=["segments contains 'vip'", "clv.value > 500"],
        contact_policy=pb.ContactPolicy(
            max_impressions=3, window_days=7, dismiss_cooloff_days=14, stop_after_accept=True
        ),
        propensity_default=0.05,
        propensity_by_segment={"vip": 0.2},
        active=True,
    )
    action.valid_until.FromDatetime(datetime(2026, 12, 31, tzinfo=UTC))
    return action


class FakePersonalisation(personalisation_pb2_grpc.PersonalisationServiceServicer):
    """Answers each method with a canned reply, or with `error`; records the requests."""

    def __init__(self) -> None:
        self.address = ""
        self.requests: list[Message] = []
        self.error: tuple[grpc.StatusCode, str] | None = None
        self.decide = decide_reply()
        self.catalogue = pb.ListActionsResponse(
            actions=[
                catalogue_action(),
                pb.Action(
                    action_id="survey-nps",
                    kind="survey",
                    placements=["web.home.hero"],
                    business_value=2,
                    lever=1,
                    active=False,
                ),
            ],
            catalogue_version="cat-2026-11-20",
        )
        self.catalogue.loaded_at.FromDatetime(NOW)

    def _answer(self, request: Message, context: grpc.ServicerContext, reply: M) -> M:
        self.requests.append(request)
        if self.error is not None:
            context.abort(*self.error)
        return reply

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        reply = pb.DecideResponse()
        reply.CopyFrom(self.decide)
        if not request.explain:
            del reply.filtered[:]
        return self._answer(request, context, reply)

    def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        reply = pb.ReportOutcomeResponse(event_id="nba-5b1e", profile_id="p-42")
        return self._answer(request, context, reply)

    def ListActions(
        self, request: pb.ListActionsRequest, context: grpc.ServicerContext
    ) -> pb.ListActionsResponse:
        return self._answer(request, context, self.catalogue)

    def GetAction(
        self, request: pb.GetActionRequest, context: grpc.ServicerContext
    ) -> pb.GetActionResponse:
        reply = pb.GetActionResponse(action=catalogue_action(), catalogue_version="cat-2026-11-20")
        return self._answer(request, context, reply)


@pytest.fixture
def fake() -> Iterator[FakePersonalisation]:
    servicer = FakePersonalisation()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    personalisation_pb2_grpc.add_PersonalisationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    server.stop(None)


def cx(fake: FakePersonalisation, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["nba", *args, "--address", fake.address])
    return result.exit_code, result.stdout, result.stderr


def rendered(renderable: object, width: int = 240) -> str:
    out = io.StringIO()
    Console(file=out, width=width, highlight=False).print(renderable)
    return out.getvalue()


def cells(line: str) -> list[str]:
    """The cells of one line of a rich table (header or body)."""
    return [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]


# --- decide ---------------------------------------------------------------------------


def test_decide_sends_the_identifier_channel_and_context(fake: FakePersonalisation) -> None:
    code, _, err = cx(
        fake,
        "decide",
        "--placement",
        "web.home.hero",
        "--channel",
        "web",
        "--email",
        "Ada@Example.com",
        "--max-actions",
        "2",
        "--device",
        "mobile",
        "--page",
        "/x",
        "--locale",
        "en-GB",
        "--cart",
        "p1, p2,",
        "--cart",
        "p3",
        "--attr",
        "campaign=bf26",
        "--attr",
        "ref=a=b",
    )

    assert code == 0, err
    assert fake.requests == [
        pb.DecideRequest(
            identifier=profile_pb2.Identifier(
                type=profile_pb2.IDENTIFIER_TYPE_EMAIL, value="Ada@Example.com"
            ),
            placement="web.home.hero",
            channel=ev.CHANNEL_WEB,
            max_actions=2,
            context=pb.RequestContext(
                device="mobile",
                page="/x",
                locale="en-GB",
                cart_product_ids=["p1", "p2", "p3"],
                attributes={"campaign": "bf26", "ref": "a=b"},
            ),
        )
    ]


@pytest.mark.parametrize(
    ("option", "kind"),
    [
        ("--customer-id", profile_pb2.IDENTIFIER_TYPE_CUSTOMER_ID),
        ("--phone", profile_pb2.IDENTIFIER_TYPE_PHONE),
        ("--anonymous-id", profile_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID),
        ("--profile-id", profile_pb2.IDENTIFIER_TYPE_PROFILE_ID),
    ],
)
def test_each_identifier_option_sends_its_type(
    fake: FakePersonalisation, option: str, kind: profile_pb2.IdentifierType.ValueType
) -> None:
    code, _, err = cx(fake, "decide", "--placement", "p", "--channel", "app", option, "x-1")
    assert code == 0, err
    request = fake.requests[0]
    assert isinstance(request, pb.DecideRequest)
    assert request.identifier == profile_pb2.Identifier(type=kind, value="x-1")
    assert request.channel == ev.CHANNEL_APP
    assert request.max_actions == 0
    assert not request.explain


def test_decide_shows_the_decision_and_its_ranked_actions(fake: FakePersonalisation) -> None:
    code, out, _ = cx(fake, "decide", "--placement", "web.home.hero", "--channel", "web")

    assert code == 0
    summary = {ln.split()[0]: ln.split(maxsplit=1)[1].strip() for ln in out.splitlines()[:7]}
    assert summary["decision"] == "d-7f3a"
    assert summary["basis"] == "profile"
    assert summary["group"] == "treatment"
    assert summary["catalogue"] == "cat-2026-11-20"
    assert summary["policy"] == "learned  model m3-1a2b3c4d"
    assert summary["profile"].startswith("p-42  as of 2026-11-23 10:11:00 UTC (")
    assert summary["signals"] == "open_complaint, delivery_late"
    header = next(ln for ln in out.splitlines() if "priority" in ln)
    assert cells(header) == (
        ["#", "action", "kind", "title", "P", "C", "V", "L", "priority", "reasons"]
    )
    first = next(ln for ln in out.splitlines() if "recovery-apology" in ln)
    assert cells(first) == [
        "1",
        "recovery-apology",
        "service_recovery",
        "Sorry about your order",
        "0.5",
        "1.2",
        "30",
        "2",
        "36",
        "suitability.recovery_first: open complaint",
    ]
    assert "eligibility.passed" in out
    # Text from the server is shown as it is, never read as rich markup.
    assert "[bold]Tell us[/bold]" in out
    assert "Filtered out" not in out


def test_decide_explain_adds_the_filtered_actions(fake: FakePersonalisation) -> None:
    code, out, _ = cx(
        fake, "decide", "--placement", "web.home.hero", "--channel", "web", "--explain"
    )

    assert code == 0
    request = fake.requests[0]
    assert isinstance(request, pb.DecideRequest)
    assert request.explain
    rows = {
        row[0]: row
        for ln in out.split("Filtered out", 1)[1].splitlines()
        if len(row := cells(ln)) == 6
    }
    assert rows["action"] == ["action", "kind", "stage", "policy", "reason", "priority"]
    assert rows["upsell-premium"] == [
        "upsell-premium",
        "upsell",
        "suitability",
        "suitability:open_complaint",
        "no selling while a complaint is open",
        "-",
    ]
    assert rows["xsell-cable"][2] == "prioritisation"
    assert rows["xsell-cable"][5] == "0.8"


def test_decide_for_an_anonymous_visitor_with_nothing_to_show(
    fake: FakePersonalisation,
) -> None:
    fake.decide = pb.DecideResponse(
        decision_id="d-0",
        basis=pb.BASIS_ANONYMOUS,
        group=pb.GROUP_HOLDOUT,
        holdout=True,
        policy_version="v1",
    )

    code, out, _ = cx(fake, "decide", "--placement", "web.home.hero", "--channel", "web")

    assert code == 0
    request = fake.requests[0]
    assert isinstance(request, pb.DecideRequest)
    assert not request.HasField("identifier")
    lines = [ln.split() for ln in out.splitlines()]
    assert ["basis", "anonymous"] in lines
    assert ["group", "holdout"] in lines
    assert ["profile", "-"] in lines
    assert ["signals", "none"] in lines
    assert "No action may be shown." in out


def test_decide_json_prints_the_reply_in_the_protobuf_json_mapping(
    fake: FakePersonalisation,
) -> None:
    code, out, _ = cx(
        fake, "decide", "--placement", "web.home.hero", "--channel", "web", "--explain", "--json"
    )

    assert code == 0
    assert json.loads(out)["decisionId"] == "d-7f3a"
    assert json_format.Parse(out, pb.DecideResponse()) == decide_reply()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "a@b.c", "--customer-id", "c-1"], "give at most one identifier"),
        (["--attr", "novalue"], "'novalue' is not key=value"),
        (["--attr", "=v"], "'=v' is not key=value"),
        (["--channel", "pigeon"], "pigeon"),
        (["--max-actions", "0"], "--max-actions"),
    ],
)
def test_decide_usage_errors_exit_2_without_a_call(
    fake: FakePersonalisation, args: list[str], message: str
) -> None:
    base = ["decide", "--placement", "web.home.hero"]
    if "--channel" not in args:
        base += ["--channel", "web"]
    code, _, err = cx(fake, *base, *args)
    assert code == 2
    assert message in err
    assert fake.requests == []


def test_decide_needs_a_placement_and_a_channel(fake: FakePersonalisation) -> None:
    assert cx(fake, "decide", "--channel", "web")[0] == 2
    assert cx(fake, "decide", "--placement", "web.home.hero")[0] == 2
    assert fake.requests == []


# --- failed calls ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 2),
        (grpc.StatusCode.NOT_FOUND, 1),
        (grpc.StatusCode.UNAVAILABLE, 1),
        (grpc.StatusCode.FAILED_PRECONDITION, 1),
    ],
)
def test_a_failed_call_prints_code_and_details_and_exits(
    fake: FakePersonalisation, status: grpc.StatusCode, exit_code: int
) -> None:
    fake.error = (status, "placement: must be lower-case letters, digits and . _ -")

    for args in (
        ["decide", "--placement", "Web", "--channel", "web"],
        ["outcome", "d-1", "a-1", "click"],
        ["actions"],
        ["actions", "a-1"],
    ):
        code, out, err = cx(fake, *args)
        assert code == exit_code, args
        assert err == (
            f"error: {status.name}: placement: must be lower-case letters, digits and . _ -\n"
        )
        assert out == ""


def test_an_unreachable_service_is_unavailable_not_a_traceback() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(
        app, ["nba", "actions", "--address", f"127.0.0.1:{port}", "--timeout", "5"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in result.output


# --- outcome --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("impression", ev.OfferOutcome.OUTCOME_IMPRESSION),
        ("click", ev.OfferOutcome.OUTCOME_CLICK),
        ("accept", ev.OfferOutcome.OUTCOME_ACCEPT),
        ("dismiss", ev.OfferOutcome.OUTCOME_DISMISS),
    ],
)
def test_outcome_reports_and_prints_the_event_id(
    fake: FakePersonalisation, word: str, value: ev.OfferOutcome.Outcome.ValueType
) -> None:
    code, out, _ = cx(fake, "outcome", "d-7f3a", "recovery-apology", word)

    assert code == 0
    assert fake.requests == [
        pb.ReportOutcomeRequest(decision_id="d-7f3a", action_id="recovery-apology", outcome=value)
    ]
    assert [ln.split() for ln in out.splitlines()] == [["event", "nba-5b1e"], ["profile", "p-42"]]


def test_outcome_json_and_usage(fake: FakePersonalisation) -> None:
    code, out, _ = cx(fake, "outcome", "d-7f3a", "recovery-apology", "accept", "--json")
    assert code == 0
    assert json.loads(out) == {"eventId": "nba-5b1e", "profileId": "p-42"}

    assert cx(fake, "outcome", "d-7f3a", "recovery-apology", "purchase")[0] == 2
    assert cx(fake, "outcome", "d-7f3a")[0] == 2
    assert len(fake.requests) == 1


# --- actions --------------------------------------------------------------------------


def test_actions_lists_the_catalogue(fake: FakePersonalisation) -> None:
    code, out, _ = cx(fake, "actions", "--placement", "web.home.hero", "--kind", "upsell")

    assert code == 0
    assert fake.requests == [pb.ListActionsRequest(placement="web.home.hero", kind="upsell")]
    assert out.startswith("Catalogue cat-2026-11-20")
    rows = [cells(ln) for ln in out.splitlines() if ln[:1] in "│┃"]
    assert rows[0] == [
        "action",
        "kind",
        "placements",
        "channels",
        "value",
        "lever",
        "consent",
        "active",
        "conditions",
    ]
    assert rows[1] == [
        "upsell-premium",
        "upsell",
        "web.home.hero",
        "web",
        "40",
        "1.5",
        "marketing_email",
        "yes",
        "lifecycle.stage == 'active'",
    ]
    # Each further placement, channel and condition on a line of its own.
    assert [r[2] for r in rows[2:4]] == ["app.home.banner", ""]
    assert [r[3] for r in rows[2:4]] == ["app", ""]
    assert [r[6] for r in rows[2:4]] == ["marketing", ""]
    assert [r[8] for r in rows[2:6]] == [
        "orders.count >= 2",
        "any of:",
        "segments contains 'vip'",
        "clv.value > 500",
    ]
    survey = next(r for r in rows if r[0] == "survey-nps")
    # No channels: every channel.
    assert survey[3] == "any"
    assert survey[6:9] == ["-", "no", "-"]
    assert "2 actions, loaded 2026-11-23 10:15:00 UTC" in out


def test_actions_with_an_id_shows_one_action(fake: FakePersonalisation) -> None:
    code, out, _ = cx(fake, "actions", "upsell-premium")

    assert code == 0
    assert fake.requests == [pb.GetActionRequest(action_id="upsell-premium")]
    fields = {
        ln.split("  ", 1)[0]: ln.split("  ", 1)[1].strip()
        for ln in out.split("Variants")[0].splitlines()
        if ln and not ln.startswith(" ")
    }
    assert fields["action"] == "upsell-premium"
    assert fields["channels"] == "web, app"
    assert fields["valid"] == "from always to 2026-12-31 00:00:00 UTC"
    assert fields["contact policy"] == "at most 3 impressions in 7 days"
    assert fields["propensity"] == "0.05 by default"
    assert fields["catalogue"] == "cat-2026-11-20"
    assert "none for 14 days after a dismiss" in out
    assert "never again after an accept" in out
    assert "0.2 for segment vip" in out
    assert "Try premium free" in out
    assert "app://premium" in out


def test_actions_json(fake: FakePersonalisation) -> None:
    code, out, _ = cx(fake, "actions", "--json")
    assert code == 0
    assert json_format.Parse(out, pb.ListActionsResponse()) == fake.catalogue

    code, out, _ = cx(fake, "actions", "upsell-premium", "--json")
    assert code == 0
    assert json.loads(out)["action"]["actionId"] == "upsell-premium"


def test_actions_filters_do_not_go_with_an_id(fake: FakePersonalisation) -> None:
    code, _, err = cx(fake, "actions", "upsell-premium", "--kind", "upsell")
    assert code == 2
    assert "without ACTION_ID" in err
    assert fake.requests == []


# --- the pieces -----------------------------------------------------------------------


def test_the_choices_are_the_protos_enums() -> None:
    assert [f"CHANNEL_{c.upper()}" for c in nba.CHANNELS] == [
        v.name for v in ev.Channel.DESCRIPTOR.values if v.number
    ]
    assert [f"OUTCOME_{o.upper()}" for o in nba.OUTCOMES] == [
        v.name for v in ev.OfferOutcome.Outcome.DESCRIPTOR.values if v.number
    ]
    assert sorted(nba.IDENTIFIER_OPTIONS.values()) == [
        v for v in profile_pb2.IdentifierType.values() if v
    ]


def test_enum_labels_survive_values_from_a_newer_server() -> None:
    assert nba_render.enum_label(pb.Stage.Name, pb.STAGE_CONTACT_POLICY, "STAGE_") == (
        "contact_policy"
    )
    assert nba_render.enum_label(pb.Stage.Name, 99, "STAGE_") == "99"
    reply = decide_reply()
    reply.basis = 42  # type: ignore[assignment]
    assert "basis      42" in rendered(nba_render.decision_summary(reply, NOW))


def test_a_narrow_terminal_squeezes_the_text_columns_not_ids_kinds_or_numbers() -> None:
    reply = decide_reply()
    reply.actions[0].reasons.add(code="score.propensity", detail="prior:segment:vip " * 5)
    wide = rendered(nba_render.actions_table(reply.actions))
    assert max(len(ln) for ln in wide.splitlines()) > 120

    for width in (120, 70):
        narrow = rendered(nba_render.actions_table(reply.actions), width=width)
        assert max(len(ln) for ln in narrow.splitlines()) <= width
        # Nothing is cut off: the reasons are all there, wrapped.
        rows = [cells(ln) for ln in narrow.splitlines() if ln.startswith("│")]
        assert "prior:segment:vip" * 5 in "".join(r[9] for r in rows).replace(" ", "")
        if width == 120:
            # Room enough for the text columns: the other columns keep their width.
            assert rows[0][:3] == ["1", "recovery-apology", "service_recovery"]
            assert rows[0][4:9] == ["0.5", "1.2", "30", "2", "36"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s ago"), (59, "59s ago"), (60, "1m ago"), (7200, "2h ago"), (3 * 86400, "3d ago")],
)
def test_age(seconds: float, text: str) -> None:
    assert nba_render.age(seconds) == text


def test_main_runs_nba_and_returns_its_exit_code(fake: FakePersonalisation) -> None:
    assert main(["nba", "actions", "--address", fake.address]) == 0
    fake.error = (grpc.StatusCode.NOT_FOUND, "no action 'x'")
    assert main(["nba", "actions", "x", "--address", fake.address]) == 1
    assert main(["nba"]) == 2
