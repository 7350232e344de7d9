"""What a profile's stored aggregates mean (pure): commerce, CX metrics, journey stage,
churn risk, CLV and value tier. Definitions, rules and weights: docs/profile-metrics.md.

`derive(state, now_ms)` reads only the ProfileState, so the stream worker and the read API
compute the same view; `Derived.fields()` is the flat view that segment conditions test.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev

from services.common.conditions import FieldValue as FieldValue
from services.common.experience import CSAT_SATISFIED_FROM, on_scale
from services.common.experience import nps_category as nps_category
from services.profile.domain.codec import decode_complaint, decode_consent, decode_incident
from services.profile.domain.effects import CHANNEL_NAMES
from services.profile.domain.state import ProfileState

DAY_MS = 86_400_000
MONTH_DAYS = 365.25 / 12
PAYLOAD_NAMES = tuple(
    f.name for f in ev.TouchpointEvent.DESCRIPTOR.oneofs_by_name["payload"].fields
)
CHANNELS = tuple(sorted(set(CHANNEL_NAMES.values())))
OPEN_COMPLAINT_STATUSES = frozenset({"opened", "updated", "escalated"})
# An incident is open until the alerts service resolves it (acknowledged is still open).
CLOSED_INCIDENT_STATES = frozenset({"resolved"})
SEVERITY_ORDER = ("unspecified", "low", "medium", "high", "critical")
# Payloads that show interest in buying before a first order.
CONSIDERATION_TYPES = ("product_view", "cart_change", "payment_failed")


@dataclass(frozen=True)
class ChurnWeights:
    """Logistic weights of the churn features. Features are 0..1, except open complaints
    and repeat contacts, which are counts capped by `open_complaints_cap` and
    `repeat_contacts_cap` (so the weight is per complaint or per repeat contact)."""

    inactivity: float = 2.0
    order_lapse: float = 1.5
    nps_detractor: float = 1.5
    low_csat: float = 1.2
    open_complaints: float = 1.0
    repeat_contacts: float = 0.4
    payment_failure: float = 0.8
    delivery_problems: float = 1.0
    negative_sentiment: float = 1.0
    unsubscribed: float = 0.7


@dataclass(frozen=True)
class DeriveConfig:
    # Churn: risk = 1 / (1 + exp(-(bias + sum(weight * feature)))).
    churn_bias: float = -3.0
    churn_weights: ChurnWeights = ChurnWeights()
    # Inactivity ramps from 0 (seen within `grace` days) to 1 (not seen for `full` days).
    inactivity_grace_days: float = 14.0
    inactivity_full_days: float = 90.0
    order_lapse_grace_days: float = 60.0
    order_lapse_full_days: float = 180.0
    # Decayed CSAT at or above this counts 0; 1 of 5 counts 1 (linear between). Default:
    # where a CSAT answer counts as satisfied, 4 of 5.
    low_csat_from: float = on_scale(CSAT_SATISFIED_FROM, 0, 1, 1, 5)
    open_complaints_cap: int = 2
    repeat_contacts_cap: int = 3
    payment_failure_days: float = 30.0
    # Band edges: risk < first is low, < second medium, otherwise high.
    churn_bands: tuple[float, float] = (0.3, 0.6)
    # Value tiers by clv_total, highest first; above 0 and below the last: low; else none.
    value_tiers: tuple[tuple[str, float], ...] = (
        ("vip", 2000.0),
        ("high", 1000.0),
        ("medium", 250.0),
    )
    clv_horizon_months: float = 12.0
    # The purchase rate is measured over at least this many months, so a new customer's
    # first orders do not extrapolate to a dozen more a year.
    clv_min_tenure_months: float = 6.0
    # Journey stage rules (see docs/profile-metrics.md).
    support_days: float = 7.0
    checkout_days: float = 7.0
    onboarding_days: float = 30.0
    renewal_days: float = 120.0
    advocacy_review_average: float = 4.5
    # RFM: recency score 5..2 when days since the last order <= each edge, else 1;
    # frequency and monetary score 2..5 when >= each edge, else 1; 0 without orders.
    rfm_recency_days: tuple[float, float, float, float] = (30.0, 90.0, 180.0, 365.0)
    rfm_frequency_orders: tuple[float, float, float, float] = (2.0, 3.0, 5.0, 10.0)
    rfm_monetary: tuple[float, float, float, float] = (50.0, 200.0, 500.0, 1000.0)


DEFAULT_CONFIG = DeriveConfig()


@dataclass(frozen=True)
class Activity:
    first_seen_ms: int | None
    last_seen_ms: int | None
    days_since_first_seen: float | None
    days_since_last_seen: float | None
    events: int
    events_by_channel: Mapping[str, int]
    events_by_type: Mapping[str, int]
    last_channel: str | None
    # The journey stage the latest event was tagged with (not the derived stage).
    last_event_stage: str | None
    app_errors: int
    unsubscribes: int


@dataclass(frozen=True)
class Commerce:
    orders: int
    cancellations: int
    # Orders not cancelled: the purchases that count for frequency, AOV and CLV.
    net_orders: int
    revenue: float
    refunds: float
    net_revenue: float
    average_order_value: float
    returns: int
    payment_failures: int
    deliveries: int
    late_deliveries: int
    failed_deliveries: int
    currency_code: str | None
    clv_historic: float
    clv_predicted: float
    clv_total: float
    purchases_per_month: float
    first_order_at_ms: int | None
    last_order_at_ms: int | None
    last_payment_failure_at_ms: int | None
    days_since_first_order: float | None
    days_since_last_payment_failure: float | None
    # A payment failed and no order was placed after it.
    payment_failure_open: bool
    # The latest late or failed delivery, and whether it is later than the latest
    # delivery that arrived on time.
    last_delivery_problem_at_ms: int | None
    days_since_delivery_problem: float | None
    delivery_problem_open: bool
    recency_days: int | None
    frequency: int
    monetary: float
    rfm_recency: int
    rfm_frequency: int
    rfm_monetary: int


@dataclass(frozen=True)
class CxMetrics:
    csat_count: int
    csat_last: float | None
    csat_decayed: float | None
    csat_percent: float | None
    nps_count: int
    nps_last: int | None
    nps_category: str | None
    days_since_nps: float | None
    ces_count: int
    ces_last: float | None
    ces_average: float | None
    reviews: int
    review_average: float | None
    messages: int
    negative_messages: int
    sentiment: float | None
    complaints: int
    open_complaints: int
    open_complaint_ids: tuple[str, ...]
    open_complaint_max_severity: str | None
    # The alerts service's incidents about the person that are not resolved.
    open_incidents: int
    open_incident_ids: tuple[str, ...]
    support_contacts: int
    support_contacts_7d: int
    support_contacts_30d: int
    unresolved_contacts_7d: int
    repeat_contacts_30d: int
    last_contact_at_ms: int | None


@dataclass(frozen=True)
class ChurnReason:
    code: str
    description: str
    contribution: float


@dataclass(frozen=True)
class Derived:
    profile_id: str
    computed_at_ms: int
    activity: Activity
    commerce: Commerce
    cx: CxMetrics
    journey_stage: str
    # Which rule chose the stage (see docs/profile-metrics.md), for explanations.
    journey_rule: str
    churn_risk: float
    churn_band: str
    # The three largest positive contributions, largest first.
    churn_reasons: tuple[ChurnReason, ...]
    value_tier: str
    # Same as commerce.clv_total (the change events read it here).
    clv_total: float
    traits: Mapping[str, FieldValue] = field(default_factory=dict)
    consent: Mapping[str, bool] = field(default_factory=dict)

    def fields(self) -> dict[str, FieldValue]:
        """The flat view segment conditions test: every scalar of activity, commerce and
        cx by its own name, `ch.<channel>` and `type.<payload>` event counts, the stage,
        churn and value fields, `traits.<key>` and `consent.<purpose>`."""
        out: dict[str, FieldValue] = {}
        for group in (self.activity, self.commerce, self.cx):
            for name, value in vars(group).items():
                if isinstance(value, str | int | float | bool) or value is None:
                    out[name] = value
        for channel, count in self.activity.events_by_channel.items():
            out[f"ch.{channel}"] = count
        for payload, count in self.activity.events_by_type.items():
            out[f"type.{payload}"] = count
        out.update(
            journey_stage=self.journey_stage,
            journey_rule=self.journey_rule,
            churn_risk=self.churn_risk,
            churn_band=self.churn_band,
            churn_reason=self.churn_reasons[0].code if self.churn_reasons else None,
            value_tier=self.value_tier,
            clv_total=self.clv_total,
        )
        for key, trait in self.traits.items():
            out[f"traits.{key}"] = trait
        for purpose, granted in self.consent.items():
            out[f"consent.{purpose}"] = granted
        return out


# ---------------------------------------------------------------------------------------


def _days_since(now_ms: int, ts_ms: int | None) -> float | None:
    return None if ts_ms is None else max(0.0, (now_ms - ts_ms) / DAY_MS)


def _later(ts_ms: int | None, than_ms: int | None) -> bool:
    """True when `ts_ms` happened and `than_ms` did not, or happened strictly before."""
    return ts_ms is not None and (than_ms is None or ts_ms > than_ms)


def _ms(value: float | None) -> int | None:
    return None if value is None else int(value)


def _ramp(value: float, start: float, full: float) -> float:
    """0 up to `start`, 1 from `full`, linear between."""
    if full <= start:
        return 1.0 if value >= full else 0.0
    return min(1.0, max(0.0, (value - start) / (full - start)))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _trait_value(raw: str) -> FieldValue:
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value if isinstance(value, str | int | float | bool) or value is None else raw


@dataclass(frozen=True)
class _Contact:
    ts_ms: int
    key: str
    reason: str
    resolved: bool


def _contacts(state: ProfileState) -> list[_Contact]:
    """Support contacts, one per contact id (a contact recorded again, for example when
    it was resolved, counts once): its time is the earliest record's, its reason and
    resolution the latest record's (a resolved record wins a tie)."""
    groups: dict[str, list[tuple[int, bool, str]]] = {}
    for c in state.contacts:
        key = c.contact_id or f"{c.ts_ms}|{c.reason}|{int(c.resolved)}"
        groups.setdefault(key, []).append((c.ts_ms, c.resolved, c.reason))
    out = []
    for key, records in groups.items():
        first = min(ts for ts, _, _ in records)
        _, resolved, reason = max(records)
        out.append(_Contact(first, key, reason, resolved))
    return sorted(out, key=lambda c: (c.ts_ms, c.key))


