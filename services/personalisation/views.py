"""The messages callers see, built from the domain's values (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from google.protobuf import struct_pb2

from services.common.conditions import FieldValue
from services.personalisation.domain.arbitration import (
    Basis,
    Decision,
    Filtered,
    Scored,
    ScoreParts,
    Stage,
)
from services.personalisation.domain.catalogue import Action, Catalogue, Variant
from services.personalisation.domain.policy import PolicyKind

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
