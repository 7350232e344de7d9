"""The alerts service's part of the demo summary: the incidents the run's events opened
or updated, read through `cx.alerts.v1.AlertsService` (ListIncidents, GetIncident, and
CreateSilence / ExpireSilence for the demo's own silence), and the pages that reached the
local receiver sink (`GET /received`, services/alerts/sink.py).

`before()` notes where the sink's log and the detection worker's record count stand, and
silences one rule for the length of the run (SILENCED_RULE: as a team would while it
reworks a survey) so that a silence shows. `lines()` waits, bounded, for the worker to
read the run's events (its `/metrics`) and for the notifier to settle the pages of the
run's incidents (their delivery history), expires the silence, and counts.

An incident belongs to the run when its evidence holds one of the run's events (ids
`demo-<seed>-...`): those it opened, and those already open that it updated (a spike).
The pages counted at the sink are the requests about those incidents' dedup keys.
Counting and formatting are pure functions of the replies (tests/unit/test_demo_alerts.py).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import grpc
from cx.alerts.v1 import alerts_pb2 as pb
from cx.alerts.v1 import alerts_pb2_grpc
from cx.profile.v1 import profile_pb2 as ppb
from cx.profile.v1 import profile_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from services.alerts.domain.owners import load_owners
from services.alerts.domain.receivers import Receiver, resolve_all
from services.alerts.settings import AlertsSettings
from services.common.grpc_client import traced_channel
from services.common.settings import grpc_address, process_settings
from services.demo.summary import DemoRun, SectionUnavailable, reason
from services.profile.settings import ProfileSettings

CALL_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 5.0
# How long the summary waits for the worker to read the run's events, and gives up
# sooner when its count stops moving.
DETECT_WAIT_S = 180.0
DETECT_STALL_S = 30.0
# Then for the notifier: every incident of the run with its opening's pages settled and
# nothing changing for SETTLE_QUIET_S, at most DELIVERY_WAIT_S.
DELIVERY_WAIT_S = 60.0
SETTLE_QUIET_S = 4.0
POLL_S = 1.0
# ListIncidents pages read at most (newest change first) to find the run's incidents.
PAGE_SIZE = 200
MAX_PAGES = 25
RECORDS_METRIC = "cx_alerts_records"
# The demo's silence: this rule's pages are held while the run lasts (at most SILENCE_S).
SILENCED_RULE = "high_effort_ces"
SILENCE_S = 3600
SILENCE_BY = "make demo"
SILENCE_COMMENT = "the CES survey is being reworked: hold its pages while the demo runs"
SEVERITIES = ("critical", "error", "warning", "info")
STATE_WORDS = {
    pb.STATE_TRIGGERED: "triggered",
    pb.STATE_ACKNOWLEDGED: "acknowledged",
    pb.STATE_RESOLVED: "resolved",
}
KIND_WORDS = {
    pb.RULE_KIND_EVENT: "event",
    pb.RULE_KIND_WINDOW: "window",
    pb.RULE_KIND_SPIKE: "spike",
    pb.RULE_KIND_TIMER: "timer",
}
DELIVERY_STATUSES = ("delivered", "suppressed", "failed", "pending")
EVIDENCE_SHOWN = 3


def event_prefix(seed: int) -> str:
    """The prefix of the run's event ids (services/demo/journeys.py `_Timeline`)."""
    return f"demo-{seed}-"


def severity_word(incident: pb.Incident) -> str:
    return pb.Severity.Name(incident.severity).removeprefix("SEVERITY_").lower()


def state_word(incident: pb.Incident) -> str:
    return STATE_WORDS.get(incident.state, "unknown")


def plural(n: int, word: str, many: str = "") -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {many or word + 's'}"


def counts(items: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in items) or "none"


