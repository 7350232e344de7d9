"""Reading a logged decision (`DecisionRecord` on `cx.decisions.v1`) back: its fields as the
learner saw them, the arms it offered and what it showed first. Used by the learner, offline
evaluation and the simulator, so a logged decision rebuilds exactly the context the Decide
server gave the model."""

from __future__ import annotations

from datetime import UTC, datetime

from cx.personalisation.v1 import personalisation_pb2 as pb
from google.protobuf import json_format

from services.common.conditions import FieldValue
from services.personalisation.domain.learning import ArmSpec
from services.personalisation.views import channel_name


def logged_features(record: pb.DecisionRecord) -> dict[str, FieldValue]:
    """The logged profile fields, `segment.<name>` included (numbers come back as
    floats)."""
    return {
        name: value
        for name, value in json_format.MessageToDict(record.features).items()
        if isinstance(value, bool | int | float | str)
    }


def decision_fields(record: pb.DecisionRecord) -> dict[str, FieldValue]:
    """The logged profile fields and the request's fields the learner reads: placement,
    channel, context.device, hour and weekday (UTC)."""
    fields = logged_features(record)
    when = datetime.fromtimestamp(record.decided_at.ToMilliseconds() / 1000, UTC)
    fields.update(
        {
            "placement": record.placement,
            "channel": channel_name(record.channel),
            "context.device": record.context.device or None,
            "hour": when.hour,
            "weekday": when.weekday(),
        }
    )
    return fields


def arms(record: pb.DecisionRecord) -> tuple[ArmSpec, ...]:
    """The eligible actions the policy ordered, in the logged order."""
    return tuple(ArmSpec(a.action_id, a.kind) for a in record.ranked)


def first_choice(record: pb.DecisionRecord) -> tuple[int, float, float] | None:
    """The first chosen action: (its index in `arms`, the probability it was picked, its
    business value), or None when nothing was shown."""
    if not record.chosen:
        return None
    first = record.chosen[0]
    for i, action in enumerate(record.ranked):
        if action.action_id == first.action_id:
            return i, first.probability, first.score.business_value
    return None


__all__ = ["arms", "decision_fields", "first_choice", "logged_features"]
