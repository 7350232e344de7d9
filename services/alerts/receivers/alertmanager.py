"""Alertmanager API v2 (`POST {url}/api/v2/alerts`, a list of postableAlert), pure.

An incident is one Alertmanager alert, identified (fingerprinted) by its label set, so
the labels are what never changes during the incident's life: alertname (the rule),
dedup_key, rule, kind, team, touchpoint and profile_id (an empty label is dropped by
Alertmanager, so a touchpoint incident has none). Severity is an annotation, not a
label: an incident's severity rises when a more severe event joins it, and a label that
changed would make the resolve a different alert and leave the first one firing.

- OPENED, ESCALATED, ACKNOWLEDGED: firing; `endsAt` is the change's time plus
  FIRING_FOR (Alertmanager would otherwise resolve an alert nobody re-sent within its
  resolve_timeout, 5 minutes by default, while our incident stays open for days).
- RESOLVED: `endsAt` is when it was resolved; Alertmanager marks it resolved and its
  webhook receivers get `"status": "resolved"`.

Schema (Alertmanager 0.25 api/v2/openapi.yaml): postableAlert = labels (labelSet,
required: string to string), annotations (labelSet), startsAt and endsAt (date-time),
generatorURL (uri). Label names match [a-zA-Z_][a-zA-Z0-9_]*.
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
    evidence_line,
    kind_name,
    ms_rfc3339,
    severity_name,
    shareable,
    state_name,
    truncate,
)

# How long a firing alert lasts in Alertmanager unless it is resolved or re-sent: longer
# than an incident stays open (ACKNOWLEDGED and ESCALATED re-send it).
FIRING_FOR_MS = 30 * 24 * 3600 * 1000
ALERTS_PATH = "/api/v2/alerts"
MAX_ANNOTATION = 4000
PAGED = (pb.CHANGE_OPENED, pb.CHANGE_ESCALATED, pb.CHANGE_ACKNOWLEDGED, pb.CHANGE_RESOLVED)


def labels(incident: pb.Incident) -> dict[str, str]:
    """The alert's identity in Alertmanager (constant for the incident's life)."""
    out = {
        "alertname": incident.rule or "experience_incident",
        "dedup_key": dedup_key(incident),
        "rule": incident.rule,
        "kind": kind_name(incident),
        "team": incident.team,
        "touchpoint": incident.touchpoint,
        "profile_id": incident.profile_id,
        "source": "cx-alerts",
    }
    return {k: v for k, v in out.items() if v}


def alert(change: pb.IncidentChange) -> dict[str, Any]:
    """One postableAlert for an incident change."""
    if change.change not in PAGED:
        raise ValueError(f"{change_name(change)} is not sent to Alertmanager")
    incident = shareable(change.incident)
    at_ms = change_at_ms(change)
    resolved = change.change == pb.CHANGE_RESOLVED
    annotations = {
        "summary": truncate(incident.summary or incident.dedup_key, MAX_ANNOTATION),
        "severity": severity_name(incident),
        "state": state_name(incident),
        "change": change_name(change),
        "incident_id": incident.incident_id,
        "count": str(incident.count),
        "evidence": truncate(
            "\n".join(evidence_line(e) for e in incident.evidence[:5]), MAX_ANNOTATION
        ),
        "acknowledged_by": incident.acknowledged_by,
        "resolution": incident.resolution,
        "escalation_level": str(incident.escalation_level) if incident.escalation_level else "",
    }
    starts_ms = incident.first_seen.ToMilliseconds() if incident.HasField("first_seen") else at_ms
    if resolved:
        ends_ms = (
            incident.resolved_at.ToMilliseconds() if incident.HasField("resolved_at") else at_ms
        )
        ends_ms = max(ends_ms, starts_ms)
    else:
        ends_ms = max(at_ms, starts_ms) + FIRING_FOR_MS
    return {
        "labels": labels(incident),
        "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": ms_rfc3339(starts_ms),
        "endsAt": ms_rfc3339(ends_ms),
        "generatorURL": f"cx://alerts/incidents/{incident.incident_id}",
    }


def alerts_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith(ALERTS_PATH) else base + ALERTS_PATH


def request(change: pb.IncidentChange, base_url: str) -> Request:
    body = json.dumps([alert(change)], separators=(",", ":")).encode()
    return Request(alerts_url(base_url), body, {"Content-Type": "application/json"})
