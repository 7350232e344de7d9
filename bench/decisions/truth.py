"""The simulated people's hidden truth: how likely a person is to accept, click (without
accepting) or dismiss an action at a placement. No policy sees this; the oracle does.

    accept  = base_accept(action) x lift x goodwill      (capped at 0.9)
    click   = base_click(action)  x lift x goodwill      (clicked, did not take it up)
    dismiss = 0.04 for marketing actions, 0.02 for the others

`lift` is a product of factors of what the learner can see (the profile fields of
`learning.context_features` and the request's placement, channel, device and hour):

- value tier: selling kinds (upsell, loyalty, retention) x0.4 (none) .. x1.8 (vip);
  cross-sells vary less;
- NPS: promoters take loyalty and cross-sells x1.4; an old detractor answer x0.6 on
  selling; high churn: retention x1.8 and selling x0.6; new customers (onboarding
  stage): onboarding x1.8, upsells x0.6; people who already ordered do not "join"
  (join_and_save x0.05); welcome_app works on mobile (x2) more than on a desktop (x0.5);
  many orders: next-day delivery x1.8;
- placement: the basket lifts cross-sells and next-day delivery (x1.4), the app's home
  banner everything (x1.2), e-mail x0.5 and push x0.6 (push in the evening x1.4), the
  contact-centre panel service recovery, retention and loyalty (x1.6).

The base rates are not the catalogue's priors (those are planning assumptions): the
truth ranks actions differently from P x C x V x L, which is what learning can find.
What the request's page and weather say (the catalogue's context weights) does not
change the truth, so the oracle's edge is learnable from the learner's features.

Negative experiences (`troubles`: an open complaint, a detractor answer in the last 30
days, an open payment failure, a late delivery, a repeat contact, an open incident; the
fields the catalogue's suitability rules read) change it:
- upsells and cross-sells fail and annoy: accept x0.05, click x0.3, dismiss 0.5, and
  each one shown leaves a lasting dent in the person's goodwill (x0.7, at least 0.25),
  which multiplies every later accept and click of a non-recovery action for the rest
  of the run;
- other marketing (retention, loyalty, onboarding) halves (accept x0.5), dismiss 0.15;
- service recovery succeeds when it fixes what went wrong (fix_payment on a payment
  failure 0.35, track_my_order on a late delivery 0.40, apology_voucher 0.20-0.35,
  call_me_back 0.25-0.30) and rarely otherwise.

Rewards are the learning file's (`learning.Rewards`): an accept (which comes with a click)
settles at max(click, value / value_scale), a click at `click`, a dismiss and nothing at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.conditions import FieldValue
from services.personalisation.domain.catalogue import Action
from services.personalisation.domain.learning import Rewards

# (accept, click without accept) for a medium-tier customer in no trouble, at a neutral
# placement.
BASE: Mapping[str, tuple[float, float]] = {
    "next_day_unlimited": (0.040, 0.050),
    "storm_pro_jacket": (0.008, 0.030),
    "cashmere_upgrade": (0.006, 0.030),
    "complete_the_look": (0.030, 0.050),
    "shoe_care_kit": (0.070, 0.040),
    "home_collection": (0.015, 0.050),
    "weekly_edit": (0.035, 0.080),
    "todays_deal": (0.040, 0.060),
    "we_miss_you": (0.040, 0.050),
    "free_returns_extended": (0.020, 0.040),
    "loyalty_points": (0.060, 0.060),
    "winter_sale_early_access": (0.080, 0.060),
    "vip_styling": (0.012, 0.040),
    "welcome_app": (0.050, 0.050),
    "save_your_sizes": (0.120, 0.050),
    "post_delivery_survey": (0.120, 0.030),
    "nps_pulse": (0.100, 0.030),
    "delivery_cutoff": (0.020, 0.080),
    "free_returns_info": (0.010, 0.060),
    "new_season_edit": (0.020, 0.050),
    "join_and_save": (0.060, 0.040),
    # Service recovery: the rate when it fixes nothing the person has.
    "apology_voucher": (0.040, 0.040),
    "track_my_order": (0.050, 0.050),
    "call_me_back": (0.030, 0.030),
    "fix_payment": (0.050, 0.050),
}
DEFAULT_BASE = (0.02, 0.04)
SELLING = frozenset({"upsell", "loyalty", "retention"})
ANNOYING = frozenset({"upsell", "cross_sell"})
TIER_LIFT = {"none": 0.2, "low": 0.5, "medium": 1.0, "high": 2.0, "vip": 3.0}
CROSS_TIER_LIFT = {"none": 0.6, "low": 1.0, "medium": 1.0, "high": 1.1, "vip": 1.1}
PLACEMENT_LIFT = {"email.weekly": 0.5, "push.daily": 0.6, "app.home.banner": 1.2}
DENT = 0.7
GOODWILL_FLOOR = 0.25
MAX_ACCEPT = 0.9
# Service recovery when it fixes the person's trouble: action -> trouble -> accept.
RECOVERY: Mapping[str, Mapping[str, float]] = {
    "fix_payment": {"payment_failure": 0.30},
    "track_my_order": {"late_delivery": 0.30},
    "apology_voucher": {
        "complaint": 0.25,
        "incident": 0.20,
        "late_delivery": 0.15,
        "detractor": 0.12,
    },
    "call_me_back": {"complaint": 0.25, "repeat_contact": 0.20, "incident": 0.20},
}


@dataclass(frozen=True)
class Odds:
    accept: float
    click: float
    dismiss: float

    @property
    def nothing(self) -> float:
        return max(1.0 - self.accept - self.click - self.dismiss, 0.0)


def troubles(fields: Mapping[str, FieldValue]) -> frozenset[str]:
    """The negative experiences the person is in (what the suitability rules read)."""
    out: set[str] = set()

    def number(name: str) -> float:
        value = fields.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    if number("open_complaints") >= 1:
        out.add("complaint")
    days = fields.get("days_since_nps")
    if (
        fields.get("nps_category") == "detractor"
        and isinstance(days, int | float)
        and not isinstance(days, bool)
        and days <= 30
    ):
        out.add("detractor")
    if fields.get("payment_failure_open") is True:
        out.add("payment_failure")
    if fields.get("delivery_problem_open") is True:
        out.add("late_delivery")
    if number("repeat_contacts_30d") >= 1:
        out.add("repeat_contact")
    if number("open_incidents") >= 1:
        out.add("incident")
    return frozenset(out)


def _lift(action: Action, fields: Mapping[str, FieldValue], placement: str, hour: int) -> float:
    kind = action.kind
    lift = 1.0
    tier = str(fields.get("value_tier") or "none")
    if kind in SELLING:
        lift *= TIER_LIFT.get(tier, 1.0)
    elif kind == "cross_sell":
        lift *= CROSS_TIER_LIFT.get(tier, 1.0)
    category = fields.get("nps_category")
    if category == "promoter" and kind in ("loyalty", "cross_sell"):
        lift *= 2.0 if kind == "loyalty" else 1.4
    if category == "detractor" and kind in SELLING | ANNOYING:
        lift *= 0.6
    band = fields.get("churn_band")
    if band == "high":
        lift *= 1.8 if kind == "retention" else 0.6 if kind in ANNOYING else 1.0
    elif band == "medium" and kind == "retention":
        lift *= 1.3
    if fields.get("journey_stage") == "onboarding":
        lift *= 1.8 if kind == "onboarding" else 0.6 if kind == "upsell" else 1.0
    orders = fields.get("orders")
    orders_n = orders if isinstance(orders, int | float) and not isinstance(orders, bool) else 0
    if action.action_id == "join_and_save" and orders_n >= 1:
        lift *= 0.05
    action_id = action.action_id
    device = fields.get("context.device")
    if action_id == "next_day_unlimited":
        lift *= (1.8 if orders_n > 10 else 1.0) * (1.3 if device == "desktop" else 0.6)
    if action_id == "loyalty_points" and orders_n <= 3:
        lift *= 0.4
    if action_id == "we_miss_you" and fields.get("journey_stage") == "renewal":
        lift *= 2.0
    if action_id == "home_collection" and tier in ("high", "vip"):
        lift *= 1.8
    if action_id == "complete_the_look" and device == "mobile":
        lift *= 1.4
    if action_id == "cashmere_upgrade" and hour >= 18:
        lift *= 1.5
    if action_id == "delivery_cutoff" and 15 <= hour < 20:
        lift *= 1.6
    if action_id == "welcome_app":
        lift *= 2.0 if device == "mobile" else 0.5
    lift *= PLACEMENT_LIFT.get(placement, 1.0)
    if placement == "web.basket.banner" and (
        kind == "cross_sell" or action.action_id == "next_day_unlimited"
    ):
        lift *= 1.4
    if placement == "agent.panel" and kind in ("service_recovery", "retention", "loyalty"):
        lift *= 1.6
    if placement == "push.daily" and hour >= 17:
        lift *= 1.4
    return lift


def odds(
    action: Action,
    fields: Mapping[str, FieldValue],
    placement: str,
    hour: int,
    goodwill: float,
    trouble: frozenset[str],
) -> Odds:
    """The person's true odds for `action` (fields: the profile's and the request's)."""
    base_accept, base_click = BASE.get(action.action_id, DEFAULT_BASE)
    lift = _lift(action, fields, placement, hour)
    kind = action.kind
    dismiss = 0.04 if action.marketing else 0.02
    if kind == "service_recovery":
        fixes = [p for t, p in RECOVERY.get(action.action_id, {}).items() if t in trouble]
        accept = max(fixes) if fixes else base_accept
        accept *= lift
        click = base_click * lift
    else:
        accept = base_accept * lift * goodwill
        click = base_click * lift * goodwill
        if trouble and kind in ANNOYING:
            accept *= 0.05
            click *= 0.3
            dismiss = 0.5
        elif trouble and action.marketing:
            accept *= 0.5
            dismiss = 0.15
    accept = min(accept, MAX_ACCEPT)
    click = min(click, max(1.0 - accept - dismiss, 0.0))
    return Odds(accept, click, dismiss)


