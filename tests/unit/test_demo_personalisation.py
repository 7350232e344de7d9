"""The demo's personalisation part without the stack: where decisions are asked, the
simulated outcomes, the counting and the summary lines, and the client against an
in-process fake of PersonalisationService."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.personalisation.v1 import personalisation_pb2_grpc
from cx.profile.v1 import profile_pb2 as ppb

from services.common.experience import NegativeExperience
from services.demo import personalisation as nba
from services.demo.journeys import DemoConfig, Journey, generate
from services.demo.personalisation import (
    AGENT,
    APP_BANNER,
    BASKET,
    HERO,
    RECS,
    RETURN,
    TOUCHPOINT,
    DecisionPoint,
    DecisionTally,
    Personaliser,
    Rewarded,
    decision_points,
    learning_rewards,
    personalised_customers,
    points_by_event,
    return_visits,
    simulated_outcomes,
)
from services.demo.personalisation_section import (
    PersonalisationSection,
    curve_table,
    learning_curve,
    learning_lines,
    lift_line,
    metric_totals,
    placement_table,
    plural,
    tally_lines,
)
from services.demo.sections import build_sections
from services.demo.summary import DemoRun, SectionUnavailable, Summary
from services.personalisation.domain.learning import Rewards, load_learning

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CUSTOMER = ppb.IDENTIFIER_TYPE_CUSTOMER_ID
IMPRESSION = ev.OfferOutcome.OUTCOME_IMPRESSION
CLICK = ev.OfferOutcome.OUTCOME_CLICK
ACCEPT = ev.OfferOutcome.OUTCOME_ACCEPT
DISMISS = ev.OfferOutcome.OUTCOME_DISMISS


@pytest.fixture(scope="module")
def journeys() -> list[Journey]:
    return generate(DemoConfig(customers=300, negative_share=0.3, seed=21), NOW)


# --- where decisions are asked --------------------------------------------------------------


def test_decisions_are_asked_at_web_app_and_contact_centre_touchpoints(
    journeys: list[Journey],
) -> None:
    placements = Counter[str]()
    for journey in journeys:
        events = {e.event_id: e for e in journey.events}
        order = [e.event_id for e in journey.events]
        points = decision_points(journey)
        assert [order.index(p.event_id) for p in points] == sorted(
            order.index(p.event_id) for p in points
        ), "in event order"
        for p in points:
            event = events[p.event_id]
            placements[p.placement] += 1
            assert p.phase == TOUCHPOINT
            assert p.channel == event.channel
            expected = {
                "web.home": HERO,
                "app.home": APP_BANNER,
                "catalogue.product": RECS,
                "support.phone": AGENT,
                "support.chat": AGENT,
            }.get(event.touchpoint, BASKET)
            assert p.placement == expected, event.touchpoint
            if p.placement == BASKET:
                assert event.touchpoint in {"cart.add", "cart.remove", "checkout.delivery"}
                assert event.channel == ev.CHANNEL_WEB
                assert p.page == "/basket"
            if p.placement == AGENT:
                assert event.HasField("support_contact")
    assert set(placements) == {HERO, RECS, BASKET, APP_BANNER, AGENT}
    # One product recommendation per visit of the home page at most.
    assert placements[RECS] <= placements[HERO]


def test_the_identifier_is_the_one_the_touchpoint_knows(journeys: list[Journey]) -> None:
    kinds = Counter[int]()
    for journey in journeys:
        c = journey.customer
        signed_in = False
        points = {p.event_id: p for p in decision_points(journey)}
        for event in journey.events:
            signed_in = signed_in or event.HasField("identify")
            p = points.get(event.event_id)
            if p is None:
                continue
            kinds[p.identifier_type] += 1
            if p.identifier_type == ppb.IDENTIFIER_TYPE_ANONYMOUS_ID:
                assert not signed_in or p.channel == ev.CHANNEL_APP
                assert p.identifier in {c.anonymous_id, c.device_id}
            elif p.identifier_type == ppb.IDENTIFIER_TYPE_PHONE:
                assert p.channel == ev.CHANNEL_PHONE
                assert p.identifier.replace(" ", "") == c.phone
            else:
                assert p.identifier_type == CUSTOMER
                assert p.identifier == c.customer_id
            request = p.request()
            assert request.explain
            assert request.identifier == ppb.Identifier(type=p.identifier_type, value=p.identifier)
    assert set(kinds) == {
        ppb.IDENTIFIER_TYPE_ANONYMOUS_ID,
        ppb.IDENTIFIER_TYPE_CUSTOMER_ID,
        ppb.IDENTIFIER_TYPE_PHONE,
    }


def test_the_basket_decision_carries_the_basket(journeys: list[Journey]) -> None:
    for journey in journeys:
        carts: dict[str, list[str]] = {}
        points = {p.event_id: p for p in decision_points(journey)}
        for event in journey.events:
            if event.HasField("cart_change") and event.channel == ev.CHANNEL_WEB:
                change = event.cart_change
                items = carts.setdefault(change.cart_id, [])
                if change.action == ev.CartChange.ACTION_ADD:
                    items.append(change.product_id)
                else:
                    items.remove(change.product_id)
                p = points.get(event.event_id)
                if p is not None:
                    assert list(p.cart) == items
                    assert list(p.request().context.cart_product_ids) == items


def test_the_experience_so_far_travels_with_the_decision(journeys: list[Journey]) -> None:
    troubled = [p for j in journeys for p in decision_points(j) if p.troubled]
    assert troubled
    for journey in journeys:
        for p in decision_points(journey):
            assert p.experienced <= journey.negative


def test_return_visits_come_after_the_journey(journeys: list[Journey]) -> None:
    for journey in journeys:
        c = journey.customer
        visits = return_visits(journey)
        if not c.identifies:
            assert visits == []
            continue
        home = visits[0]
        assert home.phase == RETURN
        assert home.placement == (APP_BANNER if c.app_user else HERO)
        assert (home.identifier_type, home.identifier) == (CUSTOMER, c.customer_id)
        assert home.experienced == journey.negative
        if journey.negative:
            (call,) = visits[1:]
            assert call.placement == AGENT
            assert call.identifier == (c.phone or c.customer_id)
        else:
            assert len(visits) == 1


def test_a_share_of_the_customers_is_personalised() -> None:
    chosen = personalised_customers(500, 0.2, seed=3)
    assert len(chosen) == 100
    assert chosen == personalised_customers(500, 0.2, seed=3)
    assert chosen != personalised_customers(500, 0.2, seed=4)
    assert personalised_customers(500, 0.0, seed=3) == frozenset()
    assert personalised_customers(50, 1.0, seed=3) == frozenset(range(50))


def test_points_by_event_only_for_the_chosen(journeys: list[Journey]) -> None:
    chosen = frozenset({0, 5})
    points = points_by_event(journeys, chosen)
    assert {p.customer_index for ps in points.values() for p in ps} == chosen


# --- simulated outcomes ---------------------------------------------------------------------


def _rates(kind: str, troubled: bool, n: int = 20_000) -> Counter[int]:
    rng = random.Random(1)
    last = Counter[int]()
    for _ in range(n):
        outcomes = simulated_outcomes(kind, troubled, rng)
        assert outcomes[0] == IMPRESSION
        assert outcomes in (
            [IMPRESSION],
            [IMPRESSION, CLICK],
            [IMPRESSION, CLICK, ACCEPT],
            [
                IMPRESSION,
                DISMISS,
            ],
        )
        last[outcomes[-1]] += 1
    return last


def test_troubled_customers_take_up_service_recovery_and_turn_down_selling() -> None:
    n = 20_000
    recovery = _rates("service_recovery", True, n)
    upsell = _rates("upsell", True, n)
    calm_upsell = _rates("upsell", False, n)
    assert recovery[ACCEPT] / n == pytest.approx(0.35, abs=0.02)
    assert upsell[DISMISS] / n == pytest.approx(0.5, abs=0.02)
    assert upsell[ACCEPT] / n < 0.01
    assert calm_upsell[ACCEPT] / n == pytest.approx(0.01, abs=0.005)
    assert calm_upsell[DISMISS] / n < 0.15
    assert _rates("information", False, n)[ACCEPT] == 0
    assert sum(_rates("no_such_kind", False, 100).values()) == 100


# --- counting -------------------------------------------------------------------------------


def _point(
    placement: str = HERO, customer: str = "cus-1", phase: str = TOUCHPOINT
) -> DecisionPoint:
    return DecisionPoint(
        customer_index=1,
        customer_id=customer,
        event_id=f"{customer}-{placement}",
        placement=placement,
        channel=ev.CHANNEL_PHONE if placement == AGENT else ev.CHANNEL_WEB,
        identifier_type=CUSTOMER,
        identifier=customer,
        page="/",
        device="desktop",
        experienced=frozenset({NegativeExperience.COMPLAINT}),
        phase=phase,
    )


def _ranked(action: str, kind: str, rank: int = 1) -> pb.RankedAction:
    return pb.RankedAction(
        action_id=action,
        kind=kind,
        rank=rank,
        content=pb.Content(title=f"{action} title"),
        score=pb.ScoreParts(priority=10.0 / rank),
        reasons=[
            pb.Reason(code="eligibility.passed", detail="ok"),
            *(
                [pb.Reason(code="suitability.recovery_first", detail=f"{kind} ranks first")]
                if kind == "service_recovery"
                else []
            ),
        ],
    )


def _filtered(action: str, kind: str, stage: pb.Stage.ValueType, policy: str) -> pb.FilteredAction:
    return pb.FilteredAction(
        action_id=action, kind=kind, stage=stage, policy=policy, reason=f"{policy} said no"
    )


def _complaint_reply(holdout: bool = False) -> pb.DecideResponse:
    return pb.DecideResponse(
        decision_id="d1",
        profile_id="p1",
        basis=pb.BASIS_PROFILE,
        holdout=holdout,
        experience_signals=["open_complaint"],
        actions=[
            _ranked("apology_voucher", "service_recovery"),
            _ranked("call_me_back", "service_recovery", 2),
        ],
        filtered=[
            _filtered(
                "next_day_unlimited", "upsell", pb.STAGE_SUITABILITY, "suitability:open_complaint"
            ),
            _filtered(
                "complete_the_look",
                "cross_sell",
                pb.STAGE_SUITABILITY,
                "suitability:open_complaint",
            ),
            _filtered("track_my_order", "service_recovery", pb.STAGE_ELIGIBILITY, "eligibility:x"),
            _filtered(
                "loyalty_points",
                "loyalty",
                pb.STAGE_CONTACT_POLICY,
                "contact:global.marketing_per_day",
            ),
        ],
    )


def _plain_reply(
    basis: pb.Basis.ValueType = pb.BASIS_UNKNOWN_PROFILE, holdout: bool = True
) -> pb.DecideResponse:
    return pb.DecideResponse(
        decision_id="d2",
        basis=basis,
        holdout=holdout,
        actions=[_ranked("new_season_edit", "cross_sell")],
        filtered=[
            _filtered("delivery_cutoff", "information", pb.STAGE_CONTACT_POLICY, "contact:kind.x"),
            _filtered(
                "join_and_save", "onboarding", pb.STAGE_PRIORITISATION, "prioritisation:rank"
            ),
        ],
    )


def _tally() -> DecisionTally:
    t = DecisionTally(points=4, customers=2)
    t.add_decision(_point(HERO, "cus-2"), _plain_reply())
    t.add_decision(_point(AGENT, "cus-1", RETURN), _complaint_reply())
    t.add_decision(
        _point(HERO, "cus-1", RETURN), pb.DecideResponse(profile_id="p1", basis=pb.BASIS_PROFILE)
    )
    t.add_outcome("service_recovery", IMPRESSION)
    t.add_outcome("service_recovery", CLICK)
    t.add_outcome("service_recovery", ACCEPT)
    t.add_outcome("cross_sell", IMPRESSION)
    t.add_outcome("cross_sell", DISMISS)
    return t


def test_the_tally_counts_what_the_replies_say() -> None:
    t = _tally()
    assert t.decisions == 3
    assert t.holdout == 1
    assert t.people == {f"{CUSTOMER}:cus-2", "p1"}
    assert t.holdout_people == {f"{CUSTOMER}:cus-2"}
    assert t.by_placement == Counter({HERO: 2, AGENT: 1})
    assert t.shown == Counter(
        {("new_season_edit", HERO): 1, ("apology_voucher", AGENT): 1, ("call_me_back", AGENT): 1}
    )
    assert t.empty == Counter({HERO: 1})
    assert t.held_back == Counter(
        {
            ("suitability:open_complaint", "upsell"): 1,
            ("suitability:open_complaint", "cross_sell"): 1,
        }
    )
    assert t.held_back_decisions == 1
    assert t.held_back_customers == {"cus-1"}
    assert t.filtered == Counter(
        {
            ("suitability", "suitability:open_complaint"): 2,
            ("contact policy", "contact:global.marketing_per_day"): 1,
            ("contact policy", "contact:kind.x"): 1,
        }
    )
    assert t.filtered_by_stage["eligibility"] == 1
    assert t.filtered_by_stage["prioritisation"] == 1
    assert t.capped_decisions == 2
    assert (t.with_signals, t.recovery_first) == (1, 1)
    assert t.by_phase == Counter({TOUCHPOINT: 1, RETURN: 2})
    assert t.basis_by_phase[RETURN, "profile"] == 2
    assert t.held_back_by_phase == Counter({RETURN: 2})
    assert t.outcomes_reported == 5
    assert t.example is not None
    assert t.example.reply.decision_id == "d1"


def test_the_example_prefers_a_complaint_with_recovery_first_in_the_treatment_group() -> None:
    t = DecisionTally()
    t.add_decision(_point(AGENT, "cus-9"), _complaint_reply(holdout=True))
    t.add_decision(_point(HERO, "cus-8"), _plain_reply(pb.BASIS_PROFILE, holdout=False))
    assert t.example is not None
    assert t.example.point.customer_id == "cus-9"
    t.add_decision(_point(AGENT, "cus-7"), _complaint_reply(holdout=False))
    assert t.example.point.customer_id == "cus-7"


def test_errors_keep_a_few_samples() -> None:
    t = DecisionTally()
    for n in range(5):
        t.add_error("Decide", "UNAVAILABLE", f"try {n}")
    assert t.errors == Counter({"Decide UNAVAILABLE": 5})
    assert t.error_samples == [f"Decide: UNAVAILABLE: try {n}" for n in range(3)]


# --- the summary lines ----------------------------------------------------------------------


def test_the_placement_table_lines_up() -> None:
    table = placement_table(_tally())
    assert table[0].split() == ["web", "agent"]
    assert table[1].split() == ["home.hero", "panel", "total"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
    assert rows["apology_voucher"] == ["0", "1", "1"]
    assert rows["new_season_edit"] == ["1", "0", "1"]
    assert rows["(nothing"] == ["shown)", "1", "0", "1"]
    assert rows["decisions"] == ["2", "1", "3"]
    assert len({len(line) for line in table[1:]}) == 1, "columns line up"


def test_the_section_lines_read_well() -> None:
    tally = _tally()
    tally.return_when = "after the profiles caught up in 1.5s"
    lines = tally_lines(tally)
    text = "\n".join(lines)
    assert lines[0] == "decisions: 3 for 2 customers (2 people as the service knew them)"
    assert lines[1:5] == [
        "  at journey touchpoints: 1; basis: unknown profile 100.0%",
        "    an experience rule held in 0 (service recovery first in 0); "
        "0 upsells and cross-sells held back",
        "  on return visits, after the profiles caught up in 1.5s: 2; basis: profile 100.0%",
        "    an experience rule held in 1 (service recovery first in 1); "
        "2 upsells and cross-sells held back",
    ]
    assert "holdout: 33.3% of decisions (1) went to the control policy, 1 of 2 people" in lines
    assert (
        "experience rules held back 1 upsell and 1 cross-sell in 1 decision for 1 customer; "
        "service recovery ranked first in 1 of the 1 decisions where a rule held" in text
    )
    assert "contact policy and fatigue caps hit 2 times in 2 decisions" in text
    assert "outcomes reported: 5 (2 impressions, 1 click, 1 accept, 1 dismiss)" in lines
    # The outcomes were counted without their decision, so no reward settled.
    learning = lines.index(
        "learning: 1 decision showed a profile an action; reward per decision 0.0000 (the "
        "first action's best outcome: click 0.1, accept value/50, dismiss 0, none 0)"
    )
    assert lines[learning + 1 : learning + 4] == [
        "  policy of all 3 decisions: unspecified 3; no model version (no decision used a "
        "learned model)",
        "  no learning curve: not enough data (20 decisions needed per chunk)",
        "holdout lift: treatment 0.0000 per decision (1), holdout 0.0000 (0); "
        "lift: not enough data (the holdout has 0 decisions, 30 needed)",
    ]
    assert lines[learning + 4] == "example, a customer with an open complaint:"
    assert (
        '    1. apology_voucher (service_recovery) "apology_voucher title", priority 10.00; '
        "service_recovery ranks first" in lines
    )
    assert (
        "    held back: next_day_unlimited (upsell) by suitability:open_complaint: "
        "suitability:open_complaint said no" in lines
    )
    assert "failed calls" not in text


# --- rewards as the learner counts them, the learning curve and the holdout lift -----------


def _decided(
    n: int,
    holdout: bool = False,
    policy: pb.DecisionPolicy.ValueType = pb.DECISION_POLICY_STATIC,
    model_version: str = "",
    basis: pb.Basis.ValueType = pb.BASIS_PROFILE,
    actions: Sequence[tuple[str, str, float]] = (("gold_upgrade", "upsell", 25.0),),
) -> pb.DecideResponse:
    return pb.DecideResponse(
        decision_id=f"d{n}",
        profile_id=f"p{n}",
        basis=basis,
        holdout=holdout,
        group=pb.GROUP_HOLDOUT if holdout else pb.GROUP_TREATMENT,
        policy=policy,
        model_version=model_version,
        actions=[
            pb.RankedAction(action_id=a, kind=k, rank=i + 1, score=pb.ScoreParts(business_value=v))
            for i, (a, k, v) in enumerate(actions)
        ],
    )


def test_the_tally_keeps_each_decisions_reward_as_the_learner_counts_it() -> None:
    t = DecisionTally()
    two = (("gold_upgrade", "upsell", 25.0), ("survey_nps", "survey", 5.0))
    learned = pb.DECISION_POLICY_LEARNED
    t.add_decision(_point(HERO), _decided(1))
    t.add_decision(_point(AGENT), _decided(2, policy=learned, model_version="m1-aa", actions=two))
    t.add_decision(_point(RECS), _decided(3, holdout=True, policy=pb.DECISION_POLICY_CONTROL))
    t.add_decision(_point(HERO), _decided(4, policy=learned, model_version="m2-bb"))
    t.add_decision(_point(BASKET), _decided(5, actions=()))  # nothing shown
    t.add_decision(
        _point(APP_BANNER),
        _decided(6, policy=pb.DECISION_POLICY_GENERIC, basis=pb.BASIS_ANONYMOUS),
    )
    # d1: accepted (25 / 50 = 0.5); a click after the accept changes nothing.
    for outcome in (IMPRESSION, CLICK, ACCEPT, CLICK):
        t.add_outcome("upsell", outcome, "d1", "gold_upgrade")
    # d2: the second action's accept is not the learner's; the first was clicked (0.1).
    for outcome in (IMPRESSION, CLICK):
        t.add_outcome("upsell", outcome, "d2", "gold_upgrade")
    t.add_outcome("survey", ACCEPT, "d2", "survey_nps")
    # d3: dismissed (0), then an accept after the dismiss, which settled it.
    for outcome in (IMPRESSION, DISMISS, ACCEPT):
        t.add_outcome("upsell", outcome, "d3", "gold_upgrade")
    # d4: an impression only (0); d6: no outcome at all (no_outcome); an unknown decision.
    t.add_outcome("upsell", IMPRESSION, "d4", "gold_upgrade")
    t.add_outcome("upsell", ACCEPT, "d99", "gold_upgrade")

    assert [(r.decision_id, r.reward) for r in t.rewarded] == [
        ("d1", 0.5),
        ("d2", 0.1),
        ("d3", 0.0),
        ("d4", 0.0),
        ("d6", 0.0),
    ]
    assert t.rewarded[0].outcomes == ["impression", "click", "accept"]
    assert t.rewarded[2].outcomes == ["impression", "dismiss"]
    assert t.rewarded[1] == Rewarded(
        decision_id="d2",
        placement=AGENT,
        group="treatment",
        policy="learned",
        model_version="m1-aa",
        basis="profile",
        action_id="gold_upgrade",
        business_value=25.0,
        reward=0.1,
        outcomes=["impression", "click"],
    )
    assert [(r.group, r.policy, r.placement, r.basis) for r in t.rewarded[2:]] == [
        ("holdout", "control", RECS, "profile"),
        ("treatment", "learned", HERO, "profile"),
        ("treatment", "generic", APP_BANNER, "anonymous"),
    ]
    assert t.policies == Counter({"static": 2, "learned": 2, "control": 1, "generic": 1})
    assert list(t.model_versions.items()) == [("m1-aa", 1), ("m2-bb", 1)]
    assert t.last_model_version == "m2-bb"
    # Every outcome still counts in the outcome table.
    assert t.outcomes_reported == 12


def test_the_rewards_come_from_the_learning_file() -> None:
    t = DecisionTally(rewards=Rewards(no_outcome=-0.01, click=0.2, accept=1.0))
    t.add_decision(_point(HERO), _decided(1))
    t.add_decision(_point(HERO), _decided(2))
    t.add_decision(_point(HERO), _decided(3))
    t.add_outcome("upsell", ACCEPT, "d1", "gold_upgrade")
    t.add_outcome("upsell", CLICK, "d2", "gold_upgrade")
    assert [r.reward for r in t.rewarded] == [1.0, 0.2, -0.01]

    shipped, note = learning_rewards()
    assert (shipped, note) == (load_learning().rewards, "")
    assert (shipped.click, shipped.accept, shipped.value_scale) == (0.1, "value", 50.0)


def test_without_a_readable_learning_file_the_default_rewards_are_used(tmp_path: Path) -> None:
    broken = tmp_path / "learning.toml"
    broken.write_text("[rewards]\nclick = 'a lot'\n")
    rewards, note = learning_rewards(broken)
    assert rewards == Rewards()
    assert note.startswith("the learning file could not be read, so the default rewards: ")
    assert "rewards.click" in note


def _rewarded(group: str, reward: float, policy: str = "static") -> Rewarded:
    return Rewarded(
        decision_id="d",
        placement=HERO,
        group=group,
        policy=policy,
        model_version="",
        basis="profile",
        action_id="gold_upgrade",
        business_value=25.0,
        reward=reward,
    )


def _run(n: int, start: int) -> list[Rewarded]:
    """n decisions from `start`: every tenth in the holdout (reward 0.1 every other one),
    the treatment accepted (0.5) once in five, learned from the 40th decision on."""
    out = []
    for i in range(start, start + n):
        if i % 10 == 9:
            out.append(_rewarded("holdout", 0.1 if i % 20 == 19 else 0.0, "control"))
        else:
            policy = "learned" if i >= 40 else "static"
            out.append(_rewarded("treatment", 0.5 if i % 5 == 0 else 0.0, policy))
    return out


def test_the_learning_curve_cuts_the_decisions_in_equal_chunks() -> None:
    decisions = _run(100, 0)
    curve = learning_curve(decisions, chunks=4, min_chunk=20)
    assert [(c.first, c.last) for c in curve] == [(1, 25), (26, 50), (51, 75), (76, 100)]
    # Decisions 0-24: holdout at 9, 19 (rewarded); treatment accepted at 0, 5, 10, 15, 20.
    assert (curve[0].treatment.n, curve[0].treatment.total) == (23, 2.5)
    assert (curve[0].holdout.n, curve[0].holdout.total) == (2, 0.1)
    # Learned from decision 40 on: 40-48 (49 is the holdout's), then every treatment one.
    assert [c.learned for c in curve] == [0, 9, 23, 22]
    assert [c.treatment.n + c.holdout.n for c in curve] == [25, 25, 25, 25]
    # Fewer chunks than asked when one would hold under 20 decisions (103: 5 of 20 or 21);
    # 10 at most; no curve below 20.
    sizes = [c.last - c.first + 1 for c in learning_curve(_run(103, 0))]
    assert (len(sizes), sum(sizes), set(sizes)) == (5, 103, {20, 21})
    assert len(learning_curve(_run(250, 0))) == 10
    assert learning_curve(_run(19, 0)) == []


def test_the_curve_table_lines_up() -> None:
    table = curve_table(learning_curve(_run(100, 0), chunks=4, min_chunk=20))
    # Holdout: 9, 19 | 29, 39, 49 | 59, 69 | 79, 89, 99 (0.1 at 19, 39, 59, 79, 99); the
    # treatment accepts 5 of its 23 or 22 decisions in each chunk.
    assert table == [
        "                1      2      3      4",
        "treatment   0.109  0.114  0.109  0.114",
        "holdout     0.050  0.033  0.050  0.067",
        "learned        0%    41%   100%   100%",
    ]
    empty_holdout = curve_table(learning_curve([_rewarded("treatment", 0.1)] * 20))
    assert empty_holdout[2].split() == ["holdout", "-"]


def test_the_lift_has_its_confidence_interval() -> None:
    # Treatment 10 of 40 accepted (0.125 per decision), holdout 3 of 30 (0.05): the lift
    # is 0.125 / 0.05 - 1 = +150 %. The interval is that of log(T / H) = log 2.5, with
    # se = sqrt(var_T / T^2 + var_H / H^2) = sqrt(0.076923 + 0.310345) = 0.62231 (var_T,
    # var_H: the variances of the means, 0.0012019 and 0.00077586), exponentiated:
    # exp(0.91629 -+ 1.96 x 0.62231) - 1 = -26.2 % .. +746.5 %.
    treatment = [0.5] * 10 + [0.0] * 30
    holdout = [0.5] * 3 + [0.0] * 27
    assert lift_line(treatment, holdout) == (
        "holdout lift: treatment 0.1250 per decision (40), holdout 0.0500 (30); "
        "lift +150.0% (95% CI -26.2% to +746.5%)"
    )


def test_the_lift_says_when_there_is_not_enough_data() -> None:
    assert lift_line([0.1] * 200, [0.1] * 29) == (
        "holdout lift: treatment 0.1000 per decision (200), holdout 0.1000 (29); "
        "lift: not enough data (the holdout has 29 decisions, 30 needed)"
    )
    assert lift_line([0.1] * 29, [0.1] * 40).endswith(
        "lift: not enough data (the treatment has 29 decisions, 30 needed)"
    )
    # A holdout that earned nothing has no lift: the difference stands in, with its
    # interval (Welch's t).
    # se = sqrt(var_T) = 0.03467 with 39 degrees of freedom (t = 2.0227): +-0.0701.
    line = lift_line([0.5] * 10 + [0.0] * 30, [0.0] * 30)
    assert line == (
        "holdout lift: treatment 0.1250 per decision (40), holdout 0.0000 (30); "
        "lift: the holdout earned nothing: no lift; difference +0.1250 (95% CI +0.0549 to "
        "+0.1951)"
    )


def test_the_learning_lines_read_well() -> None:
    t = DecisionTally()
    learned = pb.DECISION_POLICY_LEARNED
    for i in range(60):
        holdout = i % 6 == 5
        policy = pb.DECISION_POLICY_CONTROL if holdout else learned
        version = "" if holdout else f"m{1 + i // 20}-0123abcd"
        t.add_decision(_point(HERO), _decided(i, holdout, policy, version))
        t.add_outcome("upsell", IMPRESSION, f"d{i}", "gold_upgrade")
        # Clicks: the treatment's 0, 4, 8, ... (15 of 50), the holdout's 11, 23, ... (5 of 10).
        if i % 4 == 0 or i % 12 == 11:
            t.add_outcome("upsell", CLICK, f"d{i}", "gold_upgrade")
    generic = pb.DECISION_POLICY_GENERIC
    t.add_decision(_point(HERO), _decided(60, policy=generic, basis=pb.BASIS_ANONYMOUS))
    lines = learning_lines(t)
    assert lines == [
        "learning: 60 decisions showed a profile an action; reward per decision 0.0333 (the "
        "first action's best outcome: click 0.1, accept value/50, dismiss 0, none 0)",
        "  policy of all 61 decisions: learned 50, control 10, generic 1; 3 model versions "
        "(first m1-0123abcd, last m3-0123abcd)",
        "  reward per decision in the order decided (3 chunks of 20, the holdout 3-4 of each):",
        "                    1      2      3",
        "    treatment   0.029  0.029  0.031",
        "    holdout     0.033  0.067  0.050",
        "    learned      100%   100%   100%",
        "holdout lift: treatment 0.0300 per decision (50), holdout 0.0500 (10); "
        "lift: not enough data (the holdout has 10 decisions, 30 needed)",
    ]


def test_plurals() -> None:
    assert plural(1, "person") == "1 person"
    assert plural(2, "person") == "2 people"
    assert plural(2, "dismiss") == "2 dismisses"
    assert plural(1_234, "decision") == "1,234 decisions"


def test_the_section_says_why_there_are_no_decisions() -> None:
    with pytest.raises(SectionUnavailable, match="did not answer"):
        tally_lines(DecisionTally(unavailable="the personalisation service did not answer"))
    stopped = DecisionTally(points=10, gave_up="no call answered for 21s")
    with pytest.raises(SectionUnavailable, match=r"no decision was made \(10 asked for\)"):
        tally_lines(stopped)
    section = PersonalisationSection("")
    run = DemoRun(
        seed=1,
        customers=(),
        negative={},
        sent=0,
        accepted=0,
        rejected=0,
        started_at=NOW,
        finished_at=NOW,
    )
    with pytest.raises(SectionUnavailable, match="--personalise-share 0"):
        section.lines(run)


def test_the_service_count_is_a_cross_check_that_fails_gracefully() -> None:
    section = PersonalisationSection("http://127.0.0.1:1/metrics")
    report = Summary([section])
    report.before()
    run = DemoRun(
        seed=1,
        customers=(),
        negative={},
        sent=0,
        accepted=0,
        rejected=0,
        started_at=NOW,
        finished_at=NOW,
        personalisation=_tally(),
    )
    lines = report.render(run)
    assert lines[0] == "Personalisation"
    assert lines[-1].startswith("  the service's own count: unavailable (")


def test_metric_totals_sum_the_counters() -> None:
    text = "\n".join(
        [
            "# HELP cx_personalisation_decisions_total Decisions made",
            "# TYPE cx_personalisation_decisions_total counter",
            'cx_personalisation_decisions_total{basis="profile",placement="a"} 3.0',
            'cx_personalisation_decisions_total{basis="anonymous",placement="b"} 2.0',
            'cx_personalisation_decisions_created{basis="profile",placement="a"} 1.7e9',
            "# HELP cx_personalisation_outcomes_total Outcomes reported",
            "# TYPE cx_personalisation_outcomes_total counter",
            'cx_personalisation_outcomes_total{outcome="click"} 4.0',
        ]
    )
    assert metric_totals(text) == {
        "cx_personalisation_decisions": 5.0,
        "cx_personalisation_outcomes": 4.0,
    }


def test_the_summary_lists_the_personalisation_section() -> None:
    sections = build_sections()
    titles = [s.title for s in sections]
    assert titles[titles.index("Profiles") + 1] == "Personalisation"
    assert isinstance(sections[titles.index("Personalisation")], PersonalisationSection)


# --- the client, against an in-process fake service -------------------------------------


class FakeService(personalisation_pb2_grpc.PersonalisationServiceServicer):
    """Answers Decide with a recovery action for the complaint customer and a cross-sell
    otherwise; refuses the first `refuse` calls with UNAVAILABLE."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.lock = threading.Lock()
        self.decided: list[pb.DecideRequest] = []
        self.outcomes: list[pb.ReportOutcomeRequest] = []

    def _refused(self, context: grpc.ServicerContext) -> bool:
        with self.lock:
            if self.refuse > 0:
                self.refuse -= 1
                return True
        return False

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        if self._refused(context):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the profile service did not answer")
        with self.lock:
            self.decided.append(request)
            n = len(self.decided)
        if request.identifier.value == "cus-complaint":
            reply = _complaint_reply()
        else:
            reply = _plain_reply()
        reply.decision_id = f"d{n}"
        return reply

    def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        with self.lock:
            self.outcomes.append(request)
        return pb.ReportOutcomeResponse(event_id=f"e{len(self.outcomes)}")

    def ListActions(
        self, request: pb.ListActionsRequest, context: grpc.ServicerContext
    ) -> pb.ListActionsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the demo does not list actions")

    def GetAction(
        self, request: pb.GetActionRequest, context: grpc.ServicerContext
    ) -> pb.GetActionResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the demo does not read actions")


