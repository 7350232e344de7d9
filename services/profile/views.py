"""What callers see, built from stored aggregates (pure): the Profile message, and the
flat features decisions read (`features_of`, also used as a library by the
personalisation service, and `features_response`, its GetFeatures reply)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.common.identifiers import BY_CODE
from services.profile.adapters.layout import decode_consent
from services.profile.adapters.reader import LoadedProfile
from services.profile.domain.derive import FieldValue, derive
from services.profile.domain.segments import Segment, evaluate
from services.profile.domain.state import Latest, ProfileState


def _freshness(target: pb.Freshness, *latest: Latest | None) -> None:
    newest = max((item for item in latest if item is not None), key=lambda i: i.ts_ms, default=None)
    if newest is not None:
        target.updated_at.FromMilliseconds(newest.ts_ms)
        target.event_id = newest.value


def _set_ms(target: object, name: str, ms: int | None) -> None:
    if ms is not None:
        getattr(target, name).FromMilliseconds(ms)


def build_profile(loaded: LoadedProfile, segments: Sequence[Segment], now_ms: int) -> pb.Profile:
    state: ProfileState = loaded.stored.state()
    d = derive(state, now_ms)
    u = state.latest.get
    profile = pb.Profile(
        profile_id=state.profile_id, journey_stage=d.journey_stage, value_tier=d.value_tier
    )
    profile.computed_at.FromMilliseconds(now_ms)
    for link in loaded.lineage:
        t, value = link.identifier
        kind = BY_CODE.get(t)
        entry = profile.identities.add(
            identifier=pb.Identifier(
                type=kind.proto if kind else pb.IDENTIFIER_TYPE_UNSPECIFIED, value=value
            ),
            linked_by_event_id=link.event_id,
            source_system=link.source_system,
        )
        _set_ms(entry, "linked_at", link.linked_at_ms or None)

    for key, item in sorted(state.traits.items()):
        profile.traits.update({key: json.loads(item.value)})
    _freshness(profile.traits_updated, u("u.traits"))

    for purpose, item in sorted(state.consent.items()):
        given = decode_consent(item.value)
        consent = profile.consents.add(
            purpose=ev.ConsentChange.Purpose.Value(f"PURPOSE_{purpose.upper()}"),
            granted=given.granted,
            source_system=given.source_system,
        )
        _freshness(consent.updated, Latest(given.event_id, item.ts_ms))

    a = d.activity
    activity = profile.activity
    _freshness(activity.updated, u("u.activity"))
    _set_ms(activity, "first_seen", a.first_seen_ms)
    _set_ms(activity, "last_seen", a.last_seen_ms)
    activity.events = a.events
    activity.events_by_channel.update({k: n for k, n in a.events_by_channel.items() if n})
    activity.events_by_type.update({k: n for k, n in a.events_by_type.items() if n})
    activity.events_by_touchpoint.update(state.touchpoints)
    activity.last_channel = a.last_channel or ""

    c = d.commerce
    commerce = profile.commerce
    _freshness(commerce.updated, u("u.commerce"))
    commerce.orders = c.orders
    commerce.revenue = c.revenue
    commerce.refunds = c.refunds
    commerce.net_revenue = c.net_revenue
    commerce.average_order_value = c.average_order_value
    commerce.returns = c.returns
    commerce.cancellations = c.cancellations
    commerce.payment_failures = c.payment_failures
    commerce.late_deliveries = c.late_deliveries
    commerce.currency_code = c.currency_code or ""
    commerce.clv_historic = c.clv_historic
    commerce.clv_predicted = c.clv_predicted
    commerce.clv_total = c.clv_total
    commerce.recency_days = c.recency_days if c.recency_days is not None else -1
    commerce.rfm_recency = c.rfm_recency
    commerce.rfm_frequency = c.rfm_frequency
    commerce.rfm_monetary = c.rfm_monetary
    _set_ms(commerce, "first_order_at", c.first_order_at_ms)
    _set_ms(commerce, "last_order_at", c.last_order_at_ms)

    x = d.cx
    cx = profile.cx
    _freshness(cx.updated, u("u.cx"), u("u.support"))
    for name in (
        "csat_last",
        "csat_decayed",
        "csat_percent",
        "ces_last",
        "ces_average",
        "sentiment",
    ):
        value = getattr(x, name)
        if value is not None:
            setattr(cx, name, value)
    if x.nps_last is not None:
        cx.nps_last = x.nps_last
    cx.nps_category = x.nps_category or ""
    cx.open_complaints = x.open_complaints
    cx.support_contacts_7d = x.support_contacts_7d
    cx.support_contacts_30d = x.support_contacts_30d
    cx.repeat_contacts_30d = x.repeat_contacts_30d
    cx.open_incidents = x.open_incidents
    cx.open_incident_ids.extend(x.open_incident_ids)

    profile.churn_risk.score = d.churn_risk
    profile.churn_risk.band = d.churn_band
    for reason in d.churn_reasons:
        profile.churn_risk.reasons.add(
            code=reason.code, description=reason.description, contribution=reason.contribution
        )
    profile.segments.extend(sorted(evaluate(segments, d.fields())))
    return profile


@dataclass(frozen=True)
class FeatureView:
    """A profile's flat fields (`Derived.fields()`, docs/profile-metrics.md "Fields")
    and segments, derived at `computed_at_ms`."""

    profile_id: str
    # Only the names asked for (every field when none were), without None values.
    fields: dict[str, FieldValue]
    # Every segment the profile is in now, sorted (whatever names were asked for).
    segments: list[str]
    # The newest event time the profile holds: how fresh the fields are (None when empty).
    as_of_ms: int | None
    computed_at_ms: int


def _as_of_ms(state: ProfileState) -> int | None:
    times = [item.ts_ms for item in state.latest.values()]
    last_seen = state.maxima.get("last_seen")
    if last_seen is not None:
        times.append(int(last_seen))
    return max(times, default=None)


def features_of(
    loaded: LoadedProfile,
    segments: Sequence[Segment],
    now_ms: int,
    names: Collection[str] = (),
) -> FeatureView:
    """The fields named in `names` (all when empty; a name the profile does not have, or
    whose value is None, is absent), the profile's segments and freshness."""
    state = loaded.stored.state()
    fields = derive(state, now_ms).fields()
    wanted = frozenset(names)
    return FeatureView(
        profile_id=state.profile_id,
        fields={
            name: value
            for name, value in fields.items()
            if value is not None and (not wanted or name in wanted)
        },
        segments=sorted(evaluate(segments, fields)),
        as_of_ms=_as_of_ms(state),
        computed_at_ms=now_ms,
    )


def features_response(view: FeatureView) -> pb.GetFeaturesResponse:
    """The GetFeatures reply of a FeatureView (numbers become Struct doubles)."""
    reply = pb.GetFeaturesResponse(profile_id=view.profile_id, segments=view.segments)
    reply.features.update(view.fields)
    _set_ms(reply, "as_of", view.as_of_ms)
    reply.computed_at.FromMilliseconds(view.computed_at_ms)
    return reply