def _complaints(state: ProfileState) -> tuple[list[str], str | None]:
    open_ids, worst = [], None
    for complaint_id, latest in sorted(state.complaints.items()):
        _rank, status, severity, _category = decode_complaint(latest.value)
        if status in OPEN_COMPLAINT_STATUSES:
            open_ids.append(complaint_id)
            rank = SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else 0
            if worst is None or rank > SEVERITY_ORDER.index(worst):
                worst = SEVERITY_ORDER[rank]
    return open_ids, worst


def _open_incidents(state: ProfileState) -> list[str]:
    out = []
    for incident_id, latest in sorted(state.incidents.items()):
        if decode_incident(latest.value).state not in CLOSED_INCIDENT_STATES:
            out.append(incident_id)
    return out


def _consent(state: ProfileState) -> dict[str, bool]:
    return {purpose: decode_consent(item.value).granted for purpose, item in state.consent.items()}


def _score_at_most(value: float, edges: tuple[float, ...]) -> int:
    """5 when value <= edges[0], 4 when <= edges[1], ..., 1 above the last edge."""
    for i, edge in enumerate(edges):
        if value <= edge:
            return 5 - i
    return 1


def _score_at_least(value: float, edges: tuple[float, ...]) -> int:
    """1 below edges[0], 2 from edges[0], ..., 5 from the last edge."""
    return 1 + sum(1 for edge in edges if value >= edge)


