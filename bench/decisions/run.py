"""The simulator's command: builds the world, runs the five policies (two at a time, each
in its own process), prints the figures and saves the learning curves."""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.decisions import population, report
from bench.decisions.simulate import POLICIES, Moment, Run, moments, simulate
from services.personalisation.domain.catalogue import Catalogue, load_catalogue
from services.personalisation.domain.learning import (
    DEFAULT_LEARNING_FILE,
    LearningConfig,
    ModelOptions,
    load_learning,
)

DECISIONS = 20_000
SEED = 7
RESULTS = Path(__file__).resolve().parent.parent / "results"
PNG = RESULTS / "decisions-learning-curves.png"
# The longest runs first, so two workers finish together.
ORDER = ("service", "plain_vw", "oracle", "static", "random")


@dataclass(frozen=True)
class Setup:
    moments: Sequence[Moment]
    catalogue: Catalogue
    config: LearningConfig
    seed: int


# Set before the workers fork: they read it, nothing is pickled but the results.
_SETUP: Setup | None = None


def _one(name: str) -> Run:
    assert _SETUP is not None
    return simulate(
        _SETUP.moments,
        name,
        _SETUP.catalogue,
        _SETUP.config,
        seed=_SETUP.seed,
        keep_log=name == "service",
    )


def simulate_all(
    world_moments: Sequence[Moment],
    seed: int = SEED,
    *,
    jobs: int = 2,
    config: LearningConfig | None = None,
    policies: Sequence[str] = POLICIES,
) -> dict[str, Run]:
    """Every policy's run over one world's moments; `jobs` > 1 runs them in worker
    processes."""
    global _SETUP
    _SETUP = Setup(world_moments, load_catalogue(), config or load_learning(), seed)
    names = [p for p in ORDER if p in policies]
    try:
        if jobs <= 1:
            results = [_one(name) for name in names]
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                results = list(pool.map(_one, names))
    finally:
        _SETUP = None
    by_name = dict(zip(names, results, strict=True))
    return {name: by_name[name] for name in POLICIES if name in by_name}


def run(
    decisions: int = DECISIONS,
    seed: int = SEED,
    jobs: int = 2,
    vw_args: str | None = None,
    png: Path = PNG,
) -> dict[str, Run]:
    started = time.perf_counter()
    console = Console()
    if not console.is_terminal:
        # make bench's output is a pipe: wide enough for the table on one line per row.
        console = Console(width=150)
    config = load_learning()
    if vw_args is not None:
        config = config.model_copy(update={"model": ModelOptions(vw_args=vw_args)})
    console.print(
        f"\n== Customer simulator (bench/decisions): {decisions:,} decisions per policy, "
        f"seed {seed}\nlearning file {DEFAULT_LEARNING_FILE.name}"
        f"{' (vw_args overridden)' if vw_args is not None else ''}: vw_args "
        f"{config.model.vw_args!r}, checkpoint every {config.checkpoint.every_decisions} "
        f"trained decisions, settle after {config.window.settle_after_s:g} s"
    )
    world = population.build(seed, decisions)
    world_moments = moments(world)
    console.print(report.world_summary(world, world_moments))
    runs = simulate_all(world_moments, seed, jobs=jobs, config=config)
    console.print(report.table(runs))
    service = runs["service"]
    n = len(service.rewards) or 1
    console.print(
        f"contact policy (this service's run): the ledger refused an eligible action in "
        f"{service.capped / n:.1%} of decisions and every one in {service.starved / n:.1%} "
        f"(nothing shown); nothing was eligible in {service.nothing_eligible / n:.1%}"
    )
    console.print(
        f"learners: this service trained {service.trained:,} decisions into "
        f"{service.checkpoints} checkpoints; plain VW {runs['plain_vw'].trained:,} into "
        f"{runs['plain_vw'].checkpoints}"
    )
    console.print("\n[bold]Goals[/bold] (issue 11)")
    for text, met, detail in report.goals(runs):
        console.print(f"  {'MET    ' if met else 'NOT MET'}  {text}: {detail}")
    check = report.off_policy_check(service, runs["static"])
    inside = report.print_check(console, check)
    console.print(
        f"  {'MET    ' if inside else 'NOT MET'}  the estimate of the static rules lands "
        "within its 95 % intervals (IPS and SNIPS) of their true expected reward"
    )
    report.print_speed(runs)
    path = report.plot(runs, png)
    console.print(f"\nlearning curves: {path}")
    console.print(f"simulator wall time: {time.perf_counter() - started:.1f} s ({jobs} processes)")
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=DECISIONS, help="decisions per policy")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--vw-args", default=None, help="try other [model] vw_args than the learning file's"
    )
    parser.add_argument("--png", type=Path, default=PNG)
    args = parser.parse_args(argv)
    run(args.decisions, args.seed, args.jobs, args.vw_args, args.png)
