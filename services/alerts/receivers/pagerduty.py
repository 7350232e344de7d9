"""PagerDuty Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`), pure.

An incident is one PagerDuty alert: its dedup key is the incident's dedup key, so a
trigger for a problem PagerDuty already has open is folded into that alert, and
acknowledge and resolve find it. OPENED and ESCALATED are `trigger` events (an
escalation reaches the next level's routing key), ACKNOWLEDGED `acknowledge`, RESOLVED
`resolve`. Schema (PagerDuty developer docs, "Send an Alert Event"): `routing_key`,
`event_action` and, for a trigger, `payload.summary` (at most 1024 characters),
`payload.source`, `payload.severity` (critical | error | warning | info) are required;
`dedup_key` at most 255 characters; acknowledge and resolve need only routing_key,
dedup_key and event_action.
"""

from __future__ import annotations

import json
from typing import Any

from cx.alerts.v1 import alerts_pb2 as pb

from services.alerts.receivers.common import (
    Request,
    change_at_ms,
    change_name,
    dedup_key,
    evidence_items,
    kind_name,
    ms_rfc3339,
    rfc3339,
    severity_name,
    shareable,
    state_name,
    truncate,
)

ACTIONS = {
    pb.CHANGE_OPENED: "trigger",
    pb.CHANGE_ESCALATED: "trigger",
    pb.CHANGE_ACKNOWLEDGED: "acknowledge",
    pb.CHANGE_RESOLVED: "resolve",
}
EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_SUMMARY = 1024
CLIENT = "cx-platform alerts"
SOURCE = "cx-platform"


def event_action(change: pb.IncidentChange) -> str:
    try:
        return ACTIONS[change.change]
    except KeyError:
        raise ValueError(f"{change_name(change)} is not paged to PagerDuty") from None


def event(change: pb.IncidentChange, routing_key: str) -> dict[str, Any]:
    """The Events API v2 event for one incident change."""
    incident = shareable(change.incident)
    action = event_action(change)
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key(incident),
    }
    if action != "trigger":
        return body
    at_ms = change_at_ms(change)
    details: dict[str, Any] = {
        "incident_id": incident.incident_id,
        "change": change_name(change),
        "state": state_name(incident),
        "rule": incident.rule,
        "kind": kind_name(incident),
        "team": incident.team,
        "profile_id": incident.profile_id,
        "touchpoint": incident.touchpoint,
        "count": incident.count,
        "grouped": incident.grouped,
        "escalation_level": incident.escalation_level,
        "first_seen": rfc3339(incident.first_seen),
        "last_seen": rfc3339(incident.last_seen),
        "evidence": evidence_items(incident),
    }
    payload: dict[str, Any] = {
        "summary": truncate(incident.summary or incident.dedup_key, MAX_SUMMARY),
        "source": f"{SOURCE}/{incident.touchpoint}" if incident.touchpoint else SOURCE,
        "severity": severity_name(incident),
        "component": incident.touchpoint or "customer-experience",
        "group": incident.team,
        "class": incident.rule,
        "custom_details": {k: v for k, v in details.items() if v not in ("", None)},
    }
    if at_ms:
        payload["timestamp"] = ms_rfc3339(at_ms)
    body["payload"] = payload
    body["client"] = CLIENT
    return body


def request(change: pb.IncidentChange, url: str, routing_key: str) -> Request:
    body = json.dumps(event(change, routing_key), separators=(",", ":")).encode()
    return Request(url, body, {"Content-Type": "application/json"})
