"""Evidence from the decision log, pure: what the treatment earned against the holdout
(`cx nba report`), and what another policy would have earned on the same decisions,
estimated off-policy from the logged probabilities (`cx nba evaluate`). No Kafka, no
Redis: `adapters/decision_log_reader.py` reads and settles the log, this module counts.

The unit is a settled decision (`Logged`): a `DecisionRecord` and its reward, which is
`Rewards.settle` of the outcomes of its FIRST chosen action (see `settle`), the same
reward the learner trains on.

Off-policy estimates. Each logged decision i showed action a_i with probability p_i
(`RankedAction.probability` of its first chosen action: 1 for the deterministic policies)
and earned r_i. A target policy gives the weight w_i = pi(a_i | x_i) / p_i: for a
deterministic target 1[target(x_i) = a_i] / p_i. Then

- IPS = mean(w_i r_i), with a 95 % interval from the sample standard error of w_i r_i;
- SNIPS = sum(w_i r_i) / sum(w_i), with a 95 % interval by the delta method;
- the effective sample size (sum w_i)^2 / sum w_i^2, and how many decisions the target
  matched (w_i > 0). A target that mostly picks what the log never showed matches few
  decisions: its estimate rests on them alone (wide interval, small effective size).

Both intervals are normal approximations. The estimates only hold where the logging policy
gave the target's choices a chance: a deterministic log (the static rules) can only
evaluate targets that agree with it where they match.

Which decisions are evaluated: those with a profile (basis PROFILE) in the treatment group
that showed an action: the decisions a new policy would serve. Holdout decisions stay
with the control policy, and their logged scores are the control's (value x lever), so
the static rules cannot be replayed on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from cx.personalisation.v1 import personalisation_pb2 as pb

from services.common.conditions import FieldValue
from services.personalisation.decision_records import (
    arms,
    decision_fields,
    first_choice,
    logged_features,
)
from services.personalisation.domain import arbitration
from services.personalisation.domain.arbitration import DecisionRequest, ProfileView
from services.personalisation.domain.catalogue import Catalogue
from services.personalisation.domain.learning import (
    FINAL_OUTCOMES,
    SEGMENT_PREFIX,
    LearningConfig,
    Model,
    context_features,
)
from services.personalisation.views import channel_name, context_values

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.96
NOT_ENOUGH = "not enough data"
OVERALL = "all"


# --- settling a decision ---------------------------------------------------------------


@dataclass(frozen=True)
class Logged:
    """A settled decision: the record and the reward of its first chosen action."""

    record: pb.DecisionRecord
    reward: float


def settle(
    record: pb.DecisionRecord,
    outcomes: Iterable[tuple[int, str]],
    config: LearningConfig,
    now_ms: int,
) -> float | None:
    """The decision's reward from the outcomes (occurred_at ms, outcome) reported for its
    FIRST chosen action, or None while it is not settled yet.

    Outcomes count in the order they happened, up to the first accept or dismiss (which
    settles the decision at once) and within `window.settle_after_s` of the decision.
    Without an accept or dismiss the decision settles when its window ends, with the
    best outcome seen (none: `rewards.no_outcome`, so no click counts as reward 0). A
    decision that showed nothing is settled at once with `no_outcome`."""
    rewards = config.rewards
    if not record.chosen:
        return rewards.no_outcome
    decided_ms = record.decided_at.ToMilliseconds()
    ends_ms = decided_ms + int(config.window.settle_after_s * 1000)
    seen: list[str] = []
    final = False
    for occurred_ms, outcome in sorted(outcomes):
        if occurred_ms > ends_ms:
            break
        seen.append(outcome)
        if outcome in FINAL_OUTCOMES:
            final = True
            break
    if not final and now_ms < ends_ms:
        return None
    return rewards.settle(seen, record.chosen[0].score.business_value)


# --- statistics ------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A value with its 95 % confidence interval."""

    value: float
    low: float
    high: float
    stderr: float

    @classmethod
    def normal(cls, value: float, stderr: float, quantile: float = Z) -> Estimate:
        return cls(value, value - quantile * stderr, value + quantile * stderr, stderr)

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "stderr": self.stderr}


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _variance(xs: Sequence[float]) -> float:
    """The sample variance (n - 1 in the denominator)."""
    m = _mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _mean_estimate(xs: Sequence[float]) -> Estimate:
    """The mean with the sample standard error (at least two values)."""
    return Estimate.normal(_mean(xs), math.sqrt(_variance(xs) / len(xs)))


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile for a probability p in (0.5, 1) and df >= 1 degrees of freedom
    (not necessarily whole, as Welch's are), found by Newton's method from the normal
    quantile (the distribution function is concave above 0: the steps rise to the
    quantile without passing it). The distribution function is integrated by Simpson's
    rule after t = sqrt(df) tan(u), where the density becomes k cos(u)^(df - 1): smooth
    and bounded, so the integral is accurate however far out the quantile lies. Within
    1e-6 of the tables."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, not {p}, {df}")
    z = NormalDist().inv_cdf(p)
    if df > 1e6:
        return z
    log_k = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(math.pi)

    def density(t: float) -> float:
        return math.exp(log_k - (df + 1) / 2 * math.log1p(t * t / df)) / math.sqrt(df)

    def from_zero(x: float, steps: int = 1000) -> float:
        """P(0 <= T <= x) (steps even)."""
        end = math.atan(x / math.sqrt(df))
        h = end / steps

        def f(u: float) -> float:
            return float(math.cos(u) ** (df - 1))

        inner = math.fsum(f(i * h) * (4 if i % 2 else 2) for i in range(1, steps))
        return math.exp(log_k) * h / 3 * (f(0.0) + inner + f(end))

    t = z
    for _ in range(200):
        step = (p - 0.5 - from_zero(t)) / density(t)
        t += step
        if step < 1e-9 * t:
            break
    return t


