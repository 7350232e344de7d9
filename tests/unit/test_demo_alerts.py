"""The demo's alerts section without the stack: which incidents are the run's, the
counting and the lines, the receivers' names at the sink, and the section against
AlertsService in-process (the in-memory store) with a stand-in sink and worker metrics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cx.alerts.v1 import alerts_pb2 as pb
from prometheus_client import CollectorRegistry, Counter, generate_latest

from services.alerts.adapters.incidents import MemoryIncidentStore
from services.alerts.domain.incidents import Delivery, new_incident_id
from services.alerts.domain.owners import load_owners
from services.alerts.domain.receivers import Receiver, resolve_all
from services.alerts.server import build_server
from services.alerts.service import AlertsServicer
from services.alerts.settings import AlertsSettings
from services.demo import alerts_section as section
from services.demo.alerts_section import (
    AlertsSection,
    PageRow,
    SinkNames,
    created_ms,
    example_lines,
    incident_lines,
    of_run,
    page_lines,
    page_rows,
    pick_examples,
    records_total,
    rule_table,
    settled,
    sink_check,
    sink_names,
    sink_page,
    suppression_lines,
    wait_line,
)
from services.demo.summary import DemoRun, Summary
from tests.support.alerts import make_trigger, spike_trigger

START_MS = 1_800_000_000_000
PREFIX = "demo-7-"
CRITICAL, ERROR, WARNING = pb.SEVERITY_CRITICAL, pb.SEVERITY_ERROR, pb.SEVERITY_WARNING


def incident(
    n: int,
    *,
    rule: str = "detractor_nps",
    team: str = "cx",
    severity: pb.Severity.ValueType = WARNING,
    state: pb.State.ValueType = pb.STATE_TRIGGERED,
    profile_id: str = "p_1",
    touchpoint: str = "survey.nps",
    event_id: str = "demo-7-00001-0001",
    opened_ms: int = START_MS + 1000,
    **fields: Any,
) -> pb.Incident:
    key = f"{rule}:pid:{profile_id}" if profile_id else f"{rule}:tp:{touchpoint}"
    out = pb.Incident(
        incident_id=f"inc-{opened_ms:011x}-{n:06x}",
        dedup_key=key,
        rule=rule,
        kind=pb.RULE_KIND_SPIKE if not profile_id else pb.RULE_KIND_EVENT,
        state=state,
        severity=severity,
        team=team,
        summary=f"{rule} summary",
        profile_id=profile_id,
        touchpoint=touchpoint,
        evidence=[pb.Evidence(event_id=event_id, touchpoint=touchpoint, payload="survey_response")],
        **{"count": 1, **fields},
    )
    return out


def delivered(receiver: str, change: str = "OPENED", status: str = "delivered") -> pb.Delivery:
    return pb.Delivery(receiver=receiver, change=change, status=status, attempts=1)


# --- which incidents, and whether they are done ---------------------------------------------


def test_an_incident_id_says_when_it_opened() -> None:
    assert created_ms(new_incident_id(START_MS)) == START_MS
    assert created_ms("inc-0001") == 0
    assert created_ms("inc-zz-12") == 0
    assert created_ms("") == 0


def test_an_incident_is_the_runs_when_its_evidence_holds_one_of_the_runs_events() -> None:
    mine = incident(1)
    mine.evidence.add(event_id="demo-8-00001-0001")
    assert of_run(mine, PREFIX)
    assert not of_run(incident(2, event_id="demo-70-00001-0001"), PREFIX)
    assert not of_run(incident(3, event_id="al-1234"), PREFIX)


def test_an_incident_is_settled_once_its_opening_was_handled_and_nothing_is_pending() -> None:
    assert not settled(incident(1))
    assert settled(incident(2, deliveries=[delivered("pagerduty-cx")]))
    assert settled(incident(3, deliveries=[delivered("slack-cx", status="suppressed")]))
    assert settled(incident(4, deliveries=[delivered("slack-cx", status="failed")]))
    assert not settled(
        incident(5, deliveries=[delivered("pagerduty-cx"), delivered("slack-cx", status="pending")])
    )
    # A later change still on its way counts too.
    resolving = [delivered("pagerduty-cx"), delivered("pagerduty-cx", "RESOLVED", "pending")]
    assert not settled(incident(6, deliveries=resolving))


# --- counting ----------------------------------------------------------------------------------


def run_incidents() -> list[pb.Incident]:
    spike = incident(
        1,
        rule="checkout_payment_spike",
        team="payments",
        severity=ERROR,
        profile_id="",
        touchpoint="checkout.payment",
        opened_ms=START_MS - 60_000,  # open before the run, updated by it
        count=14,
        deliveries=[delivered("pagerduty-payments"), delivered("alertmanager")],
    )
    return [
        spike,
        incident(2, rule="payment_failed", team="payments", touchpoint="checkout.payment",
                 inhibited_by=spike.incident_id,
                 deliveries=[delivered("pagerduty-payments", status="suppressed")]),
        incident(3, rule="repeated_payment_failures", team="payments", severity=ERROR,
                 touchpoint="checkout.payment", inhibited_by=spike.incident_id),
        incident(4, rule="complaint_raised", team="contact-centre", severity=CRITICAL,
                 touchpoint="support.complaint", grouped=2,
                 deliveries=[delivered("pagerduty-contact-centre"),
                             delivered("slack-contact-centre")]),
        incident(5, state=pb.STATE_RESOLVED, resolved_by="auto",
                 resolution="auto: no matching event for 86400 s",
                 deliveries=[delivered("pagerduty-cx"), delivered("pagerduty-cx", "RESOLVED")]),
        incident(6, severity=ERROR, deliveries=[delivered("pagerduty-cx"),
                                                delivered("slack-cx", status="pending")]),
        incident(7, rule="high_effort_ces", silenced_by="sil-1",
                 deliveries=[delivered("pagerduty-cx", status="suppressed")]),
        incident(8, state=pb.STATE_RESOLVED, resolved_by="alice", resolution="called back"),
    ]  # fmt: skip


def test_the_rule_table_counts_each_rule_and_team_by_severity() -> None:
    assert rule_table(run_incidents()) == [
        "rule                       team            critical  error  warning  total",
        "detractor_nps              cx                     0      1        2      3",
        "checkout_payment_spike     payments               0      1        0      1",
        "complaint_raised           contact-centre         1      0        0      1",
        "high_effort_ces            cx                     0      0        1      1",
        "payment_failed             payments               0      0        1      1",
        "repeated_payment_failures  payments               0      1        0      1",
    ]


def test_the_incident_lines_say_what_the_run_opened_and_what_was_held() -> None:
    lines = incident_lines(run_incidents(), START_MS)
    assert lines[0] == (
        "incidents from this run: 8 (7 opened, 1 open before and updated); now 6 triggered, "
        "0 acknowledged, 2 resolved (1 by the rules)"
    )
    assert lines[1] == "by rule, team and severity:"
    assert lines[2].startswith("  rule ")
    assert "by team: cx 4, payments 3, contact-centre 1" in lines
    assert "by severity: critical 1, error 3, warning 4" in lines
    spike = run_incidents()[0].incident_id
    assert lines[-3:] == [
        "grouped: 2 events of other rules joined 1 open incident (complaint_raised 1) instead "
        "of paging anew",
        f"inhibited: 2 incidents of people recorded but not paged while {spike} "
        "(checkout_payment_spike at checkout.payment) was open: payment_failed 1, "
        "repeated_payment_failures 1",
        "silenced: 1 incident recorded but not paged, by sil-1 1",
    ]


def test_nothing_grouped_inhibited_or_silenced_is_said_so() -> None:
    assert suppression_lines([incident(1)]) == [
        "grouped: none (no event joined another rule's open incident)",
        "inhibited: none (no touchpoint incident was open where people's were)",
        "silenced: none",
    ]


# --- pages ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receivers() -> list[Receiver]:
    """The shipped owners file's receivers as the local stack resolves them (no secrets
    set: stand-ins derived from the names)."""
    path = AlertsSettings().owners_file
    return list(resolve_all(load_owners(path).receivers, {}, str(path)).values())


def record(kind: str, body: dict[str, Any], keys: list[str], **fields: Any) -> dict[str, Any]:
    paths = {
        "pagerduty": "/pagerduty/v2/enqueue",
        "alertmanager": "/alertmanager/webhook",
    }
    return {
        "kind": kind,
        "path": fields.pop("path", paths.get(kind, "")),
        "accepted": True,
        "valid": True,
        "refused": False,
        "duplicate": False,
        "personal_data": [],
        "keys": keys,
        "body": body,
        **fields,
    }


def test_requests_at_the_sink_are_named_by_the_receiver_that_sent_them(
    receivers: list[Receiver],
) -> None:
    names = sink_names(receivers)
    by_name = {r.name: r for r in receivers}
    key = by_name["pagerduty-payments"].routing_key
    pd = record("pagerduty", {"routing_key": key, "event_action": "trigger"}, [])
    assert sink_page(pd, names) == ("pagerduty-payments", "trigger")
    am = record("alertmanager", {"status": "resolved", "alerts": []}, [])
    assert sink_page(am, names) == ("alertmanager", "resolved")
    header = {"type": "header", "text": {"type": "plain_text", "text": "Opened: NPS 3 at x"}}
    slack = record("slack", {"text": "x", "blocks": [header]}, [], path="/slack/cx")
    assert sink_page(slack, names) == ("slack-cx", "opened")
    hook = record("webhook", {"change": "CHANGE_ESCALATED"}, [], path="/webhook/ops")
    assert sink_page(hook, names) == ("webhook-ops", "escalated")
    stranger = record("pagerduty", {"routing_key": "0123456789abcdef" * 2}, [])
    assert sink_page(stranger, names) == ("pagerduty key 012345...", "?")
    assert sink_page(record("slack", {}, [], path="/slack/x"), names) == ("/slack/x", "message")


def test_receivers_sharing_a_routing_key_are_named_together() -> None:
    shared = [
        Receiver("pd-a", "pagerduty", "http://x/enqueue", routing_key="k"),
        Receiver("pd-b", "pagerduty", "http://x/enqueue", routing_key="k"),
        Receiver("am", "alertmanager", "http://x:9095"),
    ]
    names = sink_names(shared)
    assert names.by_routing_key == {"k": "pd-a/pd-b"}
    assert names.alertmanager == "am"


def test_pages_per_receiver_join_the_history_and_the_runs_requests_at_the_sink() -> None:
    incidents = run_incidents()
    spike, cx = incidents[0].dedup_key, incidents[4].dedup_key
    names = SinkNames({"k-pay": "pagerduty-payments", "k-cx": "pagerduty-cx"})
    records = [
        record("pagerduty", {"routing_key": "k-pay", "event_action": "trigger"}, [spike]),
        record("pagerduty", {"routing_key": "k-cx", "event_action": "trigger"}, [cx]),
        record("pagerduty", {"routing_key": "k-cx", "event_action": "resolve"}, [cx]),
        record("alertmanager", {"status": "firing"}, [spike, cx]),
        # Another incident's page, and a request the sink refused: not counted.
        record("pagerduty", {"routing_key": "k-cx", "event_action": "trigger"}, ["other:pid:x"]),
        record("pagerduty", {"routing_key": "k-cx"}, [cx], accepted=False, refused=True),
    ]
    rows = page_rows(incidents, records, names)
    assert rows["pagerduty-cx"].delivered == 3
    assert rows["pagerduty-cx"].suppressed == 1
    assert rows["pagerduty-cx"].received == {"trigger": 1, "resolve": 1}
    assert rows["slack-cx"].pending == 1
    assert rows["pagerduty-payments"].suppressed == 1
    assert rows["alertmanager"].received == {"firing": 1}
    lines = page_lines(rows)
    assert (
        lines[1]
        == "  receiver                  delivered  suppressed  failed  pending  at the sink"
    )
    row = "  pagerduty-cx                      3           1       0        0  2: resolve 1, trigger 1"  # noqa: E501
    assert row in lines
    assert "  slack-cx                          0           0       0        1  0" in lines
    assert page_lines({}) == ["pages: none"]


def test_the_sink_check_reports_invalid_repeated_and_personal_data() -> None:
    incidents = run_incidents()
    key = incidents[4].dedup_key
    clean = [record("pagerduty", {}, [key]), record("pagerduty", {}, ["other:pid:x"], valid=False)]
    assert sink_check(incidents, clean) == (
        "the sink: 1 request about them, all valid, 0 refused, 0 repeated, 0 with an email or phone"
    )
    bad = [
        record(
            "pagerduty",
            {},
            [key],
            valid=False,
            accepted=False,
            errors=["payload.source: is required"],
        ),
        record("pagerduty", {}, [key], duplicate=True, personal_data=["$.payload.summary: email"]),
        record("slack", {}, [key], accepted=False, refused=True, valid=None),
    ]
    assert sink_check(incidents, bad) == (
        "the sink: 3 requests about them, 1 invalid, 1 refused, 1 repeated, 1 with an email or "
        "phone (first: payload.source: is required)"
    )  # fmt: skip


def test_the_wait_line_says_why_it_stopped() -> None:
    assert wait_line(4149, 0.04, "", 25.61, "") == (
        "waited 0.0s for detection to read the run's 4,149 events, then 25.6s for the "
        "notifier to settle their pages"
    )
    line = wait_line(10, 30.0, "gave up waiting: 5 of 10 records read", 60.0, "gave up waiting")
    assert "(gave up waiting: 5 of 10 records read)" in line
    assert "Slack 60, and their pages queue, never dropped)" in line


def metrics_text(**outcomes: float) -> str:
    """A worker's /metrics as prometheus_client writes it."""
    registry = CollectorRegistry()
    records = Counter("cx_alerts_records", "records", ["outcome"], registry=registry)
    for outcome, n in outcomes.items():
        records.labels(outcome).inc(n)
    Counter("other", "other", registry=registry).inc(5)
    return generate_latest(registry).decode()