def created_ms(incident_id: str) -> int:
    """When the incident was opened, from its id (`inc-<ms, hex>-<random>`); 0 if unknown."""
    parts = incident_id.split("-")
    try:
        return int(parts[1], 16) if len(parts) == 3 and parts[0] == "inc" else 0
    except ValueError:
        return 0


def of_run(incident: pb.Incident, prefix: str) -> bool:
    return any(e.event_id.startswith(prefix) for e in incident.evidence)


def settled(incident: pb.Incident) -> bool:
    """Its opening was handled by the notifier (delivered, suppressed or failed for good
    to every receiver it goes to) and no delivery of it is still pending."""
    opened = [d for d in incident.deliveries if d.change == "OPENED"]
    return bool(opened) and all(d.status != "pending" for d in incident.deliveries)


def fingerprint(incidents: Sequence[pb.Incident]) -> tuple[tuple[str, int, str], ...]:
    """What changes while detection and delivery go on: ids, versions, delivery states."""
    return tuple(
        sorted(
            (
                i.incident_id,
                i.version,
                ",".join(sorted(f"{d.receiver}|{d.change}|{d.status}" for d in i.deliveries)),
            )
            for i in incidents
        )
    )


# --- incidents -------------------------------------------------------------------------


def rule_table(incidents: Sequence[pb.Incident]) -> list[str]:
    """Incidents per rule and team (rows, most first) and severity (columns)."""
    cells = Counter((i.rule, i.team, severity_word(i)) for i in incidents)
    rows = Counter((i.rule, i.team) for i in incidents)
    columns = [s for s in SEVERITIES if any(k[2] == s for k in cells)]
    order = sorted(rows, key=lambda k: (-rows[k], k))
    rule_w = max(len("rule"), *(len(r) for r, _ in order))
    team_w = max(len("team"), *(len(t) for _, t in order))
    widths = [max(len(c), 5) for c in columns]
    head = "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    out = [f"{'rule':<{rule_w}}  {'team':<{team_w}}  {head}  {'total':>5}"]
    for rule, team in order:
        values = "  ".join(
            f"{cells[rule, team, c]:>{w},}" for c, w in zip(columns, widths, strict=True)
        )
        out.append(f"{rule:<{rule_w}}  {team:<{team_w}}  {values}  {rows[rule, team]:>5,}")
    return out


def incident_lines(incidents: Sequence[pb.Incident], start_ms: int) -> list[str]:
    """What the run's incidents were: how many, now in which state, by rule, team and
    severity, and what was grouped, inhibited or silenced."""
    opened = sum(1 for i in incidents if created_ms(i.incident_id) >= start_ms)
    states = Counter(state_word(i) for i in incidents)
    auto = sum(1 for i in incidents if i.state == pb.STATE_RESOLVED and i.resolved_by == "auto")
    resolved = f"{states['resolved']:,} resolved"
    if states["resolved"]:
        resolved += f" ({auto:,} by the rules)"
    earlier = len(incidents) - opened
    before = f", {plural(earlier, 'open before')} and updated" if earlier else ""
    out = [
        f"incidents from this run: {len(incidents):,} ({opened:,} opened{before}); now "
        f"{states['triggered']:,} triggered, {states['acknowledged']:,} acknowledged, {resolved}",
        "by rule, team and severity:",
    ]
    out.extend(f"  {line}" for line in rule_table(incidents))
    teams = Counter(i.team for i in incidents)
    severities = Counter(severity_word(i) for i in incidents)
    out.append("by team: " + counts(teams.most_common()))
    out.append("by severity: " + counts((s, severities[s]) for s in SEVERITIES if severities[s]))
    out.extend(suppression_lines(incidents))
    return out


