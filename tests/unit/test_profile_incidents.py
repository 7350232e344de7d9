"""The alerts service's incidents in the profile: what an ExperienceIncident event does
(effects), how the reference fold keeps them (latest state by event time, any order, any
merge), the derived `open_incidents`, and the stored encoding."""

from __future__ import annotations

import copy
import random

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.profile.adapters.layout import (
    INCIDENTS,
    LATEST_HASHES,
    LUA_CONSTANTS,
    STATE_SUBKEYS,
    SUBKEYS,
    StoredProfile,
    decode_incident,
    encode_incident,
    state_from_redis,
    state_to_redis,
)
from services.profile.domain.derive import derive, field_names
from services.profile.domain.effects import effects_of
from services.profile.domain.fold import differences, fold
from services.profile.domain.segments import evaluate, parse_segments
from services.profile.domain.state import Latest, ProfileState
from tests.factories import at, complaint, incident, journey, nps, order

OPENED = ev.ExperienceIncident.STATE_OPENED
ACKNOWLEDGED = ev.ExperienceIncident.STATE_ACKNOWLEDGED
RESOLVED = ev.ExperienceIncident.STATE_RESOLVED


def open_incidents(events: list[ev.TouchpointEvent], now_day: float = 30) -> int:
    return derive(fold(events), at(now_day)).cx.open_incidents


# --- effects ----------------------------------------------------------------------------


def test_an_incident_event_writes_its_latest_state_to_the_incidents_sub_map() -> None:
    e = incident(1, "inc-1", OPENED, severity="critical", rule="detractor_nps")
    fx = effects_of(e)
    assert ["h", INCIDENTS, "inc-1", "1|opened|critical|detractor_nps"] in fx.ops
    assert ["l", "u.cx", e.event_id] in fx.ops
    assert ["c", "type.experience_incident", 1] in fx.ops
    # An incident is the alerts service's view, not an experience the person reported:
    # no complaint, no signal for the change events.
    assert not [op for op in fx.ops if op[0] == "c" and op[1] == "complaints"]
    assert fx.signals == []


@pytest.mark.parametrize(
    ("state", "encoded"),
    [
        (OPENED, "1|opened|error|late_delivery"),
        (ACKNOWLEDGED, "2|acknowledged|error|late_delivery"),
        (RESOLVED, "3|resolved|error|late_delivery"),
    ],
)
def test_the_lifecycle_rank_leads_the_stored_value(
    state: ev.ExperienceIncident.State.ValueType, encoded: str
) -> None:
    fx = effects_of(incident(1, "inc-1", state, severity="error", rule="late_delivery"))
    (op,) = [op for op in fx.ops if op[0] == "h"]
    assert op == ["h", INCIDENTS, "inc-1", encoded]
    assert decode_incident(encoded).state == encoded.split("|")[1]


def test_incident_values_round_trip() -> None:
    value = encode_incident(2, "acknowledged", "warning", "repeat_contacts")
    assert value == "2|acknowledged|warning|repeat_contacts"
    decoded = decode_incident(value)
    assert (decoded.rank, decoded.state, decoded.severity, decoded.rule) == (
        "2",
        "acknowledged",
        "warning",
        "repeat_contacts",
    )
    # A rule name with the separator keeps it (it is the last part).
    assert decode_incident("1|opened|info|a|b").rule == "a|b"
    assert decode_incident("") == ("", "", "", "")


# --- fold ---------------------------------------------------------------------------------


def test_the_fold_keeps_each_incidents_latest_state_by_event_time() -> None:
    events = [
        incident(3, "inc-1", RESOLVED),
        incident(1, "inc-1", OPENED),
        incident(2, "inc-1", ACKNOWLEDGED),
        incident(2, "inc-2", OPENED, severity="warning", rule="low_csat"),
    ]
    state = fold(events)
    assert state.incidents == {
        "inc-1": Latest("3|resolved|critical|detractor_nps", at(3)),
        "inc-2": Latest("1|opened|warning|low_csat", at(2)),
    }
    rng = random.Random(10)
    for _ in range(20):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert differences(state, fold(shuffled)) == []


def test_a_resolution_in_the_same_millisecond_as_the_opening_wins_in_any_order() -> None:
    events = [incident(1, "inc-1", OPENED), incident(1, "inc-1", RESOLVED)]
    for ordered in (events, events[::-1]):
        state = fold(ordered)
        assert state.incidents["inc-1"].value.startswith("3|resolved|")
        assert derive(state, at(2)).cx.open_incidents == 0


def test_differences_reports_incidents() -> None:
    reference = fold([incident(1, "inc-1", OPENED)])
    other = copy.deepcopy(reference)
    other.incidents["inc-1"] = Latest("3|resolved|critical|detractor_nps", at(2))
    (found,) = differences(reference, other)
    assert found.startswith("incidents['inc-1']")


def test_a_merge_of_two_profiles_folds_to_the_fold_of_all_their_events() -> None:
    """The resolve script merges a loser's latest-wins sub-maps into the survivor's entry
    by entry, keeping the newer value (`merge_latest_hash`, generic over LATEST_HASHES):
    the same as folding both profiles' events into one, whatever side each came from."""
    anonymous = [incident(1, "inc-1", OPENED), incident(4, "inc-2", ACKNOWLEDGED), nps(1, 2)]
    known = [
        incident(3, "inc-1", RESOLVED),
        incident(2, "inc-2", OPENED),
        incident(5, "inc-3", OPENED, rule="payment_failed"),
        order(0, 40),
    ]
    survivor, loser = fold(known), fold(anonymous)
    merged = ProfileState("p")
    for name in LATEST_HASHES:
        entries: dict[str, Latest] = dict(getattr(survivor, name))
        for key, value in getattr(loser, name).items():
            current = entries.get(key)
            if current is None or (value.ts_ms, value.value) > (current.ts_ms, current.value):
                entries[key] = value
        setattr(merged, name, entries)
    everything = fold(known + anonymous)
    assert merged.incidents == everything.incidents
    assert derive(everything, at(6)).cx.open_incidents == 2
    assert derive(everything, at(6)).cx.open_incident_ids == ("inc-2", "inc-3")


