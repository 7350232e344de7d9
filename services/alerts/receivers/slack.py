"""Slack incoming webhooks (`POST <webhook URL>` with a message of Block Kit blocks), pure.

The message: `text` (the notification's fallback), and `blocks`: a header (plain_text,
at most 150 characters), a section of fields (at most 10, each at most 2000
characters), a section with the evidence (text at most 3000 characters) and a context
block (at most 10 elements) with the dedup key and incident id. Limits from Slack's
Block Kit reference (api.slack.com/reference/block-kit/blocks; the same numbers are
enforced by slack_sdk.models.blocks).
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
    ms_rfc3339,
    severity_name,
    shareable,
    truncate,
)

MAX_HEADER = 150
MAX_FIELD = 2000
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_CONTEXT_ELEMENTS = 10
MAX_TEXT = 3000
ICONS = {"critical": ":red_circle:", "error": ":large_orange_circle:", "warning": ":warning:"}
VERBS = {
    pb.CHANGE_OPENED: "Opened",
    pb.CHANGE_UPDATED: "Updated",
    pb.CHANGE_ACKNOWLEDGED: "Acknowledged",
    pb.CHANGE_RESOLVED: "Resolved",
    pb.CHANGE_ESCALATED: "Escalated",
}


def _mrkdwn(text: str, limit: int) -> dict[str, str]:
    return {"type": "mrkdwn", "text": truncate(text, limit)}


def message(change: pb.IncidentChange) -> dict[str, Any]:
    """The webhook message for one incident change."""
    incident = shareable(change.incident)
    severity = severity_name(incident)
    verb = VERBS.get(change.change, change_name(change).title())
    icon = ":white_check_mark:" if change.change == pb.CHANGE_RESOLVED else ICONS.get(severity, "")
    title = f"{verb}: {incident.summary or incident.dedup_key}"
    fields = [
        ("Severity", severity),
        ("Team", incident.team),
        ("Rule", incident.rule),
        ("Touchpoint", incident.touchpoint),
        ("Profile", incident.profile_id),
        ("Events", str(incident.count)),
        ("Escalation level", str(incident.escalation_level) if incident.escalation_level else ""),
        ("Acknowledged by", incident.acknowledged_by),
        ("Resolution", incident.resolution),
    ]
    shown = [_mrkdwn(f"*{name}*\n{value}", MAX_FIELD) for name, value in fields if value]
    evidence = "\n".join(f"• {evidence_line(e)}" for e in incident.evidence[:5])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": truncate(title, MAX_HEADER)}},
        {"type": "section", "fields": shown[:MAX_FIELDS]},
    ]
    if evidence:
        blocks.append(
            {"type": "section", "text": _mrkdwn(f"*Evidence*\n{evidence}", MAX_SECTION_TEXT)}
        )
    at_ms = change_at_ms(change)
    context = [f"dedup key `{dedup_key(incident)}`", f"incident `{incident.incident_id}`"]
    if at_ms:
        context.append(ms_rfc3339(at_ms))
    blocks.append(
        {"type": "context", "elements": [_mrkdwn(c, MAX_FIELD) for c in context]},
    )
    text = f"{icon} {title}".strip()
    return {"text": truncate(text, MAX_TEXT), "blocks": blocks}


def request(change: pb.IncidentChange, url: str) -> Request:
    body = json.dumps(message(change), separators=(",", ":")).encode()
    return Request(url, body, {"Content-Type": "application/json"})
