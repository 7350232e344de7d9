"""Evidence from the decision log without a broker: settling a decision, the off-policy
estimators (IPS and SNIPS on synthetic logs with known propensities and known true
values), the target policies replayed on logged decisions, and treatment against the
holdout with its intervals."""

from __future__ import annotations

import math
import random
import time
import tomllib
from collections.abc import Sequence

import pytest
from cx.personalisation.v1 import personalisation_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from services.personalisation.decision_records import arms, decision_fields
from services.personalisation.domain import arbitration as arb
from services.personalisation.domain import evaluation as ev
from services.personalisation.domain.arbitration import ProfileView
from services.personalisation.domain.catalogue import Catalogue, parse_catalogue
from services.personalisation.domain.evaluation import Logged, Sample
from services.personalisation.domain.learning import (
    LearningConfig,
    Model,
    TrainingExample,
    context_features,
    load_learning,
)
from services.personalisation.views import (
    BASES,
    channel_value,
    features_struct,
    ranked_action,
)
from tests.unit.test_arbitration import CATALOGUE

NOW_MS = int(time.time() * 1000)
HOUR_MS = 3_600_000
CONFIG = LearningConfig()  # click 0.1, accept value / 50, window 1800 s


# --- logged decisions --------------------------------------------------------------------


def ranked(
    action_id: str,
    *,
    priority: float = 1.0,
    value: float = 10.0,
    lever: float = 1.0,
    promoted: bool = False,
    kind: str = "cross_sell",
    probability: float = 1.0,
) -> pb.RankedAction:
    return pb.RankedAction(
        action_id=action_id,
        kind=kind,
        score=pb.ScoreParts(priority=priority, business_value=value, lever=lever),
        promoted=promoted,
        probability=probability,
    )


def record(
    actions: Sequence[pb.RankedAction],
    chosen: str | None,
    probability: float = 1.0,
    *,
    decision_id: str = "d1",
    unavailable: Sequence[str] = (),
    group: pb.Group.ValueType = pb.GROUP_TREATMENT,
    basis: pb.Basis.ValueType = pb.BASIS_PROFILE,
    placement: str = "web.home.hero",
    decided_ms: int = NOW_MS - HOUR_MS,
) -> pb.DecisionRecord:
    out = pb.DecisionRecord(
        decision_id=decision_id,
        profile_id="p1",
        placement=placement,
        group=group,
        basis=basis,
        ranked=list(actions),
        unavailable=list(unavailable),
    )
    if chosen is not None:
        first = next(a for a in actions if a.action_id == chosen)
        shown = out.chosen.add()
        shown.CopyFrom(first)
        shown.probability = probability
        shown.rank = 1
    out.decided_at.FromMilliseconds(decided_ms)
    return out


# --- settling ----------------------------------------------------------------------------


def test_an_accept_settles_at_once_with_the_actions_value() -> None:
    r = record([ranked("a", value=35.0)], "a", decided_ms=NOW_MS - 60_000)
    at = NOW_MS - 50_000
    assert ev.settle(r, [(at, "impression"), (at + 1, "accept")], CONFIG, NOW_MS) == 0.7


def test_no_outcome_within_the_window_is_reward_zero_once_the_window_ended() -> None:
    r = record([ranked("a")], "a", decided_ms=NOW_MS - 31 * 60_000)
    assert ev.settle(r, [], CONFIG, NOW_MS) == 0.0
    click = [(NOW_MS - 30 * 60_000, "click")]
    assert ev.settle(r, click, CONFIG, NOW_MS) == pytest.approx(0.1)


def test_a_decision_within_its_window_without_accept_or_dismiss_is_not_settled() -> None:
    r = record([ranked("a")], "a", decided_ms=NOW_MS - 60_000)
    assert ev.settle(r, [], CONFIG, NOW_MS) is None
    assert ev.settle(r, [(NOW_MS - 1000, "click")], CONFIG, NOW_MS) is None
    assert ev.settle(r, [(NOW_MS - 1000, "dismiss")], CONFIG, NOW_MS) == 0.0