def test_records_read_sum_every_outcome() -> None:
    assert records_total(metrics_text(no_rule=100, detected=20)) == 120.0
    assert records_total(metrics_text()) == 0.0


# --- examples ------------------------------------------------------------------------------------


def test_the_examples_are_the_spike_and_the_most_telling_paged_person() -> None:
    incidents = run_incidents()
    spike, person = pick_examples(incidents)
    assert spike.rule == "checkout_payment_spike"
    # Open before resolved, then severity: the critical complaint, not the silenced or
    # inhibited ones.
    assert person.rule == "complaint_raised"
    assert pick_examples([incidents[7]]) == [incidents[7]]
    assert pick_examples([incidents[1]]) == []


def test_an_example_shows_its_facts_evidence_and_deliveries() -> None:
    example = incident(
        1,
        rule="complaint_raised",
        team="contact-centre",
        severity=CRITICAL,
        profile_id="p_9",
        touchpoint="support.complaint",
        count=2,
        grouped=1,
        deliveries=[delivered("pagerduty-contact-centre"), pb.Delivery(
            receiver="slack-contact-centre", change="OPENED", status="delivered", attempts=3)],
    )  # fmt: skip
    del example.evidence[:]
    seen = example.evidence.add(
        event_id="demo-7-00009-0041", touchpoint="survey.nps", payload="survey_response",
        negative="detractor",
    )  # fmt: skip
    seen.occurred_at.FromDatetime(datetime(2026, 11, 23, 2, 47, 51, tzinfo=UTC))
    seen.scores["nps"] = 6.0
    example.evidence.add(event_id="demo-7-00009-0039", touchpoint="support.complaint",
                         payload="complaint")  # fmt: skip
    assert example_lines(example, profile_note="the profile: open_incidents 1") == [
        f"example: {example.incident_id} complaint_raised (event rule), critical, team "
        "contact-centre, triggered; profile p_9",
        '  "complaint_raised summary"',
        "  dedup key complaint_raised:pid:p_9; 2 triggers; 1 event of other rules grouped into it",
        "  the profile: open_incidents 1",
        "  evidence (newest first, 2 of 2):",
        "    2026-11-23 02:47:51 survey.nps survey_response (detractor) nps=6 [demo-7-00009-0041]",
        "    - support.complaint complaint [demo-7-00009-0039]",
        "  deliveries: pagerduty-contact-centre opened delivered, slack-contact-centre opened "
        "delivered (3 attempts)",
    ]
    spike = incident(2, rule="checkout_payment_spike", profile_id="", touchpoint="checkout.payment")
    lines = example_lines(spike, inhibited=4)
    assert lines[0].endswith("(spike rule), warning, team cx, triggered; checkout.payment")
    assert "inhibited 4 incidents of people" in lines[2]
    assert lines[-1] == "  deliveries: none recorded yet"


