"""The personalisation service's part of the demo summary: what it decided at the demo's
touchpoints and what the simulated customers did, counted from the replies of the demo's
own calls (`cx.personalisation.v1.PersonalisationService`: Decide with `explain`,
ReportOutcome; see services/demo/personalisation.py), with the service's own counters
(its Prometheus `/metrics`) as a cross-check.

Learning: the reward of each decision that showed an action to a profile, as the learner
counts it (the best outcome of its first action), in the order the replies came: the
learning curve (reward per decision of the treatment and of the holdout, in equal chunks),
which policy served and which model versions, and the holdout lift with its 95 %
confidence interval (`evaluation.compare`, as `cx nba report` computes it).
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.profile.v1 import profile_pb2 as ppb
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import process_settings
from services.demo.personalisation import (
    HOLDOUT,
    LEARNED,
    PLACEMENTS,
    POLICY_NAMES,
    RECOVERY,
    RETURN,
    TOUCHPOINT,
    TREATMENT,
    DecisionTally,
    Example,
    Rewarded,
    is_held_back_selling,
)
from services.demo.summary import DemoRun, SectionUnavailable, reason
from services.personalisation.domain.evaluation import NOT_ENOUGH, OVERALL, Rate, compare
from services.personalisation.domain.learning import Rewards
from services.personalisation.settings import PersonalisationSettings

METRICS_TIMEOUT_S = 3.0
DECISIONS_METRIC = "cx_personalisation_decisions"
OUTCOMES_METRIC = "cx_personalisation_outcomes"
OUTCOME_COLUMNS = ("impression", "click", "accept", "dismiss")
# The learning curve: this many chunks of decisions, fewer when a chunk would hold fewer
# than MIN_CHUNK; the lift needs MIN_GROUP decisions in each group (the holdout is 10 %
# of profiles, so a small run has few).
CURVE_CHUNKS = 10
MIN_CHUNK = 20
MIN_GROUP = 30
PROFILE = "profile"
KNOWN_BY = {
    ppb.IDENTIFIER_TYPE_CUSTOMER_ID: "customer id",
    ppb.IDENTIFIER_TYPE_ANONYMOUS_ID: "anonymous id",
    ppb.IDENTIFIER_TYPE_EMAIL: "email",
    ppb.IDENTIFIER_TYPE_PHONE: "phone number",
}


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


IRREGULAR = {"person": "people", "dismiss": "dismisses"}


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {IRREGULAR.get(word, word + 's')}"


def counts(items: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in items) or "none"


def placement_table(t: DecisionTally) -> list[str]:
    """Actions shown per action (rows) and placement (columns), with the decisions that
    showed nothing and every placement's decisions; headers split at the first dot."""
    placements = [p for p in PLACEMENTS if t.by_placement[p]]
    placements += sorted(p for p in t.by_placement if p not in PLACEMENTS)
    actions = sorted(
        {a for a, _ in t.shown},
        key=lambda a: (-sum(n for (b, _), n in t.shown.items() if b == a), a),
    )
    rows: list[tuple[str, list[int]]] = [(a, [t.shown[a, p] for p in placements]) for a in actions]
    rows.append(("(nothing shown)", [t.empty[p] for p in placements]))
    rows.append(("decisions", [t.by_placement[p] for p in placements]))
    heads = [p.split(".", 1) if "." in p else ["", p] for p in placements] + [["", "total"]]
    widths = [max(len(h[0]), len(h[1]), 5) for h in heads]
    first = max(len(name) for name, _ in rows)
    out = []
    for line in (0, 1):
        cells = "  ".join(f"{h[line]:>{w}}" for h, w in zip(heads, widths, strict=True))
        out.append(f"{'':<{first}}  {cells}".rstrip())
    for name, values in rows:
        text = "  ".join(f"{v:>{w},}" for v, w in zip([*values, sum(values)], widths, strict=True))
        out.append(f"{name:<{first}}  {text}")
    return out


