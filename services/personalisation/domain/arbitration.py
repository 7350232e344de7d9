"""The decision path, pure: which actions a person may be shown at a placement, and in
which order. No Redis, no Kafka, no gRPC: tests call it with a catalogue and a profile
view, and the contact ledger's in-memory model stands in for Redis.

Arbitration runs in this order, and records every step:

1. Eligibility and applicability: the action serves the placement and channel, is within
   its validity dates, and its conditions hold on the decision's fields.
2. Consent: a marketing action needs the marketing consent of the channel (email ->
   marketing_email...), and an action that names a consent purpose needs it. Without
   `personalisation` consent the profile is not used at all: only actions whose
   conditions read nothing of the profile are eligible, ranked by their default prior.
3. Experience-aware suitability: the catalogue's suitability rules that hold for the
   person suppress kinds (upsell, cross-sell) and promote others (service recovery),
   which then rank before everything else.
4. Contact policy and fatigue: in the contact ledger, atomically (`ContactLedger.reserve`,
   after `rank`); `finish` records its refusals.
5. Prioritisation: priority = P x C x V x L (propensity prior by segment, context
   weight, business value, lever). The holdout's control policy ranks by V x L only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from services.common.conditions import FieldValue
from services.common.contact_ledger import Candidate, CapRule, Reservation
from services.personalisation.domain.catalogue import Action, Catalogue, ContactRule
from services.personalisation.domain.learning import LEARNER_FIELDS

DAY_MS = 86_400_000
# Field prefixes that do not come from the profile: usable without personalisation consent.
REQUEST_PREFIXES = ("context.",)
REQUEST_FIELDS = frozenset({"placement", "channel", "hour", "weekday"})
CONSENT_PREFIX = "consent."
PERSONALISATION_PURPOSE = "personalisation"


class Basis(StrEnum):
    PROFILE = "profile"
    ANONYMOUS = "anonymous"
    UNKNOWN_PROFILE = "unknown_profile"
    NO_PERSONALISATION_CONSENT = "no_personalisation_consent"


class Stage(StrEnum):
    ELIGIBILITY = "eligibility"
    CONSENT = "consent"
    SUITABILITY = "suitability"
    CONTACT_POLICY = "contact_policy"
    PRIORITISATION = "prioritisation"


@dataclass(frozen=True)
class ProfileView:
    """What a decision reads of a profile: its flat fields and segments."""

    profile_id: str
    fields: Mapping[str, FieldValue]
    segments: frozenset[str]
    as_of_ms: int | None = None


@dataclass(frozen=True)
class DecisionRequest:
    placement: str
    channel: str
    now_ms: int
    # context.device, context.locale, context.page, context.cart_size,
    # context.attributes.<key>
    context: Mapping[str, FieldValue]
    want: int = 1


@dataclass(frozen=True)
class ScoreParts:
    propensity: float
    context_weight: float
    business_value: float
    lever: float
    propensity_source: str

    @property
    def priority(self) -> float:
        return self.propensity * self.context_weight * self.business_value * self.lever


@dataclass(frozen=True)
class Reason:
    code: str
    detail: str


@dataclass(frozen=True)
class Scored:
    action: Action
    score: ScoreParts
    promoted: bool
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Filtered:
    action: Action
    stage: Stage
    policy: str
    reason: str
    score: ScoreParts | None = None


@dataclass(frozen=True)
class Ranking:
    """Steps 1-3 and 5: the actions the person may be shown, best first, and the rest."""

    basis: Basis
    holdout: bool
    ranked: tuple[Scored, ...]
    filtered: tuple[Filtered, ...]
    # Names of the suitability rules that held.
    signals: tuple[str, ...]
    # The decision fields the policy read (profile fields only; for the decision log).
    features: Mapping[str, FieldValue]


@dataclass(frozen=True)
class Decision:
    """The whole decision, after the contact ledger chose among the ranked actions."""

    ranking: Ranking
    chosen: tuple[Scored, ...]
    filtered: tuple[Filtered, ...]


def in_holdout(person: str, percent: float, salt: str) -> bool:
    """Whether a person is in the holdout: a stable hash of their id, uniform on 0-100."""
    if percent <= 0 or not person:
        return False
    digest = hashlib.sha256(f"{salt}:{person}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100 < percent


def request_fields(request: DecisionRequest) -> dict[str, FieldValue]:
    """The fields of the request itself (context, placement, channel, UTC hour, weekday)."""
    when = datetime.fromtimestamp(request.now_ms / 1000, UTC)
    return {
        **request.context,
        "placement": request.placement,
        "channel": request.channel,
        "hour": when.hour,
        "weekday": when.weekday(),
    }


def reads_profile(name: str) -> bool:
    """Whether a decision field comes from the profile (not from the request, not consent)."""
    return not (
        name in REQUEST_FIELDS
        or name.startswith(REQUEST_PREFIXES)
        or name.startswith(CONSENT_PREFIX)
    )


def _consented(fields: Mapping[str, FieldValue], purpose: str) -> bool:
    # Consent is opt-in: a purpose never answered is not granted.
    return fields.get(CONSENT_PREFIX + purpose) is True


def basis_of(profile: ProfileView | None, identified: bool) -> Basis:
    if profile is None:
        return Basis.UNKNOWN_PROFILE if identified else Basis.ANONYMOUS
    if not _consented(profile.fields, PERSONALISATION_PURPOSE):
        return Basis.NO_PERSONALISATION_CONSENT
    return Basis.PROFILE


def _eligibility(
    action: Action, request: DecisionRequest, fields: Mapping[str, FieldValue], personal: bool
) -> tuple[str, str] | None:
    """(policy, reason) when the action is not eligible, else None."""
    if not action.serves(request.placement, request.channel):
        return "eligibility:placement", (
            f"not for placement {request.placement!r} on channel {request.channel!r}"
        )
    if not action.active(request.now_ms):
        return "eligibility:dates", "outside its validity dates"
    rule = action.eligibility
    if rule is None:
        return None
    if not personal:
        needs = sorted(n for n in rule.fields_read() if reads_profile(n))
        if needs:
            return "eligibility:needs_profile", (
                f"its conditions read the profile ({', '.join(needs)}), which is not used"
            )
    if not rule.matches(fields):
        failing = [str(c) for c in (*rule.all_of,) if not c.holds(fields)]
        if rule.any_of and not any(c.holds(fields) for c in rule.any_of):
            failing.append("none of " + ", ".join(map(str, rule.any_of)))
        return f"eligibility:{action.action_id}", "conditions not met: " + "; ".join(failing)
    return None


def _consent(
    action: Action, request: DecisionRequest, fields: Mapping[str, FieldValue], catalogue: Catalogue
) -> tuple[str, str] | None:
    needed: list[str] = []
    if action.marketing and request.channel in catalogue.channel_consent:
        needed.append(catalogue.channel_consent[request.channel])
    if action.consent_purpose and action.consent_purpose not in needed:
        needed.append(action.consent_purpose)
    for purpose in needed:
        if not _consented(fields, purpose):
            return f"consent:{purpose}", f"no {purpose} consent"
    return None


def score(
    action: Action, fields: Mapping[str, FieldValue], segments: Collection[str], control: bool
) -> tuple[ScoreParts, list[str]]:
    """The score parts; the control policy (holdout) ranks by value and lever only."""
    if control:
        return ScoreParts(1.0, 1.0, action.business_value, action.lever, "control:static"), []
    p, source = action.propensity(segments)
    c, matched = action.context_weight(fields)
    return ScoreParts(p, c, action.business_value, action.lever, source), matched


def rank(
    catalogue: Catalogue,
    request: DecisionRequest,
    profile: ProfileView | None,
    *,
    identified: bool,
    holdout: bool,
) -> Ranking:
    """Steps 1, 2, 3 and 5 for every action of the catalogue (see the module doc)."""
    basis = basis_of(profile, identified)
    personal = basis is Basis.PROFILE
    fields: dict[str, FieldValue] = request_fields(request)
    segments: frozenset[str] = frozenset()
    if profile is not None:
        # Consent is honoured even when the profile is not otherwise used.
        consent = {k: v for k, v in profile.fields.items() if k.startswith(CONSENT_PREFIX)}
        fields.update(consent)
        if personal:
            fields.update(profile.fields)
            fields.update({f"segment.{s}": True for s in profile.segments})
            segments = profile.segments

    signals: list[str] = []
    suppressed: dict[str, str] = {}
    promoted: set[str] = set()
    if personal:
        for rule in catalogue.suitability:
            if rule.rule.matches(fields):
                signals.append(rule.name)
                for kind in rule.suppress_kinds:
                    suppressed.setdefault(kind, rule.name)
                promoted.update(rule.promote_kinds)

    ranked: list[Scored] = []
    filtered: list[Filtered] = []
    for action in catalogue.actions:
        refusal = _eligibility(action, request, fields, personal)
        if refusal is not None:
            filtered.append(Filtered(action, Stage.ELIGIBILITY, *refusal))
            continue
        refusal = _consent(action, request, fields, catalogue)
        if refusal is not None:
            filtered.append(Filtered(action, Stage.CONSENT, *refusal))
            continue
        parts, matched = score(action, fields, segments, holdout)
        if action.kind in suppressed:
            rule_name = suppressed[action.kind]
            description = next(r.description for r in catalogue.suitability if r.name == rule_name)
            filtered.append(
                Filtered(
                    action,
                    Stage.SUITABILITY,
                    f"suitability:{rule_name}",
                    f"no {action.kind} while {description or rule_name}",
                    parts,
                )
            )
            continue
        reasons = [Reason("eligibility.passed", _eligible_detail(action))]
        is_promoted = action.kind in promoted
        if is_promoted:
            held = ", ".join(s for s in signals)
            reasons.append(
                Reason("suitability.recovery_first", f"{action.kind} ranks first ({held})")
            )
        if not personal:
            reasons.append(
                Reason(f"basis.{basis.value}", "generic ranking: the profile is not used")
            )
        if holdout:
            reasons.append(
                Reason("holdout.control", "control policy: static priority (value x lever)")
            )
        reasons.append(Reason("score.propensity", parts.propensity_source))
        for name in matched:
            reasons.append(Reason("score.context", name))
        ranked.append(Scored(action, parts, is_promoted, tuple(reasons)))

    ranked.sort(key=lambda s: (not s.promoted, -s.score.priority, s.action.action_id))
    # What the decision log keeps: the fields the policy and the learner read that the
    # profile has, every consent (a candidate catalogue replayed on the log may check
    # any), and the person's segments.
    used = catalogue.fields_read() | LEARNER_FIELDS | {CONSENT_PREFIX + PERSONALISATION_PURPOSE}
    used |= {name for name in fields if name.startswith(CONSENT_PREFIX)}
    features = {
        name: fields[name]
        for name in sorted(used)
        if name in fields and (personal or name.startswith(CONSENT_PREFIX))
    }
    features.update({f"segment.{s}": True for s in sorted(segments)})
    return Ranking(basis, holdout, tuple(ranked), tuple(filtered), tuple(signals), features)


def _eligible_detail(action: Action) -> str:
    if action.eligibility is None:
        return "no conditions"
    return str(action.eligibility).split(": ", 1)[-1]


def cap_rule(rule: ContactRule) -> CapRule:
    return CapRule(
        max_impressions=rule.max_impressions,
        window_ms=int(rule.window_days * DAY_MS),
        dismiss_cooloff_ms=int(rule.dismiss_cooloff_days * DAY_MS),
        stop_after_accept=rule.stop_after_accept,
    )


def candidates(catalogue: Catalogue, ranking: Ranking) -> list[Candidate]:
    """The ranked actions as the contact ledger checks them, best first."""
    out = []
    for scored in ranking.ranked:
        action = scored.action
        kind = catalogue.kinds[action.kind]
        out.append(
            Candidate(
                action.action_id,
                action.kind,
                action.marketing,
                cap_rule(action.contact),
                cap_rule(kind.contact),
            )
        )
    return out


def finish(ranking: Ranking, reservation: Reservation) -> Decision:
    """Step 4's outcome: the chosen actions in rank order, and everything else filtered."""
    refused = {r.action_id: r for r in reservation.refused}
    chosen_ids = set(reservation.chosen)
    chosen: list[Scored] = []
    filtered = list(ranking.filtered)
    for position, scored in enumerate(ranking.ranked, start=1):
        action_id = scored.action.action_id
        if action_id in chosen_ids:
            chosen.append(scored)
        elif action_id in refused:
            r = refused[action_id]
            filtered.append(
                Filtered(scored.action, Stage.CONTACT_POLICY, r.policy, r.detail, scored.score)
            )
        else:
            filtered.append(
                Filtered(
                    scored.action,
                    Stage.PRIORITISATION,
                    "prioritisation:rank",
                    f"ranked {position} of {len(ranking.ranked)}; fewer actions were asked for",
                    scored.score,
                )
            )
    return Decision(ranking, tuple(chosen), tuple(filtered))


def choose_without_ledger(ranking: Ranking, want: int) -> Reservation:
    """For people the ledger cannot key (anonymous visitors): the best `want`."""
    return Reservation(tuple(s.action.action_id for s in ranking.ranked[:want]), ())


__all__ = [
    "Basis",
    "Decision",
    "DecisionRequest",
    "Filtered",
    "ProfileView",
    "Ranking",
    "Reason",
    "ScoreParts",
    "Scored",
    "Stage",
    "candidates",
    "choose_without_ledger",
    "finish",
    "in_holdout",
    "rank",
]