# --- the section, against the service in-process ----------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    """The sink's GET /received and the worker's /metrics, from what the test sets."""

    received: list[dict[str, Any]] = []
    records_read = 0.0

    def do_GET(self) -> None:
        if self.path.startswith("/received"):
            since = int(self.path.split("since=", 1)[1])
            records = [r for r in self.received if r["seq"] > since]
            last = max((r["seq"] for r in self.received), default=0)
            body = json.dumps({"records": records, "last_seq": last}).encode()
        else:
            body = metrics_text(detected=self.records_read).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http() -> Iterator[str]:
    _Stub.received, _Stub.records_read = [], 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _FakeRedis:
    def ping(self) -> bool:
        return True


@pytest.fixture
def store() -> MemoryIncidentStore:
    return MemoryIncidentStore()


@pytest.fixture
def address(store: MemoryIncidentStore) -> Iterator[str]:
    server = build_server(AlertsServicer(store), _FakeRedis(), "127.0.0.1:0")  # type: ignore[arg-type]
    server.start()
    yield f"127.0.0.1:{server.port}"
    server.stop(0)


def _run(seed: int = 7, accepted: int = 3) -> DemoRun:
    now = datetime.now(UTC)
    return DemoRun(
        seed=seed, customers=(), negative={}, sent=accepted, accepted=accepted, rejected=0,
        started_at=now, finished_at=now,
    )  # fmt: skip


