"""The alerts worker's batch and timer steps on in-memory stores (the incident store's
and detection state's memory twins), with the shipped rules and owners unless a test
writes its own: what pages, once, with which severity; windows, spikes, timers, auto
resolution; bad records; the profile service away."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.alerts.adapters.config_files import DetectionConfig
from services.alerts.adapters.incidents import MemoryIncidentStore
from services.alerts.adapters.profiles import (
    ProfileUnavailable,
    StaticProfiles,
    wait_for_people,
)
from services.alerts.adapters.windows import MemoryDetectionState
from services.alerts.domain.detect import Person
from services.alerts.domain.owners import load_owners
from services.alerts.domain.rules import load_rules, parse_rules_document
from services.alerts.pipeline import DetectionPipeline
from services.common.dead_letter import SourceRecord
from tests.factories import (
    DAY_MS,
    at,
    complaint,
    contact,
    delivered,
    nps,
    order,
    payment_failed,
)

OWNERS = load_owners()
RULES = load_rules(teams=OWNERS.team_names())
VIP = Person("p_vip", {"value_tier": "vip", "churn_band": "low"}, frozenset({"vip"}))
LOW = Person("p_low", {"value_tier": "low", "churn_band": "low"}, frozenset())
_offsets = itertools.count()
MINUTE = 60_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


class Harness:
    def __init__(
        self, config: DetectionConfig | None = None, people: dict[str, Person] | None = None
    ) -> None:
        self.store = MemoryIncidentStore()
        self.state = MemoryDetectionState()
        self.profiles = StaticProfiles({("c", cid): p for cid, p in (people or {}).items()})
        self.clock = Clock(at(10))
        active = config or DetectionConfig(RULES, OWNERS)
        self.pipeline = DetectionPipeline(
            lambda: active,
            self.store,
            self.state,
            self.profiles,
            segment_names=["vip"],
            clock=self.clock,
            unknown_wait_s=0,
        )

    def send(self, *events: ev.TouchpointEvent) -> Any:
        """Processes the events as one batch, the clock just after the last of them."""
        last = max(e.occurred_at.ToMilliseconds() for e in events)
        self.clock.ms = max(self.clock.ms, last + 1000)
        return self.pipeline.process([record(e) for e in events])

    def tick(self, ms: int) -> Any:
        self.clock.ms = ms
        return self.pipeline.tick(ms)

    def incidents(self) -> list[Any]:
        return sorted(self.store.incidents.values(), key=lambda r: r.incident_id)

    def open(self, dedup_key: str) -> Any:
        incident_id = self.store.open.get(dedup_key)
        return self.store.incidents[incident_id] if incident_id else None

    def pages(self) -> list[tuple[str, str]]:
        return [(e.change, e.incident_id) for e in self.store.outbox if e.page]


def record(e: ev.TouchpointEvent | bytes) -> SourceRecord:
    value = e if isinstance(e, bytes) else e.SerializeToString()
    return SourceRecord("cx.touchpoints.v1", 0, next(_offsets), b"k", value, [], None)


def on(e: ev.TouchpointEvent, touchpoint: str, customer_id: str = "cust-1") -> ev.TouchpointEvent:
    e.touchpoint = touchpoint
    e.identities.CopyFrom(ev.Identities(customer_id=customer_id))
    return e


def at_minute(day: float, minute: float) -> float:
    return day + minute * MINUTE / DAY_MS


def test_a_vip_detractor_pages_once_critical_and_a_second_answer_updates_it() -> None:
    h = Harness(people={"cust-1": VIP})
    report = h.send(on(nps(10, 2), "survey.nps"))
    assert report.results == [("detractor_nps", "OPENED")]
    (incident,) = h.incidents()
    assert (incident.severity, incident.team, incident.profile_id) == ("critical", "cx", "p_vip")
    assert incident.dedup_key == "detractor_nps:pid:p_vip"
    assert h.pages() == [("OPENED", incident.incident_id)]
    report = h.send(on(nps(10.1, 4), "survey.nps"))
    assert report.results == [("detractor_nps", "UPDATED")]
    (incident,) = h.incidents()
    assert incident.count == 2
    assert h.pages() == [("OPENED", incident.incident_id)]


def test_severity_follows_the_person() -> None:
    h = Harness(people={"cust-1": LOW})
    h.send(on(nps(10, 2), "survey.nps"))
    (incident,) = h.incidents()
    assert incident.severity == "warning"


def test_a_redelivered_batch_counts_nothing_twice() -> None:
    h = Harness(people={"cust-1": VIP})
    events = [on(contact(at_minute(10, i), f"k-{i}", "billing"), "support.phone") for i in range(3)]
    h.send(*events)
    again = h.send(*events)
    assert ("repeat_contacts", "DUPLICATE") in again.results
    (incident,) = [i for i in h.incidents() if i.rule == "repeat_contacts"]
    assert incident.count == 1
    assert len(h.pages()) == 1


def test_repeat_contacts_page_once_per_window_and_resolve_when_it_goes_quiet() -> None:
    h = Harness(people={"cust-1": LOW})
    reason = "delivery.late"
    h.send(on(contact(10, "k-1", reason), "support.phone"))
    h.send(on(contact(11, "k-2", reason), "support.chat"))
    # Another reason does not count towards this one.
    h.send(on(contact(11.5, "k-x", "billing"), "support.chat"))
    assert h.incidents() == []
    h.send(on(contact(12, "k-3", reason), "support.phone"))
    (incident,) = h.incidents()
    assert (incident.rule, incident.team, incident.severity) == (
        "repeat_contacts",
        "contact-centre",
        "warning",
    )
    assert incident.summary.startswith("3 contacts about delivery.late in 7 days")
    h.send(on(contact(13, "k-4", reason), "support.phone"))
    (incident,) = h.incidents()
    assert incident.count == 2
    assert len(h.pages()) == 1
    # Still open six days after the last contact, resolved once seven have passed.
    h.tick(at(19))
    assert h.open("repeat_contacts:pid:p_low") is not None
    report = h.tick(at(20) + 1)
    assert report.resolved == [incident.incident_id]
    (incident,) = h.incidents()
    assert incident.state == "resolved"
    assert incident.resolution.startswith("auto: no matching event for 604800 s")


def test_two_failed_payments_within_an_hour() -> None:
    h = Harness(people={"cust-1": VIP})
    first = on(payment_failed(10), "checkout.payment")
    h.send(first)
    assert [i.rule for i in h.incidents()] == ["payment_failed"]
    # Two hours later: not within the window.
    h.send(on(payment_failed(at_minute(10, 120)), "checkout.payment"))
    assert sorted(i.rule for i in h.incidents()) == ["payment_failed"]
    h.send(on(payment_failed(at_minute(10, 150)), "checkout.payment"))
    window = h.open("repeated_payment_failures:pid:p_vip")
    assert window is not None
    assert (window.severity, window.team) == ("critical", "payments")
    # The next order resolves the single-failure incident.
    report = h.send(on(order(at_minute(10, 160), 40), "checkout.confirmation"))
    assert h.open("payment_failed:pid:p_vip") is None
    assert len(report.resolved) == 1


@pytest.mark.parametrize("contact_first", [False, True])
def test_a_late_delivery_followed_by_a_contact(contact_first: bool) -> None:
    h = Harness(people={"cust-1": LOW})
    late = on(delivered(10, late=True), "delivery.doorstep")
    call = on(contact(11, "k-1", "where.is.my.order"), "support.phone")
    # Either may be read first: they can sit on different partitions.
    h.send(*([call, late] if contact_first else [late, call]))
    incident = h.open("late_delivery_then_contact:pid:p_low")
    assert incident is not None
    assert incident.team == "delivery"  # the rule is the delivery team's wherever it happened


def test_a_contact_long_after_a_late_delivery_is_not_one() -> None:
    h = Harness(people={"cust-1": LOW})
    h.send(on(delivered(10, late=True), "delivery.doorstep"))
    h.send(on(contact(14, "k-1", "billing"), "support.phone"))
    assert h.open("late_delivery_then_contact:pid:p_low") is None


def spike_rules(**spike: Any) -> DetectionConfig:
    settings = {
        "window_s": 60,
        "baseline_s": 600,
        "factor": 3,
        "min_count": 5,
        "clear_hold_s": 30,
        **spike,
    }
    document = {
        "rule": [
            {
                "name": "payment_spike",
                "kind": "spike",
                "all": [
                    {"field": "payload", "op": "==", "value": "payment_failed"},
                    {"field": "touchpoint", "op": "==", "value": "checkout.payment"},
                ],
                "spike": settings,
                "default_severity": "critical",
            },
            {
                "name": "payment_failed",
                "kind": "event",
                "all": [{"field": "payload", "op": "==", "value": "payment_failed"}],
            },
        ]
    }
    return DetectionConfig(parse_rules_document(document, "spike.toml"), OWNERS)


def failures(start_ms: int, count: int, every_ms: int = 1000) -> list[ev.TouchpointEvent]:
    """`count` people's failed payments at checkout.payment, `every_ms` apart."""
    out = []
    for i in range(count):
        at_ms = start_ms + i * every_ms
        e = on(payment_failed(0), "checkout.payment", customer_id=f"cust-{at_ms}")
        e.occurred_at.FromMilliseconds(at_ms)
        out.append(e)
    return out


