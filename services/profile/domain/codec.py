"""The stored values the domain itself writes (pure): the sub-maps its operations name,
the packed values it puts in them, and the segment list of the published snapshot.

`effects.py` writes them, `derive.py`, `changes.py` and `fold.py` read them, and the
store's layout (`services/profile/adapters/layout.py`) takes them from here and re-exports
them with every other key name and codec, so the domain does not depend on the adapters
and each format is written once. Anything changed here changes data at rest.

Values inside the latest-wins hashes (each stored as "<ts_ms>|<value>" by the store):
consent "<granted 1/0>|<source system>|<event id>", complaints
"<lifecycle rank>|<status>|<severity>|<category>", incidents
"<lifecycle rank>|<state>|<severity>|<rule>", traits JSON. Contacts are members
"<id>|<reason>|<resolved 1/0>" of a sorted set scored by time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from services.profile.domain.state import Contact

# The sub-maps of a profile that operations write (`h`, `hc` and `z` targets).
TRAITS = "traits"
CONSENT = "consent"
COMPLAINTS = "complaints"
# The alerts service's incidents about the person (ExperienceIncident events).
INCIDENTS = "incidents"
CONTACTS = "contacts"
TOUCHPOINTS = "touchpoints"
# Hashes of "<ts_ms>|<value>", latest wins (the `h` op's targets).
LATEST_HASHES = (TRAITS, CONSENT, COMPLAINTS, INCIDENTS)
# Counter hashes (`hc`) and sorted sets scored by event time (`z`) that ops write.
COUNTER_HASHES = (TOUCHPOINTS,)
SORTED_SETS = (CONTACTS,)

# The snapshot's field listing the profile's segments (`s:segments`).
SEGMENTS = "segments"


def encode_segment_list(names: Iterable[str]) -> str:
    return ",".join(sorted(names))


def decode_segment_list(value: str) -> list[str]:
    return [name for name in value.split(",") if name]


class ConsentValue(NamedTuple):
    granted: bool
    source_system: str
    event_id: str


def encode_consent(granted: bool, source_system: str, event_id: str) -> str:
    return f"{int(granted)}|{source_system}|{event_id}"


def decode_consent(value: str) -> ConsentValue:
    granted, _, rest = value.partition("|")
    source, _, event_id = rest.partition("|")
    return ConsentValue(granted == "1", source, event_id)


class ComplaintValue(NamedTuple):
    # The lifecycle rank leads, so that of two updates in one millisecond the later
    # state wins the latest-value rule.
    rank: str
    status: str
    severity: str
    category: str


def encode_complaint(rank: int, status: str, severity: str, category: str) -> str:
    return f"{rank}|{status}|{severity}|{category}"


def decode_complaint(value: str) -> ComplaintValue:
    rank, status, severity, category = [*value.split("|", 3), "", "", ""][:4]
    return ComplaintValue(rank, status, severity, category)


class IncidentValue(NamedTuple):
    # The lifecycle rank leads, as for complaints: of two changes in one millisecond the
    # later state (resolved over acknowledged over opened) wins the latest-value rule.
    rank: str
    state: str
    severity: str
    rule: str


def encode_incident(rank: int, state: str, severity: str, rule: str) -> str:
    return f"{rank}|{state}|{severity}|{rule}"


def decode_incident(value: str) -> IncidentValue:
    rank, state, severity, rule = [*value.split("|", 3), "", "", ""][:4]
    return IncidentValue(rank, state, severity, rule)


def encode_contact(contact_id: str, reason: str, resolved: bool) -> str:
    # "|" separates the member's parts; a contact id may not bring its own.
    return f"{contact_id.replace('|', '/')}|{reason}|{int(resolved)}"


def contact_member(contact: Contact) -> str:
    """The sorted-set member a Contact was decoded from."""
    return encode_contact(contact.contact_id, contact.reason, contact.resolved)


def decode_contact(member: str, score: float) -> Contact:
    contact_id, reason, resolved = [*member.split("|"), "", ""][:3]
    return Contact(int(score), contact_id, reason, resolved == "1")