def test_the_section_counts_the_runs_incidents_through_the_service(
    store: MemoryIncidentStore,
    address: str,
    http: str,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(section, "POLL_S", 0.05)
    monkeypatch.setattr(section, "SETTLE_QUIET_S", 0.2)
    monkeypatch.setattr(section, "DELIVERY_WAIT_S", 5.0)
    alerts = AlertsSection(address, http, f"{http}/metrics", "127.0.0.1:1", lambda: receivers)
    report = Summary([alerts])
    report.before()
    (silence,) = store.list_silences(False, int(time.time() * 1000))
    assert (silence.matchers[0].name, silence.matchers[0].value) == ("rule", "high_effort_ces")

    now = int(time.time() * 1000)
    spike = store.trigger(spike_trigger("demo-7-00001-0009", now_ms=now))
    person = store.trigger(make_trigger("demo-7-00002-0003", rule="detractor_nps", now_ms=now))
    held = store.trigger(make_trigger("demo-7-00003-0007", rule="high_effort_ces", now_ms=now))
    store.trigger(
        make_trigger("demo-6-00001-0001", rule="detractor_nps", profile_id="p9", now_ms=now)
    )
    for incident_id in (spike.incident_id, person.incident_id):
        store.record_delivery(incident_id, Delivery("pagerduty-cx", "OPENED", "delivered", 1))
    store.record_delivery(held.incident_id, Delivery("pagerduty-cx", "OPENED", "suppressed"))
    key = next(r for r in receivers if r.name == "pagerduty-cx").routing_key
    _Stub.received = [
        {"seq": 1, **record("pagerduty", {"routing_key": key, "event_action": "trigger"},
                            ["detractor_nps:pid:p1"])},
    ]  # fmt: skip
    _Stub.records_read = 3.0

    lines = report.render(_run())
    assert lines[0] == "Alerts"
    text = "\n".join(lines)
    assert "  incidents from this run: 3 (3 opened); now 3 triggered" in text
    assert "  by team: cx 2, payments 1" in text
    assert f"silenced: 1 incident recorded but not paged, by {silence.silence_id} 1" in text
    assert "rule=high_effort_ces while it ran, expired now)" in text
    assert not store.list_silences(False, int(time.time() * 1000)), "the silence was expired"
    assert "    pagerduty-cx          2           1       0        0  1: trigger 1" in text
    assert "  the sink: 1 request about them, all valid" in text
    assert "  waited 0.0s for detection to read the run's 3 events" in text
    assert f"  example: {spike.incident_id} payment_spike (spike rule)" in text
    assert f"  example: {person.incident_id} detractor_nps (event rule)" in text
    assert (
        "    the profile did not answer: UNAVAILABLE" in text
    )  # no profile service at 127.0.0.1:1


def test_the_section_is_unavailable_without_the_service(http: str) -> None:
    report = Summary([AlertsSection("127.0.0.1:1", http, "", "127.0.0.1:1", list)])
    report.before()
    title, line = report.render(_run())
    assert title == "Alerts"
    assert line.startswith("  unavailable: the alerts service at 127.0.0.1:1 did not answer ")
    assert "UNAVAILABLE" in line


def test_without_incidents_of_the_run_the_section_says_so(
    address: str, http: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(section, "POLL_S", 0.05)
    monkeypatch.setattr(section, "SETTLE_QUIET_S", 0.1)
    report = Summary([AlertsSection(address, http, "", "127.0.0.1:1", list)])
    report.before()
    assert report.render(_run()) == [
        "Alerts",
        "  unavailable: no incident has evidence from this run (the worker's metrics are off)",
    ]


def test_a_page_row_counts_only_known_statuses() -> None:
    row = PageRow()
    for status in ("delivered", "delivered", "pending", "odd"):
        row.add(status)
    assert (row.delivered, row.pending, row.failed, row.suppressed) == (2, 1, 0, 0)
