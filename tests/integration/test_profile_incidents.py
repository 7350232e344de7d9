"""The alerts service's incidents in the profile, on the real path: ExperienceIncident
events -> Kafka -> profile worker -> Redis -> GetFeatures; through a merge of two profiles
(the resolve script) and its unmerge (the split script), the stored incidents always equal
the reference fold of the events."""

from __future__ import annotations

import uuid

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.profile.domain.fold import differences, fold
from tests.factories import recent_incident, recent_login, recent_page
from tests.integration.profile_harness import ANON, EMAIL, ProfileHarness, aggregates

OPENED = ev.ExperienceIncident.STATE_OPENED
ACKNOWLEDGED = ev.ExperienceIncident.STATE_ACKNOWLEDGED
RESOLVED = ev.ExperienceIncident.STATE_RESOLVED


def open_incidents(h: ProfileHarness, t: pb.IdentifierType.ValueType, value: str) -> int:
    request = pb.GetFeaturesRequest(
        identifier=pb.Identifier(type=t, value=value), names=["open_incidents"]
    )
    reply = h.profiles.GetFeatures(request, timeout=10)
    count = reply.features["open_incidents"]
    assert isinstance(count, float), count
    # The contact centre's view (GetProfile) says the same, with the incidents' ids.
    profile = h.profile(t, value)
    assert profile is not None
    assert profile.cx.open_incidents == int(count)
    assert len(profile.cx.open_incident_ids) == int(count)
    return int(count)


def agrees_with_fold(
    h: ProfileHarness,
    profile_id: str,
    events: list[ev.TouchpointEvent],
    *,
    identities: bool = True,
) -> None:
    expected, stored = aggregates(fold(events, profile_id)), aggregates(h.state(profile_id))
    if not identities:
        stored.identities = expected.identities
    assert differences(expected, stored) == []


def test_incidents_follow_their_latest_state_through_merge_and_unmerge(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    tag = uuid.uuid4().hex[:6]
    anon, email = f"inc-a-{tag}", f"inc-{tag}@example.com"
    first, second, third = (f"inc-{tag}-{n}" for n in (1, 2, 3))

    # A known person with two incidents, one acknowledged.
    known_events = [
        recent_page(0, email=email),
        recent_incident(1, first, OPENED, email=email),
        recent_incident(2, second, OPENED, "warning", email=email),
        recent_incident(3, second, ACKNOWLEDGED, "warning", email=email),
    ]
    h.track(known_events)
    known = h.wait_for_profile(EMAIL, email, events=len(known_events))
    assert open_incidents(h, EMAIL, email) == 2
    agrees_with_fold(h, known.profile_id, known_events)

    # The same person browsing anonymously: the first incident's resolution reached that
    # profile (the person was known by the anonymous id then), and a third incident opened.
    anonymous_events = [
        recent_page(4, anonymous_id=anon),
        recent_incident(5, first, RESOLVED, anonymous_id=anon),
        recent_incident(6, third, OPENED, anonymous_id=anon),
    ]
    h.track(anonymous_events)
    anonymous = h.wait_for_profile(ANON, anon, events=len(anonymous_events))
    assert open_incidents(h, ANON, anon) == 1
    agrees_with_fold(h, anonymous.profile_id, anonymous_events)

    # The login merges the two: the first incident is resolved (the later state wins
    # whichever profile held it), the second and third are open.
    login = recent_login(7, anonymous_id=anon, email=email)
    h.track([login])
    everything = [*known_events, *anonymous_events, login]
    merged = h.wait_for_profile(EMAIL, email, events=len(everything))
    assert merged.profile_id == known.profile_id
    assert open_incidents(h, ANON, anon) == open_incidents(h, EMAIL, email) == 2
    state = h.state(merged.profile_id)
    assert {k: v.value.split("|")[1] for k, v in state.incidents.items()} == {
        first: "resolved",
        second: "acknowledged",
        third: "opened",
    }
    agrees_with_fold(h, merged.profile_id, everything)

    # Resolving the others closes them; a redelivered event changes nothing.
    closing = [
        recent_incident(8, second, RESOLVED, "warning", email=email),
        recent_incident(9, third, RESOLVED, anonymous_id=anon),
    ]
    h.track([*closing, closing[0]])
    everything += closing
    h.wait_for_profile(EMAIL, email, events=len(everything))
    assert open_incidents(h, EMAIL, email) == 0
    agrees_with_fold(h, merged.profile_id, everything)

    # Unmerge: each side is rebuilt from its own events (split.lua writes the incidents
    # sub-map with the others).
    reply = h.profiles.UnmergeProfile(
        pb.UnmergeProfileRequest(
            profile_id=known.profile_id, merged_profile_id=anonymous.profile_id
        )
    )
    assert reply.restored_profile_id == anonymous.profile_id
    kept = {pid: h.reader.events(pid) for pid in (known.profile_id, anonymous.profile_id)}
    assert sorted(e.event_id for side in kept.values() for e in side) == sorted(
        e.event_id for e in everything
    )
    # The identifiers are split by the request, not by the events (the login stays with
    # the survivor, the anonymous id goes back): the aggregates are the events'.
    for pid, events in kept.items():
        agrees_with_fold(h, pid, events, identities=False)
    restored = h.state(anonymous.profile_id)
    assert restored.incidents[third].value.split("|")[1] == "resolved"
    assert open_incidents(h, ANON, anon) == 0
