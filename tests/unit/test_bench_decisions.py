"""The customer simulator (bench/decisions) on a small world: its structure, not its
figures or speed. The service's policy never sells during an open complaint, the oracle
earns at least what every other policy does, the learned policies really learn and log,
and a run is the same under the same seed."""

from __future__ import annotations

import pytest
from cx.personalisation.v1 import personalisation_pb2 as pb

from bench.decisions import population, report
from bench.decisions.run import simulate_all
from bench.decisions.simulate import POLICIES, Moment, Run, moments, simulate
from services.personalisation.domain.catalogue import load_catalogue
from services.personalisation.domain.learning import load_learning

DECISIONS = 2_000
SEED = 11


@pytest.fixture(scope="module")
def world_moments() -> list[Moment]:
    return moments(population.build(SEED, DECISIONS))


@pytest.fixture(scope="module")
def runs(world_moments: list[Moment]) -> dict[str, Run]:
    return simulate_all(world_moments, SEED, jobs=1)


def test_the_world_has_open_complaints_where_selling_was_possible(
    world_moments: list[Moment], runs: dict[str, Run]
) -> None:
    assert sum(1 for m in world_moments if "complaint" in m.trouble) > 20
    # Without the experience rules, the bandit does show selling during complaints.
    plain = runs["plain_vw"]
    assert plain.upsells_in_complaint + plain.cross_sells_in_complaint > 0


def test_the_service_never_sells_during_an_open_complaint(runs: dict[str, Run]) -> None:
    for name in ("service", "static", "random", "oracle"):
        assert runs[name].upsells_in_complaint == 0, name
        assert runs[name].cross_sells_in_complaint == 0, name
        assert runs[name].selling_in_trouble == 0, name


def test_the_oracle_earns_at_least_every_other_policy(runs: dict[str, Run]) -> None:
    best = sum(runs["oracle"].expected)
    for name in POLICIES:
        assert sum(runs[name].expected) <= best, name
    assert sum(runs["random"].expected) < sum(runs["static"].expected)


def test_the_learned_policies_train_checkpoint_and_log(runs: dict[str, Run]) -> None:
    service = runs["service"]
    assert service.checkpoints >= 5
    assert len(service.records) == DECISIONS
    policies = {pb.DecisionRecord.FromString(raw).policy for raw in service.records}
    assert policies == {pb.DECISION_POLICY_STATIC, pb.DECISION_POLICY_LEARNED}
    # The off-policy check runs on the service's log.
    check = report.off_policy_check(service, runs["static"])
    assert check.estimate.ips is not None
    assert 0 < check.exact < 1


def test_a_run_is_the_same_under_the_same_seed(runs: dict[str, Run]) -> None:
    again = simulate(
        moments(population.build(SEED, DECISIONS)),
        "service",
        load_catalogue(),
        load_learning(),
        seed=SEED,
        keep_log=True,
    )
    first = runs["service"]
    assert again.rewards == first.rewards
    assert again.expected == first.expected
    assert again.records == first.records