def suppression_lines(incidents: Sequence[pb.Incident]) -> list[str]:
    out = []
    grouping = [i for i in incidents if i.grouped]
    joined = sum(i.grouped for i in grouping)
    if grouping:
        rules = counts(Counter(i.rule for i in grouping).most_common())
        out.append(
            f"grouped: {plural(joined, 'event')} of other rules joined "
            f"{plural(len(grouping), 'open incident')} ({rules}) instead of paging anew"
        )
    else:
        out.append("grouped: none (no event joined another rule's open incident)")
    inhibited = [i for i in incidents if i.inhibited_by]
    if inhibited:
        by = Counter(i.inhibited_by for i in inhibited)
        spikes = {i.incident_id: i for i in incidents}
        names = []
        for incident_id, _ in by.most_common():
            spike = spikes.get(incident_id)
            where = f" ({spike.rule} at {spike.touchpoint})" if spike is not None else ""
            names.append(f"{incident_id}{where}")
        rules = counts(Counter(i.rule for i in inhibited).most_common())
        out.append(
            f"inhibited: {plural(len(inhibited), 'incident')} of people recorded but not "
            f"paged while {', '.join(names)} was open: {rules}"
        )
    else:
        out.append("inhibited: none (no touchpoint incident was open where people's were)")
    silenced = [i for i in incidents if i.silenced_by]
    if silenced:
        by = Counter(i.silenced_by for i in silenced)
        out.append(
            f"silenced: {plural(len(silenced), 'incident')} recorded but not paged, by "
            + counts(by.most_common())
        )
    else:
        out.append("silenced: none")
    return out


# --- pages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkNames:
    """Which receiver a request at the sink came from: PagerDuty by routing key, Slack and
    webhooks by the URL's path; Alertmanager's notifications are Alertmanager's."""

    by_routing_key: Mapping[str, str] = field(default_factory=dict)
    by_path: Mapping[str, str] = field(default_factory=dict)
    alertmanager: str = "alertmanager"


def sink_names(receivers: Iterable[Receiver]) -> SinkNames:
    keys: dict[str, list[str]] = {}
    paths: dict[str, list[str]] = {}
    managers = []
    for r in sorted(receivers, key=lambda r: r.name):
        if r.type == "pagerduty":
            keys.setdefault(r.routing_key, []).append(r.name)
        elif r.type == "alertmanager":
            managers.append(r.name)
        else:
            paths.setdefault(urlsplit(r.url).path, []).append(r.name)
    return SinkNames(
        {k: "/".join(v) for k, v in keys.items()},
        {p: "/".join(v) for p, v in paths.items()},
        "/".join(managers) or "alertmanager",
    )


def _slack_verb(body: Mapping[str, Any]) -> str:
    blocks = body.get("blocks")
    if isinstance(blocks, list) and blocks and isinstance(blocks[0], dict):
        text = blocks[0].get("text")
        if isinstance(text, dict) and isinstance(text.get("text"), str):
            return str(text["text"]).split(":", 1)[0].lower()
    return "message"


def sink_page(record: Mapping[str, Any], names: SinkNames) -> tuple[str, str]:
    """(receiver, what it said) of one request the sink recorded."""
    kind = record.get("kind", "")
    body = record.get("body")
    body = body if isinstance(body, dict) else {}
    if kind == "pagerduty":
        key = str(body.get("routing_key", ""))
        name = names.by_routing_key.get(key, f"pagerduty key {key[:6]}...")
        return name, str(body.get("event_action", "?"))
    if kind == "alertmanager":
        return names.alertmanager, str(body.get("status", "?"))
    path = str(record.get("path", ""))
    name = names.by_path.get(path, path)
    if kind == "slack":
        return name, _slack_verb(body)
    change = str(body.get("change", "?")).removeprefix("CHANGE_").lower()
    return name, change


@dataclass
class PageRow:
    delivered: int = 0
    suppressed: int = 0
    failed: int = 0
    pending: int = 0
    received: Counter[str] = field(default_factory=Counter)

    def add(self, status: str) -> None:
        if status in DELIVERY_STATUSES:
            setattr(self, status, getattr(self, status) + 1)


