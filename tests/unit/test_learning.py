"""The learning pieces without a broker: rewards, the bandit's features (the same from a
live decision and from its log record), sampling an order and the probability of what was
shown, and the policy step between ranking and the contact ledger."""

from __future__ import annotations

import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest
from cx.personalisation.v1 import personalisation_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.contact_ledger import (
    GLOBAL_MARKETING_PER_DAY,
    KIND_MAX_IMPRESSIONS,
    LedgerModel,
    Refusal,
    Reservation,
)
from services.personalisation import decision_records
from services.personalisation.domain import arbitration as arb
from services.personalisation.domain import learning, policy
from services.personalisation.domain.arbitration import ProfileView
from services.personalisation.domain.catalogue import Catalogue, parse_catalogue
from services.personalisation.domain.learning import (
    ArmSpec,
    LearningConfigError,
    Model,
    Rewards,
    TrainingExample,
    load_learning,
)
from services.personalisation.domain.policy import PolicyKind
from services.personalisation.views import channel_value, features_struct
from tests.unit.test_arbitration import CATALOGUE

NOW_MS = int(time.time() * 1000)
VW_ARGS = load_learning().model.vw_args


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return parse_catalogue(tomllib.loads(CATALOGUE), "test.toml")


def person(**fields: object) -> ProfileView:
    base: dict[str, object] = {
        "consent.personalisation": True,
        "orders": 2,
        "open_complaints": 0,
        "value_tier": "gold",
        "csat_last": 2,
        "churn_band": "high",
    }
    base.update(fields)
    return ProfileView("p_1", base, frozenset({"vip", "app_user"}), NOW_MS)  # type: ignore[arg-type]


def request(device: str = "mobile") -> arb.DecisionRequest:
    return arb.DecisionRequest("web.home.hero", "web", NOW_MS, {"context.device": device})


# --- rewards and the learning file ---------------------------------------------------------


def test_a_decision_earns_its_best_outcome_and_no_outcome_earns_the_configured_zero() -> None:
    rewards = Rewards()
    assert rewards.settle([], 35.0) == 0.0
    assert rewards.settle(["impression"], 35.0) == 0.0
    assert rewards.settle(["impression", "click"], 35.0) == pytest.approx(0.1)
    assert rewards.settle(["click", "accept"], 35.0) == pytest.approx(0.7)
    assert rewards.settle(["dismiss"], 35.0) == 0.0
    assert Rewards(accept=1.0, no_outcome=-0.01).settle([], 35.0) == -0.01
    assert Rewards(accept=1.0).settle(["accept"], 35.0) == 1.0


def test_the_shipped_learning_file_loads_and_vw_takes_its_options() -> None:
    config = load_learning()
    assert config.rewards.click == 0.1
    assert config.rewards.accept == "value"
    assert config.window.settle_after_s > 0
    Model(config.model.vw_args).close()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[rewards]\nclick = 'lots'\n", "rewards.click"),
        ("[rewards]\nclik = 0.1\n", "rewards.clik"),
        ("[window]\nsettle_after_s = 0\n", "window.settle_after_s"),
        ("[checkpoint]\nevery_decisions = 0\n", "checkpoint.every_decisions"),
        ("[model]\nvw_args = '--no_such_option'\n", "model.vw_args"),
        ("[rewards\n", "learning.toml"),
    ],
)
def test_a_bad_learning_file_is_refused_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "learning.toml"
    path.write_text(text)
    with pytest.raises(LearningConfigError, match=named.replace(".", r"\.")):
        load_learning(path)


# --- features ------------------------------------------------------------------------------


def test_features_cover_profile_segments_and_request(catalogue: Catalogue) -> None:
    ranking = arb.rank(catalogue, request(), person(), identified=True, holdout=False)
    shared = learning.context_features(policy.learner_fields(ranking, request()))
    assert shared.startswith("shared |u ")
    for token in (
        "value_tier=gold",
        "churn_band=high",
        "csat_last=le2",
        "open_complaints=le0",
        "seg=vip",
        "seg=app_user",
        "placement=web.home.hero",
        "channel=web",
        "context.device=mobile",
        "daypart=",
    ):
        assert token in shared


