"""The notifier's pure parts: who an outbox entry goes to, the rate limit, and the
touchpoint event that tells the profile about a person's incident."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from cx.alerts.v1 import alerts_pb2 as pb
from cx.events.v1 import touchpoint_pb2 as ev

from services.alerts.adapters.changes import People, event_id, incident_event, record_key
from services.alerts.adapters.layout import OutboxEntry
from services.alerts.domain.owners import Owners, parse_owners
from services.alerts.notifier import Route, TokenBucket, route
from services.common.validation import normalise_and_validate

# 2027-01-15 08:00 UTC (a Friday morning in London).
NOW_MS = 1_800_000_000_000
# 2027-01-15 23:30 UTC: quiet hours (22:00-07:00 Europe/London).
NIGHT_MS = NOW_MS + (15 * 60 + 30) * 60_000


def owners() -> Owners:
    receiver = {"type": "slack", "url": "http://127.0.0.1:9471/slack/x"}
    return parse_owners(
        {
            "team": [
                {
                    "name": "cx",
                    "touchpoints": ["survey.*"],
                    "receivers": ["pd-cx", "am", "slack-cx"],
                    "escalation": {"after_s": 60, "to": ["hook-ops"]},
                    "quiet_hours": {
                        "start": "22:00",
                        "end": "07:00",
                        "timezone": "Europe/London",
                        "page_from": "error",
                        "receivers": ["slack-cx"],
                    },
                    "default": True,
                },
                {"name": "payments", "touchpoints": ["checkout.*"], "receivers": ["pd-pay"]},
            ],
            "receiver": [
                {"name": "pd-cx", "type": "pagerduty", "url": "http://127.0.0.1:9471/pd"},
                {"name": "pd-pay", "type": "pagerduty", "url": "http://127.0.0.1:9471/pd"},
                {"name": "am", "type": "alertmanager", "url": "http://127.0.0.1:9095"},
                {"name": "slack-cx", **receiver},
                {"name": "hook-ops", "type": "webhook", "url": "http://127.0.0.1:9471/webhook/o"},
            ],
        },
        "owners.toml",
    )


def entry(
    change: str = "OPENED",
    page: bool = True,
    at_ms: int = NOW_MS,
    severity: int = pb.SEVERITY_CRITICAL,
    **incident: Any,
) -> OutboxEntry:
    fields: dict[str, Any] = {
        "incident_id": "inc-1",
        "dedup_key": "detractor:pid:p-1",
        "rule": "detractor",
        "team": "cx",
        "severity": severity,
        "profile_id": "p-1",
        "touchpoint": "survey.nps",
        "version": 1,
        "state": pb.STATE_TRIGGERED,
    }
    inc = pb.Incident(**{**fields, **incident})
    inc.first_seen.FromMilliseconds(at_ms)
    message = pb.IncidentChange(incident=inc, change=pb.Change.Value(f"CHANGE_{change}"))
    message.at.FromMilliseconds(at_ms)
    return OutboxEntry(f"{at_ms}-0", change, page, "inc-1", inc.version, message)


# --- routing --------------------------------------------------------------------------


def test_opened_goes_to_the_team() -> None:
    assert route(owners(), entry(), {}) == Route(page=("pd-cx", "am", "slack-cx"))
    assert route(owners(), entry(team="payments"), {}) == Route(page=("pd-pay",))


def test_unknown_team_goes_to_the_default_team() -> None:
    assert route(owners(), entry(team="gone"), {}).page == ("pd-cx", "am", "slack-cx")


def test_quiet_hours_hold_back_the_less_severe() -> None:
    night_warning = entry(at_ms=NIGHT_MS, severity=pb.SEVERITY_WARNING)
    assert route(owners(), night_warning, {}) == Route(page=("slack-cx",))
    night_critical = entry(at_ms=NIGHT_MS)
    assert route(owners(), night_critical, {}).page == ("pd-cx", "am", "slack-cx")


def test_silenced_or_inhibited_openings_are_recorded_not_paged() -> None:
    silenced = route(owners(), entry(page=False, silenced_by="sil-1"), {})
    assert silenced == Route(suppressed=("pd-cx", "am", "slack-cx"), why_suppressed="silence:sil-1")
    inhibited = route(owners(), entry(page=False, inhibited_by="inc-9"), {})
    assert inhibited.why_suppressed == "inhibited:inc-9"
    assert not inhibited.page


def test_updates_are_never_paged() -> None:
    assert route(owners(), entry("UPDATED", page=False), {}) == Route()


def test_escalation_goes_to_the_next_level() -> None:
    assert route(owners(), entry("ESCALATED", escalation_level=1), {}) == Route(page=("hook-ops",))


def test_acknowledge_and_resolve_go_where_the_incident_was_paged() -> None:
    paged = {"slack-cx": "paged", "hook-ops": "paged", "pd-cx": "suppressed"}
    for change in ("ACKNOWLEDGED", "RESOLVED"):
        assert route(owners(), entry(change), paged) == Route(page=("hook-ops", "slack-cx"))
        assert route(owners(), entry(change, page=False), paged) == Route()


def test_acknowledge_without_history_falls_back_to_the_team() -> None:
    assert route(owners(), entry("RESOLVED"), {}).page == ("pd-cx", "am", "slack-cx")
    escalated = route(owners(), entry("RESOLVED", escalation_level=1), {})
    assert escalated.page == ("pd-cx", "am", "slack-cx", "hook-ops")


# --- rate limit -------------------------------------------------------------------------


async def test_token_bucket_waits_and_never_drops() -> None:
    bucket = TokenBucket(rate_per_min=600, burst=2)  # 10 a second after a burst of 2
    started = time.monotonic()
    await asyncio.gather(*(bucket.acquire() for _ in range(6)))
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 1.5


async def test_token_bucket_without_a_rate_does_not_wait() -> None:
    bucket = TokenBucket(rate_per_min=0, burst=1)
    started = time.monotonic()
    for _ in range(1000):
        await bucket.acquire()
    assert time.monotonic() - started < 0.5


def test_token_bucket_refills_on_its_clock() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_min=120, burst=10, clock=lambda: now[0])
    bucket.tokens = 0
    now[0] = 3.0
    bucket._refill()
    assert bucket.tokens == pytest.approx(6.0)
    now[0] = 100.0
    bucket._refill()
    assert bucket.tokens == 10


# --- the touchpoint event --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "state"),
    [
        ("OPENED", ev.ExperienceIncident.STATE_OPENED),
        ("ACKNOWLEDGED", ev.ExperienceIncident.STATE_ACKNOWLEDGED),
        ("RESOLVED", ev.ExperienceIncident.STATE_RESOLVED),
    ],
)
def test_state_changes_make_a_valid_touchpoint_event(change: str, state: int) -> None:
    now = datetime.fromtimestamp(NOW_MS / 1000 + 5, UTC)
    message = entry(change, version=3).message
    event = incident_event(message, ("c", "c-42"), now=now)
    assert event is not None
    assert normalise_and_validate(event, now=now) == []
    assert event.event_id == "alerts:inc-1:v3"
    assert event.identities.customer_id == "c-42"
    assert event.touchpoint == "alerts.incident"
    payload = event.experience_incident
    assert (payload.incident_id, payload.rule, payload.state) == ("inc-1", "detractor", state)
    assert (payload.severity, payload.incident_touchpoint) == ("critical", "survey.nps")
    assert event.occurred_at.ToMilliseconds() == NOW_MS


def test_no_event_for_updates_escalations_or_touchpoint_incidents() -> None:
    who = ("c", "c-42")
    assert incident_event(entry("UPDATED").message, who) is None
    assert incident_event(entry("ESCALATED").message, who) is None
    assert incident_event(entry(profile_id="").message, who) is None


def test_a_redelivered_change_is_the_same_event_and_record() -> None:
    message = entry(version=4).message
    assert event_id(message.incident) == event_id(entry(version=4).message.incident)
    assert event_id(message.incident) != event_id(entry(version=5).message.incident)
    assert record_key(message.incident) == b"p-1"
    assert record_key(entry(profile_id="").message.incident) == b"detractor:pid:p-1"


class CountingSource:
    def __init__(self) -> None:
        self.calls = 0

    def person_identifier(self, profile_id: str, timeout_s: float) -> tuple[str, str] | None:
        self.calls += 1
        return None if profile_id == "gone" else ("c", f"c-{profile_id}")

    def features(self, *args: Any) -> None:
        return None

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_people_asks_once_per_profile() -> None:
    source = CountingSource()
    people = People(source, timeout_s=0.5, size=2)
    assert people.identifier("1") == ("c", "c-1")
    assert people.identifier("1") == ("c", "c-1")
    assert source.calls == 1
    assert people.identifier("gone") is None
    assert people.identifier("gone") is None
    assert source.calls == 3  # an unknown profile is asked again (it may appear)
    people.identifier("2")
    people.identifier("3")
    people.identifier("1")  # evicted (size 2): asked again
    assert source.calls == 6