def test_outcomes_after_the_window_or_after_a_final_outcome_do_not_count() -> None:
    decided = NOW_MS - 2 * HOUR_MS
    r = record([ranked("a", value=50.0)], "a", decided_ms=decided)
    late_accept = [(decided + 31 * 60_000, "accept")]
    assert ev.settle(r, late_accept, CONFIG, NOW_MS) == 0.0
    accept_after_dismiss = [(decided + 2000, "accept"), (decided + 1000, "dismiss")]
    assert ev.settle(r, accept_after_dismiss, CONFIG, NOW_MS) == 0.0


def test_a_decision_that_showed_nothing_is_settled_with_no_outcome() -> None:
    r = record([ranked("a")], None, decided_ms=NOW_MS)
    assert ev.settle(r, [], CONFIG, NOW_MS) == CONFIG.rewards.no_outcome


# --- the estimators on synthetic logs ------------------------------------------------------

ARMS = ("a", "b", "c")
# Each arm's true chance of a reward of 1 (the same for every person).
RATES = {"a": 0.2, "b": 0.5, "c": 0.3}
# Priorities that make the static rules pick "a".
PRIORITIES = {"a": 3.0, "b": 2.0, "c": 1.0}
STOCHASTIC = {"a": 0.5, "b": 0.25, "c": 0.25}


def uniform_log(n: int, seed: int) -> list[Logged]:
    """Decisions logged by a uniformly random policy over three arms (probability 1/3)."""
    rng = random.Random(seed)
    actions = [ranked(a, priority=PRIORITIES[a]) for a in ARMS]
    out = []
    for i in range(n):
        shown = rng.choice(ARMS)
        reward = 1.0 if rng.random() < RATES[shown] else 0.0
        out.append(Logged(record(actions, shown, 1 / 3, decision_id=f"d{i}"), reward))
    return out


def truth(policy: dict[str, float]) -> float:
    return sum(p * RATES[a] for a, p in policy.items())


def assert_recovers(estimate: ev.Estimate | None, true_value: float) -> None:
    """Within three standard errors of the truth, with a narrow 95 % interval. (The 95 %
    interval itself misses the truth in 1 log of 20 by design: the next test checks
    that rate.)"""
    assert estimate is not None
    assert abs(estimate.value - true_value) <= 3 * estimate.stderr, estimate
    assert estimate.high - estimate.low < 0.03, estimate


def test_ips_and_snips_recover_a_deterministic_targets_known_value() -> None:
    log = uniform_log(30_000, seed=1)
    result = ev.off_policy(log, ev.static_target)
    assert result.n == 30_000
    assert result.matched == pytest.approx(10_000, rel=0.05)
    assert_recovers(result.ips, RATES["a"])
    assert_recovers(result.snips, RATES["a"])
    # Every matched decision weighs 3: the effective size is the number matched.
    assert result.effective_sample_size == pytest.approx(result.matched)


def test_ips_and_snips_recover_a_stochastic_targets_known_value() -> None:
    log = uniform_log(30_000, seed=2)
    result = ev.off_policy(log, lambda _: STOCHASTIC)
    assert result.matched == 30_000
    assert_recovers(result.ips, truth(STOCHASTIC))
    assert_recovers(result.snips, truth(STOCHASTIC))


def test_the_intervals_cover_the_truth_about_95_times_in_100() -> None:
    reps, n = 400, 400
    covered = {"ips": 0, "snips": 0}
    for seed in range(reps):
        rng = random.Random(seed)
        samples = []
        for _ in range(n):
            shown = rng.choice(ARMS)
            reward = 1.0 if rng.random() < RATES[shown] else 0.0
            samples.append(Sample(1 / 3, reward, STOCHASTIC[shown]))
        result = ev.estimate(samples)
        assert result.ips is not None
        assert result.snips is not None
        covered["ips"] += result.ips.covers(truth(STOCHASTIC))
        covered["snips"] += result.snips.covers(truth(STOCHASTIC))
    for rate in covered.values():
        # 95 % nominal; with 400 logs the rate is within about 2 points of it.
        assert 0.91 <= rate / reps <= 0.98, covered