def _cx(state: ProfileState, now_ms: int, config: DeriveConfig) -> CxMetrics:
    csat_count = state.count("csat.count")
    nps = state.latest_number("nps")
    nps_answer = state.latest.get("nps")
    ces_count = state.count("ces.count")
    reviews = state.count("reviews")
    contacts = _contacts(state)
    week = [c for c in contacts if now_ms - c.ts_ms < config.support_days * DAY_MS]
    month = [c for c in contacts if now_ms - c.ts_ms < 30 * DAY_MS]
    seen_reasons: set[str] = set()
    repeats = 0
    for c in month:
        if c.reason and c.reason in seen_reasons:
            repeats += 1
        seen_reasons.add(c.reason)
    open_ids, worst = _complaints(state)
    incidents = _open_incidents(state)
    return CxMetrics(
        csat_count=csat_count,
        csat_last=state.latest_number("csat"),
        csat_decayed=state.decayed_average("csat"),
        csat_percent=(state.sum("csat.satisfied") / csat_count * 100 if csat_count > 0 else None),
        nps_count=state.count("nps.count"),
        nps_last=None if nps is None else int(nps),
        nps_category=nps_category(None if nps is None else int(nps)),
        days_since_nps=_days_since(now_ms, nps_answer.ts_ms if nps_answer else None),
        ces_count=ces_count,
        ces_last=state.latest_number("ces"),
        ces_average=_ratio(state.sum("ces.sum"), ces_count),
        reviews=reviews,
        review_average=_ratio(state.sum("review.sum"), reviews),
        messages=state.count("messages"),
        negative_messages=state.count("negative_messages"),
        sentiment=state.decayed_average("sentiment"),
        complaints=state.count("complaints"),
        open_complaints=len(open_ids),
        open_complaint_ids=tuple(open_ids),
        open_complaint_max_severity=worst,
        open_incidents=len(incidents),
        open_incident_ids=tuple(incidents),
        support_contacts=state.count("support_contacts"),
        support_contacts_7d=len(week),
        support_contacts_30d=len(month),
        unresolved_contacts_7d=sum(1 for c in week if not c.resolved),
        repeat_contacts_30d=repeats,
        last_contact_at_ms=_ms(state.maxima.get("last_contact_at")),
    )


