"""The simulated world, the same for every policy: people, the negative experiences that
come and go in their lives, and the sequence of decision requests (who, when, where).

Everything here is fixed by the seed and does not depend on what any policy shows; what
does (the contact ledger, and the lasting dent an unwelcome offer leaves) lives in the
run (`simulate.py`). A person's profile at a moment is the profile service's flat fields
(docs/profile-metrics.md, "Fields") as of then, with the segments of the shipped
segments file, so the catalogue's eligibility and suitability rules fire on them for real.

People (a few thousand): value tier (from `clv_total`, with the profile's thresholds),
orders, average order value, deliveries, first-order and last-order age (new and lapsed
customers), the last NPS answer and its age, CSAT, CES, the device they use, whether
they have the app, consents (everyone allows personalisation; marketing e-mail, push and
SMS vary) and how active they are.

Negative experiences, each an episode with a start and an end within the run:
  complaint         open_complaints >= 1 while open (2-10 days); half of them bring a
                    repeat contact (repeat_contacts_30d for 30 days) and a phone call
  payment failure   payment_failure_open until the next order (6 hours - 3 days)
  late delivery     delivery_problem_open until it arrives (1-5 days)
  detractor answer  nps_category = detractor from then on (the suitability rule holds for
                    30 days, days_since_nps <= 30)
  incident          open_incidents >= 1 while the alerts service has it open (1-3 days)
A person's proneness to them varies (some have a bad month).

Requests: sessions over 28 days from Monday 2026-09-07, people picked in proportion to how
active they are, at hours with a daily rhythm: a web visit (home hero, product recs,
basket, account), an app visit (home banner, order status), the weekly e-mail, the daily
push, and, driven by the episodes, contact-centre calls (agent.panel) and service SMS.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from services.common.conditions import FieldValue, matching
from services.profile.domain.segments import Segment, load_segments

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
START_MS = int(datetime(2026, 9, 7, tzinfo=UTC).timestamp() * 1000)
HORIZON_DAYS = 28

TIERS = ("none", "low", "medium", "high", "vip")
TIER_WEIGHTS = (0.10, 0.34, 0.30, 0.17, 0.09)
# clv_total ranges per value tier (the profile's thresholds: vip >= 2000, high >= 1000,
# medium >= 250, low > 0).
TIER_CLV = {
    "none": (0.0, 0.0),
    "low": (20.0, 249.0),
    "medium": (250.0, 999.0),
    "high": (1000.0, 1999.0),
    "vip": (2000.0, 6000.0),
}
TIER_ORDERS = {"none": (0, 0), "low": (1, 3), "medium": (2, 8), "high": (5, 20), "vip": (10, 40)}
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_WEIGHTS = (0.55, 0.35, 0.10)
# Hours (UTC) of the day, weighted: quiet at night, busy at lunch and in the evening.
HOUR_WEIGHTS = (
    1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 9, 8, 6, 6, 6, 7, 9, 10, 10, 8, 5, 2,
)  # fmt: skip
PAGES = ("/c/jackets", "/c/knitwear", "/c/shoes", "/c/bags", "/c/home", "/p/sku-shoe-0042")

# Episodes per person over the run, on average, for a person of proneness 1.
EPISODE_RATES = {
    "complaint": 0.18,
    "payment_failure": 0.15,
    "late_delivery": 0.25,
    "detractor": 0.08,
    "incident": 0.05,
}
# How long each lasts, in hours (uniform in the range).
EPISODE_HOURS = {
    "complaint": (48.0, 240.0),
    "payment_failure": (6.0, 72.0),
    "late_delivery": (24.0, 120.0),
    "detractor": (30 * 24.0, 30 * 24.0),
    "incident": (24.0, 72.0),
}
REPEAT_CONTACT_DAYS = 30
# A CSAT answer after a complaint or late delivery is low, for this long.
LOW_CSAT_DAYS = 14


@dataclass(frozen=True)
class Episode:
    kind: str
    start_ms: int
    end_ms: int
    # A complaint that brought a repeat contact.
    repeat: bool = False


@dataclass(frozen=True)
class Person:
    person_id: str
    value_tier: str
    clv_total: float
    orders: int
    average_order_value: float
    deliveries: int
    # At the start of the run (None without orders / answers).
    days_since_first_order: int | None
    recency_days: int | None
    nps_last: int | None
    days_since_nps: int | None
    csat_last: int | None
    ces_last: int | None
    support_contacts_30d: int
    device: str
    has_app: bool
    consents: Mapping[str, bool]
    activity: float
    episodes: tuple[Episode, ...]


@dataclass(frozen=True)
class Request:
    """One decision request: who, when, where, and the seeded draws its outcome uses."""

    index: int
    person: int
    now_ms: int
    placement: str
    channel: str
    context: Mapping[str, FieldValue]
    # The person's previous request (days since, and its channel), for the profile's
    # days_since_last_seen and last_channel.
    days_since_last_seen: int
    last_channel: str
    # The outcome's uniform draw (common to every policy) and how long after the decision
    # the person acts.
    draw: float
    delay_ms: int


@dataclass
class World:
    people: list[Person]
    requests: list[Request]
    segments: list[Segment] = field(default_factory=list)

    def profile(self, request: Request) -> tuple[dict[str, FieldValue], frozenset[str]]:
        """The person's profile fields and segments at the request's moment."""
        person = self.people[request.person]
        fields = profile_fields(person, request)
        return fields, frozenset(matching(self.segments, fields))


def nps_category(score: int | None) -> str | None:
    if score is None:
        return None
    if score >= 9:
        return "promoter"
    if score >= 7:
        return "passive"
    return "detractor"


def churn_band(risk: float) -> str:
    return "low" if risk < 0.3 else "medium" if risk < 0.6 else "high"


def _ramp(value: float, low: float, high: float) -> float:
    return min(max((value - low) / (high - low), 0.0), 1.0)


def _days(ms: int) -> int:
    return max(ms // DAY_MS, 0)


def profile_fields(person: Person, request: Request) -> dict[str, FieldValue]:
    """The profile's flat fields at `request.now_ms`: the person's own, moved on by the
    time elapsed since the start, and the episodes open (or recent) at that moment."""
    now = request.now_ms
    elapsed_days = _days(now - START_MS)
    active = [e for e in person.episodes if e.start_ms <= now < e.end_ms]
    started = [e for e in person.episodes if e.start_ms <= now]
    complaints = sum(1 for e in active if e.kind == "complaint")
    incidents = sum(1 for e in active if e.kind == "incident")
    payment_open = any(e.kind == "payment_failure" for e in active)
    delivery_open = any(e.kind == "late_delivery" for e in active)
    repeats = sum(
        1
        for e in started
        if e.kind == "complaint" and e.repeat and now - e.start_ms < REPEAT_CONTACT_DAYS * DAY_MS
    )
    failures = [e.start_ms for e in started if e.kind == "payment_failure"]
    detractor = [e.start_ms for e in started if e.kind == "detractor"]
    nps_last = person.nps_last
    days_since_nps = None if person.days_since_nps is None else person.days_since_nps + elapsed_days
    if detractor:
        nps_last = 3
        days_since_nps = _days(now - max(detractor))
    csat = person.csat_last
    if any(
        e.kind in ("complaint", "late_delivery") and now - e.start_ms < LOW_CSAT_DAYS * DAY_MS
        for e in started
    ):
        csat = 2
    category = nps_category(nps_last)
    recency = None if person.recency_days is None else person.recency_days + elapsed_days
    first = (
        None
        if person.days_since_first_order is None
        else person.days_since_first_order + elapsed_days
    )
    # The profile's churn model, simplified (docs/profile-metrics.md, "Churn risk").
    z = -3.0
    z += 2.0 * _ramp(request.days_since_last_seen, 14, 90)
    if recency is not None:
        z += 1.5 * _ramp(recency, 60, 180)
    if category == "detractor":
        z += 1.5
    if csat is not None:
        z += 1.2 * min(max((4 - csat) / 3, 0.0), 1.0)
    z += 1.0 * min(complaints, 2) + 0.4 * min(repeats, 3)
    if failures and now - max(failures) <= 30 * DAY_MS:
        z += 0.8
    if delivery_open:
        z += 0.5
    if not person.consents.get("marketing_email", False):
        z += 0.3
    risk = 1 / (1 + math.exp(-z))

    if complaints:
        stage = "support"
    elif payment_open:
        stage = "purchase"
    elif person.orders == 0:
        stage = "consideration" if request.placement == "web.basket.banner" else "awareness"
    elif first is not None and first <= 30:
        stage = "onboarding"
    elif recency is not None and recency > 120:
        stage = "renewal"
    elif category == "promoter":
        stage = "advocacy"
    else:
        stage = "usage"

    fields: dict[str, FieldValue] = {
        "value_tier": person.value_tier,
        "clv_total": round(person.clv_total, 2),
        "orders": person.orders,
        "average_order_value": round(person.average_order_value, 2),
        "deliveries": person.deliveries,
        "days_since_first_order": first,
        "recency_days": recency,
        "nps_last": nps_last,
        "nps_category": category,
        "days_since_nps": days_since_nps,
        "csat_last": csat,
        "ces_last": person.ces_last if not complaints else 6,
        "open_complaints": complaints,
        "open_incidents": incidents,
        "repeat_contacts_30d": repeats,
        "support_contacts_30d": person.support_contacts_30d + 2 * repeats + complaints,
        "payment_failure_open": payment_open,
        "days_since_last_payment_failure": _days(now - max(failures)) if failures else None,
        "delivery_problem_open": delivery_open,
        "churn_risk": round(risk, 4),
        "churn_band": churn_band(risk),
        "journey_stage": stage,
        "last_channel": request.last_channel,
        "days_since_last_seen": request.days_since_last_seen,
    }
    if person.has_app:
        fields["ch.app"] = 5
    for purpose, granted in person.consents.items():
        fields[f"consent.{purpose}"] = granted
    return fields


def _person(rng: random.Random, index: int) -> Person:
    tier = rng.choices(TIERS, TIER_WEIGHTS)[0]
    low, high = TIER_CLV[tier]
    clv = rng.uniform(low, high) if high > 0 else 0.0
    lo, hi = TIER_ORDERS[tier]
    orders = rng.randint(lo, hi)
    new = orders > 0 and rng.random() < 0.12
    if new:
        orders = min(orders, 2)
    lapsed = orders > 0 and not new and rng.random() < 0.12
    first: int | None = None
    recency: int | None = None
    aov = 0.0
    if orders:
        first = rng.randint(1, 25) if new else rng.randint(60, 1500)
        recency = rng.randint(121, 400) if lapsed else rng.randint(0, min(first, 110))
        recency = min(recency, first)
        aov = rng.uniform(25, 70) * (1.0 + TIERS.index(tier) * 0.25)
    answered = rng.random() < 0.65
    nps = (
        rng.choices((10, 9, 8, 7, 5, 2), (0.22, 0.2, 0.17, 0.16, 0.15, 0.1))[0]
        if answered
        else None
    )
    return Person(
        person_id=f"sim-{index:05d}",
        value_tier=tier,
        clv_total=clv,
        orders=orders,
        average_order_value=aov,
        deliveries=max(orders - rng.randint(0, 1), 0),
        days_since_first_order=first,
        recency_days=recency,
        nps_last=nps,
        days_since_nps=rng.randint(31, 400) if answered else None,
        csat_last=rng.choices((5, 4, 3, 2, 1), (0.4, 0.3, 0.15, 0.1, 0.05))[0]
        if rng.random() < 0.6
        else None,
        ces_last=rng.randint(1, 7) if rng.random() < 0.4 else None,
        support_contacts_30d=rng.choices((0, 1, 2, 3), (0.7, 0.18, 0.08, 0.04))[0],
        device=rng.choices(DEVICES, DEVICE_WEIGHTS)[0],
        has_app=rng.random() < 0.5,
        consents={
            "personalisation": True,
            "marketing_email": rng.random() < 0.6,
            "marketing_push": rng.random() < 0.35,
            "marketing_sms": rng.random() < 0.25,
        },
        activity=rng.lognormvariate(0.0, 0.9),
        episodes=(),
    )


def _episodes(rng: random.Random, person: Person) -> tuple[Episode, ...]:
    proneness = rng.gammavariate(0.8, 1 / 0.8)
    out: list[Episode] = []
    end_of_run = START_MS + HORIZON_DAYS * DAY_MS
    for kind, rate in EPISODE_RATES.items():
        if kind == "late_delivery" and person.deliveries == 0:
            continue
        # Poisson arrivals over the run (plus a little before it, so some are open at the
        # start).
        t = START_MS - 5 * DAY_MS
        mean_gap_ms = (HORIZON_DAYS + 5) * DAY_MS / max(rate * proneness, 1e-9)
        while True:
            t += int(rng.expovariate(1.0) * mean_gap_ms)
            if t >= end_of_run:
                break
            low, high = EPISODE_HOURS[kind]
            duration = int(rng.uniform(low, high) * HOUR_MS)
            out.append(
                Episode(kind, t, t + duration, repeat=kind == "complaint" and rng.random() < 0.5)
            )
    return tuple(sorted(out, key=lambda e: e.start_ms))


# Sessions: (name, weight, placements drawn in order with their probability).
SESSIONS: tuple[tuple[str, float], ...] = (
    ("web", 0.45),
    ("app", 0.33),
    ("email", 0.14),
    ("push", 0.08),
)


def _session_placements(rng: random.Random, kind: str, person: Person) -> list[tuple[str, str]]:
    """(placement, channel) of each decision of a session."""
    if kind == "web":
        out = [("web.home.hero", "web")]
        out += [("web.product.recs", "web")] * rng.choice((0, 1, 1, 2))
        if rng.random() < 0.45:
            out.append(("web.basket.banner", "web"))
        if rng.random() < 0.2:
            out.append(("web.account.banner", "web"))
        return out
    if kind == "app":
        out = [("app.home.banner", "app")]
        if person.deliveries and rng.random() < 0.35:
            out.append(("app.order.status", "app"))
        return out
    if kind == "email":
        return [("email.weekly", "email")]
    if kind == "push":
        return [("push.daily", "push")]
    if kind == "agent":
        return [("agent.panel", rng.choice(("phone", "phone", "chat")))]
    return [("sms.service", "sms")]


def _context(
    rng: random.Random, placement: str, channel: str, person: Person
) -> dict[str, FieldValue]:
    if channel in ("web",):
        device: str | None = person.device
    elif channel in ("app", "push"):
        device = "mobile"
    else:
        device = None
    context: dict[str, FieldValue] = {"context.device": device, "context.cart_size": 0}
    if placement == "web.basket.banner":
        context["context.cart_size"] = rng.randint(1, 4)
        context["context.page"] = "/basket"
    elif placement == "web.product.recs":
        context["context.page"] = rng.choice(PAGES)
        if rng.random() < 0.25:
            context["context.attributes.weather"] = "rain"
    elif placement == "web.home.hero":
        context["context.page"] = "/"
    return context


def _start_time(rng: random.Random) -> int:
    day = rng.randrange(HORIZON_DAYS)
    hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
    return START_MS + day * DAY_MS + hour * HOUR_MS + rng.randrange(HOUR_MS)


def build(seed: int = 7, decisions: int = 20_000, people: int | None = None) -> World:
    """The world of a run: `people` (default: one per ~6.5 decisions, at least 300) and
    `decisions` requests in time order."""
    rng = random.Random(seed)
    count = people if people is not None else max(300, round(decisions / 6.5))
    population = [_person(rng, i) for i in range(count)]
    population = [replace(p, episodes=_episodes(rng, p)) for p in population]
    weights = [p.activity for p in population]
    cumulative: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)

    sessions: list[tuple[int, int, list[tuple[str, str]]]] = []
    planned = 0
    # Episode-driven contacts: a call to the contact centre for half the complaints and a
    # third of the incidents and late deliveries; a service SMS for late deliveries.
    for index, person in enumerate(population):
        for e in person.episodes:
            if e.start_ms < START_MS:
                continue
            call = {
                "complaint": 0.6,
                "incident": 0.35,
                "late_delivery": 0.25,
                "payment_failure": 0.2,
            }
            if rng.random() < call.get(e.kind, 0.0):
                t = e.start_ms + rng.randrange(max(min(e.end_ms - e.start_ms, 2 * DAY_MS), 1))
                sessions.append((t, index, _session_placements(rng, "agent", person)))
                planned += 1
            if e.kind == "late_delivery" and rng.random() < 0.5:
                t = e.start_ms + rng.randrange(6 * HOUR_MS)
                sessions.append((t, index, _session_placements(rng, "sms", person)))
                planned += 1
    names = [name for name, _ in SESSIONS]
    session_weights = [w for _, w in SESSIONS]
    while planned < decisions:
        index = bisect.bisect_left(cumulative, rng.random() * total)
        person = population[min(index, count - 1)]
        kind = rng.choices(names, session_weights)[0]
        if kind in ("app", "push") and not person.has_app:
            kind = "web"
        placements = _session_placements(rng, kind, person)
        sessions.append((_start_time(rng), min(index, count - 1), placements))
        planned += len(placements)

    sessions.sort(key=lambda s: (s[0], s[1]))
    raw: list[tuple[int, int, str, str]] = []
    for start, index, placements in sessions:
        t = start
        for placement, channel in placements:
            raw.append((t, index, placement, channel))
            t += rng.randint(30, 240) * 1000
    raw.sort(key=lambda r: (r[0], r[1]))
    raw = raw[:decisions]

    last_seen: dict[int, tuple[int, str]] = {}
    requests: list[Request] = []
    for i, (t, index, placement, channel) in enumerate(raw):
        person = population[index]
        previous = last_seen.get(index)
        if previous is None:
            since = rng.choice((0, 1, 2, 5, 10, 20, 40, 100))
            last = rng.choice(("web", "app", "email")) if person.has_app else "web"
        else:
            since = _days(t - previous[0])
            last = previous[1]
        last_seen[index] = (t, channel)
        requests.append(
            Request(
                index=i,
                person=index,
                now_ms=t,
                placement=placement,
                channel=channel,
                context=_context(rng, placement, channel, person),
                days_since_last_seen=since,
                last_channel=last,
                draw=rng.random(),
                delay_ms=rng.randint(5, 90) * 1000,
            )
        )
    return World(population, requests, load_segments())