# --- derive -------------------------------------------------------------------------------


def test_open_incidents_counts_incidents_not_yet_resolved() -> None:
    assert open_incidents([]) == 0
    assert open_incidents([incident(1, "inc-1", OPENED)]) == 1
    # Acknowledged is still open: someone is on it, the person is still affected.
    assert open_incidents([incident(1, "inc-1", OPENED), incident(2, "inc-1", ACKNOWLEDGED)]) == 1
    assert open_incidents([incident(1, "inc-1", OPENED), incident(2, "inc-1", RESOLVED)]) == 0
    # The resolution arriving first still closes it (latest by event time).
    assert open_incidents([incident(2, "inc-1", RESOLVED), incident(1, "inc-1", OPENED)]) == 0
    events = [
        incident(1, "inc-1", OPENED),
        incident(1, "inc-2", OPENED),
        incident(2, "inc-3", OPENED),
        incident(3, "inc-2", RESOLVED),
    ]
    d = derive(fold(events), at(4))
    assert d.cx.open_incidents == 2
    assert d.cx.open_incident_ids == ("inc-1", "inc-3")


def test_open_incidents_is_a_field_for_segments_and_decisions() -> None:
    assert "open_incidents" in field_names()
    # A tuple like open_complaint_ids: not a flat field.
    assert "open_incident_ids" not in field_names()
    assert derive(ProfileState("-"), at(0)).fields()["open_incidents"] == 0
    fields = derive(fold([incident(1, "inc-1", OPENED)]), at(2)).fields()
    assert fields["open_incidents"] == 1
    assert fields["type.experience_incident"] == 1
    segments = parse_segments(
        {
            "segment": [
                {
                    "name": "affected_by_incident",
                    "all": [{"field": "open_incidents", "op": ">=", "value": 1}],
                }
            ]
        }
    )
    assert evaluate(segments, fields) == {"affected_by_incident"}


def test_incidents_are_not_complaints() -> None:
    d = derive(
        fold([incident(1, "inc-1", OPENED), complaint(1, "c-1", ev.Complaint.STATUS_OPENED)]), at(2)
    )
    assert (d.cx.open_incidents, d.cx.open_complaints, d.cx.complaints) == (1, 1, 1)
    d = derive(fold([incident(1, "inc-1", OPENED)]), at(2))
    assert (d.cx.open_complaints, d.cx.complaints) == (0, 0)
    # Churn and the journey stage read complaints, not incidents.
    assert d.churn_reasons == ()


def test_the_same_incident_event_twice_counts_once() -> None:
    e = incident(1, "inc-1", OPENED)
    state = fold([e, e])
    assert state.count("type.experience_incident") == 1
    assert derive(state, at(2)).cx.open_incidents == 1


# --- the stored layout --------------------------------------------------------------------


def test_incidents_are_a_latest_wins_sub_hash_of_the_layout() -> None:
    assert INCIDENTS in LATEST_HASHES
    assert INCIDENTS in SUBKEYS
    assert INCIDENTS in STATE_SUBKEYS
    # The Lua scripts (apply, resolve, split) get it with the other sub-maps.
    assert INCIDENTS in LUA_CONSTANTS["LATEST_HASHES"]  # type: ignore[operator]
    assert LUA_CONSTANTS["SUB"][INCIDENTS] == ":incidents"  # type: ignore[index]


def test_incidents_round_trip_through_the_redis_encoding() -> None:
    reference = fold([*journey(), incident(3, "inc-1", OPENED), incident(4, "inc-2", RESOLVED)])
    raw = state_to_redis(reference)
    assert raw[INCIDENTS] == {
        "inc-1": f"{at(3)}|1|opened|critical|detractor_nps",
        "inc-2": f"{at(4)}|3|resolved|critical|detractor_nps",
    }
    parsed = state_from_redis(
        reference.profile_id,
        raw["main"],
        identities={f"{t}:{v}" for t, v in reference.identities},
        traits=raw["traits"],
        consent=raw["consent"],
        complaints=raw["complaints"],
        incidents=raw[INCIDENTS],
        contacts={member: float(score) for member, score in raw["contacts"]},
        touchpoints=raw["touchpoints"],
    )
    assert differences(reference, parsed) == []


def test_the_apply_reply_carries_the_incidents_last() -> None:
    reply = [
        "p_1",
        ["c:events", "1"],
        ["c:cust-1"],
        {},
        {},
        {},
        {},
        [],
        ["inc-1", "150|1|opened|critical|detractor_nps"],
    ]
    stored = StoredProfile.from_reply(reply)
    assert stored.incidents == {"inc-1": "150|1|opened|critical|detractor_nps"}
    assert stored.state().incidents == {"inc-1": Latest("1|opened|critical|detractor_nps", 150)}
    assert derive(stored.state(), 200).cx.open_incidents == 1
    # cjson writes an empty hash as {}.
    assert StoredProfile.from_reply([*reply[:8], {}]).incidents == {}