@given(
    tier=st.sampled_from(["none", "bronze", "gold", "platinum with space"]),
    csat=st.one_of(st.none(), st.integers(1, 5)),
    complaints=st.integers(0, 3),
    hour_ms=st.integers(0, 86_400_000 * 7),
    device=st.sampled_from(["", "mobile", "desktop"]),
)
@settings(max_examples=60, deadline=None)
def test_a_logged_decision_rebuilds_the_features_the_model_saw(
    tier: str, csat: int | None, complaints: int, hour_ms: int, device: str
) -> None:
    catalogue = parse_catalogue(tomllib.loads(CATALOGUE), "test.toml")
    now = NOW_MS - hour_ms
    req = arb.DecisionRequest("web.home.hero", "web", now, {"context.device": device or None})
    view = person(value_tier=tier, csat_last=csat, open_complaints=complaints)
    ranking = arb.rank(catalogue, req, view, identified=True, holdout=False)
    live = learning.context_features(policy.learner_fields(ranking, req))
    record = pb.DecisionRecord(
        placement=req.placement,
        channel=channel_value(req.channel),
        context=pb.RequestContext(device=device),
        features=features_struct(ranking.features),
    )
    record.decided_at.FromMilliseconds(now)
    logged = pb.DecisionRecord.FromString(record.SerializeToString())
    assert learning.context_features(decision_records.decision_fields(logged)) == live


# --- sampling and probabilities ------------------------------------------------------------


def test_promoted_arms_always_come_first() -> None:
    pmf = [0.7, 0.1, 0.1, 0.1]
    promoted = [False, True, False, True]
    for i in range(200):
        ordered = learning.sample_order(pmf, promoted, f"d{i}")
        assert set(ordered.order[:2]) == {1, 3}
        assert sorted(ordered.order) == [0, 1, 2, 3]


def test_sampling_is_fixed_by_the_decision_id() -> None:
    pmf = [0.25, 0.25, 0.25, 0.25]
    promoted = [False] * 4
    first = learning.sample_order(pmf, promoted, "decision-1")
    assert learning.sample_order(pmf, promoted, "decision-1") == first
    orders = {learning.sample_order(pmf, promoted, f"d{i}").order for i in range(100)}
    assert len(orders) > 10


@pytest.mark.parametrize("refused", [set(), {"b"}, {"a", "c"}])
def test_the_first_allowed_arm_is_shown_as_often_as_its_probability_says(
    refused: set[str],
) -> None:
    arms = ("a", "b", "c", "d")
    pmf = [0.5, 0.3, 0.15, 0.05]
    promoted = [False] * 4
    shown: Counter[str] = Counter()
    claimed: dict[str, float] = {}
    n = 20_000
    for i in range(n):
        ordered = learning.sample_order(pmf, promoted, f"d{i}")
        first = next(arms[j] for j in ordered.order if arms[j] not in refused)
        shown[first] += 1
        (p,) = learning.slot_probabilities(ordered, arms, [first], refused)
        assert claimed.setdefault(first, p) == pytest.approx(p)
    assert sum(claimed.get(a, 0.0) for a in arms) == pytest.approx(1.0)
    for action_id, p in claimed.items():
        assert shown[action_id] / n == pytest.approx(p, abs=0.015)


