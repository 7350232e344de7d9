"""The simulator's figures: the policies' table, the goals met or not, the off-policy
check of `cx nba evaluate`'s estimator, the decision path's speed and the learning curves
(PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cx.personalisation.v1 import personalisation_pb2 as pb
from rich.console import Console
from rich.table import Table

from bench.decisions.population import HORIZON_DAYS, World
from bench.decisions.simulate import POLICIES, Moment, Run
from bench.stats import Figures, print_table
from services.personalisation.domain import evaluation
from services.personalisation.domain.evaluation import Logged, OffPolicy

LABELS = {
    "random": "random eligible",
    "static": "static rules (PxCxVxL)",
    "plain_vw": "plain VW, no experience rules",
    "service": "this service (rules + VW)",
    "oracle": "oracle (true odds, same rules)",
}
TROUBLES = (
    "complaint",
    "detractor",
    "payment_failure",
    "late_delivery",
    "repeat_contact",
    "incident",
)
LAST = 5_000
ORACLE_SHARE_GOAL = 0.90
ROLLING = 1_000


@dataclass(frozen=True)
class Check:
    """`cx nba evaluate`'s estimate of the static rules from the service's own log."""

    estimate: OffPolicy
    # The static rules' exact expected reward on the evaluated logged decisions (the
    # estimand), and the static run's own mean reward per decision that showed an action.
    exact: float
    static_run: float


def world_summary(world: World, moments: Sequence[Moment]) -> str:
    """People, requests, and the share of requests made during each negative experience."""
    n = len(moments) or 1
    counts = Counter(t for m in moments for t in m.trouble)
    troubled = sum(1 for m in moments if m.trouble)
    parts = ", ".join(f"{name.replace('_', ' ')} {counts[name] / n:.1%}" for name in TROUBLES)
    return (
        f"{len(world.people):,} people, {len(moments):,} requests over {HORIZON_DAYS} days; "
        f"{troubled / n:.1%} of requests during a negative experience ({parts})"
    )


def tail(values: Sequence[float], last: int = LAST) -> Sequence[float]:
    return values[-last:] if len(values) > last else values


def share(run: Run, oracle: Run, *, expected: bool = False, last: int = LAST) -> float:
    mine = sum(tail(run.expected if expected else run.rewards, last))
    best = sum(tail(oracle.expected if expected else oracle.rewards, last))
    return mine / best if best else 0.0


def off_policy_check(service: Run, static: Run) -> Check:
    """IPS and SNIPS of the static target on the service's log (its records with their
    settled rewards), against the static rules' exact expected reward on the same
    evaluated decisions."""
    logged: list[Logged] = []
    exact: list[float] = []
    for raw, reward, static_value in zip(
        service.records, service.record_rewards, service.static_on_log, strict=True
    ):
        record = pb.DecisionRecord.FromString(raw)
        decision = Logged(record, reward)
        logged.append(decision)
        if evaluation.evaluated(decision):
            exact.append(static_value)
    estimate = evaluation.off_policy(logged, evaluation.TARGETS["static"])
    # Per decision that showed an action, as the estimator counts them.
    static_mean = sum(static.rewards) / max(static.shown, 1)
    return Check(estimate, sum(exact) / max(len(exact), 1), static_mean)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _ms(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def table(runs: Mapping[str, Run], last: int = LAST) -> Table:
    oracle = runs["oracle"]
    out = Table(title=f"Decisions: {len(oracle.rewards):,} per policy (same people, same requests)")
    out.add_column("policy")
    out.add_column("cumulative\nreward", justify="right")
    out.add_column("reward /\ndecision", justify="right")
    out.add_column(f"last {last:,}:\nreward / decision", justify="right")
    out.add_column(f"last {last:,}:\n% of oracle", justify="right")
    out.add_column(f"last {last:,}: % of\noracle (expected)", justify="right")
    out.add_column("upsells / cross-sells\nin open complaint", justify="right")
    out.add_column("selling in a negative\nexperience (any)", justify="right")
    out.add_column("decision path\ndecisions/s", justify="right")
    for name in POLICIES:
        run = runs.get(name)
        if run is None:
            continue
        n = len(run.rewards)
        recent = tail(run.rewards, last)
        path = sum(run.path_s)
        out.add_row(
            LABELS[name],
            f"{sum(run.rewards):,.1f}",
            f"{sum(run.rewards) / n:.4f}",
            f"{sum(recent) / len(recent):.4f}",
            _pct(share(run, oracle, last=last)),
            _pct(share(run, oracle, expected=True, last=last)),
            f"{run.upsells_in_complaint} / {run.cross_sells_in_complaint}",
            str(run.selling_in_trouble),
            f"{n / path:,.0f}" if path else "-",
        )
    return out


def goals(runs: Mapping[str, Run], last: int = LAST) -> list[tuple[str, bool, str]]:
    service, oracle, plain = runs["service"], runs["oracle"], runs["plain_vw"]
    got = share(service, oracle, last=last)
    expected = share(service, oracle, expected=True, last=last)
    above = sum(service.rewards) > sum(plain.rewards)
    above_last = sum(tail(service.rewards, last)) > sum(tail(plain.rewards, last))
    selling = service.upsells_in_complaint + service.cross_sells_in_complaint
    return [
        (
            f">= {ORACLE_SHARE_GOAL:.0%} of the oracle's reward over the last {last:,} decisions",
            got >= ORACLE_SHARE_GOAL,
            f"{got:.1%} (on expected reward {expected:.1%}; static rules alone "
            f"{share(runs['static'], oracle, last=last):.1%})",
        ),
        (
            "above plain VW without the experience rules",
            above,
            f"cumulative {sum(service.rewards):,.1f} vs {sum(plain.rewards):,.1f}; last "
            f"{last:,}: {sum(tail(service.rewards, last)):,.1f} vs "
            f"{sum(tail(plain.rewards, last)):,.1f} ({'above' if above_last else 'not above'})",
        ),
        (
            "0 upsells (or cross-sells) shown during an open complaint",
            selling == 0,
            f"{service.upsells_in_complaint} upsells, {service.cross_sells_in_complaint} "
            f"cross-sells (plain VW: {plain.upsells_in_complaint} upsells, "
            f"{plain.cross_sells_in_complaint} cross-sells)",
        ),
    ]


def print_check(console: Console, check: Check) -> bool:
    """Prints the off-policy check; whether the estimand lies in both intervals."""
    e = check.estimate
    console.print(
        f"\n[bold]cx nba evaluate's estimator[/bold], target 'static', on this service's "
        f"log: {e.n:,} decisions, {e.matched:,} where the log showed what the static rules "
        f"would, effective sample size {e.effective_sample_size:,.0f}"
    )
    ok = True
    for name, est in (("IPS", e.ips), ("SNIPS", e.snips)):
        if est is None:
            console.print(f"  {name}: no estimate ({e.note})")
            ok = False
            continue
        inside = est.covers(check.exact)
        ok = ok and inside
        console.print(
            f"  {name:5} {est.value:.4f}  95 % CI [{est.low:.4f}, {est.high:.4f}]  "
            f"static rules' exact expected reward on these decisions {check.exact:.4f}: "
            f"{'inside' if inside else 'OUTSIDE'}; the static run's own mean "
            f"{check.static_run:.4f}: "
            f"{'inside' if est.covers(check.static_run) else 'outside'}"
        )
    if e.logged is not None:
        console.print(f"  the service's own mean reward on them: {e.logged.value:.4f}")
    if e.note:
        console.print(f"  note: {e.note}")
    return ok


def speed(runs: Mapping[str, Run]) -> list[Figures]:
    return [
        Figures(LABELS[name], len(run.path_s), sum(run.path_s), run.path_s)
        for name, run in runs.items()
    ]


def print_speed(runs: Mapping[str, Run]) -> None:
    rows = speed(runs)
    # Two policies run at a time, one per worker process, on cores shared with whatever
    # else runs on the machine: the tails (p99) carry that.
    print_table(
        "decision path, in process (rank -> order -> ledger -> finish -> probabilities)", rows
    )
    by = dict(zip(runs, rows, strict=True))
    base, mine = by.get("random"), by.get("service")
    if base is not None and mine is not None and mine.rate:
        print(
            f"baseline (random policy's path, no model): {base.rate:,.0f} decisions/s; this "
            f"service's path: {mine.rate:,.0f} decisions/s ({base.rate / mine.rate:.2f}x the "
            f"baseline's time per decision, p50 {_ms(mine.latencies_s, 50):.3f} ms, "
            f"p99 {_ms(mine.latencies_s, 99):.3f} ms)"
        )


def rolling(values: Sequence[float], window: int) -> tuple[list[int], list[float]]:
    """(decisions made, mean of the last `window`) from the first full window on."""
    w = min(window, len(values))
    if w == 0:
        return [], []
    total = math.fsum(values[:w])
    xs, ys = [w], [total / w]
    for i in range(w, len(values)):
        total += values[i] - values[i - w]
        xs.append(i + 1)
        ys.append(total / w)
    return xs, ys


def plot(runs: Mapping[str, Run], path: Path, window: int = ROLLING) -> Path:
    """Two panels against decisions made: the rolling reward per decision (over
    `window` decisions), and each policy's rolling expected reward as a share of the
    oracle's on the same decisions (the people and requests move both alike; the share
    shows the learning)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    oracle = runs.get("oracle")
    _, best = rolling(oracle.expected, window) if oracle is not None else ([], [])
    for name in POLICIES:
        run = runs.get(name)
        if run is None or not run.rewards:
            continue
        xs, ys = rolling(run.rewards, window)
        top.plot(xs, ys, label=LABELS[name], linewidth=1.2)
        if best:
            _, mine = rolling(run.expected, window)
            bottom.plot(xs, [m / b if b else 0.0 for m, b in zip(mine, best, strict=True)])
    top.set_ylabel(f"reward per decision\n(rolling mean of {window:,})")
    top.set_title("Simulated customers through the service's own decision path")
    top.legend(loc="lower right", fontsize="small")
    bottom.set_ylabel(f"share of the oracle's expected\nreward (rolling {window:,})")
    bottom.axhline(ORACLE_SHARE_GOAL, color="grey", linestyle="--", linewidth=1)
    bottom.set_xlabel("decisions")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
