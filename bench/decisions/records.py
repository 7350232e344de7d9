"""A simulated decision as the Decide server logs it (`DecisionRecord` on cx.decisions.v1),
built by the server's own `views.decision_record` from the reply's fields (the chosen
actions with their slot probabilities), and turned into a training
example by the learner's own functions, so the simulator trains its model from exactly
what the learner process would."""

from __future__ import annotations

from collections.abc import Mapping

from cx.personalisation.v1 import personalisation_pb2 as pb

from services.common.conditions import FieldValue
from services.personalisation import views
from services.personalisation.adapters.learning_store import RewardEntry
from services.personalisation.domain.arbitration import Decision, DecisionRequest
from services.personalisation.domain.learning import TrainingExample
from services.personalisation.domain.policy import Choice
from services.personalisation.learner import pending_of
from services.personalisation.views import BASES, POLICIES, chosen, set_probabilities

# A rewards-stream entry id (the trainer only keeps it as its cursor).
STREAM_ID = "0-1"


def request_context(context: Mapping[str, FieldValue]) -> pb.RequestContext:
    """The request's context message from its `context.*` fields."""
    out = pb.RequestContext(
        device=str(context.get("context.device") or ""),
        page=str(context.get("context.page") or ""),
    )
    cart = context.get("context.cart_size")
    if isinstance(cart, int) and not isinstance(cart, bool):
        out.cart_product_ids.extend(f"sku-{i:04d}" for i in range(cart))
    for name, value in context.items():
        if name.startswith("context.attributes.") and value is not None:
            out.attributes[name.removeprefix("context.attributes.")] = str(value)
    return out


def decision_record(
    decision_id: str,
    profile_id: str,
    request: DecisionRequest,
    choice: Choice,
    decision: Decision,
    slot: Mapping[str, float],
    unavailable: set[str],
    catalogue_version: str,
) -> pb.DecisionRecord:
    """What the Decide server logs for this decision (a profile, the treatment group): the
    reply's fields the record copies, then the server's own record builder."""
    ranking = decision.ranking
    reply = pb.DecideResponse(
        decision_id=decision_id,
        actions=chosen(decision, profile_id, request.placement),
        profile_id=profile_id,
        policy_version=catalogue_version,
        group=pb.GROUP_HOLDOUT if ranking.holdout else pb.GROUP_TREATMENT,
        basis=BASES[ranking.basis],
        experience_signals=list(ranking.signals),
        policy=POLICIES[choice.policy],
        model_version=choice.model_version,
    )
    set_probabilities(reply.actions, choice, slot)
    return views.decision_record(
        reply, request_context(request.context), request, decision, unavailable
    )


def training_example(record: pb.DecisionRecord, reward: float) -> TrainingExample | None:
    """The learner's example of a settled decision, through the learner's own code: the
    pending state it keeps for a logged decision (`learner.pending_of`: the shared line
    rebuilt from the log, the logged arms, the first chosen action and its probability),
    written to the rewards stream with the reward (`repr(float(reward))`, as the settle
    script gets it) and read back as the trainer reads it (`RewardEntry.example`). None
    when the decision is not learned from (no profile, nothing shown)."""
    pending = pending_of(record, record.decided_at.ToMilliseconds())
    if pending is None:
        return None
    fields = pending.fields(pending.decided_ms)
    fields.update(decision_id=pending.decision_id, reward=repr(float(reward)))
    return RewardEntry(STREAM_ID, fields).example()