def _activity(state: ProfileState, now_ms: int) -> Activity:
    first_seen = _ms(state.minima.get("first_seen"))
    last_seen = _ms(state.maxima.get("last_seen"))
    channel = state.latest.get("channel")
    stage = state.latest.get("stage")
    return Activity(
        first_seen_ms=first_seen,
        last_seen_ms=last_seen,
        days_since_first_seen=_days_since(now_ms, first_seen),
        days_since_last_seen=_days_since(now_ms, last_seen),
        events=state.count("events"),
        events_by_channel={name: state.count(f"ch.{name}") for name in CHANNELS},
        events_by_type={name: state.count(f"type.{name}") for name in PAYLOAD_NAMES},
        last_channel=channel.value if channel else None,
        last_event_stage=stage.value if stage else None,
        app_errors=state.count("app_errors"),
        unsubscribes=state.count("msg.unsubscribe"),
    )


@dataclass(frozen=True)
class _Churn:
    risk: float
    reasons: tuple[ChurnReason, ...]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _churn(
    activity: Activity,
    orders: int,
    days_since_last_order: float | None,
    days_since_payment_failure: float | None,
    deliveries: tuple[int, int, int],
    cx: CxMetrics,
    consent: Mapping[str, bool],
    config: DeriveConfig,
) -> _Churn:
    w = config.churn_weights
    reasons: list[ChurnReason] = []

    def feature(code: str, weight: float, x: float, description: str) -> None:
        """A churn feature: x is 0..1, or a capped count; it contributes weight * x."""
        reasons.append(ChurnReason(code, description, weight * x))

    if activity.days_since_last_seen is not None:
        days = activity.days_since_last_seen
        ramp = _ramp(days, config.inactivity_grace_days, config.inactivity_full_days)
        feature("inactive", w.inactivity, ramp, f"Last seen {days:.0f} days ago")
    if orders > 0 and days_since_last_order is not None:
        days = days_since_last_order
        ramp = _ramp(days, config.order_lapse_grace_days, config.order_lapse_full_days)
        feature("order_lapse", w.order_lapse, ramp, f"Last order {days:.0f} days ago")
    if cx.nps_category == "detractor":
        nps = f"Last NPS score was {cx.nps_last} (detractor)"
        feature("nps_detractor", w.nps_detractor, 1.0, nps)
    if cx.csat_decayed is not None:
        low = _ramp(config.low_csat_from - cx.csat_decayed, 0.0, config.low_csat_from - 1.0)
        csat = f"Recent CSAT averages {cx.csat_decayed:.1f} of 5"
        feature("low_csat", w.low_csat, low, csat)
    if cx.open_complaints:
        n = cx.open_complaints
        capped = min(n, config.open_complaints_cap)
        feature("open_complaints", w.open_complaints, capped, _plural(n, "open complaint"))
    if cx.repeat_contacts_30d:
        n = cx.repeat_contacts_30d
        capped = min(n, config.repeat_contacts_cap)
        repeats = f"{_plural(n, 'repeat support contact')} in 30 days"
        feature("repeat_contacts", w.repeat_contacts, capped, repeats)
    if (
        days_since_payment_failure is not None
        and days_since_payment_failure <= config.payment_failure_days
    ):
        failed_ago = f"Payment failed {days_since_payment_failure:.0f} days ago"
        feature("payment_failure", w.payment_failure, 1.0, failed_ago)
    delivered, late, failed = deliveries
    if late + failed:
        share = min(1.0, (late + failed) / max(delivered + failed, 1))
        problems = f"{late + failed} of {delivered + failed} deliveries late or failed"
        feature("delivery_problems", w.delivery_problems, share, problems)
    if cx.sentiment is not None and cx.sentiment < 0:
        sentiment = f"Recent message sentiment is {cx.sentiment:.2f}"
        feature("negative_sentiment", w.negative_sentiment, min(1.0, -cx.sentiment), sentiment)
    if activity.unsubscribes or consent.get("marketing_email") is False:
        feature("unsubscribed", w.unsubscribed, 1.0, "Unsubscribed from marketing messages")
    contributions = [r for r in reasons if r.contribution != 0]
    z = config.churn_bias + sum(c.contribution for c in contributions)
    risk = 1.0 / (1.0 + math.exp(-z))
    positive = sorted(
        (c for c in contributions if c.contribution > 0), key=lambda c: (-c.contribution, c.code)
    )
    return _Churn(risk, tuple(positive[:3]))


