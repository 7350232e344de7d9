"""The personalisation service's part of the demo summary: what it decided at the demo's
touchpoints and what the simulated customers did, counted from the replies of the demo's
own calls (`cx.personalisation.v1.PersonalisationService`: Decide with `explain`,
ReportOutcome; see services/demo/personalisation.py), with the service's own counters
(its Prometheus `/metrics`) as a cross-check.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.profile.v1 import profile_pb2 as ppb
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import process_settings
from services.demo.personalisation import (
    PLACEMENTS,
    RECOVERY,
    RETURN,
    TOUCHPOINT,
    DecisionTally,
    Example,
    is_held_back_selling,
)
from services.demo.summary import DemoRun, SectionUnavailable, reason
from services.personalisation.settings import PersonalisationSettings

METRICS_TIMEOUT_S = 3.0
DECISIONS_METRIC = "cx_personalisation_decisions"
OUTCOMES_METRIC = "cx_personalisation_outcomes"
OUTCOME_COLUMNS = ("impression", "click", "accept", "dismiss")
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