def test_ips_by_hand() -> None:
    samples = [Sample(0.5, 1.0, 1.0), Sample(0.25, 0.0, 1.0), Sample(1.0, 1.0, 0.0)]
    # w r = 2, 0, 0: mean 2/3, sample variance ((4/3)^2 + 2 (2/3)^2) / 2 = 4/3.
    result = ev.ips(samples)
    assert result is not None
    assert result.value == pytest.approx(2 / 3)
    assert result.stderr == pytest.approx(math.sqrt(4 / 3 / 3))
    assert result.low == pytest.approx(2 / 3 - 1.959964 * math.sqrt(4 / 9))
    # SNIPS: sum w r / sum w = 2 / 6; delta method: w (r - V) = 4/3, -4/3, 0.
    snips = ev.snips(samples)
    assert snips is not None
    assert snips.value == pytest.approx(1 / 3)
    assert snips.stderr == pytest.approx(math.sqrt(3 / 2 * 32 / 9) / 6)


rewards_and_propensities = st.lists(
    st.tuples(
        st.floats(min_value=0.01, max_value=1.0),
        st.floats(min_value=0.0, max_value=5.0),
    ),
    min_size=2,
    max_size=50,
)


@given(rewards_and_propensities)
def test_the_logging_policy_evaluated_on_its_own_log_gives_back_the_logged_mean(
    logged: list[tuple[float, float]],
) -> None:
    samples = [Sample(p, r, p) for p, r in logged]
    result = ev.estimate(samples)
    mean = sum(r for _, r in logged) / len(logged)
    assert result.ips is not None
    assert result.snips is not None
    assert result.logged is not None
    assert result.ips.value == pytest.approx(mean)
    assert result.snips.value == pytest.approx(mean)
    assert result.logged.value == pytest.approx(mean)
    assert result.effective_sample_size == pytest.approx(len(logged))


@given(rewards_and_propensities)
def test_snips_lies_within_the_rewards_it_weighs(logged: list[tuple[float, float]]) -> None:
    samples = [Sample(p, r, 1.0 if i % 2 else 0.3) for i, (p, r) in enumerate(logged)]
    snips = ev.snips(samples)
    assert snips is not None
    rewards = [r for _, r in logged]
    assert min(rewards) - 1e-9 <= snips.value <= max(rewards) + 1e-9


def test_the_logged_target_on_a_real_shaped_log_is_the_logged_mean() -> None:
    log = uniform_log(1000, seed=3)
    result = ev.off_policy(log, ev.logged_target)
    mean = sum(d.reward for d in log) / len(log)
    assert result.snips is not None
    assert result.ips is not None
    assert result.snips.value == pytest.approx(mean)
    assert result.ips.value == pytest.approx(mean)


def test_a_target_that_matches_nothing_has_no_snips_and_says_why() -> None:
    log = uniform_log(100, seed=4)
    result = ev.off_policy(log, lambda _: "nowhere")
    assert result.matched == 0
    assert result.snips is None
    assert result.ips is not None
    assert result.ips.value == 0.0
    assert "matches none" in result.note


def test_too_few_decisions_is_not_enough_data() -> None:
    result = ev.off_policy(uniform_log(1, seed=5), ev.static_target)
    assert result.ips is None
    assert result.snips is None
    assert "not enough data" in result.note


def test_only_treatment_decisions_with_a_profile_and_an_action_are_evaluated() -> None:
    actions = [ranked("a"), ranked("b")]
    log = [
        Logged(record(actions, "a"), 1.0),
        Logged(record(actions, "a", group=pb.GROUP_HOLDOUT), 1.0),
        Logged(record(actions, "a", basis=pb.BASIS_ANONYMOUS), 1.0),
        Logged(record(actions, None), 0.0),
        Logged(record(actions, "b", decision_id="d2"), 0.0),
    ]
    result = ev.off_policy(log, ev.logged_target)
    assert result.n == 2


