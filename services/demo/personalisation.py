"""The demo asks for next-best-action decisions where its customers meet the business, and
reports what they did with them: `cx.personalisation.v1.PersonalisationService` through
its public gRPC API only (Decide, ReportOutcome).

- `decision_points(journey)`: pure. The touchpoints of a journey where a decision is
  made: the web home page (web.home.hero), the first product page of a visit
  (web.product.recs), the basket before checkout and on coming back after a failed
  payment (web.basket.banner), the app's home screen (app.home.banner) and a phone call
  or chat with the contact centre (agent.panel), each for the identifier the customer is
  known by at that moment (their anonymous id before they sign up, their customer id
  after, the caller's phone number on the phone).
- `simulated_outcomes(...)`: pure. What a customer does with a shown action: an
  impression, then perhaps a click, an accept or a dismiss, with rates that depend on the
  action's kind and on whether the customer's experience went wrong so far.
- `return_visits(journey)`: pure. The demo replays 30 days of journeys in seconds, faster
  than the profile worker applies them, so most touchpoint decisions see a profile that
  has not caught up with the journey yet (often none at all). Once the profiles caught up
  (`ProfileCatchUp`), each signed-in customer comes back once: the home page (the app's
  for app users), and a call to the contact centre for those whose experience went wrong.
- `DecisionTally`: pure counting of the replies (the summary's personalisation section
  formats it), and every decision that showed an action with the reward the learner
  counts for it (`Rewarded`), in the order the replies came, for the learning curve and
  the holdout lift.
- `Personaliser`: the client. Each touchpoint decision is asked when the journey reaches
  its touchpoint, that is once the batch carrying the touchpoint's event was sent; a
  customer's decisions and outcomes are made in order, by one worker thread. When the
  service is unreachable the demo runs without decisions and the tally says why.
"""

from __future__ import annotations

import hashlib
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO, TypeAlias, TypeVar

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.personalisation.v1 import personalisation_pb2_grpc
from cx.profile.v1 import profile_pb2 as ppb
from cx.profile.v1 import profile_pb2_grpc

from services.common.experience import NegativeExperience as Kind
from services.common.experience import negative_experiences
from services.common.grpc_client import traced_channel
from services.demo.journeys import Journey
from services.personalisation.domain.learning import (
    FINAL_OUTCOMES,
    LearningConfigError,
    Rewards,
    load_learning,
)
from services.personalisation.settings import PersonalisationSettings

HERO = "web.home.hero"
BASKET = "web.basket.banner"
RECS = "web.product.recs"
APP_BANNER = "app.home.banner"
AGENT = "agent.panel"
# Placements in the order the summary shows them.
PLACEMENTS = (HERO, RECS, BASKET, APP_BANNER, AGENT)
# How many actions each placement shows.
MAX_ACTIONS = {HERO: 1, RECS: 3, BASKET: 1, APP_BANNER: 1, AGENT: 3}
SELLING = frozenset({"upsell", "cross_sell"})
RECOVERY = "service_recovery"
# The experiences after which a customer welcomes service recovery and turns selling down.
TROUBLE = frozenset(Kind)

TOUCHPOINT = "touchpoint"
RETURN = "return visit"

CONNECT_TIMEOUT_S = 3.0
CALL_TIMEOUT_S = 5.0
WORKERS = 8
# The longest the demo waits for its decisions, and for the profiles to catch up before
# the return visits (or for them to stop moving).
DRAIN_S = 600.0
CATCH_UP_S = 180.0
STALL_S = 30.0
# A call the service could not answer for now is tried again after these pauses.
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
RETRY_PAUSES_S = (0.2, 0.5, 1.0)
# With no call answered for this long (and every try failing), the demo stops asking.
GIVE_UP_S = 20.0
MAX_ERRORS_SHOWN = 3