# --- off-policy estimates --------------------------------------------------------------

# What a target policy makes of a logged decision: the action it would show first, a
# distribution over the actions (action id -> probability), or None for nothing.
TargetChoice = str | Mapping[str, float] | None
Target = Callable[[pb.DecisionRecord], TargetChoice]


@dataclass(frozen=True)
class Sample:
    """One logged decision as the estimators see it."""

    # The probability with which the logging policy showed the logged action.
    propensity: float
    reward: float
    # The probability with which the target would show the logged action.
    target: float

    @property
    def weight(self) -> float:
        return self.target / self.propensity


@dataclass(frozen=True)
class OffPolicy:
    """What a target policy would have earned per decision, estimated from the log."""

    n: int
    # Decisions where the target gives the logged action a chance (weight > 0).
    matched: int
    effective_sample_size: float
    ips: Estimate | None
    snips: Estimate | None
    # The mean reward the logging policy earned on the same decisions.
    logged: Estimate | None
    # Why an estimate is missing, else empty.
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.n,
            "matched": self.matched,
            "effective_sample_size": self.effective_sample_size,
            "ips": self.ips.as_dict() if self.ips else None,
            "snips": self.snips.as_dict() if self.snips else None,
            "logged": self.logged.as_dict() if self.logged else None,
            "note": self.note,
        }


def ips(samples: Sequence[Sample]) -> Estimate | None:
    """mean(w r), with the sample standard error of w r; None below two samples."""
    if len(samples) < 2:
        return None
    return _mean_estimate([s.weight * s.reward for s in samples])