def test_a_deterministic_log_says_the_estimates_rest_on_the_matched_decisions() -> None:
    actions = [ranked("a", priority=2), ranked("b", priority=1)]
    log = [Logged(record(actions, "a"), 1.0), Logged(record(actions, "b"), 0.0)] * 5
    result = ev.off_policy(log, ev.static_target)
    assert result.matched == 5
    assert "deterministic" in result.note


# --- the target policies -----------------------------------------------------------------


def test_static_picks_promoted_first_then_priority_then_id_never_an_unavailable_one() -> None:
    actions = [
        ranked("upsell", priority=9.0),
        ranked("survey", priority=0.5, promoted=True),
        ranked("apology", priority=1.0, promoted=True),
        ranked("socks", priority=2.0),
        ranked("hats", priority=2.0),
    ]
    assert ev.static_target(record(actions, "upsell")) == "apology"
    assert ev.static_target(record(actions, "upsell", unavailable=["apology"])) == "survey"
    gone = ["apology", "survey", "upsell"]
    assert ev.static_target(record(actions, "upsell", unavailable=gone)) == "hats"
    assert ev.static_target(record(actions, None, unavailable=[*gone, "socks", "hats"])) is None


def test_control_ranks_by_value_times_lever() -> None:
    actions = [
        ranked("upsell", priority=9.0, value=10.0, lever=1.0),
        ranked("socks", priority=1.0, value=5.0, lever=3.0),
    ]
    assert ev.control_target(record(actions, "upsell")) == "socks"
    assert ev.control_target(record(actions, "upsell", unavailable=["socks"])) == "upsell"


def test_a_candidate_model_picks_its_best_allowed_arm_promoted_first() -> None:
    actions = [ranked("a", kind="upsell"), ranked("b", kind="cross_sell"), ranked("c")]
    base = record(actions, "a", 1 / 3)
    model = Model(load_learning().model.vw_args)
    shared = context_features(decision_fields(base))
    specs = arms(base)
    rng = random.Random(6)
    for i in range(600):
        shown = rng.randrange(3)
        reward = 1.0 if specs[shown].action_id == "b" else 0.0
        model.learn(TrainingExample(f"t{i}", shared, specs, shown, 1 / 3, reward))
    candidate = Model("", "candidate", model.to_bytes())
    target = ev.model_target(candidate)
    assert target(base) == "b"
    assert target(record(actions, "a", unavailable=["b"])) in {"a", "c"}
    promoted = [ranked("a", kind="upsell"), ranked("b"), ranked("c", promoted=True)]
    assert target(record(promoted, "a")) == "c"
    assert ev.model_target(candidate)(record([], None)) is None


# --- a candidate catalogue, replayed -------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return parse_catalogue(tomllib.loads(CATALOGUE), "test.toml")


def logged_decision(
    catalogue: Catalogue,
    profile: ProfileView,
    device: str,
    unavailable: Sequence[str] = (),
) -> pb.DecisionRecord:
    """A decision as the Decide server logs it under the static rules."""
    request = arb.DecisionRequest("web.home.hero", "web", NOW_MS, {"context.device": device})
    ranking = arb.rank(catalogue, request, profile, identified=True, holdout=False)
    out = pb.DecisionRecord(
        decision_id="d1",
        profile_id=profile.profile_id,
        placement="web.home.hero",
        channel=channel_value("web"),
        context=pb.RequestContext(device=device),
        features=features_struct(ranking.features),
        ranked=[
            ranked_action(s, i, profile.profile_id, "web.home.hero")
            for i, s in enumerate(ranking.ranked, start=1)
        ],
        group=pb.GROUP_TREATMENT,
        basis=BASES[ranking.basis],
        unavailable=list(unavailable),
        max_actions=1,
    )
    out.decided_at.FromMilliseconds(NOW_MS)
    return pb.DecisionRecord.FromString(out.SerializeToString())


