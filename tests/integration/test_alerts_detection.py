"""Detection through the real alerts worker process, on its own topic and key prefix, with
the profile pipeline beside it: who is paged, once, with which severity; windows, spikes
and their inhibition, the complaint SLA; bad records; the profile service away; the
worker killed mid-stream."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.common.settings import KafkaSettings, redis_settings
from tests.integration.alerts_detection_harness import (
    ALERTS,
    AlertsDetectionHarness,
    complaint,
    contact,
    late_delivery,
    nps,
    payment_failed,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AlertsDetectionHarness]:
    h = AlertsDetectionHarness(kafka, redis_settings().redis_url, tmp_path_factory.mktemp("alerts"))
    try:
        h.start_worker()
        h.start_alerts()
        yield h
    finally:
        h.stop_workers(signal.SIGKILL)  # no graceful Faust shutdown to wait for
        h.close()


def customer() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def test_a_vip_detractor_pages_its_team_once_and_a_second_answer_updates_it(
    harness: AlertsDetectionHarness,
) -> None:
    who = customer()
    harness.make_vip(who)
    harness.track([nps(who, 2)])
    pid = harness.profile_id(who)
    key = f"detractor_nps:pid:{pid}"
    first = harness.wait_incident("the detractor's incident", lambda: harness.incident_of(key))
    assert (first.severity, first.team, first.kind) == ("critical", "cx", "event")
    assert first.summary.startswith("NPS 2 from a customer of value tier vip")
    harness.track([nps(who, 4)])
    updated = harness.wait_incident(
        "the second answer", lambda: (i := harness.incident_of(key)) and i.count == 2 and i
    )
    assert updated.incident_id == first.incident_id
    assert harness.pages(first.incident_id) == ["OPENED"]
    assert [r.rule for r in harness.person_incidents(pid)] == ["detractor_nps"]


def test_repeat_contacts_page_once_per_window(harness: AlertsDetectionHarness) -> None:
    who = customer()
    harness.track([contact(who, "delivery.late", minutes_ago=m) for m in (90, 60, 30)])
    harness.wait_for_profile(pb_customer(), who, events=3)
    pid = harness.profile_id(who)
    key = f"repeat_contacts:pid:{pid}"
    opened = harness.wait_incident("the repeat contacts", lambda: harness.incident_of(key))
    assert opened.team == "contact-centre"
    harness.track([contact(who, "delivery.late")])
    harness.wait_incident(
        "the fourth contact", lambda: (i := harness.incident_of(key)) and i.count == 2
    )
    assert harness.pages(opened.incident_id) == ["OPENED"]


def test_a_late_delivery_followed_by_a_contact_is_the_delivery_teams(
    harness: AlertsDetectionHarness,
) -> None:
    who = customer()
    harness.track([late_delivery(who, minutes_ago=120), contact(who, "where.is.my.order")])
    harness.wait_for_profile(pb_customer(), who, events=2)
    key = f"late_delivery_then_contact:pid:{harness.profile_id(who)}"
    incident = harness.wait_incident(
        "the late delivery and contact", lambda: harness.incident_of(key)
    )
    assert incident.team == "delivery"


def test_failed_payments_spiking_open_one_touchpoint_incident_that_inhibits_peoples_pages(
    harness: AlertsDetectionHarness,
) -> None:
    spike_key = "checkout_payment_spike:tp:checkout.payment"
    # All six failed at about the same time (a spike is counted by when events happened),
    # the last three read after the first three's incidents exist.
    at = datetime.now(UTC) - timedelta(seconds=1)
    first = [customer() for _ in range(3)]
    harness.track([payment_failed(who, at) for who in first])
    harness.wait_incident(
        "three people's failed payments",
        lambda: len(harness.incidents("payment_failed")) >= 3,
    )
    assert harness.incident_of(spike_key) is None
    later = [customer() for _ in range(3)]
    harness.track([payment_failed(who, at) for who in later])
    spike = harness.wait_incident("the spike", lambda: harness.incident_of(spike_key))
    assert (spike.profile_id, spike.team, spike.kind) == ("", "payments", "spike")
    people = harness.wait_incident(
        "six people's incidents",
        lambda: len(found := harness.incidents("payment_failed")) == 6 and found,
    )
    inhibited = [i for i in people if i.inhibited_by == spike.incident_id]
    assert len(inhibited) >= 2  # those after the fourth failure (its own too, when first)
    assert all(harness.pages(i.incident_id) == [] for i in inhibited)
    paged = [i for i in people if harness.pages(i.incident_id) == ["OPENED"]]
    assert len(paged) + len(inhibited) == 6
    assert harness.pages(spike.incident_id) == ["OPENED"]
    # Nothing more: the spike clears after its window (6 s) and hold (1 s).
    resolved = harness.wait_incident(
        "the spike to clear",
        lambda: (r := harness.alerts.get_record(spike.incident_id)) and r.state == "resolved" and r,
        timeout_s=40,
    )
    assert resolved.resolution.startswith("auto: spike cleared")


def test_the_complaint_sla_opens_an_incident_unless_the_complaint_is_resolved(
    harness: AlertsDetectionHarness,
) -> None:
    who = customer()
    opened = ev.Complaint.STATUS_OPENED
    harness.track([complaint(who, "cmp-late", opened), complaint(who, "cmp-fixed", opened)])
    harness.track([complaint(who, "cmp-fixed", ev.Complaint.STATUS_RESOLVED)])
    harness.wait_for_profile(pb_customer(), who, events=3)
    pid = harness.profile_id(who)
    breached = harness.wait_incident(
        "the SLA breach", lambda: harness.incident_of(f"complaint_sla:pid:{pid}:cmp-late")
    )
    assert (breached.team, breached.kind) == ("contact-centre", "timer")
    time.sleep(1)
    assert [r.dedup_key for r in harness.person_incidents(pid)] == [breached.dedup_key]


def test_bad_records_are_skipped_and_counted_and_the_stream_goes_on(
    harness: AlertsDetectionHarness,
) -> None:
    before = harness.metric("cx_alerts_records_total", outcome="invalid")
    harness.produce_raw(b"\xff\x00 not a protobuf")
    harness.produce_raw(None)  # a tombstone
    harness.produce_raw(ev.TouchpointEvent(event_id="no-payload").SerializeToString())
    who = customer()
    harness.track([nps(who, 0)])
    harness.wait_for_profile(pb_customer(), who, events=1)
    key = f"detractor_nps:pid:{harness.profile_id(who)}"
    harness.wait_incident("the detractor after the bad records", lambda: harness.incident_of(key))
    assert harness.worker_exited(ALERTS) is None
    assert harness.metric("cx_alerts_records_total", outcome="invalid") >= before + 3


def test_with_the_profile_service_away_the_batch_waits_rather_than_pages_wrongly(
    harness: AlertsDetectionHarness,
) -> None:
    who = customer()
    harness.make_vip(who)
    pid = harness.profile_id(who)
    harness.stop_features()
    try:
        harness.track([nps(who, 1)])
        time.sleep(2)
        assert harness.incident_of(f"detractor_nps:pid:{pid}") is None
        assert harness.worker_exited(ALERTS) is None
    finally:
        harness.start_features()
    incident = harness.wait_incident(
        "the detractor once the profile answers",
        lambda: harness.incident_of(f"detractor_nps:pid:{pid}"),
    )
    assert incident.severity == "critical"


def test_the_worker_killed_mid_stream_loses_no_page_and_repeats_none(
    harness: AlertsDetectionHarness,
) -> None:
    people = [customer() for _ in range(30)]
    harness.track([nps(who, 3) for who in people[:15]])
    harness.wait_incident(
        "the first incidents", lambda: len(harness.incidents("detractor_nps")) > 0
    )
    harness.kill_worker(signal.SIGKILL, ALERTS)
    harness.track([nps(who, 3) for who in people[15:]])
    harness.start_alerts()
    for who in people:
        harness.wait_for_profile(pb_customer(), who, events=1)
    keys = {f"detractor_nps:pid:{harness.profile_id(who)}" for who in people}

    def all_open() -> bool:
        return all(harness.incident_of(key) is not None for key in keys)

    harness.wait_incident("every detractor's incident", all_open, timeout_s=60)
    for key in keys:
        incident = harness.incident_of(key)
        assert incident is not None
        assert incident.count == 1, key
        assert harness.pages(incident.incident_id) == ["OPENED"], key


def pb_customer() -> pb.IdentifierType.ValueType:
    return pb.IDENTIFIER_TYPE_CUSTOMER_ID
