"""The Redis layout of the alerts service: every key name, in one place.

The incident store, the detection worker's windows and spikes, the notifier, the Lua
scripts (key names rendered into them from here), the tests and the benchmark take key
names from `AlertKeys`; the outbox entry's fields are encoded and decoded here.

Keys (prefix `cx:` by default, `ALERTS_KEY_PREFIX`; every name below starts `al:`):
  al:inc:{id}                hash: the incident (domain/incidents.py incident_to_hash;
                             evidence a JSON list, newest first, at most 20) and the
                             notifier's delivery history, fields `d:<receiver>|<change>`
  al:open:{dedup key}        string: the id of the open (not resolved) incident of a key
  al:incidents               sorted set: incident id by its last change (ms)
  al:state:{state}           set of incident ids in a state (triggered|acknowledged|resolved)
  al:team:{team}, al:rule:{rule}, al:pid:{profile id}   sets of incident ids
  al:tp:{touchpoint}         set: open touchpoint-level incidents (no person) there: what
                             inhibits the pages of people's incidents on that touchpoint
  al:seen:{rule}:{event id}  string "<incident id>|<result>": the event was applied (TTL 8
                             days), so a redelivered event does not count twice
  al:pending:{dedup key}     string: the JSON trigger an SLA timer opens when it fires
  al:timers                  sorted set: "esc|<incident id>" and "sla|<dedup key>" by due ms
  al:silences                sorted set: silence id by its end (ms)
  al:silence:{id}            string: the silence (JSON, domain/incidents.py silence_json)
  al:outbox                  stream: one entry per incident change, fields below;
                             consumer group "notifier"; trimmed to OUTBOX_KEEP_MS
  al:delivered:{entry id}:{receiver}   the notifier's idempotency marker (TTL)
  al:win:{rule}:{key}        sorted set: a person's window events by time (detection)
  al:spike:{rule}:{touchpoint}   sorted set: negative events by time (detection)
  al:base:{rule}:{touchpoint}    the spike's baseline (detection)

Outbox entry fields (all written by the store's commit script in the same call as the
incident): `change` (OPENED|UPDATED|ACKNOWLEDGED|RESOLVED|ESCALATED), `page` ("1" when
receivers must be told), `incident` (a serialized cx.alerts.v1.IncidentChange),
`incident_id`, `version`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cx.alerts.v1 import alerts_pb2 as pb

from services.common.redis_values import as_text as as_text
from services.common.redis_values import lua_constants
from services.common.redis_values import text_map as text_map

ROOT = "al:"
INCIDENT = "inc:"
OPEN = "open:"
INCIDENTS = "incidents"
STATE = "state:"
TEAM = "team:"
RULE = "rule:"
PID = "pid:"
TOUCHPOINT = "tp:"
SEEN = "seen:"
PENDING = "pending:"
TIMERS = "timers"
SILENCES = "silences"
SILENCE = "silence:"
OUTBOX = "outbox"
DELIVERED = "delivered:"
WINDOW = "win:"
SPIKE = "spike:"
BASELINE = "base:"

# The notifier's consumer group on the outbox.
OUTBOX_GROUP = "notifier"
# How long a (rule, event id) marker is kept: longer than any redelivery.
SEEN_TTL_MS = 8 * 24 * 3600 * 1000
# Outbox entries older than this are trimmed (past the notifier's delivery max age).
OUTBOX_KEEP_MS = 8 * 24 * 3600 * 1000


class AlertKeys:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.root = prefix + ROOT
        self.incidents = self.root + INCIDENTS
        self.timers = self.root + TIMERS
        self.silences = self.root + SILENCES
        self.outbox = self.root + OUTBOX
        # Heartbeats (services/common/heartbeat.py): process -> when its beat expires.
        self.workers = self.root + "workers"
        self.notifiers = self.root + "notifiers"

    def incident(self, incident_id: str) -> str:
        return self.root + INCIDENT + incident_id

    def open(self, dedup_key: str) -> str:
        return self.root + OPEN + dedup_key

    def state(self, state: str) -> str:
        return self.root + STATE + state

    def team(self, team: str) -> str:
        return self.root + TEAM + team

    def rule(self, rule: str) -> str:
        return self.root + RULE + rule

    def pid(self, profile_id: str) -> str:
        return self.root + PID + profile_id

    def touchpoint(self, touchpoint: str) -> str:
        return self.root + TOUCHPOINT + touchpoint

    def seen(self, rule: str, event_id: str) -> str:
        return f"{self.root}{SEEN}{rule}:{event_id}"

    def pending(self, dedup_key: str) -> str:
        return self.root + PENDING + dedup_key

    def silence(self, silence_id: str) -> str:
        return self.root + SILENCE + silence_id

    def delivered(self, entry_id: str, receiver: str) -> str:
        return f"{self.root}{DELIVERED}{entry_id}:{receiver}"

    def window(self, rule: str, key: str) -> str:
        return f"{self.root}{WINDOW}{rule}:{key}"

    def spike(self, rule: str, touchpoint: str) -> str:
        return f"{self.root}{SPIKE}{rule}:{touchpoint}"

    def baseline(self, rule: str, touchpoint: str) -> str:
        return f"{self.root}{BASELINE}{rule}:{touchpoint}"


# --- The outbox -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEntry:
    """One outbox entry, decoded."""

    entry_id: str
    change: str  # OPENED | UPDATED | ACKNOWLEDGED | RESOLVED | ESCALATED
    page: bool
    incident_id: str
    version: int
    message: pb.IncidentChange

    @property
    def at_ms(self) -> int:
        """When the change happened (the stream entry id's time)."""
        return int(self.entry_id.split("-", 1)[0])


def encode_outbox_fields(
    change: str, page: bool, message: pb.IncidentChange, incident_id: str, version: int
) -> dict[str, bytes]:
    return {
        "change": change.encode(),
        "page": b"1" if page else b"0",
        "incident": message.SerializeToString(),
        "incident_id": incident_id.encode(),
        "version": str(version).encode(),
    }


def decode_outbox_entry(entry_id: bytes | str, fields: Mapping[Any, Any]) -> OutboxEntry:
    """An entry as XREAD / XREADGROUP return it (bytes keys and values)."""
    raw = {as_text(k): v for k, v in fields.items()}
    incident = raw.get("incident", b"")
    if not isinstance(incident, bytes):
        raise TypeError("outbox entries are read as bytes (a client without decode_responses)")
    return OutboxEntry(
        entry_id=as_text(entry_id),
        change=as_text(raw.get("change", b"")),
        page=as_text(raw.get("page", b"0")) == "1",
        incident_id=as_text(raw.get("incident_id", b"")),
        version=int(as_text(raw.get("version", b"0")) or 0),
        message=pb.IncidentChange.FromString(incident),
    )


# --- Lua ------------------------------------------------------------------------------

LUA_DIR = Path(__file__).parent / "lua"
LUA_CONSTANTS: dict[str, object] = {
    "KEY": {
        "incident": ROOT + INCIDENT,
        "open": ROOT + OPEN,
        "touchpoint": ROOT + TOUCHPOINT,
        "silence": ROOT + SILENCE,
    },
}


def lua_script(name: str) -> str:
    """A script with the layout's key names rendered in front of it."""
    source = "services/alerts/adapters/layout.py"
    return lua_constants(LUA_CONSTANTS, source) + (LUA_DIR / name).read_text()