def page_rows(
    incidents: Sequence[pb.Incident],
    records: Sequence[Mapping[str, Any]],
    names: SinkNames,
) -> dict[str, PageRow]:
    """Per receiver: the notifier's delivery history of the run's incidents, and what
    reached the sink about them (only valid requests; PagerDuty and Slack one per page,
    Alertmanager one notification per group of alerts)."""
    rows: dict[str, PageRow] = {}
    for incident in incidents:
        for d in incident.deliveries:
            rows.setdefault(d.receiver, PageRow()).add(d.status)
    keys = {i.dedup_key for i in incidents}
    for record in records:
        if not record.get("accepted") or not keys.intersection(record.get("keys") or ()):
            continue
        name, action = sink_page(record, names)
        rows.setdefault(name, PageRow()).received[action] += 1
    return rows


def page_lines(rows: Mapping[str, PageRow]) -> list[str]:
    if not rows:
        return ["pages: none"]
    names = sorted(rows, key=lambda n: (-rows[n].delivered - rows[n].suppressed, n))
    width = max(len("receiver"), *(len(n) for n in names))
    heads = ("delivered", "suppressed", "failed", "pending")
    out = [
        "pages per receiver (the notifier's delivery history of the run's incidents; what "
        "reached the sink):",
        f"  {'receiver':<{width}}  " + "  ".join(heads) + "  at the sink",
    ]
    for name in names:
        r = rows[name]
        values = (r.delivered, r.suppressed, r.failed, r.pending)
        cells = "  ".join(f"{v:>{len(h)},}" for v, h in zip(values, heads, strict=True))
        total = r.received.total()
        sink = f"{total:,}: {counts(sorted(r.received.items()))}" if total else "0"
        out.append(f"  {name:<{width}}  {cells}  {sink}")
    return out


def sink_check(incidents: Sequence[pb.Incident], records: Sequence[Mapping[str, Any]]) -> str:
    """The sink's verdict on the requests about the run's incidents."""
    keys = {i.dedup_key for i in incidents}
    mine = [r for r in records if keys.intersection(r.get("keys") or ())]
    invalid = [r for r in mine if r.get("valid") is False]
    refused = sum(1 for r in mine if r.get("refused"))
    duplicates = sum(1 for r in mine if r.get("duplicate"))
    personal = sum(1 for r in mine if r.get("personal_data"))
    verdict = "all valid" if not invalid else f"{len(invalid):,} invalid"
    out = (
        f"the sink: {plural(len(mine), 'request')} about them, {verdict}, "
        f"{refused:,} refused, {duplicates:,} repeated, {personal:,} with an email or phone"
    )
    if invalid:
        errors = invalid[0].get("errors") or []
        out += f" (first: {'; '.join(map(str, errors[:2]))})"
    return out


# --- examples -------------------------------------------------------------------------------


def pick_examples(incidents: Sequence[pb.Incident]) -> list[pb.Incident]:
    """A touchpoint incident (a spike) if there is one, and the most telling of a
    person's that was paged: open, the most severe, the most events (grouped ones count)."""
    out: list[pb.Incident] = []
    spikes = [i for i in incidents if not i.profile_id]
    if spikes:
        out.append(max(spikes, key=lambda i: (i.severity, i.count, i.incident_id)))
    people = [i for i in incidents if i.profile_id and not i.inhibited_by and not i.silenced_by]
    if people:
        out.append(
            max(
                people,
                key=lambda i: (
                    i.state != pb.STATE_RESOLVED,
                    i.severity,
                    i.count + i.grouped,
                    i.incident_id,
                ),
            )
        )
    return out


def _when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _scores(scores: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in sorted(scores.items()))