def test_a_spike_opens_one_touchpoint_incident_and_inhibits_the_pages_of_people() -> None:
    h = Harness(spike_rules())
    start = at(10)
    # Four people's failures page each; the fifth reaches min_count.
    for e in failures(start, 4):
        h.send(e)
    assert len(h.pages()) == 4
    for e in failures(start + 4000, 3):
        h.send(e)
    spike = h.open("payment_spike:tp:checkout.payment")
    assert spike is not None
    assert (spike.profile_id, spike.team, spike.severity) == ("", "payments", "critical")
    # The spike's incident paged once; the people's after it are recorded, not paged.
    opened = [i for i in h.incidents() if i.rule == "payment_failed"]
    assert len(opened) == 7
    inhibited = [i for i in opened if i.inhibited_by == spike.incident_id]
    assert len(inhibited) == 3  # the person's rule of the event that opened it, and after
    assert len(h.pages()) == 5


def test_a_steady_rate_does_not_spike_but_three_times_it_does() -> None:
    h = Harness(spike_rules(min_count=8, factor=3, baseline_s=600, window_s=60))
    start = at(10)
    # 6 a minute for ten minutes: under min_count, never a spike.
    for e in failures(start, 60, every_ms=10_000):
        h.send(e)
    assert h.open("payment_spike:tp:checkout.payment") is None
    # Then 20 a minute: min_count alone would open at 8 within the minute; against the
    # baseline (6 a minute, times 3) it takes about 18.
    burst = failures(start + 10 * MINUTE, 24, every_ms=3000)
    for e in burst[:12]:
        h.send(e)
    assert h.open("payment_spike:tp:checkout.payment") is None
    for e in burst[12:]:
        h.send(e)
    spike = h.open("payment_spike:tp:checkout.payment")
    assert spike is not None
    first = spike.evidence[-1]
    assert first.occurred_at_ms >= start + 10 * MINUTE + 14 * 3000