T = TypeVar("T")
IdentifierType: TypeAlias = ppb.IdentifierType.ValueType
Outcome: TypeAlias = ev.OfferOutcome.Outcome.ValueType
IMPRESSION = ev.OfferOutcome.OUTCOME_IMPRESSION
CLICK = ev.OfferOutcome.OUTCOME_CLICK
ACCEPT = ev.OfferOutcome.OUTCOME_ACCEPT
DISMISS = ev.OfferOutcome.OUTCOME_DISMISS
OUTCOME_NAMES: dict[Outcome, str] = {
    IMPRESSION: "impression",
    CLICK: "click",
    ACCEPT: "accept",
    DISMISS: "dismiss",
}


# --- where decisions are made (pure) --------------------------------------------------------


@dataclass(frozen=True)
class DecisionPoint:
    """One decision to ask for: where, for whom (as known then), with what context."""

    customer_index: int
    customer_id: str
    # The touchpoint event after which the decision is made.
    event_id: str
    placement: str
    channel: ev.Channel.ValueType
    identifier_type: IdentifierType
    identifier: str
    page: str
    device: str
    cart: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    # The negative experiences the customer's events showed up to this touchpoint.
    experienced: frozenset[Kind] = frozenset()
    # TOUCHPOINT (during the journey) or RETURN (a visit after the profiles caught up).
    phase: str = TOUCHPOINT

    @property
    def max_actions(self) -> int:
        return MAX_ACTIONS.get(self.placement, 1)

    @property
    def troubled(self) -> bool:
        return bool(self.experienced & TROUBLE)

    def request(self) -> pb.DecideRequest:
        return pb.DecideRequest(
            identifier=ppb.Identifier(type=self.identifier_type, value=self.identifier),
            placement=self.placement,
            channel=self.channel,
            context=pb.RequestContext(
                device=self.device,
                locale="en-GB",
                page=self.page,
                cart_product_ids=list(self.cart),
                attributes=dict(self.attributes),
            ),
            max_actions=self.max_actions,
            explain=True,
        )


def known_as(ids: ev.Identities) -> tuple[IdentifierType, str]:
    """The identifier a touchpoint knows the customer by: the customer id when signed in,
    else the caller's phone number, their email, or the anonymous (cookie or device) id."""
    if ids.customer_id:
        return ppb.IDENTIFIER_TYPE_CUSTOMER_ID, ids.customer_id
    if ids.phone:
        return ppb.IDENTIFIER_TYPE_PHONE, ids.phone
    if ids.email:
        return ppb.IDENTIFIER_TYPE_EMAIL, ids.email
    return ppb.IDENTIFIER_TYPE_ANONYMOUS_ID, ids.anonymous_id


def web_device(journey: Journey) -> str:
    """The device a customer browses the web on: stable per customer, 60% mobile."""
    digest = hashlib.blake2b(journey.customer.anonymous_id.encode(), digest_size=2).digest()
    return "mobile" if int.from_bytes(digest) % 100 < 60 else "desktop"