def example_lines(incident: pb.Incident, inhibited: int = 0, profile_note: str = "") -> list[str]:
    who = f"profile {incident.profile_id}" if incident.profile_id else incident.touchpoint
    kind = KIND_WORDS.get(incident.kind, "?")
    out = [
        f"example: {incident.incident_id} {incident.rule} ({kind} rule), "
        f"{severity_word(incident)}, team {incident.team}, {state_word(incident)}; {who}",
        f'  "{incident.summary}"',
    ]
    facts = [f"dedup key {incident.dedup_key}", plural(incident.count, "trigger")]
    if incident.grouped:
        facts.append(f"{plural(incident.grouped, 'event')} of other rules grouped into it")
    if inhibited:
        facts.append(f"inhibited {plural(inhibited, 'incident')} of people")
    if incident.resolution:
        facts.append(f"resolved: {incident.resolution}")
    out.append("  " + "; ".join(facts))
    if profile_note:
        out.append(f"  {profile_note}")
    shown = incident.evidence[:EVIDENCE_SHOWN]
    out.append(f"  evidence (newest first, {len(shown)} of {len(incident.evidence)}):")
    for e in shown:
        negative = f"({e.negative})" if e.negative and e.negative != e.payload else ""
        what = " ".join(x for x in (e.payload, negative, _scores(e.scores)) if x)
        out.append(f"    {_when(e.occurred_at)} {e.touchpoint} {what} [{e.event_id}]")
    if incident.deliveries:
        out.append(
            "  deliveries: "
            + ", ".join(
                f"{d.receiver} {d.change.lower()} {d.status}"
                + (f" ({plural(d.attempts, 'attempt')})" if d.attempts > 1 else "")
                for d in incident.deliveries
            )
        )
    else:
        out.append("  deliveries: none recorded yet")
    return out


def wait_line(
    events: int, detect_s: float, detect_note: str, deliver_s: float, deliver_note: str
) -> str:
    """How long the section waited for detection and delivery, and why it stopped."""
    out = f"waited {detect_s:.1f}s for detection to read the run's {events:,} events"
    out += f" ({detect_note})" if detect_note else ""
    out += f", then {deliver_s:.1f}s for the notifier to settle their pages"
    if deliver_note:
        out += (
            f" ({deliver_note}: receivers are rate limited, PagerDuty 120 a minute per "
            "routing key and Slack 60, and their pages queue, never dropped)"
        )
    return out