def test_a_spike_clears_after_holding_below_for_clear_hold() -> None:
    h = Harness(spike_rules())
    start = at(10)
    h.send(*failures(start, 6))
    spike = h.open("payment_spike:tp:checkout.payment")
    assert spike is not None
    # Still within the window: still spiking.
    h.tick(start + 10_000)
    assert h.open("payment_spike:tp:checkout.payment") is not None
    # Below from 61 s; cleared once below for 30 s.
    h.tick(start + 66_000)
    h.tick(start + 66_000 + 29_000)
    assert h.open("payment_spike:tp:checkout.payment") is not None
    report = h.tick(start + 66_000 + 30_000)
    assert report.resolved == [spike.incident_id]
    resolved = h.store.incidents[spike.incident_id]
    assert resolved.resolution.startswith("auto: spike cleared")
    assert h.state.open_spikes() == []
    # A new burst opens a new incident.
    h.send(*failures(start + 10 * MINUTE, 6))
    again = h.open("payment_spike:tp:checkout.payment")
    assert again is not None
    assert again.incident_id != spike.incident_id


def test_the_complaint_sla_opens_when_unresolved_and_not_when_resolved() -> None:
    h = Harness(people={"cust-1": LOW})
    h.send(
        on(
            complaint(10, "c-1", ev.Complaint.STATUS_OPENED, ev.Complaint.SEVERITY_LOW),
            "support.complaint",
        )
    )
    h.send(
        on(
            complaint(10, "c-2", ev.Complaint.STATUS_OPENED, ev.Complaint.SEVERITY_LOW),
            "support.complaint",
        )
    )
    assert h.incidents() == []  # low complaints page nobody at once
    h.send(
        on(
            complaint(11, "c-2", ev.Complaint.STATUS_RESOLVED, ev.Complaint.SEVERITY_LOW),
            "support.complaint",
        )
    )
    h.tick(at(12) - 1)
    assert h.incidents() == []
    h.tick(at(12))
    (incident,) = h.incidents()
    assert incident.dedup_key == "complaint_sla:pid:p_low:c-1"
    assert (incident.rule, incident.team, incident.severity) == (
        "complaint_sla",
        "contact-centre",
        "error",
    )


