"""What every receiver's payload builder shares: names of enums, times, evidence lines,
and the rule that no personal data leaves in a page.

A page carries the profile id, the summary and the evidence (event ids, touchpoints,
payload types, scores), never an email address or a phone number. The incident's free
text (summary, who acknowledged or resolved it, the resolution note) is written by rules
and people, so it is scrubbed here before any builder sees it; `personal_data` finds what
would have leaked and is what the sink and the tests check payloads with.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cx.alerts.v1 import alerts_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

# What counts as personal data in a payload: an email address, or a phone number in the
# platform's normal form (E.164, how ingestion stores every phone), also with the
# separators people type (+44 20 7946 0958), or a North American (555) 123-4567.
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
PHONE_RE = re.compile(
    r"\+[1-9](?:[\s().\-]?\d){6,14}(?!\d)|\(?\b\d{3}\)?[\s.\-]\d{3}[\s.\-]\d{4}\b"
)
EMAIL_MASK, PHONE_MASK = "[email]", "[phone]"

# PagerDuty's limits (Events API v2): dedup_key 255 characters, summary 1024.
MAX_DEDUP_KEY = 255
EVIDENCE_SHOWN = 5


def scrub(text: str) -> str:
    """`text` with email addresses and phone numbers masked."""
    return PHONE_RE.sub(PHONE_MASK, EMAIL_RE.sub(EMAIL_MASK, text))


def personal_data(value: object, path: str = "$") -> list[str]:
    """Where in a JSON-like value an email address or phone number appears
    (`$.payload.summary: email`)."""
    found: list[str] = []
    for where, text in _strings(value, path):
        if EMAIL_RE.search(text):
            found.append(f"{where}: email")
        if PHONE_RE.search(text):
            found.append(f"{where}: phone")
    return found


def _strings(value: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(str(key), f"{path}.<key>")
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def shareable(incident: pb.Incident) -> pb.Incident:
    """A copy fit to leave the platform: free text scrubbed, delivery history dropped."""
    out = pb.Incident()
    out.CopyFrom(incident)
    out.summary = scrub(out.summary)
    out.acknowledged_by = scrub(out.acknowledged_by)
    out.resolved_by = scrub(out.resolved_by)
    out.resolution = scrub(out.resolution)
    del out.deliveries[:]
    return out


def shareable_change(change: pb.IncidentChange) -> pb.IncidentChange:
    out = pb.IncidentChange()
    out.CopyFrom(change)
    out.incident.CopyFrom(shareable(change.incident))
    return out


def change_name(change: pb.IncidentChange) -> str:
    """OPENED, UPDATED, ACKNOWLEDGED, RESOLVED or ESCALATED."""
    return pb.Change.Name(change.change).removeprefix("CHANGE_")


def severity_name(incident: pb.Incident) -> str:
    """critical, error, warning or info (info when unset)."""
    if incident.severity == pb.SEVERITY_UNSPECIFIED:
        return "info"
    return pb.Severity.Name(incident.severity).removeprefix("SEVERITY_").lower()


def state_name(incident: pb.Incident) -> str:
    return pb.State.Name(incident.state).removeprefix("STATE_").lower()


def kind_name(incident: pb.Incident) -> str:
    return pb.RuleKind.Name(incident.kind).removeprefix("RULE_KIND_").lower()


def rfc3339(ts: Timestamp) -> str:
    """`2026-11-23T10:15:00.123Z` (UTC, milliseconds)."""
    return ms_rfc3339(ts.ToMilliseconds())


def ms_rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def change_at_ms(change: pb.IncidentChange) -> int:
    """When the change happened (its incident's last change when `at` is unset)."""
    if change.HasField("at"):
        return change.at.ToMilliseconds()
    inc = change.incident
    for ts in (inc.resolved_at, inc.acknowledged_at, inc.last_seen, inc.first_seen):
        if ts.seconds or ts.nanos:
            return ts.ToMilliseconds()
    return 0


def dedup_key(incident: pb.Incident) -> str:
    """The incident's dedup key within PagerDuty's 255 characters (a longer one keeps its
    head and gets a digest of the whole, so it stays stable and unique)."""
    key = incident.dedup_key or incident.incident_id
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[: MAX_DEDUP_KEY - 17]}~{digest}"


def evidence_line(e: pb.Evidence) -> str:
    """`2026-11-23T10:15:00.000Z checkout.payment survey_response detractor nps=3 (evt-1)`."""
    scores = " ".join(f"{k}={v:g}" for k, v in sorted(e.scores.items()))
    parts = [rfc3339(e.occurred_at), e.touchpoint, e.payload, e.negative, scores]
    return " ".join(p for p in parts if p) + f" ({e.event_id})"


def evidence_items(incident: pb.Incident, limit: int = EVIDENCE_SHOWN) -> list[dict[str, object]]:
    return [
        {
            "event_id": e.event_id,
            "touchpoint": e.touchpoint,
            "occurred_at": rfc3339(e.occurred_at),
            "payload": e.payload,
            "negative": e.negative,
            "scores": dict(sorted(e.scores.items())),
        }
        for e in incident.evidence[:limit]
    ]


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Request:
    """One HTTP request to a receiver."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
