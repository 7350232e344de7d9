"""Learner test helpers: decision records as the Decide server logs them and the
OfferOutcome events ReportOutcome publishes, for the learner's unit and integration
tests (tests/unit/test_learner.py, tests/integration/test_learner.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb

from services.common.validation import normalise_and_validate
from services.personalisation.views import features_struct

PLACEMENT = "web.home.hero"


def decision(
    arms: Sequence[tuple[str, str]],
    chosen: int,
    *,
    probability: float = 0.5,
    value: float = 50.0,
    features: dict[str, str | float | bool] | None = None,
    decision_id: str | None = None,
    profile_id: str | None = None,
    basis: pb.Basis.ValueType = pb.BASIS_PROFILE,
) -> pb.DecisionRecord:
    """A decision record as the Decide server logs it: `arms` ranked, one shown."""
    ranked = [
        pb.RankedAction(action_id=a, kind=k, rank=i + 1, probability=probability)
        for i, (a, k) in enumerate(arms)
    ]
    shown = pb.RankedAction()
    shown.CopyFrom(ranked[chosen])
    shown.rank = 1
    shown.score.business_value = value
    record = pb.DecisionRecord(
        decision_id=decision_id or f"dec-{uuid.uuid4().hex}",
        profile_id=profile_id or f"p-{uuid.uuid4().hex[:12]}",
        placement=PLACEMENT,
        channel=ev.CHANNEL_WEB,
        context=pb.RequestContext(device="mobile"),
        features=features_struct(features or {"value_tier": "regular"}),
        candidates=[a for a, _ in arms],
        chosen=[shown],
        ranked=ranked,
        group=pb.GROUP_TREATMENT,
        basis=basis,
        policy=pb.DECISION_POLICY_LEARNED,
        max_actions=1,
    )
    record.decided_at.FromMilliseconds(int(time.time() * 1000))
    return record


def outcome_event(
    record: pb.DecisionRecord, outcome: ev.OfferOutcome.Outcome.ValueType, action_id: str = ""
) -> ev.TouchpointEvent:
    """The OfferOutcome event ReportOutcome publishes (valid: the learner validates it)."""
    event = ev.TouchpointEvent(
        event_id=f"nba-{uuid.uuid4()}",
        identities=ev.Identities(customer_id=f"c-{record.profile_id}"),
        channel=ev.CHANNEL_WEB,
        touchpoint=record.placement,
        journey_stage=ev.JOURNEY_STAGE_CONSIDERATION,
        source_system="personalisation",
        offer_outcome=ev.OfferOutcome(
            decision_id=record.decision_id,
            offer_id=action_id or record.chosen[0].action_id,
            outcome=outcome,
            placement=record.placement,
        ),
    )
    event.occurred_at.FromMilliseconds(int(time.time() * 1000))
    violations = normalise_and_validate(event)
    assert not violations, violations
    return event