def records_total(text: str) -> float:
    """Records the detection worker read (every outcome), from its Prometheus exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == RECORDS_METRIC:
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


# --- the section ------------------------------------------------------------------------------


class AlertsSection:
    title = "Alerts"

    def __init__(
        self,
        address: str,
        sink_url: str,
        worker_metrics_url: str,
        profile_address: str,
        receivers: Callable[[], Iterable[Receiver]],
    ) -> None:
        self.address = address
        self.sink_url = sink_url.rstrip("/")
        self.worker_metrics_url = worker_metrics_url
        self.profile_address = profile_address
        self.receivers = receivers
        self.sink_start: int | None = None
        self.records_start: float | None = None
        self.sink_note = ""
        self.records_note = ""
        self.silence_id = ""
        self.start_ms = 0

    @classmethod
    def from_settings(cls) -> AlertsSection:
        settings, process = AlertsSettings(), process_settings()

        def receivers() -> Iterable[Receiver]:
            owners = load_owners(settings.owners_file)
            return resolve_all(owners.receivers, os.environ, str(settings.owners_file)).values()

        port = settings.worker_metrics_port
        return cls(
            grpc_address(settings.grpc_port, process),
            f"http://{process.grpc_host}:{settings.sink_port}",
            f"http://{process.metrics_host}:{port}/metrics" if port else "",
            grpc_address(ProfileSettings().grpc_port, process),
            receivers,
        )

    # --- the service's APIs -------------------------------------------------------------

    def _http(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as reply:
            body: bytes = reply.read()
            return body

    def _sink(self, since: int) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self._http(f"{self.sink_url}/received?since={since}"))
        return reply

    def _records(self) -> float:
        return records_total(self._http(self.worker_metrics_url).decode())

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except grpc.RpcError as exc:
            raise SectionUnavailable(
                f"the alerts service at {self.address} did not answer {what}: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc

    def _scan(self, stub: alerts_pb2_grpc.AlertsServiceStub, prefix: str) -> list[pb.Incident]:
        """The run's incidents: ListIncidents newest change first, until two pages in a
        row hold none of them and nothing opened since the run began."""
        found: list[pb.Incident] = []
        token, quiet = "", 0
        for _ in range(MAX_PAGES):
            page = self._list(stub, token)
            mine = [i for i in page.incidents if of_run(i, prefix)]
            found.extend(mine)
            recent = any(created_ms(i.incident_id) >= self.start_ms for i in page.incidents)
            quiet = 0 if mine or recent else quiet + 1
            token = page.next_page_token
            if not token or quiet >= 2:
                break
        return found

    def before(self) -> None:
        self.start_ms = int(time.time() * 1000)
        # Each of these failing leaves out only its part; the section says which.
        try:
            self.sink_start = int(self._sink(2**62)["last_seq"])
        except Exception as exc:
            self.sink_note = f"the sink at {self.sink_url}: {reason(exc)}"
        if self.worker_metrics_url:
            try:
                self.records_start = self._records()
            except Exception as exc:
                self.records_note = f"the worker's metrics: {reason(exc)}"
        silence = pb.Silence(
            matchers=[pb.Matcher(name="rule", value=SILENCED_RULE)],
            created_by=SILENCE_BY,
            comment=SILENCE_COMMENT,
        )
        silence.ends_at.FromMilliseconds(self.start_ms + SILENCE_S * 1000)
        with traced_channel(self.address) as channel:
            stub = alerts_pb2_grpc.AlertsServiceStub(channel)
            reply = self._call(
                "CreateSilence",
                lambda: stub.CreateSilence(
                    pb.CreateSilenceRequest(silence=silence), timeout=CALL_TIMEOUT_S
                ),
            )
        self.silence_id = reply.silence.silence_id

    def _wait_for_detection(self, target: int) -> tuple[float, str]:
        if self.records_start is None:
            return 0.0, self.records_note or "the worker's metrics are off"
        began = last_change = time.monotonic()
        seen = -1.0
        while True:
            try:
                done = self._records() - self.records_start
            except Exception as exc:
                return time.monotonic() - began, f"the worker's metrics: {reason(exc)}"
            if done < 0:  # the worker restarted: its count began again
                self.records_start, done = 0.0, done + self.records_start
            now = time.monotonic()
            if done != seen:
                seen, last_change = done, now
            if done >= target:
                return now - began, ""
            if now - last_change > DETECT_STALL_S or now - began > DETECT_WAIT_S:
                return now - began, f"gave up waiting: {done:,.0f} of {target:,} records read"
            time.sleep(POLL_S)

    def _wait_for_delivery(
        self, stub: alerts_pb2_grpc.AlertsServiceStub, prefix: str
    ) -> tuple[list[pb.Incident], float, str]:
        began = time.monotonic()
        incidents = self._scan(stub, prefix)
        last, quiet_since = fingerprint(incidents), began
        while True:
            now = time.monotonic()
            unsettled = [i for i in incidents if not settled(i)]
            if not unsettled and now - quiet_since >= SETTLE_QUIET_S:
                return incidents, now - began, ""
            if now - began > DELIVERY_WAIT_S:
                note = f"gave up waiting: {plural(len(unsettled), 'incident')} not settled yet"
                return incidents, now - began, note
            time.sleep(POLL_S)
            incidents = self._scan(stub, prefix)
            current = fingerprint(incidents)
            if current != last:
                last, quiet_since = current, time.monotonic()

    def _list(
        self, stub: alerts_pb2_grpc.AlertsServiceStub, token: str
    ) -> pb.ListIncidentsResponse:
        request = pb.ListIncidentsRequest(page_size=PAGE_SIZE, page_token=token)
        reply: pb.ListIncidentsResponse = self._call(
            "ListIncidents", lambda: stub.ListIncidents(request, timeout=CALL_TIMEOUT_S)
        )
        return reply

    def _get(self, stub: alerts_pb2_grpc.AlertsServiceStub, incident_id: str) -> pb.Incident:
        request = pb.GetIncidentRequest(incident_id=incident_id)
        reply = self._call("GetIncident", lambda: stub.GetIncident(request, timeout=CALL_TIMEOUT_S))
        incident: pb.Incident = reply.incident
        return incident

    def _expire_silence(self, stub: alerts_pb2_grpc.AlertsServiceStub) -> str:
        if not self.silence_id:
            return ""
        try:
            stub.ExpireSilence(
                pb.ExpireSilenceRequest(silence_id=self.silence_id), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            return f" (expiring it failed: {exc.code().name}; it ends by itself)"
        return ", expired now"

    def _profile_note(self, incident: pb.Incident) -> str:
        """Closing the loop: the person's open incidents as the profile counts them."""
        if not incident.profile_id or incident.profile_id.startswith("anon-"):
            return ""
        try:
            with traced_channel(self.profile_address) as channel:
                reply = profile_pb2_grpc.ProfileServiceStub(channel).GetFeatures(
                    ppb.GetFeaturesRequest(
                        identifier=ppb.Identifier(
                            type=ppb.IDENTIFIER_TYPE_PROFILE_ID, value=incident.profile_id
                        ),
                        names=["open_incidents"],
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
        except grpc.RpcError as exc:
            return f"the profile did not answer: {exc.code().name}"
        fields = reply.features.fields
        shown = f"{fields['open_incidents'].number_value:g}" if "open_incidents" in fields else "0"
        return (
            f"the profile now counts open_incidents = {shown} for this person "
            "(ProfileService.GetFeatures), which personalisation's open_incident rule reads"
        )

    def lines(self, run: DemoRun) -> list[str]:
        prefix = event_prefix(run.seed)
        target = run.accepted + run.outcome_events
        detect_s, detect_note = self._wait_for_detection(target)
        with traced_channel(self.address) as channel:
            stub = alerts_pb2_grpc.AlertsServiceStub(channel)
            incidents, deliver_s, deliver_note = self._wait_for_delivery(stub, prefix)
            expired = self._expire_silence(stub)
            examples = [self._get(stub, i.incident_id) for i in pick_examples(incidents)]
        if not incidents:
            why = detect_note or deliver_note or "no event of the run matched a rule in time"
            raise SectionUnavailable(f"no incident has evidence from this run ({why})")
        out = incident_lines(incidents, self.start_ms)
        if self.silence_id:
            out.append(
                f"  (the demo's silence {self.silence_id}: rule={SILENCED_RULE} while it "
                f"ran{expired})"
            )
        out.extend(self._page_lines(incidents))
        out.append(wait_line(target, detect_s, detect_note, deliver_s, deliver_note))
        inhibited = Counter(i.inhibited_by for i in incidents if i.inhibited_by)
        for example in examples:
            out.extend(
                example_lines(example, inhibited[example.incident_id], self._profile_note(example))
            )
        return out

    def _page_lines(self, incidents: Sequence[pb.Incident]) -> list[str]:
        records: list[dict[str, Any]] = []
        note = self.sink_note
        if self.sink_start is not None:
            try:
                records = list(self._sink(self.sink_start)["records"])
            except Exception as exc:
                note = f"the sink at {self.sink_url}: {reason(exc)}"
        try:
            names = sink_names(self.receivers())
        except Exception as exc:
            names = SinkNames()
            note = note or f"receiver names: {reason(exc)}"
        out = page_lines(page_rows(incidents, records, names))
        out.append(
            sink_check(incidents, records) if not note else f"the sink: unavailable ({note})"
        )
        return out