def test_a_high_complaint_pages_and_its_resolution_resolves_it_and_a_detractor_joins_it() -> None:
    h = Harness(people={"cust-1": LOW})
    h.send(on(complaint(10, "c-1", ev.Complaint.STATUS_OPENED), "support.complaint"))
    raised = h.open("complaint_raised:pid:p_low")
    assert raised is not None
    report = h.send(on(nps(10.1, 1), "survey.nps"))
    assert report.results == [("detractor_nps", "GROUPED")]
    assert h.store.incidents[raised.incident_id].grouped == 1
    h.send(on(complaint(10.2, "c-1", ev.Complaint.STATUS_RESOLVED), "support.complaint"))
    assert h.open("complaint_raised:pid:p_low") is None
    assert h.store.incidents[raised.incident_id].resolution == "auto: resolve_when: complaint"


def test_bad_records_are_skipped_and_counted() -> None:
    h = Harness(people={"cust-1": VIP})
    invalid = ev.TouchpointEvent(event_id="x")  # no time, identities or payload
    records = [
        record(b"\xff\x00not a protobuf"),
        record(invalid),
        SourceRecord("t", 0, 1, None, None, [], None),  # a tombstone
        record(on(nps(10, 2), "survey.nps")),
    ]
    report = h.pipeline.process(records)
    assert report.invalid == 3
    assert report.results == [("detractor_nps", "OPENED")]


def test_the_profile_service_away_fails_the_batch_before_anything_is_written() -> None:
    h = Harness(people={"cust-1": VIP})
    h.profiles.down = True
    with pytest.raises(ProfileUnavailable):
        h.send(on(nps(10, 2), "survey.nps"))
    assert h.incidents() == []
    assert isinstance(ProfileUnavailable("x"), ConnectionError)  # batches retry it
    h.profiles.down = False
    h.send(on(nps(10, 2), "survey.nps"))
    (incident,) = h.incidents()
    assert incident.severity == "critical"


def test_events_no_rule_needs_do_not_ask_the_profile() -> None:
    h = Harness(people={"cust-1": VIP})
    h.send(on(nps(10, 9), "survey.nps"), on(order(10, 40), "web.checkout"))
    assert h.profiles.calls == 1  # the order could resolve a payment failure
    h.send(on(nps(10, 9), "survey.nps"))
    assert h.profiles.calls == 1


def test_an_unknown_person_still_pages_under_a_stand_in_id() -> None:
    h = Harness()
    h.send(on(nps(10, 2), "survey.nps", customer_id="new-1"))
    (incident,) = h.incidents()
    assert incident.profile_id.startswith("anon-")
    assert "new-1" not in incident.dedup_key
    assert incident.severity == "warning"


def test_a_new_persons_profile_is_waited_for() -> None:
    class Late(StaticProfiles):
        def people(self, identifiers: Iterable[Any], names: Iterable[str]) -> Any:
            found = super().people(list(identifiers), list(names))
            if self.calls == 2:
                self.known[("c", "new-1")] = VIP
            return found

    lookup = Late()
    found = wait_for_people(lookup, [("c", "new-1")], [], wait_s=5, sleep=lambda s: None)
    assert found == {("c", "new-1"): VIP}
    assert lookup.calls == 3


def test_old_events_count_but_open_nothing() -> None:
    h = Harness(people={"cust-1": LOW})
    h.clock.ms = at(30)
    h.pipeline.process([record(on(nps(10, 2), "survey.nps"))])
    assert h.incidents() == []
    # Windows still count them: two old contacts and a fresh one make three.
    h.pipeline.process(
        [record(on(contact(29.9, f"k-{i}", "billing"), "support.phone")) for i in range(2)]
    )
    assert h.incidents() == []
    h.send(on(contact(30, "k-3", "billing"), "support.phone"))
    assert h.open("repeat_contacts:pid:p_low") is not None


def test_the_timer_deletes_incidents_resolved_longer_ago_than_they_are_kept() -> None:
    from services.alerts.pipeline import RESOLVED_KEPT_MS

    h = Harness(people={"cust-1": LOW})
    reason = "delivery.late"
    for i, day in enumerate((10, 11, 12)):
        h.send(on(contact(day, f"k-{i}", reason), "support.phone"))
    h.tick(at(20) + 1)  # the contacts' window went quiet: resolved
    assert [r.state for r in h.incidents()] == ["resolved"]
    h.tick(at(20) + RESOLVED_KEPT_MS // 2)
    assert len(h.incidents()) == 1
    # (The store's own tests show that open incidents are never deleted.)
    report = h.tick(at(20) + RESOLVED_KEPT_MS + 120_000)
    assert report.purged == 1
    assert h.incidents() == []
