"""Alerts test helpers: triggers, predictable incident ids, and the incident store's
contract (`StoreContract`), run on the in-memory store by tests/unit/test_alerts_store.py
and on Redis by tests/integration/test_alerts_store.py."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import redis
from cx.alerts.v1 import alerts_pb2 as pb

from services.alerts.adapters.incidents import (
    IncidentStore,
    InvalidPageToken,
    MemoryIncidentStore,
)
from services.alerts.adapters.layout import AlertKeys
from services.alerts.domain.incidents import (
    AUTO,
    DUPLICATE,
    GROUPED,
    OPENED,
    SCHEDULED,
    STATES,
    UPDATED,
    Delivery,
    EvidenceItem,
    InvalidSilence,
    InvalidTransition,
    Matcher,
    SilenceRecord,
    Trigger,
    UnknownIncident,
    UnknownSilence,
    person_key,
    touchpoint_key,
)

NOW = 1_800_000_000_000
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

Store = IncidentStore | MemoryIncidentStore


class SequentialIds:
    """Ids `inc-0001`, `inc-0002`, ... (stores take `new_id` and `new_silence`)."""

    def __init__(self, head: str = "inc") -> None:
        self.head = head
        self._n = itertools.count(1)

    def __call__(self, now_ms: int) -> str:
        return f"{self.head}-{next(self._n):04d}"


def make_trigger(
    event_id: str,
    *,
    rule: str = "detractor",
    profile_id: str = "p1",
    touchpoint: str = "web.checkout",
    now_ms: int = NOW,
    occurred_at_ms: int | None = None,
    severity: str = "critical",
    team: str = "cx",
    kind: str = "event",
    summary: str = "Detractor NPS 3",
    escalate_after_s: float | None = None,
    groups_with: tuple[str, ...] = (),
    sla_due_ms: int | None = None,
    negative: str = "detractor",
    scores: dict[str, float] | None = None,
) -> Trigger:
    """A person's trigger (or, with profile_id="", a touchpoint's)."""
    key = person_key(rule, profile_id) if profile_id else touchpoint_key(rule, touchpoint)
    return Trigger(
        rule=rule,
        kind=kind,
        dedup_key=key,
        severity=severity,
        team=team,
        summary=summary,
        profile_id=profile_id,
        touchpoint=touchpoint,
        evidence=EvidenceItem(
            event_id=event_id,
            touchpoint=touchpoint,
            occurred_at_ms=now_ms if occurred_at_ms is None else occurred_at_ms,
            payload="survey_response",
            negative=negative,
            scores={"nps": 3.0} if scores is None else scores,
        ),
        now_ms=now_ms,
        escalate_after_s=escalate_after_s,
        groups_with=groups_with,
        sla_due_ms=sla_due_ms,
    )


def spike_trigger(event_id: str, touchpoint: str = "checkout.payment", **kw: object) -> Trigger:
    return make_trigger(
        event_id,
        rule="payment_spike",
        kind="spike",
        profile_id="",
        touchpoint=touchpoint,
        team="payments",
        summary="Payment failures spiking",
        negative="payment_failed",
        **kw,  # type: ignore[arg-type]
    )


def outbox_changes(store: Store) -> list[tuple[str, bool, str, int]]:
    """(change, page, incident id, version) of every outbox entry, oldest first."""
    if isinstance(store, MemoryIncidentStore):
        entries = store.outbox
    else:
        entries = store.read_outbox("0-0", 0, count=10_000)
    return [(e.change, e.page, e.incident_id, e.version) for e in entries]


def silence(
    *matchers: Matcher, start: int = NOW - MINUTE_MS, end: int = NOW + HOUR_MS
) -> SilenceRecord:
    return SilenceRecord("", tuple(matchers), start, end, created_by="alice", comment="deploy")


class StoreContract:
    """What every incident store does. Subclasses provide the `store` fixture (built
    with SequentialIds)."""

    # --- dedup and idempotency ----------------------------------------------------------

    def test_first_trigger_opens_and_pages(self, store: Store) -> None:
        result = store.trigger(make_trigger("e1"))
        assert (result.incident_id, result.change, result.paged, result.suppressed_by) == (
            "inc-0001",
            OPENED,
            True,
            "",
        )
        incident = store.get("inc-0001")
        assert incident is not None
        assert incident.state == pb.STATE_TRIGGERED
        assert incident.severity == pb.SEVERITY_CRITICAL
        assert incident.kind == pb.RULE_KIND_EVENT
        assert incident.dedup_key == "detractor:pid:p1"
        assert (incident.count, incident.version) == (1, 1)
        assert incident.first_seen.ToMilliseconds() == NOW
        assert [e.event_id for e in incident.evidence] == ["e1"]
        assert dict(incident.evidence[0].scores) == {"nps": 3.0}
        assert outbox_changes(store) == [("OPENED", True, "inc-0001", 1)]
        [entry] = (
            store.outbox if isinstance(store, MemoryIncidentStore) else store.read_outbox("0-0", 0)
        )
        assert entry.message.change == pb.CHANGE_OPENED
        assert entry.message.incident.incident_id == "inc-0001"
        assert entry.message.at.ToMilliseconds() == NOW

    def test_same_key_updates_without_paging(self, store: Store) -> None:
        store.trigger(make_trigger("e1"))
        later = NOW + MINUTE_MS
        result = store.trigger(make_trigger("e2", now_ms=later, severity="warning"))
        assert (result.incident_id, result.change, result.paged) == ("inc-0001", UPDATED, False)
        incident = store.get("inc-0001")
        assert incident is not None
        assert (incident.count, incident.version) == (2, 2)
        assert incident.last_seen.ToMilliseconds() == later
        # The most severe trigger's severity stays.
        assert incident.severity == pb.SEVERITY_CRITICAL
        assert [e.event_id for e in incident.evidence] == ["e2", "e1"]
        assert outbox_changes(store)[-1] == ("UPDATED", False, "inc-0001", 2)

    def test_redelivered_event_is_a_duplicate(self, store: Store) -> None:
        store.trigger(make_trigger("e1"))
        again = store.trigger(make_trigger("e1", now_ms=NOW + 5))
        assert (again.incident_id, again.change, again.paged) == ("inc-0001", DUPLICATE, False)
        incident = store.get("inc-0001")
        assert incident is not None
        assert incident.count == 1
        assert len(outbox_changes(store)) == 1
        # The same event id under another rule is another trigger.
        other = store.trigger(make_trigger("e1", rule="csat_low"))
        assert other.change == OPENED

    def test_evidence_is_capped_newest_first(self, store: Store) -> None:
        for i in range(25):
            store.trigger(make_trigger(f"e{i:02d}", now_ms=NOW + i))
        incident = store.get("inc-0001")
        assert incident is not None
        assert incident.count == 25
        assert [e.event_id for e in incident.evidence] == [f"e{i:02d}" for i in range(24, 4, -1)]

    def test_resolved_key_opens_a_new_incident(self, store: Store) -> None:
        store.trigger(make_trigger("e1"))
        store.resolve("inc-0001", "alice", "called back", NOW + 1)
        result = store.trigger(make_trigger("e2", now_ms=NOW + 2))
        assert (result.incident_id, result.change) == ("inc-0002", OPENED)

    # --- grouping and inhibition --------------------------------------------------------

    def test_detractor_joins_the_open_complaint_incident(self, store: Store) -> None:
        store.trigger(make_trigger("c1", rule="complaint_high", negative="complaint"))
        result = store.trigger(make_trigger("e1", groups_with=("complaint_high",)))
        assert (result.incident_id, result.change, result.paged) == ("inc-0001", GROUPED, False)
        incident = store.get("inc-0001")
        assert incident is not None
        assert (incident.grouped, incident.count, incident.version) == (1, 1, 2)
        assert {e.event_id for e in incident.evidence} == {"c1", "e1"}
        assert store.list_incidents(rule="detractor").total == 0
        assert outbox_changes(store)[-1] == ("UPDATED", False, "inc-0001", 2)
        # Another person's detractor does not join it.
        other = store.trigger(make_trigger("e2", profile_id="p2", groups_with=("complaint_high",)))
        assert other.change == OPENED

    def test_grouping_without_an_open_complaint_opens(self, store: Store) -> None:
        store.trigger(make_trigger("c1", rule="complaint_high"))
        store.resolve("inc-0001", "bob", "", NOW + 1)
        result = store.trigger(make_trigger("e1", groups_with=("complaint_high",)))
        assert (result.incident_id, result.change) == ("inc-0002", OPENED)

    def test_open_touchpoint_incident_inhibits_pages_there(self, store: Store) -> None:
        spike = store.trigger(spike_trigger("s1"))
        assert spike.paged
        result = store.trigger(
            make_trigger("e1", rule="payment_failed", touchpoint="checkout.payment")
        )
        assert result.change == OPENED
        assert (result.paged, result.suppressed_by) == (False, "inhibited:inc-0001")
        incident = store.get(result.incident_id)
        assert incident is not None
        assert incident.inhibited_by == "inc-0001"
        assert outbox_changes(store)[-1] == ("OPENED", False, result.incident_id, 1)
        # Elsewhere: paged.
        elsewhere = store.trigger(make_trigger("e2", profile_id="p2", touchpoint="app.checkout"))
        assert elsewhere.paged
        # Once the spike resolves, pages on its touchpoint go out again.
        assert store.resolve_key(touchpoint_key("payment_spike", "checkout.payment"), "clear", NOW)
        after = store.trigger(
            make_trigger(
                "e3", profile_id="p3", rule="payment_failed", touchpoint="checkout.payment"
            )
        )
        assert after.paged

    def test_suppressed_incident_changes_are_not_paged(self, store: Store) -> None:
        store.trigger(spike_trigger("s1"))
        inhibited = store.trigger(make_trigger("e1", touchpoint="checkout.payment"))
        store.acknowledge(inhibited.incident_id, "alice", NOW + 1)
        store.resolve(inhibited.incident_id, "alice", "", NOW + 2)
        assert outbox_changes(store)[-2:] == [
            ("ACKNOWLEDGED", False, inhibited.incident_id, 2),
            ("RESOLVED", False, inhibited.incident_id, 3),
        ]

    # --- silences -----------------------------------------------------------------------

    def test_silence_holds_matching_pages(self, store: Store) -> None:
        created = store.create_silence(
            silence(Matcher("team", "cx"), Matcher("touchpoint", "web.", prefix=True)), NOW
        )
        assert created.silence_id
        held = store.trigger(make_trigger("e1"))
        assert (held.change, held.paged) == (OPENED, False)
        assert held.suppressed_by == f"silence:{created.silence_id}"
        incident = store.get(held.incident_id)
        assert incident is not None
        assert incident.silenced_by == created.silence_id
        # Not every matcher matches: paged.
        assert store.trigger(make_trigger("e2", profile_id="p2", touchpoint="app.home")).paged
        assert store.trigger(make_trigger("e3", profile_id="p3", team="payments")).paged

    @pytest.mark.parametrize(
        ("matcher", "hit", "miss"),
        [
            (Matcher("team", "t-held"), {"team": "t-held"}, {"team": "t-other"}),
            (Matcher("rule", "r-held"), {"rule": "r-held"}, {"rule": "r-other"}),
            (Matcher("touchpoint", "web.checkout"), {}, {"touchpoint": "web.checkout.v2"}),
            (Matcher("touchpoint", "web.", prefix=True), {}, {"touchpoint": "app.home"}),
            (Matcher("profile_id", "p-held"), {"profile_id": "p-held"}, {"profile_id": "p2"}),
            (Matcher("severity", "info"), {"severity": "info"}, {"severity": "warning"}),
        ],
    )
    def test_silence_matches_each_attribute(
        self, store: Store, matcher: Matcher, hit: dict[str, str], miss: dict[str, str]
    ) -> None:
        store.create_silence(silence(matcher), NOW)
        held = store.trigger(make_trigger("e1", **hit))  # type: ignore[arg-type]
        assert (held.change, held.paged) == (OPENED, False)
        missed = store.trigger(make_trigger("e2", **{"profile_id": "p3", **miss}))  # type: ignore[arg-type]
        assert (missed.change, missed.paged) == (OPENED, True)

    def test_silence_window(self, store: Store) -> None:
        later = store.create_silence(
            silence(Matcher("team", "cx"), start=NOW + HOUR_MS, end=NOW + 2 * HOUR_MS), NOW
        )
        assert store.trigger(make_trigger("e1")).paged
        during = store.trigger(make_trigger("e2", profile_id="p2", now_ms=NOW + HOUR_MS))
        assert during.suppressed_by == f"silence:{later.silence_id}"
        after = store.trigger(make_trigger("e3", profile_id="p3", now_ms=NOW + 2 * HOUR_MS))
        assert after.paged

    def test_expired_silence_no_longer_holds(self, store: Store) -> None:
        created = store.create_silence(silence(Matcher("team", "cx")), NOW)
        ended = store.expire_silence(created.silence_id, NOW + 10)
        assert ended.ends_at_ms == NOW + 10
        assert store.trigger(make_trigger("e1", now_ms=NOW + 11)).paged
        assert store.list_silences(False, NOW + 11) == []
        assert [s.silence_id for s in store.list_silences(True, NOW + 11)] == [created.silence_id]
        # Expiring it again changes nothing.
        assert store.expire_silence(created.silence_id, NOW + 20) == ended
        with pytest.raises(UnknownSilence):
            store.expire_silence("sil-nope", NOW)

    def test_invalid_silences_are_refused(self, store: Store) -> None:
        with pytest.raises(InvalidSilence, match=r"silence\.matchers"):
            store.create_silence(silence(), NOW)
        with pytest.raises(InvalidSilence, match=r"silence\.matchers\[0\]\.name"):
            store.create_silence(silence(Matcher("colour", "red")), NOW)
        with pytest.raises(InvalidSilence, match=r"silence\.ends_at"):
            store.create_silence(silence(Matcher("team", "cx"), end=NOW - 1), NOW)
        assert store.list_silences(True, NOW) == []

    # --- acknowledge and resolve --------------------------------------------------------

    def test_acknowledge_then_resolve(self, store: Store) -> None:
        store.trigger(make_trigger("e1"))
        acked = store.acknowledge("inc-0001", "alice", NOW + 1000)
        assert acked.state == pb.STATE_ACKNOWLEDGED
        assert acked.acknowledged_by == "alice"
        assert acked.acknowledged_at.ToMilliseconds() == NOW + 1000
        resolved = store.resolve("inc-0001", "bob", "refunded", NOW + 2000)
        assert resolved.state == pb.STATE_RESOLVED
        assert (resolved.resolved_by, resolved.resolution) == ("bob", "refunded")
        assert resolved.version == 3
        assert outbox_changes(store)[1:] == [
            ("ACKNOWLEDGED", True, "inc-0001", 2),
            ("RESOLVED", True, "inc-0001", 3),
        ]

    def test_invalid_transitions(self, store: Store) -> None:
        store.trigger(make_trigger("e1"))
        store.acknowledge("inc-0001", "alice", NOW)
        with pytest.raises(InvalidTransition, match="already acknowledged"):
            store.acknowledge("inc-0001", "bob", NOW)
        store.resolve("inc-0001", "alice", "", NOW)
        with pytest.raises(InvalidTransition, match="only a triggered incident"):
            store.acknowledge("inc-0001", "bob", NOW)
        with pytest.raises(InvalidTransition, match="already resolved"):
            store.resolve("inc-0001", "bob", "", NOW)
        with pytest.raises(UnknownIncident):
            store.acknowledge("inc-nope", "bob", NOW)
        with pytest.raises(UnknownIncident):
            store.resolve("inc-nope", "bob", "", NOW)
        assert len(outbox_changes(store)) == 3

    def test_resolve_key_resolves_automatically(self, store: Store) -> None:
        store.trigger(make_trigger("e1"))
        assert store.resolve_key("detractor:pid:p1", "window empty", NOW + 5) == "inc-0001"
        incident = store.get("inc-0001")
        assert incident is not None
        assert incident.state == pb.STATE_RESOLVED
        assert (incident.resolved_by, incident.resolution) == (AUTO, "auto: window empty")
        assert store.resolve_key("detractor:pid:p1", "again", NOW + 6) is None
        assert store.resolve_key("nothing:pid:p1", "x", NOW) is None

    # --- timers -------------------------------------------------------------------------

    def test_unacknowledged_paged_incident_escalates_once(self, store: Store) -> None:
        store.trigger(make_trigger("e1", escalate_after_s=300))
        assert store.fire_due(NOW + 299_999) == []
        assert store.fire_due(NOW + 300_000) == ["inc-0001"]
        incident = store.get("inc-0001")
        assert incident is not None
        assert (incident.escalation_level, incident.state) == (1, pb.STATE_TRIGGERED)
        assert outbox_changes(store)[-1] == ("ESCALATED", True, "inc-0001", 2)
        assert store.fire_due(NOW + 10 * HOUR_MS) == []

    def test_acknowledged_incident_does_not_escalate(self, store: Store) -> None:
        store.trigger(make_trigger("e1", escalate_after_s=300))
        store.acknowledge("inc-0001", "alice", NOW + 1)
        assert store.fire_due(NOW + HOUR_MS) == []
        store.trigger(make_trigger("e2", profile_id="p2", escalate_after_s=300))
        store.resolve("inc-0002", "alice", "", NOW + 1)
        assert store.fire_due(NOW + HOUR_MS) == []

    def test_suppressed_incident_does_not_escalate(self, store: Store) -> None:
        store.create_silence(silence(Matcher("team", "cx")), NOW)
        store.trigger(make_trigger("e1", escalate_after_s=300))
        assert store.fire_due(NOW + HOUR_MS) == []

    def test_sla_timer_opens_unless_resolved_first(self, store: Store) -> None:
        due = NOW + 48 * HOUR_MS
        sla = make_trigger("c1", rule="complaint_sla", kind="timer", sla_due_ms=due)
        scheduled = store.trigger(sla)
        assert (scheduled.incident_id, scheduled.change) == ("", SCHEDULED)
        # A later event of the same complaint does not move the clock.
        store.trigger(make_trigger("c2", rule="complaint_sla", kind="timer", sla_due_ms=due + 5))
        assert store.get("inc-0001") is None
        assert store.fire_due(due - 1) == []
        assert len(store.fire_due(due)) == 1
        [incident] = store.list_incidents(rule="complaint_sla").incidents
        assert incident.state == pb.STATE_TRIGGERED
        assert incident.kind == pb.RULE_KIND_TIMER
        assert incident.first_seen.ToMilliseconds() == due
        assert outbox_changes(store)[-1][:2] == ("OPENED", True)
        assert store.fire_due(due + HOUR_MS) == []
        # Another person's complaint is resolved in time: its SLA timer is cancelled.
        other = make_trigger(
            "c3", rule="complaint_sla", kind="timer", profile_id="p2", sla_due_ms=due
        )
        store.trigger(other)
        assert store.resolve_key(other.dedup_key, "complaint resolved", NOW + HOUR_MS) is None
        assert store.fire_due(due + 2 * HOUR_MS) == []
        assert store.list_incidents(profile_id="p2").total == 0

    # --- listing ------------------------------------------------------------------------

    def test_listing_filters_and_pages_newest_first(self, store: Store) -> None:
        for i in range(7):
            store.trigger(
                make_trigger(
                    f"e{i}",
                    profile_id=f"p{i}",
                    team="cx" if i % 2 else "payments",
                    rule="detractor" if i < 4 else "csat_low",
                    now_ms=NOW + i * 1000,
                )
            )
        store.acknowledge("inc-0002", "alice", NOW + 10_000)
        store.resolve("inc-0003", "alice", "", NOW + 11_000)
        everything = store.list_incidents()
        assert everything.total == 7
        assert [i.incident_id for i in everything.incidents] == [
            "inc-0003",
            "inc-0002",
            "inc-0007",
            "inc-0006",
            "inc-0005",
            "inc-0004",
            "inc-0001",
        ]
        pages, token = [], ""
        while True:
            page = store.list_incidents(page_size=3, page_token=token)
            pages.append([i.incident_id for i in page.incidents])
            token = page.next_page_token
            if not token:
                break
        assert [i for page_ids in pages for i in page_ids] == [
            i.incident_id for i in everything.incidents
        ]
        assert [len(p) for p in pages] == [3, 3, 1]
        open_cx = store.list_incidents(states=["triggered", "acknowledged"], team="cx")
        assert [i.incident_id for i in open_cx.incidents] == ["inc-0002", "inc-0006", "inc-0004"]
        assert open_cx.total == 3
        by_rule = store.list_incidents(rule="csat_low", page_size=2)
        assert [i.incident_id for i in by_rule.incidents] == ["inc-0007", "inc-0006"]
        rest = store.list_incidents(
            rule="csat_low", page_size=2, page_token=by_rule.next_page_token
        )
        assert [i.incident_id for i in rest.incidents] == ["inc-0005"]
        assert rest.next_page_token == ""
        assert [i.incident_id for i in store.list_incidents(profile_id="p3").incidents] == [
            "inc-0004"
        ]
        assert store.list_incidents(states=["resolved"]).total == 1
        assert store.list_incidents(team="nobody").incidents == []
        with pytest.raises(InvalidPageToken):
            store.list_incidents(page_token="garbage")
        with pytest.raises(ValueError, match="state"):
            store.list_incidents(states=["open"])

    def test_purge_resolved_keeps_open_incidents(self, store: Store) -> None:
        for i in range(3):
            store.trigger(make_trigger(f"e{i}", profile_id=f"p{i}"))
        store.resolve("inc-0001", "alice", "", NOW + 1000)
        store.resolve("inc-0002", "alice", "", NOW + 5000)
        assert store.purge_resolved(NOW + 2000) == 1
        assert store.get("inc-0001") is None
        assert [i.incident_id for i in store.list_incidents().incidents] == [
            "inc-0002",
            "inc-0003",
        ]
        assert store.list_incidents(states=["resolved"]).total == 1
        assert store.list_incidents(profile_id="p0").total == 0
        assert store.purge_resolved(NOW + 2000) == 0
        assert store.purge_resolved(NOW + HOUR_MS) == 1
        assert store.get("inc-0003") is not None

    # --- deliveries -----------------------------------------------------------------------

    def test_deliveries_are_recorded_without_a_change(self, store: Store) -> None:
        store.trigger(make_trigger("e1"))
        assert store.record_delivery(
            "inc-0001", Delivery("pagerduty-cx", "OPENED", "failed", 2, "HTTP 503")
        )
        assert store.record_delivery(
            "inc-0001", Delivery("pagerduty-cx", "OPENED", "delivered", 3, "", NOW + 9)
        )
        assert store.record_delivery("inc-0001", Delivery("slack-cx", "OPENED", "delivered", 1))
        assert not store.record_delivery("inc-nope", Delivery("slack-cx", "OPENED", "delivered"))
        incident = store.get("inc-0001")
        assert incident is not None
        assert [(d.receiver, d.status, d.attempts) for d in incident.deliveries] == [
            ("pagerduty-cx", "delivered", 3),
            ("slack-cx", "delivered", 1),
        ]
        assert incident.deliveries[0].delivered_at.ToMilliseconds() == NOW + 9
        assert incident.version == 1
        # A change keeps the history.
        acked = store.acknowledge("inc-0001", "alice", NOW + 10)
        assert len(acked.deliveries) == 2
        assert len(outbox_changes(store)) == 2


class RecordingKeys(AlertKeys):
    """Key names that remember themselves, for cleaning up after a test without a SCAN
    of the shared database."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.made: set[str] = {self.incidents, self.timers, self.silences, self.outbox}
        # Another store under the prefix (a server's) may move incidents between states.
        self.made.update(AlertKeys.state(self, s) for s in STATES)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if callable(value) and not name.startswith("_") and name in KEY_METHODS:
            made: set[str] = super().__getattribute__("made")

            def recorded(*args: Any) -> Any:
                key = value(*args)
                made.add(key)
                return key

            return recorded
        return value


KEY_METHODS = frozenset(
    n for n, v in vars(AlertKeys).items() if callable(v) and not n.startswith("_")
)


def redis_store(client: redis.Redis, prefix: str) -> IncidentStore:
    store = IncidentStore(client, prefix, SequentialIds(), SequentialIds("sil"))
    store.keys = RecordingKeys(prefix)
    return store


def clean(client: redis.Redis, store: IncidentStore) -> None:
    keys = store.keys
    assert isinstance(keys, RecordingKeys)
    made = sorted(keys.made)
    for i in range(0, len(made), 500):
        client.delete(*made[i : i + 500])