def snips(samples: Sequence[Sample]) -> Estimate | None:
    """sum(w r) / sum(w), with the delta method's standard error
    sqrt(n / (n - 1) * sum(w^2 (r - V)^2)) / sum(w); None below two samples or when the
    target matches no logged decision."""
    n = len(samples)
    total_w = math.fsum(s.weight for s in samples)
    if n < 2 or total_w <= 0:
        return None
    value = math.fsum(s.weight * s.reward for s in samples) / total_w
    spread = math.fsum((s.weight * (s.reward - value)) ** 2 for s in samples)
    return Estimate.normal(value, math.sqrt(spread * n / (n - 1)) / total_w)


def estimate(samples: Sequence[Sample]) -> OffPolicy:
    n = len(samples)
    weights = [s.weight for s in samples]
    matched = sum(1 for w in weights if w > 0)
    squares = math.fsum(w * w for w in weights)
    ess = math.fsum(weights) ** 2 / squares if squares > 0 else 0.0
    logged = _mean_estimate([s.reward for s in samples]) if n >= 2 else None
    note = ""
    if n < 2:
        note = f"{NOT_ENOUGH}: {n} decision(s) to evaluate"
    elif matched == 0:
        note = "the target matches none of the logged decisions: SNIPS is undefined"
    elif matched < n and all(s.propensity >= 1 for s in samples):
        note = (
            "every decision was logged by a deterministic policy: the estimates rest on the "
            f"{matched} it decided as the target would (IPS counts the others as earning "
            "nothing, SNIPS as earning what those earned)"
        )
    return OffPolicy(n, matched, ess, ips(samples), snips(samples), logged, note)


def evaluated(decision: Logged) -> bool:
    """Whether a decision is one a new policy would serve and can be evaluated on: a
    profile, the treatment group, an action shown."""
    record = decision.record
    return (
        record.basis == pb.BASIS_PROFILE
        and record.group == pb.GROUP_TREATMENT
        and first_choice(record) is not None
    )


def target_probability(choice: TargetChoice, action_id: str) -> float:
    if choice is None:
        return 0.0
    if isinstance(choice, str):
        return 1.0 if choice == action_id else 0.0
    return float(choice.get(action_id, 0.0))


def sample(decision: Logged, target: Target) -> Sample | None:
    first = first_choice(decision.record)
    if first is None:
        return None
    index, propensity, _ = first
    if propensity <= 0:
        raise ValueError(
            f"decision {decision.record.decision_id}: logged probability {propensity} "
            "of its first action must be > 0"
        )
    action_id = decision.record.ranked[index].action_id
    return Sample(
        propensity,
        decision.reward,
        target_probability(target(decision.record), action_id),
    )


def off_policy(decisions: Iterable[Logged], target: Target) -> OffPolicy:
    """IPS and SNIPS of `target` over the decisions it can be evaluated on (`evaluated`)."""
    samples = [s for d in decisions if evaluated(d) and (s := sample(d, target)) is not None]
    return estimate(samples)


# --- target policies -------------------------------------------------------------------


def allowed(record: pb.DecisionRecord) -> list[pb.RankedAction]:
    """The logged ranked actions any policy could have shown: all but the `unavailable`
    ones (the contact ledger had ruled those out before the decision)."""
    out = set(record.unavailable)
    return [a for a in record.ranked if a.action_id not in out]


def _best_allowed(
    record: pb.DecisionRecord, score: Callable[[pb.RankedAction], float]
) -> str | None:
    """The allowed action with the highest `score`, promoted actions first, ties by
    action id."""
    best = min(
        allowed(record), key=lambda a: (not a.promoted, -score(a), a.action_id), default=None
    )
    return best.action_id if best is not None else None


def static_target(record: pb.DecisionRecord) -> str | None:
    """The static rules: promoted actions first, then the highest priority P x C x V x L,
    ties by action id."""
    return _best_allowed(record, lambda a: a.score.priority)


def control_target(record: pb.DecisionRecord) -> str | None:
    """The holdout's control policy: promoted actions first, then value x lever."""
    return _best_allowed(record, lambda a: a.score.business_value * a.score.lever)


