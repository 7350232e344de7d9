"""The messages callers see, built from the domain's values (pure)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from google.protobuf import struct_pb2

from services.common.conditions import FieldValue
from services.personalisation.domain.arbitration import (
    Basis,
    Decision,
    DecisionRequest,
    Filtered,
    Scored,
    ScoreParts,
    Stage,
)
from services.personalisation.domain.catalogue import Action, Catalogue, Variant
from services.personalisation.domain.policy import Choice, PolicyKind

STAGES = {
    Stage.ELIGIBILITY: pb.STAGE_ELIGIBILITY,
    Stage.CONSENT: pb.STAGE_CONSENT,
    Stage.SUITABILITY: pb.STAGE_SUITABILITY,
    Stage.CONTACT_POLICY: pb.STAGE_CONTACT_POLICY,
    Stage.PRIORITISATION: pb.STAGE_PRIORITISATION,
}
BASES = {
    Basis.PROFILE: pb.BASIS_PROFILE,
    Basis.ANONYMOUS: pb.BASIS_ANONYMOUS,
    Basis.UNKNOWN_PROFILE: pb.BASIS_UNKNOWN_PROFILE,
    Basis.NO_PERSONALISATION_CONSENT: pb.BASIS_NO_PERSONALISATION_CONSENT,
}
# Actions filtered because they do not serve the placement: left out of the decision log.
PLACEMENT_POLICY = "eligibility:placement"
EMAIL_OR_PHONE = re.compile(r"@|^\+?[0-9][0-9 ()-]{6,}$")

POLICIES = {
    PolicyKind.LEARNED: pb.DECISION_POLICY_LEARNED,
    PolicyKind.STATIC: pb.DECISION_POLICY_STATIC,
    PolicyKind.CONTROL: pb.DECISION_POLICY_CONTROL,
    PolicyKind.GENERIC: pb.DECISION_POLICY_GENERIC,
}


def channel_name(channel: ev.Channel.ValueType) -> str:
    return ev.Channel.Name(channel).removeprefix("CHANNEL_").lower()


def channel_value(name: str) -> ev.Channel.ValueType:
    return ev.Channel.Value(f"CHANNEL_{name.upper()}")


def context_values(context: pb.RequestContext) -> dict[str, FieldValue]:
    """A request context as decision fields (`context.*`): what Decide ranks with (after
    validating it) and offline evaluation replays from the log."""
    out: dict[str, FieldValue] = {
        "context.device": context.device or None,
        "context.locale": context.locale or None,
        "context.page": context.page or None,
        "context.cart_size": len(context.cart_product_ids),
    }
    out.update({f"context.attributes.{k}": v for k, v in context.attributes.items()})
    return out


def content(variant: Variant) -> pb.Content:
    return pb.Content(
        variant=variant.variant,
        title=variant.title,
        body=variant.body,
        image_url=variant.image_url,
        call_to_action=variant.call_to_action,
        deep_link=variant.deep_link,
    )


def score_parts(parts: ScoreParts) -> pb.ScoreParts:
    return pb.ScoreParts(
        propensity=parts.propensity,
        context_weight=parts.context_weight,
        business_value=parts.business_value,
        lever=parts.lever,
        priority=parts.priority,
        propensity_source=parts.propensity_source,
    )


def pick_variant(action: Action, person: str, placement: str) -> Variant:
    """The variant a person sees at a placement: one written for the placement if there is
    one (an agent's script at agent.panel), else one written for any placement; among
    several, stable for one person and spread across people."""
    fitting = [v for v in action.variants if v.written_for(placement)] or [
        v for v in action.variants if not v.placements
    ]
    if not fitting:
        return action.variants[0]
    if len(fitting) == 1 or not person:
        return fitting[0]
    digest = hashlib.sha256(f"{action.action_id}:{person}".encode()).digest()
    return fitting[int.from_bytes(digest[:4], "big") % len(fitting)]


def ranked_action(scored: Scored, rank: int, person: str, placement: str) -> pb.RankedAction:
    return pb.RankedAction(
        action_id=scored.action.action_id,
        kind=scored.action.kind,
        content=content(pick_variant(scored.action, person, placement)),
        score=score_parts(scored.score),
        reasons=[pb.Reason(code=r.code, detail=r.detail) for r in scored.reasons],
        rank=rank,
        # Deterministic policies pick with probability 1; the learned one's probabilities
        # are set by the caller (policy.probabilities).
        probability=1.0,
        promoted=scored.promoted,
    )


def filtered_action(item: Filtered) -> pb.FilteredAction:
    out = pb.FilteredAction(
        action_id=item.action.action_id,
        kind=item.action.kind,
        stage=STAGES[item.stage],
        policy=item.policy,
        reason=item.reason,
    )
    if item.score is not None:
        out.score.CopyFrom(score_parts(item.score))
    return out


def chosen(decision: Decision, person: str, placement: str) -> list[pb.RankedAction]:
    return [ranked_action(s, i, person, placement) for i, s in enumerate(decision.chosen, start=1)]


def features_struct(features: Mapping[str, FieldValue]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update({k: v for k, v in features.items() if v is not None})
    return out


def action_message(action: Action, now_ms: int) -> pb.Action:
    out = pb.Action(
        action_id=action.action_id,
        kind=action.kind,
        description=action.description,
        placements=list(action.placements),
        channels=[channel_value(c) for c in sorted(action.channels)],
        variants=[content(v) for v in action.variants],
        business_value=action.business_value,
        lever=action.lever,
        consent_purpose=action.consent_purpose or "",
        marketing=action.marketing,
        propensity_default=action.propensity_default,
        propensity_by_segment=dict(action.propensity_by_segment),
        active=action.active(now_ms),
        contact_policy=pb.ContactPolicy(
            max_impressions=action.contact.max_impressions,
            window_days=action.contact.window_days,
            dismiss_cooloff_days=action.contact.dismiss_cooloff_days,
            stop_after_accept=action.contact.stop_after_accept,
        ),
    )
    if action.valid_from_ms is not None:
        out.valid_from.FromMilliseconds(action.valid_from_ms)
    if action.valid_until_ms is not None:
        out.valid_until.FromMilliseconds(action.valid_until_ms)
    if action.eligibility is not None:
        out.conditions_all.extend(str(c) for c in action.eligibility.all_of)
        out.conditions_any.extend(str(c) for c in action.eligibility.any_of)
    return out


def catalogue_actions(
    catalogue: Catalogue, now_ms: int, placement: str = "", kind: str = ""
) -> list[pb.Action]:
    return [
        action_message(a, now_ms)
        for a in catalogue.actions
        if (not placement or any(a.serves(placement, c) for c in (a.channels or {""})))
        and (not kind or a.kind == kind)
    ]


def set_probabilities(
    actions: Iterable[pb.RankedAction], choice: Choice, slot: Mapping[str, float]
) -> None:
    """Each chosen action's probability at its slot; the learned policy says so in the
    reasons too."""
    for action in actions:
        action.probability = slot[action.action_id]
        if choice.policy is PolicyKind.LEARNED:
            action.reasons.append(
                pb.Reason(
                    code="policy.learned",
                    detail=f"model {choice.model_version}: picked with probability "
                    f"{action.probability:.3f}",
                )
            )


def logged_action(action: pb.RankedAction) -> pb.RankedAction:
    """An action as the decision log keeps it: its variant's id, not its text."""
    out = pb.RankedAction()
    out.CopyFrom(action)
    out.content.Clear()
    out.content.variant = action.content.variant
    return out


def loggable_context(context: pb.RequestContext) -> pb.RequestContext:
    """The context for the decision log, without values that look like an email or phone."""
    out = pb.RequestContext()
    out.CopyFrom(context)
    for key in [k for k, v in out.attributes.items() if EMAIL_OR_PHONE.search(v)]:
        del out.attributes[key]
    return out


def decision_record(
    reply: pb.DecideResponse,
    context: pb.RequestContext,
    request: DecisionRequest,
    decision: Decision,
    unavailable: set[str],
) -> pb.DecisionRecord:
    """A decision as `cx.decisions.v1` keeps it: only what learning and evaluation need,
    the actions that serve the placement (not the whole catalogue) and which variant was
    shown (not its text)."""
    ranking = decision.ranking
    considered = [f for f in decision.filtered if f.policy != PLACEMENT_POLICY]
    record = pb.DecisionRecord(
        decision_id=reply.decision_id,
        profile_id=reply.profile_id,
        placement=request.placement,
        channel=channel_value(request.channel),
        context=loggable_context(context),
        features=features_struct(ranking.features),
        candidates=[s.action.action_id for s in ranking.ranked]
        + [f.action.action_id for f in considered],
        filtered=[filtered_action(f) for f in considered],
        chosen=[logged_action(a) for a in reply.actions],
        policy_version=reply.policy_version,
        group=reply.group,
        basis=reply.basis,
        experience_signals=reply.experience_signals,
        max_actions=request.want,
        ranked=[
            logged_action(ranked_action(s, i, reply.profile_id, request.placement))
            for i, s in enumerate(ranking.ranked, start=1)
        ],
        policy=reply.policy,
        model_version=reply.model_version,
        unavailable=[
            s.action.action_id for s in ranking.ranked if s.action.action_id in unavailable
        ],
    )
    record.decided_at.FromMilliseconds(request.now_ms)
    return record