def test_a_cap_reached_only_by_this_decisions_own_choice_does_not_count_as_unavailable() -> None:
    reservation = Reservation(
        ("gold",),
        (
            # One upsell shown before, cap 2: reached only because `gold` was just chosen.
            Refusal("silver", KIND_MAX_IMPRESSIONS, "", 2, 2, "upsell"),
            # Already at the cap before this decision.
            Refusal("bronze", KIND_MAX_IMPRESSIONS, "", 3, 2, "upsell"),
            # Another kind's cap: not this decision's doing.
            Refusal("socks", KIND_MAX_IMPRESSIONS, "", 2, 2, "cross_sell"),
            Refusal("mail", GLOBAL_MARKETING_PER_DAY, "", 3, 3, "cross_sell"),
        ),
    )
    assert learning.refused_before(reservation, [("upsell", True)]) == {"bronze", "socks"}
    # Without a marketing action chosen, the marketing cap was already reached.
    assert learning.refused_before(reservation, [("upsell", False)]) == {
        "bronze",
        "socks",
        "mail",
    }


# --- the policy step -----------------------------------------------------------------------


def trained_model(prefer: str, arms: tuple[ArmSpec, ...], shared: str) -> Model:
    model = Model(VW_ARGS, "m1-test")
    for i in range(300):
        chosen = i % len(arms)
        reward = 1.0 if arms[chosen].action_id == prefer else 0.0
        model.learn(TrainingExample(f"t{i}", shared, arms, chosen, 1.0 / len(arms), reward))
    return model


def test_deterministic_policies_pick_with_probability_one(catalogue: Catalogue) -> None:
    ledger = LedgerModel()
    for holdout, view, expected in (
        (False, person(), PolicyKind.STATIC),
        (True, person(), PolicyKind.CONTROL),
        (False, None, PolicyKind.GENERIC),
    ):
        ranking = arb.rank(catalogue, request(), view, identified=True, holdout=holdout)
        choice = policy.order(ranking, request(), None, "d1")
        assert choice.policy is expected
        assert choice.ranking == ranking
        reservation = ledger.reserve(
            f"p-{expected}", "d1", NOW_MS, arb.candidates(catalogue, ranking), 1, 3
        )
        decision = arb.finish(choice.ranking, reservation)
        unavailable = policy.unavailable(decision, reservation)
        assert set(policy.probabilities(choice, decision, unavailable).values()) == {1.0}


def test_a_learned_model_orders_by_what_it_learned_and_names_its_version(
    catalogue: Catalogue,
) -> None:
    ranking = arb.rank(catalogue, request(), person(), identified=True, holdout=False)
    fields = policy.learner_fields(ranking, request())
    arms = policy.arm_specs(ranking)
    assert [a.action_id for a in arms] == ["gold_upgrade", "socks"]
    model = trained_model("socks", arms, learning.context_features(fields))
    ledger = LedgerModel()
    firsts: Counter[str] = Counter()
    for i in range(200):
        choice = policy.order(ranking, request(), model, f"d{i}")
        assert choice.policy is PolicyKind.LEARNED
        assert choice.model_version == "m1-test"
        reservation = ledger.reserve(
            f"p{i}", f"d{i}", NOW_MS, arb.candidates(catalogue, choice.ranking), 1, 3
        )
        decision = arb.finish(choice.ranking, reservation)
        (shown,) = decision.chosen
        unavailable = policy.unavailable(decision, reservation)
        p = policy.probabilities(choice, decision, unavailable)[shown.action.action_id]
        assert 0 < p <= 1
        firsts[shown.action.action_id] += 1
    assert firsts["socks"] > 150


def test_the_learner_never_offers_what_a_rule_removed(catalogue: Catalogue) -> None:
    complainant = person(open_complaints=1)
    ranking = arb.rank(catalogue, request(), complainant, identified=True, holdout=False)
    fields = policy.learner_fields(ranking, request())
    # A model that loves the upsell still cannot show it during an open complaint.
    model = trained_model(
        "gold_upgrade",
        (ArmSpec("gold_upgrade", "upsell"), ArmSpec("apology", "service_recovery")),
        learning.context_features(fields),
    )
    for i in range(100):
        choice = policy.order(ranking, request(), model, f"d{i}")
        assert [s.action.action_id for s in choice.ranking.ranked] == ["apology"]