def held_back_lines(t: DecisionTally) -> list[str]:
    """Suppressions by stage and policy: the experience rules (suitability), contact
    policy and fatigue caps, consent; then what eligibility and ranking left out."""
    out: list[str] = []
    upsells = sum(n for (_, kind), n in t.held_back.items() if kind == "upsell")
    cross = sum(n for (_, kind), n in t.held_back.items() if kind == "cross_sell")
    out.append(
        f"experience rules held back {plural(upsells, 'upsell')} and "
        f"{plural(cross, 'cross-sell')} in {plural(t.held_back_decisions, 'decision')} for "
        f"{plural(len(t.held_back_customers), 'customer')}; service recovery ranked first in "
        f"{t.recovery_first:,} of the {t.with_signals:,} decisions where a rule held"
    )
    by_rule: dict[str, Counter[str]] = {}
    for (policy, kind), n in t.held_back.items():
        by_rule.setdefault(policy, Counter())[kind] += n
    rules = sorted(by_rule.items(), key=lambda item: (-item[1].total(), item[0]))
    out.extend(policy_rows([(p, c.total(), counts(sorted(c.items()))) for p, c in rules]))
    capped = [(p, n) for (stage, p), n in t.filtered.items() if stage == "contact policy"]
    total = sum(n for _, n in capped)
    out.append(
        f"contact policy and fatigue caps hit {plural(total, 'time')} in "
        f"{plural(t.capped_decisions, 'decision')} (caps count on the service's clock, and "
        "the demo's 30 days pass in a minute or two)"
    )
    out.extend(policy_rows([(p, n, "") for p, n in sorted(capped, key=lambda x: -x[1])]))
    consent = [(p, n) for (stage, p), n in t.filtered.items() if stage == "consent"]
    if consent:
        out.append(f"consent held back {plural(sum(n for _, n in consent), 'action')}")
        out.extend(policy_rows([(p, n, "") for p, n in sorted(consent, key=lambda x: -x[1])]))
    stages = t.filtered_by_stage
    out.append(
        f"also left out: {stages['eligibility']:,} not eligible (placement, channel, "
        f"conditions, dates), {stages['prioritisation']:,} ranked below the number asked for"
    )
    return out