def annoys(action: Action, trouble: frozenset[str]) -> bool:
    """Whether showing `action` now dents the person's goodwill."""
    return bool(trouble) and action.kind in ANNOYING


def dented(goodwill: float) -> float:
    return max(goodwill * DENT, GOODWILL_FLOOR)


OUTCOMES_OF = {
    "accept": ("impression", "click", "accept"),
    "click": ("impression", "click"),
    "dismiss": ("impression", "dismiss"),
    "nothing": ("impression",),
}


def expected_reward(o: Odds, value: float, rewards: Rewards) -> float:
    return (
        o.accept * rewards.settle(OUTCOMES_OF["accept"], value)
        + o.click * rewards.settle(OUTCOMES_OF["click"], value)
        + o.dismiss * rewards.settle(OUTCOMES_OF["dismiss"], value)
        + o.nothing * rewards.settle(OUTCOMES_OF["nothing"], value)
    )


def outcome(o: Odds, draw: float) -> str:
    """What the person does, from a uniform draw (shared by every policy's run, so the
    same person at the same moment reacts alike to alike odds)."""
    if draw < o.accept:
        return "accept"
    if draw < o.accept + o.click:
        return "click"
    if draw < o.accept + o.click + o.dismiss:
        return "dismiss"
    return "nothing"