@settings(max_examples=60, deadline=None)
@given(
    orders=st.integers(min_value=0, max_value=4),
    complaints=st.integers(min_value=0, max_value=1),
    vip=st.booleans(),
    device=st.sampled_from(["mobile", "desktop"]),
    unavailable=st.sets(st.sampled_from(["gold_upgrade", "socks", "apology"])),
)
def test_the_catalogue_in_use_replayed_on_its_own_log_decides_as_the_static_rules(
    catalogue: Catalogue,
    orders: int,
    complaints: int,
    vip: bool,
    device: str,
    unavailable: set[str],
) -> None:
    profile = ProfileView(
        "p1",
        {"consent.personalisation": True, "orders": orders, "open_complaints": complaints},
        frozenset({"vip"} if vip else set()),
    )
    logged = logged_decision(catalogue, profile, device, sorted(unavailable))
    assert ev.catalogue_target(catalogue)(logged) == ev.static_target(logged)


def test_a_candidate_catalogue_changes_the_choice(catalogue: Catalogue) -> None:
    profile = ProfileView(
        "p1", {"consent.personalisation": True, "orders": 2, "open_complaints": 0}, frozenset()
    )
    logged = logged_decision(catalogue, profile, "desktop")
    assert ev.static_target(logged) == "gold_upgrade"
    doc = tomllib.loads(CATALOGUE)
    socks = next(a for a in doc["action"] if a["id"] == "socks")
    socks["lever"] = 100.0
    candidate = parse_catalogue(doc, "candidate.toml")
    assert ev.catalogue_target(candidate)(logged) == "socks"


# --- treatment against the holdout ---------------------------------------------------------


def test_difference_and_lift_intervals_by_hand() -> None:
    treatment = [1.0, 0.0, 1.0, 1.0]  # mean 3/4, variance 1/4
    holdout = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]  # mean 1/3, variance 4/15
    row = ev.compare("web.home.hero", treatment, holdout)
    assert (row.treatment.n, row.holdout.n) == (4, 6)
    assert row.treatment.mean == pytest.approx(0.75)
    assert row.holdout.mean == pytest.approx(1 / 3)
    var_t, var_h = 0.25 / 4, (4 / 15) / 6
    se = math.sqrt(var_t + var_h)
    df = (var_t + var_h) ** 2 / (var_t**2 / 3 + var_h**2 / 5)
    assert df == pytest.approx(6.739, abs=1e-3)
    t = ev.t_quantile(0.975, df)
    assert 2.36 < t < 2.40  # between the table's 2.365 (7 df) and 2.447 (6 df), nearer 7
    assert row.difference is not None
    assert row.difference.value == pytest.approx(5 / 12)
    assert row.difference.low == pytest.approx(5 / 12 - t * se)
    assert row.difference.high == pytest.approx(5 / 12 + t * se)
    # Lift T / H - 1 = 1.25; its delta-method se^2 = var_t / H^2 + T^2 var_h / H^4 =
    # 0.5625 + 2.025. The interval is log(T / H) = log(2.25) = 0.81093 with se^2 =
    # var_t / T^2 + var_h / H^2 = 0.11111 + 0.4, exponentiated: exp(0.81093 -+ 1.96 x
    # 0.71492) - 1 = -0.4458 .. 8.1353.
    assert row.lift is not None
    assert row.lift.value == pytest.approx(1.25)
    assert row.lift.stderr == pytest.approx(math.sqrt(2.5875))
    log_se = math.sqrt(0.0625 / 0.75**2 + var_h / (1 / 3) ** 2)
    assert log_se == pytest.approx(0.71492, abs=1e-5)
    assert row.lift.low == pytest.approx(math.exp(math.log(2.25) - 1.959964 * log_se) - 1)
    assert row.lift.high == pytest.approx(math.exp(math.log(2.25) + 1.959964 * log_se) - 1)
    assert row.lift.low == pytest.approx(-0.4458, abs=1e-4)
    assert row.lift.high == pytest.approx(8.1353, abs=1e-4)