def policy_rows(rows: Sequence[tuple[str, int, str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(p) for p, _, _ in rows)
    return [f"  {p:<{width}}  {n:>7,}  {note}".rstrip() for p, n, note in rows]


def outcome_lines(t: DecisionTally) -> list[str]:
    totals = Counter[str]()
    for (_, outcome), n in t.outcomes.items():
        totals[outcome] += n
    out = [
        f"outcomes reported: {t.outcomes_reported:,} ("
        + ", ".join(f"{plural(totals[o], o)}" for o in OUTCOME_COLUMNS)
        + ")"
    ]
    kinds = sorted({k for k, _ in t.outcomes}, key=lambda k: (-t.outcomes[k, "impression"], k))
    if not kinds:
        return out
    width = max(len("kind"), *(len(k) for k in kinds))
    heads = ("impressions", "clicks", "accepts", "dismisses", "accept rate")
    out.append(f"  {'kind':<{width}}  " + "  ".join(heads))
    for kind in kinds:
        values = [t.outcomes[kind, o] for o in OUTCOME_COLUMNS]
        cells = "  ".join(f"{v:>{len(h)},}" for v, h in zip(values, heads, strict=False))
        rate = pct(values[2], values[0])
        out.append(f"  {kind:<{width}}  {cells}  {rate:>{len(heads[-1])}}")
    return out


def example_lines(example: Example | None) -> list[str]:
    if example is None:
        return []
    p, r = example.point, example.reply
    channel = ev.Channel.Name(p.channel).removeprefix("CHANNEL_").lower()
    known = KNOWN_BY.get(p.identifier_type, "identifier")
    signals = ", ".join(r.experience_signals) or "none"
    group = "holdout" if r.holdout else "treatment"
    out = []
    if "open_complaint" not in r.experience_signals:
        out.append("example (no decision for a customer with an open complaint in this run):")
    else:
        out.append("example, a customer with an open complaint:")
    out.append(
        f"  {p.customer_id} at {p.placement} ({channel}, known by {known}; {group}), "
        f"signals: {signals}"
    )
    for action in r.actions:
        first = next((x.detail for x in action.reasons if x.code.startswith("suitability.")), "")
        why = f"; {first}" if first else ""
        title = action.content.title
        out.append(
            f'    {action.rank}. {action.action_id} ({action.kind}) "{title}", '
            f"priority {action.score.priority:.2f}{why}"
        )
    if not r.actions:
        out.append("    nothing shown")
    held = [f for f in r.filtered if is_held_back_selling(f)]
    for f in held:
        out.append(f"    held back: {f.action_id} ({f.kind}) by {f.policy}: {f.reason}")
    others = [f for f in r.filtered if f.stage == pb.STAGE_CONTACT_POLICY and f.kind == RECOVERY]
    for f in others:
        out.append(f"    capped: {f.action_id} ({f.kind}) by {f.policy}: {f.reason}")
    return out


def reward_terms(rewards: Rewards) -> str:
    accept = (
        f"value/{rewards.value_scale:g}" if rewards.accept == "value" else f"{rewards.accept:g}"
    )
    return (
        f"click {rewards.click:g}, accept {accept}, dismiss {rewards.dismiss:g}, "
        f"none {rewards.no_outcome:g}"
    )


@dataclass(frozen=True)
class CurvePoint:
    """One chunk of the learning curve: decisions `first` to `last` (1-based, in the
    order decided), the reward of each group, and the treatment's learned decisions."""

    first: int
    last: int
    treatment: Rate
    holdout: Rate
    learned: int


def learning_curve(
    decisions: Sequence[Rewarded], chunks: int = CURVE_CHUNKS, min_chunk: int = MIN_CHUNK
) -> list[CurvePoint]:
    """The decisions in `chunks` equal parts (sizes differ by one at most; fewer parts
    when one would hold under `min_chunk`): each part's reward per decision, by group."""
    n = len(decisions)
    k = min(chunks, n // max(min_chunk, 1))
    out = []
    for i in range(k):
        start, end = i * n // k, (i + 1) * n // k
        part = decisions[start:end]
        treated = [d for d in part if d.group == TREATMENT]
        held = [d for d in part if d.group == HOLDOUT]
        out.append(
            CurvePoint(
                first=start + 1,
                last=end,
                treatment=Rate(len(treated), sum(d.reward for d in treated)),
                holdout=Rate(len(held), sum(d.reward for d in held)),
                learned=sum(1 for d in treated if d.policy == LEARNED),
            )
        )
    return out


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def rate_cell(rate: Rate) -> str:
    return f"{rate.mean:.3f}" if rate.n else "-"


def curve_table(curve: Sequence[CurvePoint]) -> list[str]:
    """The curve with the chunks as columns: the treatment's and the holdout's reward per
    decision, and the share of the treatment's decisions the learned model made."""
    rows = [
        ("", [str(i + 1) for i in range(len(curve))]),
        (TREATMENT, [rate_cell(c.treatment) for c in curve]),
        (HOLDOUT, [rate_cell(c.holdout) for c in curve]),
        ("learned", [share(c.learned, c.treatment.n) for c in curve]),
    ]
    width = max(6, *(len(cell) for _, cells in rows for cell in cells))
    first = max(len(name) for name, _ in rows)
    return [
        f"{name:<{first}}  " + " ".join(f"{cell:>{width}}" for cell in cells)
        for name, cells in rows
    ]


def span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def served_line(t: DecisionTally) -> str:
    """Which policy made the decisions, and the model versions they used."""
    names = list(POLICY_NAMES.values())
    order = names + sorted(p for p in t.policies if p not in names)
    policies = counts((p, t.policies[p]) for p in order if t.policies[p])
    versions = list(t.model_versions)
    if versions:
        models = (
            f"{plural(len(versions), 'model version')} (first {versions[0]}, "
            f"last {t.last_model_version})"
        )
    else:
        models = "no model version (no decision used a learned model)"
    return f"policy of all {plural(t.decisions, 'decision')}: {policies}; {models}"


def lift_line(treatment: Sequence[float], holdout: Sequence[float]) -> str:
    """Treatment against the holdout: reward per decision, and the lift with its 95 %
    confidence interval, or why there is none."""
    c = compare(OVERALL, treatment, holdout)
    head = (
        f"holdout lift: treatment {c.treatment.mean:.4f} per decision "
        f"({c.treatment.n:,}), holdout {c.holdout.mean:.4f} ({c.holdout.n:,}); "
    )
    for name, rate in ((HOLDOUT, c.holdout), (TREATMENT, c.treatment)):
        if rate.n < MIN_GROUP:
            return head + (
                f"lift: {NOT_ENOUGH} (the {name} has {plural(rate.n, 'decision')}, "
                f"{MIN_GROUP} needed)"
            )
    if c.lift is None:
        diff = c.difference
        why = c.note or NOT_ENOUGH
        if diff is None:
            return head + f"lift: {why}"
        return head + (
            f"lift: {why}; difference {diff.value:+.4f} "
            f"(95% CI {diff.low:+.4f} to {diff.high:+.4f})"
        )
    lift = c.lift
    return head + (
        f"lift {100 * lift.value:+.1f}% (95% CI {100 * lift.low:+.1f}% to {100 * lift.high:+.1f}%)"
    )


def learning_lines(t: DecisionTally) -> list[str]:
    """The rewards as the learner counts them for the decisions that showed an action to
    a profile (the ones it learns from; the holdout is a share of profiles): the learning
    curve, the policies and model versions, the holdout lift. `cx nba report` also counts
    the profile decisions that showed nothing (reward `no_outcome`), so its rates are
    lower."""
    decisions = [d for d in t.rewarded if d.basis == PROFILE]
    rewards = [d.reward for d in decisions]
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    out = [
        f"learning: {plural(len(decisions), 'decision')} showed a profile an action; reward "
        f"per decision {mean:.4f} (the first action's best outcome: {reward_terms(t.rewards)})"
    ]
    if t.rewards_note:
        out.append(f"  {t.rewards_note}")
    out.append(f"  {served_line(t)}")
    curve = learning_curve(decisions)
    if curve:
        sizes = [c.last - c.first + 1 for c in curve]
        held = [c.holdout.n for c in curve]
        out.append(
            f"  reward per decision in the order decided ({len(curve)} chunks of "
            f"{span(sizes)}, the holdout {span(held)} of each):"
        )
        out.extend(f"    {line}" for line in curve_table(curve))
    else:
        out.append(f"  no learning curve: {NOT_ENOUGH} ({MIN_CHUNK} decisions needed per chunk)")
    out.append(
        lift_line(
            [d.reward for d in decisions if d.group == TREATMENT],
            [d.reward for d in decisions if d.group == HOLDOUT],
        )
    )
    return out


PHASE_LABELS = {TOUCHPOINT: "at journey touchpoints", RETURN: "on return visits"}


def phase_lines(t: DecisionTally) -> list[str]:
    """Per phase: decisions, what they were based on, how often the experience rules held
    and what they held back."""
    phases = [p for p in (TOUCHPOINT, RETURN) if t.by_phase[p]]
    phases += sorted(p for p in t.by_phase if p not in PHASE_LABELS)
    out = []
    for phase in phases:
        n = t.by_phase[phase]
        basis = sorted(
            ((b, c) for (p, b), c in t.basis_by_phase.items() if p == phase),
            key=lambda item: (-item[1], item[0]),
        )
        label = PHASE_LABELS.get(phase, phase)
        if phase == RETURN and t.return_when:
            label += f", {t.return_when}"
        out.append(f"  {label}: {n:,}; basis: " + ", ".join(f"{b} {pct(c, n)}" for b, c in basis))
        out.append(
            f"    an experience rule held in {t.signals_by_phase[phase]:,} (service recovery "
            f"first in {t.recovery_first_by_phase[phase]:,}); "
            f"{t.held_back_by_phase[phase]:,} upsells and cross-sells held back"
        )
    return out


def tally_lines(t: DecisionTally) -> list[str]:
    """The section's lines from what the demo's calls got back (pure)."""
    if t.unavailable:
        raise SectionUnavailable(t.unavailable)
    if not t.decisions:
        why = t.gave_up or (t.error_samples[0] if t.error_samples else "no touchpoint asked")
        raise SectionUnavailable(f"no decision was made ({t.points:,} asked for): {why}")
    failed = f"; {plural(t.failed, 'call')} failed" if t.failed else ""
    out = [
        f"decisions: {t.decisions:,} for {plural(t.customers, 'customer')} "
        f"({plural(len(t.people), 'person')} as the service knew them){failed}",
        *phase_lines(t),
        f"holdout: {pct(t.holdout, t.decisions)} of decisions ({t.holdout:,}) went to the "
        f"control policy, {len(t.holdout_people):,} of {len(t.people):,} people",
        "actions shown, by placement:",
    ]
    out.extend(f"  {line}" for line in placement_table(t))
    out.append("shown by kind: " + counts(t.shown_by_kind.most_common()))
    out.extend(held_back_lines(t))
    if t.signals:
        out.append("experience signals (decisions): " + counts(t.signals.most_common()))
    out.extend(outcome_lines(t))
    out.extend(learning_lines(t))
    out.extend(example_lines(t.example))
    if t.gave_up:
        out.append(f"stopped early: {t.gave_up}; {t.skipped:,} touchpoints skipped")
    if t.errors:
        out.append("failed calls: " + counts(t.errors.most_common()))
        out.extend(f"  {sample}" for sample in t.error_samples)
    return out


def metric_totals(text: str) -> dict[str, float]:
    """Sums of the decision and outcome counters in a Prometheus exposition."""
    out = {DECISIONS_METRIC: 0.0, OUTCOMES_METRIC: 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in out:
            out[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return out


class PersonalisationSection:
    title = "Personalisation"

    def __init__(self, metrics_url: str) -> None:
        self.metrics_url = metrics_url
        self.start: Mapping[str, float] | None = None
        self.start_error = ""

    @classmethod
    def from_settings(cls) -> PersonalisationSection:
        port = PersonalisationSettings().metrics_port
        return cls(f"http://{process_settings().metrics_host}:{port}/metrics" if port else "")

    def _metrics(self) -> dict[str, float]:
        if not self.metrics_url:
            raise SectionUnavailable("metrics are off (PERSONALISATION_METRICS_PORT=0)")
        with urllib.request.urlopen(self.metrics_url, timeout=METRICS_TIMEOUT_S) as reply:
            return metric_totals(reply.read().decode())

    def before(self) -> None:
        # A failure here leaves out the cross-check only.
        try:
            self.start = self._metrics()
        except Exception as exc:
            self.start_error = reason(exc)

    def _service_count(self, t: DecisionTally) -> str:
        if self.start is None:
            return f"the service's own count: unavailable ({self.start_error})"
        try:
            end = self._metrics()
        except Exception as exc:
            return f"the service's own count: unavailable ({reason(exc)})"
        decisions = end[DECISIONS_METRIC] - self.start[DECISIONS_METRIC]
        outcomes = end[OUTCOMES_METRIC] - self.start[OUTCOMES_METRIC]
        if decisions < 0 or outcomes < 0:
            return "the service's own count: its counters restarted during the run"
        ours = decisions == t.decisions and outcomes == t.outcomes_reported
        note = "matches the replies" if ours else "other callers, or calls that failed late"
        return (
            f"the service's own count ({self.metrics_url}): {decisions:,.0f} decisions, "
            f"{outcomes:,.0f} outcomes during the run ({note})"
        )

    def lines(self, run: DemoRun) -> list[str]:
        t = run.personalisation
        if t is None:
            raise SectionUnavailable("the demo asked for no decisions (--personalise-share 0)")
        out = tally_lines(t)
        out.append(self._service_count(t))
        return out