def _band(risk: float, config: DeriveConfig) -> str:
    low, high = config.churn_bands
    if risk < low:
        return "low"
    return "medium" if risk < high else "high"


def value_tier(clv_total: float, config: DeriveConfig = DEFAULT_CONFIG) -> str:
    for name, threshold in config.value_tiers:
        if clv_total >= threshold:
            return name
    return "low" if clv_total > 0 else "none"


def _stage(
    activity: Activity,
    commerce: Commerce,
    cx: CxMetrics,
    now_ms: int,
    config: DeriveConfig,
) -> tuple[str, str]:
    """(stage, rule): the first rule that holds, in this order."""
    if cx.open_complaints:
        return "support", "open_complaint"
    if cx.unresolved_contacts_7d:
        return "support", "unresolved_contact"
    failure = commerce.last_payment_failure_at_ms
    if (
        commerce.payment_failure_open
        and failure is not None
        and now_ms - failure <= config.checkout_days * DAY_MS
    ):
        return "purchase", "payment_failed_since_last_order"
    if commerce.orders == 0:
        if any(activity.events_by_type.get(t, 0) for t in CONSIDERATION_TYPES):
            return "consideration", "shopping_without_order"
        return "awareness", "no_shopping_activity"
    if (
        commerce.days_since_first_order is not None
        and commerce.days_since_first_order <= config.onboarding_days
    ):
        return "onboarding", "first_order_recent"
    if commerce.recency_days is not None and commerce.recency_days > config.renewal_days:
        return "renewal", "last_order_old"
    if cx.nps_category == "promoter":
        return "advocacy", "nps_promoter"
    if cx.review_average is not None and cx.review_average >= config.advocacy_review_average:
        return "advocacy", "high_reviews"
    return "usage", "active_customer"


