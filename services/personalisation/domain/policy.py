"""Which policy orders a decision's eligible actions, and with what probability each chosen
action was picked: the step between `arbitration.rank` (steps 1-3 and 5) and the contact
ledger (step 4), shared by the Decide servers and the simulator (`bench/decisions`).

- LEARNED: a person with a profile and personalisation consent, in the treatment group,
  once a model exists: the order is sampled from the model's probabilities over the
  eligible actions (promoted ones first), so the policy explores a little, and only among
  actions every rule allows.
- STATIC: the treatment group before any model exists: priority P x C x V x L.
- CONTROL: the holdout: value x lever.
- GENERIC: no profile used: the prior.
The three deterministic policies pick with probability 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from services.common.conditions import FieldValue
from services.common.contact_ledger import Reservation
from services.personalisation.domain.arbitration import (
    Basis,
    Decision,
    DecisionRequest,
    Ranking,
    request_fields,
)
from services.personalisation.domain.learning import (
    ArmSpec,
    Model,
    Ordered,
    context_features,
    refused_before,
    sample_order,
    slot_probabilities,
)


class PolicyKind(StrEnum):
    LEARNED = "learned"
    STATIC = "static"
    CONTROL = "control"
    GENERIC = "generic"


@dataclass(frozen=True)
class Choice:
    """The ranking in the order the policy gives it, and how that order came about."""

    ranking: Ranking
    policy: PolicyKind
    # The model's version when LEARNED, else empty.
    model_version: str
    # The sampled order and the model's probabilities (LEARNED), over `arms`.
    ordered: Ordered | None
    # The eligible actions in `rank`'s order (the index of `ordered`).
    arms: tuple[str, ...]


def policy_kind(ranking: Ranking, model: Model | None) -> PolicyKind:
    if ranking.basis is not Basis.PROFILE:
        return PolicyKind.GENERIC
    if ranking.holdout:
        return PolicyKind.CONTROL
    if model is None:
        return PolicyKind.STATIC
    return PolicyKind.LEARNED


def arm_specs(ranking: Ranking) -> tuple[ArmSpec, ...]:
    return tuple(ArmSpec(s.action.action_id, s.action.kind) for s in ranking.ranked)


def learner_fields(ranking: Ranking, request: DecisionRequest) -> dict[str, FieldValue]:
    """The decision's fields as the learner sees them: the profile's the ranking kept
    (`Ranking.features`, segments included) and the request's."""
    return {**ranking.features, **request_fields(request)}


def order(
    ranking: Ranking, request: DecisionRequest, model: Model | None, decision_id: str
) -> Choice:
    """Orders the ranked actions by the policy that serves the decision."""
    kind = policy_kind(ranking, model)
    arms = tuple(s.action.action_id for s in ranking.ranked)
    if kind is not PolicyKind.LEARNED or model is None or not ranking.ranked:
        return Choice(ranking, kind, "", None, arms)
    shared = context_features(learner_fields(ranking, request))
    pmf = model.predict(shared, arm_specs(ranking))
    ordered = sample_order(pmf, [s.promoted for s in ranking.ranked], decision_id)
    reordered = replace(ranking, ranked=tuple(ranking.ranked[i] for i in ordered.order))
    return Choice(reordered, kind, model.version, ordered, arms)


def unavailable(decision: Decision, reservation: Reservation) -> set[str]:
    """The ranked actions the contact ledger refused before this decision's impressions."""
    chosen = [(s.action.kind, s.action.marketing) for s in decision.chosen]
    return refused_before(reservation, chosen)


def probabilities(choice: Choice, decision: Decision, refused: set[str]) -> dict[str, float]:
    """The probability the policy picked each chosen action at its slot, given the
    actions the ledger had already ruled out (`unavailable`)."""
    chosen_ids = [s.action.action_id for s in decision.chosen]
    if choice.ordered is None:
        return dict.fromkeys(chosen_ids, 1.0)
    slots = slot_probabilities(choice.ordered, choice.arms, chosen_ids, refused)
    return dict(zip(chosen_ids, slots, strict=True))


__all__ = [
    "Choice",
    "PolicyKind",
    "learner_fields",
    "order",
    "policy_kind",
    "probabilities",
    "unavailable",
]
