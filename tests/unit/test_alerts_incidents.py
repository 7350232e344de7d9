"""The incidents' pure parts: the codecs of the Redis hash, triggers, silences and the
outbox entry round-trip; plans and their checks; silences' windows and matching; the
layout's key names and the Lua constants rendered from it."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from cx.alerts.v1 import alerts_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from services.alerts.adapters.layout import (
    AlertKeys,
    decode_outbox_entry,
    encode_outbox_fields,
    lua_script,
)
from services.alerts.domain.incidents import (
    ACTIVE,
    EXPIRED,
    PENDING,
    SEVERITIES,
    Delivery,
    EvidenceItem,
    IncidentRecord,
    InvalidTransition,
    Matcher,
    SilenceRecord,
    TriggerView,
    change_message,
    check_trigger,
    delivery_field,
    delivery_json,
    holding_silence,
    incident_from_hash,
    incident_message,
    incident_to_hash,
    new_incident_id,
    person_key,
    plan_acknowledge,
    plan_escalate,
    plan_resolve,
    plan_trigger,
    silence_from_json,
    silence_json,
    split_timer,
    timer_member,
    touchpoint_key,
    trigger_from_json,
    trigger_json,
)
from tests.support.alerts import NOW, make_trigger

texts = st.text(max_size=30)
ms = st.integers(0, 2**42)
evidence = st.builds(
    EvidenceItem,
    event_id=st.text(min_size=1, max_size=20),
    touchpoint=texts,
    occurred_at_ms=ms,
    payload=texts,
    negative=texts,
    scores=st.dictionaries(
        st.text(min_size=1, max_size=10), st.floats(allow_nan=False, allow_infinity=False)
    ),
)
records = st.builds(
    IncidentRecord,
    incident_id=st.text(min_size=1, max_size=20),
    dedup_key=texts,
    rule=texts,
    kind=st.sampled_from(["event", "window", "spike", "timer"]),
    state=st.sampled_from(["triggered", "acknowledged", "resolved"]),
    severity=st.sampled_from(SEVERITIES),
    team=texts,
    summary=st.text(max_size=200),
    profile_id=texts,
    touchpoint=texts,
    count=st.integers(0, 10**9),
    first_seen_ms=ms,
    last_seen_ms=ms,
    evidence=st.lists(evidence, max_size=3).map(tuple),
    acknowledged_by=texts,
    acknowledged_at_ms=ms,
    resolved_by=texts,
    resolved_at_ms=ms,
    resolution=texts,
    inhibited_by=texts,
    silenced_by=texts,
    grouped=st.integers(0, 1000),
    version=st.integers(1, 10**6),
    escalation_level=st.integers(0, 3),
    paged=st.booleans(),
    escalate_at_ms=ms,
    updated_at_ms=ms,
)


@given(records)
def test_incident_hash_round_trips(record: IncidentRecord) -> None:
    assert incident_from_hash(incident_to_hash(record)) == record


@given(records, st.sampled_from(["OPENED", "UPDATED", "ACKNOWLEDGED", "RESOLVED", "ESCALATED"]))
def test_outbox_entry_round_trips(record: IncidentRecord, change: str) -> None:
    message = change_message(record, change, NOW)
    fields = encode_outbox_fields(change, record.paged, message, record.incident_id, 3)
    entry = decode_outbox_entry(b"1700000000000-5", {k.encode(): v for k, v in fields.items()})
    assert (entry.change, entry.page, entry.incident_id, entry.version) == (
        change,
        record.paged,
        record.incident_id,
        3,
    )
    assert entry.message == message
    assert entry.at_ms == 1_700_000_000_000


def test_incident_message_fields() -> None:
    record = IncidentRecord(
        incident_id="inc-1",
        dedup_key="detractor:pid:p1",
        rule="detractor",
        kind="window",
        state="acknowledged",
        severity="warning",
        team="cx",
        summary="s",
        profile_id="p1",
        touchpoint="web",
        count=2,
        first_seen_ms=NOW,
        last_seen_ms=NOW + 1,
        evidence=(EvidenceItem("e1", "web", NOW, "survey_response", "detractor", {"nps": 2}),),
        acknowledged_by="alice",
        acknowledged_at_ms=NOW + 2,
        deliveries=(Delivery("pd", "OPENED", "delivered", 1, "", NOW + 3),),
    )
    m = incident_message(record)
    assert (m.kind, m.state, m.severity) == (
        pb.RULE_KIND_WINDOW,
        pb.STATE_ACKNOWLEDGED,
        pb.SEVERITY_WARNING,
    )
    assert m.acknowledged_at.ToMilliseconds() == NOW + 2
    assert not m.HasField("resolved_at")
    assert m.deliveries[0].delivered_at.ToMilliseconds() == NOW + 3
    assert dict(m.evidence[0].scores) == {"nps": 2.0}


def test_delivery_history_is_read_back_in_change_order() -> None:
    record = incident_from_hash(
        {
            **incident_to_hash(incident_from_hash({"incident_id": "i", "state": "triggered"})),
            delivery_field("slack", "RESOLVED"): delivery_json(Delivery("slack", "RESOLVED", "d")),
            delivery_field("pd", "OPENED"): delivery_json(Delivery("pd", "OPENED", "d")),
            delivery_field("am", "OPENED"): delivery_json(Delivery("am", "OPENED", "d")),
        }
    )
    assert [(d.change, d.receiver) for d in record.deliveries] == [
        ("OPENED", "am"),
        ("OPENED", "pd"),
        ("RESOLVED", "slack"),
    ]


def test_trigger_json_round_trips() -> None:
    t = make_trigger(
        "e1", escalate_after_s=90.5, groups_with=("complaint_high",), sla_due_ms=NOW + 5
    )
    assert trigger_from_json(trigger_json(t)) == t


def test_silence_json_round_trips_and_windows() -> None:
    s = SilenceRecord("s1", (Matcher("touchpoint", "web.", True),), NOW, NOW + 10, "a", "c")
    assert silence_from_json(silence_json(s)) == s
    assert s.state_at(NOW - 1) == PENDING
    assert s.state_at(NOW) == ACTIVE
    assert s.state_at(NOW + 10) == EXPIRED
    attrs = {"touchpoint": "web.checkout", "team": "cx"}
    assert s.holds(attrs, NOW)
    assert not s.holds(attrs, NOW + 10)
    assert not s.holds({"touchpoint": "app.web."}, NOW)


def test_the_first_silence_by_id_holds() -> None:
    a = SilenceRecord("sil-b", (Matcher("team", "cx"),), 0, NOW * 2)
    b = SilenceRecord("sil-a", (Matcher("rule", "detractor"),), 0, NOW * 2)
    found = holding_silence([a, b], {"team": "cx", "rule": "detractor"}, NOW)
    assert found is b


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "cron"}, "kind 'cron'"),
        ({"severity": "fatal"}, "severity 'fatal'"),
        ({"rule": ""}, "rule is empty"),
        ({"team": ""}, "team is empty"),
        ({"dedup_key": "a|b"}, "cannot hold '|'"),
        ({"escalate_after_s": -1.0}, "escalate_after_s is negative"),
    ],
)
def test_check_trigger_names_the_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_trigger(replace(make_trigger("e1"), **change))  # type: ignore[arg-type]


def test_check_trigger_needs_an_event_id() -> None:
    t = make_trigger("e1")
    with pytest.raises(ValueError, match=r"evidence\.event_id"):
        check_trigger(replace(t, evidence=replace(t.evidence, event_id="")))


def test_plans_of_transitions() -> None:
    opened = plan_trigger(make_trigger("e1", escalate_after_s=60), TriggerView(), "inc-1")
    record = opened.after
    assert record is not None
    assert opened.schedule == (("esc|inc-1", NOW + 60_000),)
    assert record.escalate_at_ms == NOW + 60_000
    acked = plan_acknowledge(record, "alice", NOW + 1)
    assert acked.unschedule == ("esc|inc-1",)
    assert acked.after is not None
    assert acked.after.escalate_at_ms == 0
    assert plan_escalate(acked.after, NOW + 60_000).after is None
    resolved = plan_resolve(acked.after, "auto", "cleared", NOW + 2)
    assert resolved.after is not None
    assert resolved.after.resolution == "auto: cleared"
    with pytest.raises(InvalidTransition):
        plan_resolve(resolved.after, "bob", "", NOW + 3)
    escalated = plan_escalate(record, NOW + 60_000)
    assert escalated.after is not None
    assert (escalated.change, escalated.page, escalated.after.escalation_level) == (
        "ESCALATED",
        True,
        1,
    )
    assert plan_escalate(escalated.after, NOW + 120_000).after is None


def test_an_unpaged_incident_changes_unpaged() -> None:
    inhibitor = plan_trigger(
        make_trigger("s1", profile_id="", rule="spike", kind="spike"), TriggerView(), "inc-1"
    ).after
    assert inhibitor is not None
    plan = plan_trigger(
        make_trigger("e1", escalate_after_s=60), TriggerView(inhibitors=[inhibitor]), "inc-2"
    )
    assert plan.result is not None
    assert plan.result.suppressed_by == "inhibited:inc-1"
    assert plan.schedule == ()
    assert plan.after is not None
    assert not plan_acknowledge(plan.after, "a", NOW).page


def test_a_touchpoint_incident_is_not_inhibited_by_another() -> None:
    other = plan_trigger(
        make_trigger("s1", profile_id="", rule="spike", kind="spike"), TriggerView(), "inc-1"
    ).after
    assert other is not None
    plan = plan_trigger(
        make_trigger("s2", profile_id="", rule="spike2", kind="spike"),
        TriggerView(inhibitors=[other]),
        "inc-2",
    )
    assert plan.page


def test_names() -> None:
    assert person_key("detractor", "p1") == "detractor:pid:p1"
    assert touchpoint_key("spike", "checkout.payment") == "spike:tp:checkout.payment"
    assert split_timer(timer_member("sla", "r:pid:p|x")) == ("sla", "r:pid:p|x")
    assert new_incident_id(NOW).startswith(f"inc-{NOW:011x}-")
    assert new_incident_id(NOW) != new_incident_id(NOW)


def test_layout_key_names() -> None:
    k = AlertKeys("cx:")
    assert k.incident("i1") == "cx:al:inc:i1"
    assert k.open("r:pid:p") == "cx:al:open:r:pid:p"
    assert k.incidents == "cx:al:incidents"
    assert k.state("resolved") == "cx:al:state:resolved"
    assert (k.team("t"), k.rule("r"), k.pid("p")) == ("cx:al:team:t", "cx:al:rule:r", "cx:al:pid:p")
    assert k.touchpoint("web") == "cx:al:tp:web"
    assert k.seen("r", "e1") == "cx:al:seen:r:e1"
    assert k.pending("r:pid:p") == "cx:al:pending:r:pid:p"
    assert (k.timers, k.silences, k.outbox) == ("cx:al:timers", "cx:al:silences", "cx:al:outbox")
    assert k.silence("s") == "cx:al:silence:s"
    assert k.delivered("1-0", "pd") == "cx:al:delivered:1-0:pd"
    assert k.window("r", "p") == "cx:al:win:r:p"
    assert k.spike("r", "t") == "cx:al:spike:r:t"
    assert k.baseline("r", "t") == "cx:al:base:r:t"


def test_lua_scripts_get_the_key_names() -> None:
    for name in ("read.lua", "commit.lua"):
        script = lua_script(name)
        assert "local KEY = {incident = 'al:inc:', open = 'al:open:'" in script