def derive(state: ProfileState, now_ms: int, config: DeriveConfig = DEFAULT_CONFIG) -> Derived:
    activity = _activity(state, now_ms)
    cx = _cx(state, now_ms, config)
    consent = _consent(state)

    orders = state.count("orders")
    cancellations = state.count("cancellations")
    net_orders = max(orders - cancellations, 0)
    revenue, refunds = state.sum("revenue"), state.sum("refunds")
    net_revenue = revenue - refunds
    first_order = _ms(state.minima.get("first_order_at"))
    last_order = _ms(state.maxima.get("last_order_at"))
    last_failure = _ms(state.maxima.get("last_payment_failure_at"))
    days_since_first_order = _days_since(now_ms, first_order)
    days_since_last_order = _days_since(now_ms, last_order)
    days_since_failure = _days_since(now_ms, last_failure)
    last_problem = _ms(state.maxima.get("last_delivery_problem_at"))
    last_ok = _ms(state.maxima.get("last_delivery_ok_at"))
    deliveries = (
        state.count("deliveries"),
        state.count("late_deliveries"),
        state.count("failed_deliveries"),
    )

    churn = _churn(
        activity,
        orders,
        days_since_last_order,
        days_since_failure,
        deliveries,
        cx,
        consent,
        config,
    )

    aov = net_revenue / net_orders if net_orders else 0.0
    tenure_months = max(config.clv_min_tenure_months, (days_since_first_order or 0.0) / MONTH_DAYS)
    per_month = net_orders / tenure_months if first_order is not None else 0.0
    clv_historic = net_revenue
    clv_predicted = per_month * config.clv_horizon_months * max(aov, 0.0) * (1.0 - churn.risk)
    clv_total = clv_historic + clv_predicted
    recency = None if days_since_last_order is None else int(days_since_last_order)
    currency = state.latest.get("currency")

    commerce = Commerce(
        orders=orders,
        cancellations=cancellations,
        net_orders=net_orders,
        revenue=revenue,
        refunds=refunds,
        net_revenue=net_revenue,
        average_order_value=aov,
        returns=state.count("returns"),
        payment_failures=state.count("payment_failures"),
        deliveries=deliveries[0],
        late_deliveries=deliveries[1],
        failed_deliveries=deliveries[2],
        currency_code=currency.value if currency else None,
        clv_historic=clv_historic,
        clv_predicted=clv_predicted,
        clv_total=clv_total,
        purchases_per_month=per_month,
        first_order_at_ms=first_order,
        last_order_at_ms=last_order,
        last_payment_failure_at_ms=last_failure,
        days_since_first_order=days_since_first_order,
        days_since_last_payment_failure=days_since_failure,
        payment_failure_open=_later(last_failure, last_order),
        last_delivery_problem_at_ms=last_problem,
        days_since_delivery_problem=_days_since(now_ms, last_problem),
        delivery_problem_open=_later(last_problem, last_ok),
        recency_days=recency,
        frequency=net_orders,
        monetary=net_revenue,
        rfm_recency=0 if recency is None else _score_at_most(recency, config.rfm_recency_days),
        rfm_frequency=_score_at_least(net_orders, config.rfm_frequency_orders) if orders else 0,
        rfm_monetary=_score_at_least(net_revenue, config.rfm_monetary) if orders else 0,
    )
    stage, rule = _stage(activity, commerce, cx, now_ms, config)
    return Derived(
        profile_id=state.profile_id,
        computed_at_ms=now_ms,
        activity=activity,
        commerce=commerce,
        cx=cx,
        journey_stage=stage,
        journey_rule=rule,
        churn_risk=churn.risk,
        churn_band=_band(churn.risk, config),
        churn_reasons=churn.reasons,
        value_tier=value_tier(clv_total, config),
        clv_total=clv_total,
        traits={key: _trait_value(latest.value) for key, latest in state.traits.items()},
        consent=consent,
    )


@functools.cache
def field_names() -> frozenset[str]:
    """Every field `Derived.fields()` can produce, except `traits.*` and `consent.*`."""
    return frozenset(derive(ProfileState("-"), 0).fields())