def decision_points(journey: Journey) -> list[DecisionPoint]:
    """Where this journey asks for a decision, in event order (see the module doc)."""
    c = journey.customer
    device = web_device(journey)
    experienced: set[Kind] = set()
    carts: dict[str, list[str]] = {}
    cart_id = ""
    payment_failed = False
    after_home = False
    out: list[DecisionPoint] = []
    events = journey.events

    def point(
        event: ev.TouchpointEvent,
        placement: str,
        page: str,
        device: str,
        cart: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        kind, value = known_as(event.identities)
        out.append(
            DecisionPoint(
                customer_index=c.index,
                customer_id=c.customer_id,
                event_id=event.event_id,
                placement=placement,
                channel=event.channel,
                identifier_type=kind,
                identifier=value,
                page=page,
                device=device,
                cart=tuple(cart),
                attributes=tuple(sorted((attributes or {}).items())),
                experienced=frozenset(experienced),
            )
        )

    for i, event in enumerate(events):
        experienced.update(negative_experiences(event))
        payload = event.WhichOneof("payload")
        web = event.channel == ev.CHANNEL_WEB
        if event.touchpoint == "web.home":
            point(event, HERO, "/", device)
            after_home = True
        elif event.touchpoint == "app.home":
            point(event, APP_BANNER, "home", "mobile")
        elif event.touchpoint == "catalogue.product" and after_home:
            product = event.product_view
            page = f"/p/{product.product_id}"
            point(event, RECS, page, device, attributes={"category": product.category})
            after_home = False
        elif payload == "cart_change" and web:
            change = event.cart_change
            cart_id = change.cart_id
            items = carts.setdefault(cart_id, [])
            if change.action == ev.CartChange.ACTION_ADD:
                items.append(change.product_id)
            elif change.product_id in items:
                items.remove(change.product_id)
            following = events[i + 1] if i + 1 < len(events) else None
            last_change = following is None or following.cart_change.cart_id != cart_id
            if last_change:  # the customer looks at the basket before checking out
                point(event, BASKET, "/basket", device, carts[cart_id])
        elif payload == "payment_failed":
            payment_failed = True
        elif payload == "order_placed":
            payment_failed = False
        elif event.touchpoint == "checkout.delivery" and web and payment_failed:
            # Back to the basket after a failed payment.
            point(event, BASKET, "/basket", device, carts.get(cart_id, ()))
        elif payload == "support_contact" and event.channel in (ev.CHANNEL_PHONE, ev.CHANNEL_CHAT):
            point(event, AGENT, "agent", "desktop")
    return out


def return_visits(journey: Journey) -> list[DecisionPoint]:
    """A signed-in customer's visit after the journey, by customer id: the home page (the
    app's for app users), then, when their experience went wrong, a call to the contact
    centre (by their phone number, or a chat when they gave none)."""
    c = journey.customer
    if not c.identifies:
        return []
    on_app = c.app_user
    out = [
        DecisionPoint(
            customer_index=c.index,
            customer_id=c.customer_id,
            event_id=f"{c.customer_id}/return",
            placement=APP_BANNER if on_app else HERO,
            channel=ev.CHANNEL_APP if on_app else ev.CHANNEL_WEB,
            identifier_type=ppb.IDENTIFIER_TYPE_CUSTOMER_ID,
            identifier=c.customer_id,
            page="home" if on_app else "/",
            device="mobile" if on_app else web_device(journey),
            experienced=journey.negative,
            phase=RETURN,
        )
    ]
    if journey.negative:
        kind, value = (
            (ppb.IDENTIFIER_TYPE_PHONE, c.phone)
            if c.phone
            else (ppb.IDENTIFIER_TYPE_CUSTOMER_ID, c.customer_id)
        )
        out.append(
            DecisionPoint(
                customer_index=c.index,
                customer_id=c.customer_id,
                event_id=f"{c.customer_id}/return-call",
                placement=AGENT,
                channel=ev.CHANNEL_PHONE if c.phone else ev.CHANNEL_CHAT,
                identifier_type=kind,
                identifier=value,
                page="agent",
                device="desktop",
                experienced=journey.negative,
                phase=RETURN,
            )
        )
    return out


def personalised_customers(customers: int, share: float, seed: int) -> frozenset[int]:
    """Indexes of the customers whose touchpoints ask for decisions: exactly `share` of
    them (rounded), the same for the same seed."""
    count = round(customers * min(max(share, 0.0), 1.0))
    return frozenset(random.Random(f"{seed}:personalise").sample(range(customers), count))


def points_by_event(
    journeys: Iterable[Journey], chosen: frozenset[int]
) -> dict[str, list[DecisionPoint]]:
    """The decision points of the chosen customers, by the event id they follow."""
    out: dict[str, list[DecisionPoint]] = {}
    for journey in journeys:
        if journey.customer.index in chosen:
            for p in decision_points(journey):
                out.setdefault(p.event_id, []).append(p)
    return out


# --- what customers do with what they are shown (pure) -------------------------------------


@dataclass(frozen=True)
class Rates:
    """Shares of impressions: accepted (after a click), clicked only, dismissed."""

    accept: float
    click: float
    dismiss: float


# (kind, troubled) -> rates. Small for selling and prompts; service recovery shown to
# someone whose experience went wrong is taken up often, and they turn selling down.
RATES: dict[tuple[str, bool], Rates] = {
    (RECOVERY, True): Rates(0.35, 0.20, 0.10),
    (RECOVERY, False): Rates(0.02, 0.05, 0.30),
    ("upsell", True): Rates(0.002, 0.01, 0.50),
    ("upsell", False): Rates(0.01, 0.04, 0.08),
    ("cross_sell", True): Rates(0.003, 0.01, 0.45),
    ("cross_sell", False): Rates(0.015, 0.05, 0.08),
    ("retention", True): Rates(0.04, 0.05, 0.20),
    ("retention", False): Rates(0.03, 0.05, 0.10),
    ("loyalty", True): Rates(0.01, 0.03, 0.30),
    ("loyalty", False): Rates(0.03, 0.06, 0.06),
    ("survey", True): Rates(0.05, 0.05, 0.30),
    ("survey", False): Rates(0.08, 0.05, 0.15),
    ("information", True): Rates(0.0, 0.08, 0.05),
    ("information", False): Rates(0.0, 0.08, 0.05),
    ("onboarding", True): Rates(0.01, 0.03, 0.20),
    ("onboarding", False): Rates(0.03, 0.05, 0.10),
}
DEFAULT_RATES = Rates(0.01, 0.03, 0.10)


def simulated_outcomes(kind: str, troubled: bool, rng: random.Random) -> list[Outcome]:
    """What a customer does with one shown action, in order: always an impression, then an
    accept (after a click), a click, a dismiss, or nothing more."""
    rates = RATES.get((kind, troubled), DEFAULT_RATES)
    roll = rng.random()
    if roll < rates.accept:
        return [IMPRESSION, CLICK, ACCEPT]
    if roll < rates.accept + rates.click:
        return [IMPRESSION, CLICK]
    if roll < rates.accept + rates.click + rates.dismiss:
        return [IMPRESSION, DISMISS]
    return [IMPRESSION]


# --- counting the replies (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One decision worth showing: for whom, where, and the reply."""

    point: DecisionPoint
    reply: pb.DecideResponse

    def merit(self) -> tuple[int, ...]:
        """How well it shows experience-aware suitability (higher is better)."""
        r = self.reply
        held = sum(1 for f in r.filtered if is_held_back_selling(f))
        recovery_first = bool(r.actions) and r.actions[0].kind == RECOVERY
        return (
            int("open_complaint" in r.experience_signals),
            int(recovery_first),
            int(held > 0),
            int(not r.holdout),
            min(len(r.actions), 3),
            held,
        )


def is_held_back_selling(f: pb.FilteredAction) -> bool:
    """An upsell or cross-sell that the experience rules (suitability) held back."""
    return f.stage == pb.STAGE_SUITABILITY and f.kind in SELLING


BASIS_NAMES = {
    pb.BASIS_PROFILE: "profile",
    pb.BASIS_NO_PERSONALISATION_CONSENT: "no personalisation consent",
    pb.BASIS_UNKNOWN_PROFILE: "unknown profile",
    pb.BASIS_ANONYMOUS: "anonymous",
}
LEARNED = "learned"
POLICY_NAMES = {
    pb.DECISION_POLICY_LEARNED: LEARNED,
    pb.DECISION_POLICY_STATIC: "static",
    pb.DECISION_POLICY_CONTROL: "control",
    pb.DECISION_POLICY_GENERIC: "generic",
}
TREATMENT = "treatment"
HOLDOUT = "holdout"
STAGE_NAMES = {
    pb.STAGE_ELIGIBILITY: "eligibility",
    pb.STAGE_CONSENT: "consent",
    pb.STAGE_SUITABILITY: "suitability",
    pb.STAGE_CONTACT_POLICY: "contact policy",
    pb.STAGE_PRIORITISATION: "prioritisation",
}


@dataclass
class Rewarded:
    """A decision that showed an action, with the reward the learner counts for it:
    `Rewards.settle` over the outcomes the demo reported for its FIRST action, up to the
    first accept or dismiss (which settle it); no outcome is `no_outcome`."""

    decision_id: str
    placement: str
    # TREATMENT or HOLDOUT.
    group: str
    # learned, static, control, generic (POLICY_NAMES), else unspecified.
    policy: str
    # The learned model's version (policy learned), else empty.
    model_version: str
    # profile, anonymous, unknown profile, no personalisation consent (BASIS_NAMES).
    basis: str
    action_id: str
    business_value: float
    reward: float
    outcomes: list[str] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return any(o in FINAL_OUTCOMES for o in self.outcomes)


def learning_rewards(path: Path | None = None) -> tuple[Rewards, str]:
    """The rewards the learner counts (the service's learning file,
    PERSONALISATION_LEARNING_FILE), and why the defaults are used instead when the file
    cannot be read (else empty)."""
    path = path or PersonalisationSettings().learning_file
    try:
        return load_learning(path).rewards, ""
    except LearningConfigError as exc:
        return Rewards(), f"the learning file could not be read, so the default rewards: {exc}"


@dataclass
class DecisionTally:
    """What the demo's Decide and ReportOutcome calls got back, counted as they come."""

    target: str = ""
    # Why no decision was asked for at all (the service was not reachable), else empty.
    unavailable: str = ""
    # Why the demo stopped asking part way, else empty.
    gave_up: str = ""
    # When the return visits were asked (how the wait for the profiles went).
    return_when: str = ""
    points: int = 0
    customers: int = 0
    decisions: int = 0
    skipped: int = 0
    people: set[str] = field(default_factory=set)
    holdout_people: set[str] = field(default_factory=set)
    holdout: int = 0
    by_placement: Counter[str] = field(default_factory=Counter)
    # (action, placement) -> times shown.
    shown: Counter[tuple[str, str]] = field(default_factory=Counter)
    shown_by_kind: Counter[str] = field(default_factory=Counter)
    empty: Counter[str] = field(default_factory=Counter)
    basis: Counter[str] = field(default_factory=Counter)
    signals: Counter[str] = field(default_factory=Counter)
    # (stage, policy) -> actions filtered out, for consent, suitability and contact policy.
    filtered: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Stage -> actions filtered out (every stage).
    filtered_by_stage: Counter[str] = field(default_factory=Counter)
    # Suitability: policy -> kind -> selling actions held back.
    held_back: Counter[tuple[str, str]] = field(default_factory=Counter)
    held_back_decisions: int = 0
    held_back_customers: set[str] = field(default_factory=set)
    # Decisions whose first action is service recovery while a suitability rule held.
    recovery_first: int = 0
    with_signals: int = 0
    # Phase (TOUCHPOINT, RETURN) -> decisions; (phase, basis) -> decisions; phase ->
    # decisions where a suitability rule held, selling actions held back, decisions led
    # by service recovery while a rule held.
    by_phase: Counter[str] = field(default_factory=Counter)
    basis_by_phase: Counter[tuple[str, str]] = field(default_factory=Counter)
    signals_by_phase: Counter[str] = field(default_factory=Counter)
    held_back_by_phase: Counter[str] = field(default_factory=Counter)
    recovery_first_by_phase: Counter[str] = field(default_factory=Counter)
    # Contact policy: decisions in which a cap held an action back.
    capped_decisions: int = 0
    # (kind, outcome) -> outcomes reported.
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    # "Decide UNAVAILABLE" -> calls that failed; the first few messages.
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    example: Example | None = None
    # What an outcome is worth (the learner's rewards); why they are the defaults.
    rewards: Rewards = field(default_factory=Rewards)
    rewards_note: str = ""
    # Every decision that showed an action, in the order the replies came.
    rewarded: list[Rewarded] = field(default_factory=list)
    # Policy (POLICY_NAMES) -> decisions; model version -> decisions, first seen first,
    # and the version of the latest decision that used one.
    policies: Counter[str] = field(default_factory=Counter)
    model_versions: Counter[str] = field(default_factory=Counter)
    last_model_version: str = ""
    _by_decision: dict[str, Rewarded] = field(default_factory=dict, repr=False)

    @property
    def outcomes_reported(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def add_decision(self, point: DecisionPoint, reply: pb.DecideResponse) -> None:
        self.decisions += 1
        person = reply.profile_id or f"{point.identifier_type}:{point.identifier}"
        self.people.add(person)
        if reply.holdout:
            self.holdout += 1
            self.holdout_people.add(person)
        self.by_placement[point.placement] += 1
        basis = BASIS_NAMES.get(reply.basis, "unspecified")
        self.basis[basis] += 1
        self.by_phase[point.phase] += 1
        self.basis_by_phase[point.phase, basis] += 1
        self.signals.update(reply.experience_signals)
        if not reply.actions:
            self.empty[point.placement] += 1
        for action in reply.actions:
            self.shown[action.action_id, point.placement] += 1
            self.shown_by_kind[action.kind] += 1
        held = capped = False
        for f in reply.filtered:
            stage = STAGE_NAMES.get(f.stage, "unspecified")
            self.filtered_by_stage[stage] += 1
            if f.stage in (pb.STAGE_CONSENT, pb.STAGE_SUITABILITY, pb.STAGE_CONTACT_POLICY):
                self.filtered[stage, f.policy] += 1
            if is_held_back_selling(f):
                self.held_back[f.policy, f.kind] += 1
                self.held_back_by_phase[point.phase] += 1
                held = True
            capped = capped or f.stage == pb.STAGE_CONTACT_POLICY
        if held:
            self.held_back_decisions += 1
            self.held_back_customers.add(point.customer_id)
        if capped:
            self.capped_decisions += 1
        if reply.experience_signals:
            self.with_signals += 1
            self.signals_by_phase[point.phase] += 1
            if reply.actions and reply.actions[0].kind == RECOVERY:
                self.recovery_first += 1
                self.recovery_first_by_phase[point.phase] += 1
        candidate = Example(point, reply)
        if self.example is None or candidate.merit() > self.example.merit():
            self.example = candidate
        policy = POLICY_NAMES.get(reply.policy, "unspecified")
        self.policies[policy] += 1
        if reply.model_version:
            self.model_versions[reply.model_version] += 1
            self.last_model_version = reply.model_version
        if reply.actions:
            first = reply.actions[0]
            entry = Rewarded(
                decision_id=reply.decision_id,
                placement=point.placement,
                group=HOLDOUT if reply.holdout else TREATMENT,
                policy=policy,
                model_version=reply.model_version,
                basis=basis,
                action_id=first.action_id,
                business_value=first.score.business_value,
                reward=self.rewards.no_outcome,
            )
            self.rewarded.append(entry)
            if reply.decision_id:
                self._by_decision[reply.decision_id] = entry

    def add_outcome(
        self, kind: str, outcome: Outcome, decision_id: str = "", action_id: str = ""
    ) -> None:
        """Counts a reported outcome; one of a decision's first action (`decision_id`,
        `action_id`) also settles that decision's reward, until an accept or dismiss."""
        name = OUTCOME_NAMES.get(outcome, str(outcome))
        self.outcomes[kind, name] += 1
        entry = self._by_decision.get(decision_id) if decision_id else None
        if entry is None or entry.action_id != action_id or entry.settled:
            return
        if outcome in OUTCOME_NAMES:
            entry.outcomes.append(name)
            entry.reward = self.rewards.settle(entry.outcomes, entry.business_value)

    def add_error(self, call: str, code: str, details: str) -> None:
        self.errors[f"{call} {code}"] += 1
        if len(self.error_samples) < MAX_ERRORS_SHOWN:
            self.error_samples.append(f"{call}: {code}: {details}")


# --- the client ----------------------------------------------------------------------------


def _rpc_error(exc: grpc.RpcError) -> tuple[str, str]:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return code, details or ""


class ProfileCatchUp:
    """Waits until the profile worker has applied the run's events, read through
    `ProfileService.GetStats` (events finished with since `start`)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._start: int | None = None
        self.error = ""

    def _finished(self, stub: profile_pb2_grpc.ProfileServiceStub) -> int:
        stats: ppb.GetStatsResponse = stub.GetStats(ppb.GetStatsRequest(), timeout=CALL_TIMEOUT_S)
        return stats.events_applied + stats.events_blocked + stats.events_suppressed

    def start(self) -> None:
        try:
            with traced_channel(self.address) as channel:
                self._start = self._finished(profile_pb2_grpc.ProfileServiceStub(channel))
        except grpc.RpcError as exc:
            code, _ = _rpc_error(exc)
            self.error = f"the profile service at {self.address} did not answer: {code}"

    def wait(
        self,
        target: int,
        stop: threading.Event,
        timeout_s: float = CATCH_UP_S,
        stall_s: float = STALL_S,
    ) -> str:
        """Waits for `target` events (or nothing moving for `stall_s`, or `timeout_s`);
        says how it went."""
        if self._start is None:
            return f"without waiting for the profiles ({self.error or 'not measured'})"
        began = last_change = time.monotonic()
        seen = -1
        try:
            with traced_channel(self.address) as channel:
                stub = profile_pb2_grpc.ProfileServiceStub(channel)
                while not stop.is_set():
                    done = self._finished(stub) - self._start
                    now = time.monotonic()
                    if done != seen:
                        seen, last_change = done, now
                    if done >= target:
                        return f"after the profiles caught up in {now - began:.1f}s"
                    if now - last_change > stall_s or now - began > timeout_s:
                        return (
                            f"with the profiles behind ({done:,} of {target:,} events "
                            f"applied after {now - began:.0f}s)"
                        )
                    stop.wait(0.5)
        except grpc.RpcError as exc:
            code, _ = _rpc_error(exc)
            return f"without waiting for the profiles (GetStats: {code})"
        return "interrupted"


class Personaliser:
    """Asks for the decisions of `points` as their events are sent (`offer`), and reports
    simulated outcomes; `revisit` then asks for the return visits. Everything is counted
    in `tally`. A customer's decisions go to one worker, in order."""

    def __init__(
        self,
        target: str,
        points: Mapping[str, Sequence[DecisionPoint]],
        seed: int,
        workers: int = WORKERS,
        rewards: Rewards | None = None,
    ) -> None:
        self.target = target
        self.points = points
        self.seed = seed
        total = sum(len(v) for v in points.values())
        customers = {p.customer_index for v in points.values() for p in v}
        note = ""
        if rewards is None:
            rewards, note = learning_rewards()
        self.tally = DecisionTally(
            target=target,
            points=total,
            customers=len(customers),
            rewards=rewards,
            rewards_note=note,
        )
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._queued = 0
        self._done = 0
        self._last_answer = time.monotonic()
        self._channel: grpc.Channel | None = None
        self._stub: personalisation_pb2_grpc.PersonalisationServiceStub | None = None
        self._queues: list[queue.SimpleQueue[DecisionPoint | None]] = []
        self._threads: list[threading.Thread] = []
        self._workers = max(1, workers)

    @property
    def active(self) -> bool:
        return self._stub is not None

    def start(self, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> Personaliser:
        """Connects and starts the workers; without an answer, the tally says why and
        nothing is asked."""
        if not self.tally.points:
            return self
        channel = traced_channel(self.target)
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            channel.close()
            self.tally.unavailable = (
                f"the personalisation service at {self.target} did not answer within "
                f"{connect_timeout_s:g}s, so the demo asked for no decisions (is it running? "
                "`make status`; `bash deploy/local/stack.sh services-up` starts it)"
            )
            return self
        self._channel = channel
        self._stub = personalisation_pb2_grpc.PersonalisationServiceStub(channel)
        for n in range(self._workers):
            q: queue.SimpleQueue[DecisionPoint | None] = queue.SimpleQueue()
            thread = threading.Thread(target=self._work, args=(q,), name=f"demo-nba-{n}")
            thread.daemon = True
            self._queues.append(q)
            self._threads.append(thread)
            thread.start()
        return self

    def _put(self, points: Iterable[DecisionPoint]) -> None:
        for p in points:
            with self.lock:
                self._queued += 1
            self._queues[p.customer_index % len(self._queues)].put(p)

    def offer(self, events: Iterable[ev.TouchpointEvent]) -> None:
        """Called once `events` were sent: queues the decisions that follow them."""
        if self._queues:
            self._put(p for e in events for p in self.points.get(e.event_id, ()))

    def progress(self) -> str:
        if self.tally.unavailable:
            return "decisions: service unavailable"
        return f"decisions {self._done:,}/{self._queued:,}"

    def drain(self, stream: TextIO | None = None, timeout_s: float = DRAIN_S) -> None:
        """Waits for the queued decisions, with a progress line on `stream` every 2 s."""
        deadline = time.monotonic() + timeout_s
        shown = time.monotonic()
        while self._done < self._queued and not self.stop.is_set():
            if time.monotonic() > deadline:
                with self.lock:
                    self.tally.gave_up = self.tally.gave_up or (
                        f"decisions still running after {timeout_s:.0f}s"
                    )
                self.stop.set()
                return
            self.stop.wait(0.1)
            if stream is not None and time.monotonic() - shown >= 2.0:
                stream.write(f"{self.progress()}\n")
                stream.flush()
                shown = time.monotonic()

    def revisit(
        self, points: Sequence[DecisionPoint], when: str, stream: TextIO | None = None
    ) -> None:
        """The customers' return visits, asked `when` (how the wait for the profiles went)."""
        if not self._queues or not points or self.stop.is_set():
            return
        if stream is not None:
            stream.write(f"return visits: {len(points):,} decisions, {when}\n")
            stream.flush()
        with self.lock:
            self.tally.points += len(points)
            self.tally.return_when = when
        self._put(points)
        self.drain(stream)

    def close(self) -> DecisionTally:
        """Stops the workers (the queued decisions are dropped) and closes the channel."""
        self.stop.set()
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join(CALL_TIMEOUT_S)
        if self._channel is not None:
            self._channel.close()
        return self.tally

    def _work(self, q: queue.SimpleQueue[DecisionPoint | None]) -> None:
        while (p := q.get()) is not None:
            try:
                if self.stop.is_set():
                    with self.lock:
                        self.tally.skipped += 1
                else:
                    self._decide(p)
            finally:
                with self.lock:
                    self._done += 1

    def _answered(self) -> None:
        with self.lock:
            self._last_answer = time.monotonic()

    def _failure(self, call: str, code: str, details: str) -> None:
        """Counts a call that failed (after its retries); stops asking when nothing was
        answered for GIVE_UP_S."""
        with self.lock:
            self.tally.add_error(call, code, details)
            silent = time.monotonic() - self._last_answer
            if code in RETRYABLE and silent > GIVE_UP_S and not self.tally.gave_up:
                self.tally.gave_up = (
                    f"no call answered for {silent:.0f}s (last: {call}: {code}: {details}); "
                    "the demo stopped asking"
                )
                self.stop.set()

    def _call(self, call: str, send: Callable[[], T]) -> T | None:
        """`send()`, tried again after a pause when the service cannot answer for now;
        None (counted) when it failed."""
        for pause in (*RETRY_PAUSES_S, None):
            try:
                reply = send()
            except grpc.RpcError as exc:
                code, details = _rpc_error(exc)
                if code in RETRYABLE and pause is not None and not self.stop.is_set():
                    self.stop.wait(pause)
                    continue
                self._failure(call, code, details)
                return None
            self._answered()
            return reply
        return None

    def _decide(self, p: DecisionPoint) -> None:
        stub = self._stub
        assert stub is not None
        reply = self._call("Decide", partial(stub.Decide, p.request(), timeout=CALL_TIMEOUT_S))
        if reply is None:
            return
        with self.lock:
            self.tally.add_decision(p, reply)
        rng = random.Random(f"{self.seed}:nba:{p.event_id}:{p.placement}")
        for action in reply.actions:
            for outcome in simulated_outcomes(action.kind, p.troubled, rng):
                if self.stop.is_set():
                    return
                report = pb.ReportOutcomeRequest(
                    decision_id=reply.decision_id, action_id=action.action_id, outcome=outcome
                )
                answer = self._call(
                    "ReportOutcome", partial(stub.ReportOutcome, report, timeout=CALL_TIMEOUT_S)
                )
                if answer is None:
                    break
                with self.lock:
                    self.tally.add_outcome(
                        action.kind, outcome, reply.decision_id, action.action_id
                    )