def logged_target(record: pb.DecisionRecord) -> dict[str, float]:
    """The logging policy itself (every weight is 1: its estimate is the logged mean)."""
    first = first_choice(record)
    if first is None:
        return {}
    index, propensity, _ = first
    return {record.ranked[index].action_id: propensity}


def model_target(model: Model) -> Target:
    """A candidate model, greedy: the arm with the highest probability in its distribution
    over the logged arms (the context rebuilt from the log, as the server fed it), among
    the allowed arms of the first tier that has any (promoted arms first); ties go to the
    earlier arm."""

    def target(record: pb.DecisionRecord) -> str | None:
        specs = arms(record)
        if not specs:
            return None
        pmf = model.predict(context_features(decision_fields(record)), specs)
        out = set(record.unavailable)
        for tier in (True, False):
            candidates = [
                i
                for i, a in enumerate(record.ranked)
                if a.promoted == tier and a.action_id not in out
            ]
            if candidates:
                best = max(candidates, key=lambda i: (pmf[i], -i))
                return specs[best].action_id
        return None

    return target


def replayed_profile(record: pb.DecisionRecord) -> ProfileView:
    """The profile as the decision log kept it: its logged fields and segments."""
    fields: dict[str, FieldValue] = {}
    segments: set[str] = set()
    for name, value in logged_features(record).items():
        if not name.startswith(SEGMENT_PREFIX):
            fields[name] = value
        elif value is True:
            segments.add(name.removeprefix(SEGMENT_PREFIX))
    return ProfileView(record.profile_id, fields, frozenset(segments))


def catalogue_target(catalogue: Catalogue) -> Target:
    """A candidate catalogue: `arbitration.rank` again with the candidate, on the logged
    request and the logged profile fields and segments; the first ranked action the
    contact ledger had not ruled out. The log holds the fields the catalogue in use and
    the learner read: a candidate whose conditions read other fields sees them as missing
    (as for a profile without them), and may rank differently than it would live."""

    def target(record: pb.DecisionRecord) -> str | None:
        request = DecisionRequest(
            placement=record.placement,
            channel=channel_name(record.channel),
            now_ms=record.decided_at.ToMilliseconds(),
            context=context_values(record.context),
            want=record.max_actions or 1,
        )
        ranking = arbitration.rank(
            catalogue, request, replayed_profile(record), identified=True, holdout=False
        )
        out = set(record.unavailable)
        return next(
            (s.action.action_id for s in ranking.ranked if s.action.action_id not in out), None
        )

    return target


TARGETS: Mapping[str, Target] = {
    "static": static_target,
    "control": control_target,
    "logged": logged_target,
}


# --- treatment against the holdout -----------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """The reward rate (mean reward per decision) of one group."""

    n: int
    total: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"decisions": self.n, "reward": self.total, "reward_rate": self.mean}


@dataclass(frozen=True)
class Comparison:
    """Treatment against the holdout at one placement (or all of them)."""

    placement: str
    treatment: Rate
    holdout: Rate
    # treatment - holdout, with Welch's 95 % interval.
    difference: Estimate | None
    # (treatment - holdout) / holdout, with the 95 % interval of the log ratio (its
    # stderr: the delta method's on the lift itself).
    lift: Estimate | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "treatment": self.treatment.as_dict(),
            "holdout": self.holdout.as_dict(),
            "difference": self.difference.as_dict() if self.difference else None,
            "lift": self.lift.as_dict() if self.lift else None,
            "note": self.note,
        }