@pytest.fixture
def fake() -> Iterator[tuple[FakeService, str]]:
    service = FakeService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    personalisation_pb2_grpc.add_PersonalisationServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _event(event_id: str) -> ev.TouchpointEvent:
    return ev.TouchpointEvent(event_id=event_id)


def _points() -> dict[str, list[DecisionPoint]]:
    out: dict[str, list[DecisionPoint]] = {}
    for i in range(12):
        customer = "cus-complaint" if i % 3 == 0 else f"cus-{i}"
        p = DecisionPoint(
            customer_index=i % 4,
            customer_id=customer,
            event_id=f"e{i}",
            placement=AGENT if i % 3 == 0 else HERO,
            channel=ev.CHANNEL_PHONE if i % 3 == 0 else ev.CHANNEL_WEB,
            identifier_type=CUSTOMER,
            identifier=customer,
            page="/",
            device="desktop",
            experienced=frozenset({NegativeExperience.COMPLAINT}) if i % 3 == 0 else frozenset(),
        )
        out[p.event_id] = [p]
    return out


def test_the_client_decides_after_each_sent_event_and_reports_outcomes(
    fake: tuple[FakeService, str],
) -> None:
    service, address = fake
    points = _points()
    client = Personaliser(address, points, seed=1, workers=3).start()
    assert client.active
    client.offer([_event("e0"), _event("nope"), _event("e1")])
    client.drain()
    assert len(service.decided) == 2
    client.offer(_event(f"e{i}") for i in range(2, 12))
    client.drain()
    later = [
        DecisionPoint(
            customer_index=0,
            customer_id="cus-complaint",
            event_id="cus-complaint/return",
            placement=HERO,
            channel=ev.CHANNEL_WEB,
            identifier_type=CUSTOMER,
            identifier="cus-complaint",
            page="/",
            device="desktop",
            phase=RETURN,
        )
    ]
    client.revisit(later, "after the profiles caught up in 0.1s")
    tally = client.close()
    assert tally.decisions == 13 == len(service.decided)
    assert tally.by_phase == Counter({TOUCHPOINT: 12, RETURN: 1})
    assert tally.return_when == "after the profiles caught up in 0.1s"
    assert all(r.explain for r in service.decided)
    assert {r.placement for r in service.decided} == {HERO, AGENT}
    assert tally.outcomes_reported == len(service.outcomes) > 0
    impressions = [o for o in service.outcomes if o.outcome == IMPRESSION]
    assert len(impressions) == sum(tally.shown.values())
    for report in service.outcomes:
        assert report.decision_id.startswith("d")
        assert report.action_id in {"apology_voucher", "call_me_back", "new_season_edit"}
    assert tally.failed == 0
    # Each decision's reward settles what the service was told about its first action.
    assert len(tally.rewarded) == 13
    for entry in tally.rewarded:
        reported = [
            nba.OUTCOME_NAMES[o.outcome]
            for o in service.outcomes
            if (o.decision_id, o.action_id) == (entry.decision_id, entry.action_id)
        ]
        assert entry.outcomes == reported
        assert entry.reward == Rewards().settle(reported, entry.business_value)
    clicked = [e for e in tally.rewarded if e.outcomes[-1:] == ["click"]]
    assert all(e.reward == 0.1 for e in clicked)


def test_the_client_tries_again_when_the_service_cannot_answer_for_now(
    fake: tuple[FakeService, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, address = fake
    monkeypatch.setattr(nba, "RETRY_PAUSES_S", (0.01, 0.01, 0.01))
    service.refuse = 5
    client = Personaliser(address, _points(), seed=1, workers=1).start()
    client.offer(_event(f"e{i}") for i in range(3))
    client.drain()
    tally = client.close()
    # Four tries per call: the first call fails after four, the second succeeds on its
    # second try; every later call goes through.
    assert tally.errors == Counter({"Decide UNAVAILABLE": 1})
    assert tally.decisions == 2


def test_without_the_service_the_demo_asks_nothing_and_says_why() -> None:
    client = Personaliser("127.0.0.1:1", _points(), seed=1).start(connect_timeout_s=0.2)
    assert not client.active
    client.offer([_event("e0")])
    client.drain()
    tally = client.close()
    assert tally.decisions == 0
    assert "did not answer within 0.2s" in tally.unavailable
    with pytest.raises(SectionUnavailable, match=r"127\.0\.0\.1:1"):
        tally_lines(tally)