def test_a_lift_interval_never_goes_below_minus_100_percent() -> None:
    # A small, noisy holdout: the symmetric delta-method interval would reach below -100 %.
    row = ev.compare("all", [0.5] * 10 + [0.0] * 30, [0.5] * 3 + [0.0] * 27)
    assert row.lift is not None
    assert row.lift.value - 1.96 * row.lift.stderr < -1
    assert -1 < row.lift.low < row.lift.value < row.lift.high
    # Treatment that earned nothing: -100 %, the interval cut there.
    zero = ev.compare("all", [0.0] * 10, [0.5] * 3 + [0.0] * 27)
    assert zero.lift is not None
    assert zero.lift.value == -1.0
    assert zero.lift.low == -1.0


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 5, 2.571),
        (0.975, 30, 2.042),
        (0.95, 10, 1.812),
        (0.9995, 1, 636.619),
        (0.999, 3, 10.215),
    ],
)
def test_t_quantiles_match_the_tables(p: float, df: float, table: float) -> None:
    assert ev.t_quantile(p, df) == pytest.approx(table, abs=1e-3)


def test_a_group_under_two_decisions_is_not_enough_data() -> None:
    row = ev.compare("x", [1.0, 0.0, 1.0], [1.0])
    assert row.difference is None
    assert row.lift is None
    assert row.note == "not enough data: holdout under 2 decisions"
    empty = ev.compare("x", [], [])
    assert empty.note == "not enough data: treatment and holdout under 2 decisions"


def test_a_holdout_that_earned_nothing_has_a_difference_but_no_lift() -> None:
    row = ev.compare("x", [1.0, 0.0], [0.0, 0.0])
    assert row.difference is not None
    assert row.difference.value == 0.5
    assert row.lift is None
    assert "earned nothing" in row.note


def test_equal_constant_groups_have_a_zero_width_interval() -> None:
    row = ev.compare("x", [0.1, 0.1], [0.1, 0.1, 0.1])
    assert row.difference is not None
    assert (row.difference.low, row.difference.high) == pytest.approx((0.0, 0.0))


def test_the_report_has_a_row_a_placement_and_one_for_all_with_profiles_only() -> None:
    actions = [ranked("a")]

    def logged(
        placement: str,
        group: pb.Group.ValueType,
        reward: float,
        basis: pb.Basis.ValueType = pb.BASIS_PROFILE,
    ) -> Logged:
        return Logged(record(actions, "a", group=group, placement=placement, basis=basis), reward)

    T, H = pb.GROUP_TREATMENT, pb.GROUP_HOLDOUT
    log = [
        logged("web.home.hero", T, 1.0),
        logged("web.home.hero", T, 0.0),
        logged("web.home.hero", H, 0.0),
        logged("web.home.hero", H, 0.5),
        logged("app.home.banner", T, 0.2),
        logged("app.home.banner", H, 0.1),
        logged("web.home.hero", T, 9.0, basis=pb.BASIS_ANONYMOUS),
        Logged(record(actions, None, placement="web.home.hero"), 0.0),  # showed nothing
    ]
    rows = ev.report(log)
    assert [r.placement for r in rows] == ["app.home.banner", "web.home.hero", "all"]
    hero = rows[1]
    assert (hero.treatment.n, hero.holdout.n) == (3, 2)
    assert hero.treatment.mean == pytest.approx(1 / 3)
    assert hero.holdout.mean == pytest.approx(0.25)
    assert rows[0].note.startswith("not enough data")
    everything = rows[2]
    assert (everything.treatment.n, everything.holdout.n) == (4, 3)
    assert everything.treatment.total == pytest.approx(1.2)
    assert everything.as_dict()["treatment"]["reward_rate"] == pytest.approx(0.3)