def compare(placement: str, treatment: Sequence[float], holdout: Sequence[float]) -> Comparison:
    """The reward rates of the two groups, their difference with Welch's interval (t with
    the Welch-Satterthwaite degrees of freedom) and the relative lift T / H - 1 with the
    interval of log(T / H) (delta method: se = sqrt(var_T / T^2 + var_H / H^2), where
    var_T and var_H are the variances of the two means), exponentiated: asymmetric, as a
    ratio's is, and never below -100 %."""
    rate_t = Rate(len(treatment), math.fsum(treatment))
    rate_h = Rate(len(holdout), math.fsum(holdout))
    short = [name for name, xs in (("treatment", treatment), ("holdout", holdout)) if len(xs) < 2]
    if short:
        return Comparison(
            placement,
            rate_t,
            rate_h,
            None,
            None,
            f"{NOT_ENOUGH}: {' and '.join(short)} under 2 decisions",
        )
    mean_t, mean_h = rate_t.mean, rate_h.mean
    var_t = _variance(treatment) / len(treatment)
    var_h = _variance(holdout) / len(holdout)
    diff = mean_t - mean_h
    se = math.sqrt(var_t + var_h)
    if se > 0:
        # At least the smaller group's n - 1 (>= 1), but for rounding.
        df = (var_t + var_h) ** 2 / (
            var_t**2 / (len(treatment) - 1) + var_h**2 / (len(holdout) - 1)
        )
        df = max(df, 1.0)
        difference = Estimate.normal(diff, se, t_quantile(0.5 + CONFIDENCE / 2, df))
    else:
        difference = Estimate(diff, diff, diff, 0.0)
    if mean_h == 0:
        return Comparison(
            placement, rate_t, rate_h, difference, None, "the holdout earned nothing: no lift"
        )
    lift = mean_t / mean_h - 1
    lift_se = math.sqrt(var_t / mean_h**2 + mean_t**2 * var_h / mean_h**4)
    if mean_t <= 0:
        # No log ratio: the delta method's interval, cut at -100 % (rates are >= 0).
        normal = Estimate.normal(lift, lift_se)
        return Comparison(
            placement,
            rate_t,
            rate_h,
            difference,
            Estimate(lift, max(normal.low, -1.0), normal.high, lift_se),
        )
    # The interval of the log of the ratio (delta method), back on the lift's scale: a
    # ratio of rates is skewed, and this interval never goes below -100 %.
    log_se = math.sqrt(var_t / mean_t**2 + var_h / mean_h**2)
    log_ratio = math.log(mean_t / mean_h)
    low = math.exp(log_ratio - Z * log_se) - 1
    high = math.exp(log_ratio + Z * log_se) - 1
    return Comparison(placement, rate_t, rate_h, difference, Estimate(lift, low, high, lift_se))


def compared(decision: Logged) -> bool:
    """The decisions the report compares: those with a profile (the holdout is a share of
    profiles), whether or not they showed an action."""
    return decision.record.basis == pb.BASIS_PROFILE and decision.record.group in (
        pb.GROUP_TREATMENT,
        pb.GROUP_HOLDOUT,
    )


def report(decisions: Iterable[Logged]) -> list[Comparison]:
    """Treatment against the holdout for every placement (sorted), then all of them."""
    by_placement: dict[str, tuple[list[float], list[float]]] = {}
    everything: tuple[list[float], list[float]] = ([], [])
    for d in decisions:
        if not compared(d):
            continue
        side = 0 if d.record.group == pb.GROUP_TREATMENT else 1
        by_placement.setdefault(d.record.placement, ([], []))[side].append(d.reward)
        everything[side].append(d.reward)
    rows = [compare(p, *by_placement[p]) for p in sorted(by_placement)]
    rows.append(compare(OVERALL, *everything))
    return rows


__all__ = [
    "NOT_ENOUGH",
    "OVERALL",
    "TARGETS",
    "Comparison",
    "Estimate",
    "Logged",
    "OffPolicy",
    "Rate",
    "Sample",
    "Target",
    "TargetChoice",
    "allowed",
    "catalogue_target",
    "compare",
    "control_target",
    "estimate",
    "evaluated",
    "ips",
    "logged_target",
    "model_target",
    "off_policy",
    "report",
    "settle",
    "snips",
    "static_target",
    "t_quantile",
]
