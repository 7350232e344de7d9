"""The Redis layout of a profile: every key name and every packed value, in one place.

The store (worker), the reader, erasure and split, the Lua scripts, the demo, the
benchmarks and the tests take key names and codecs from here. The scripts get the key
names as constants rendered in front of their shared prelude when they are registered
(`lua_script`); the value formats they write themselves (latest values, lineage, merge
records, the erasure digest's input) are commented there with the codec here that reads
them. The sub-maps the domain's operations write and the values it packs into them
(consent, complaints, incidents, contacts, the snapshot's segment list) are defined by the domain
in `services/profile/domain/codec.py`, so that it need not import the adapters, and
re-exported here. Anything changed here changes data at rest.

Keys (prefix `cx:` by default, `PROFILE_KEY_PREFIX`):
  p:{id}               main hash of aggregates, fields named by how they combine (below)
  p:{id}:ids           hash: identifier member "t:value" (t: a code of
                       services/common/identifiers.py) -> lineage of its link
                       "<event id>|<ts ms>|<source system>"
  p:{id}:traits|consent|complaints|incidents   hashes of "<ts_ms>|<value>", latest wins
  p:{id}:contacts      sorted set of support contacts "<id>|<reason>|<resolved 1/0>" by time
  p:{id}:touchpoints   hash: events per touchpoint
  p:{id}:events        sorted set of the profile's stored events (protobuf) by time
  p:{id}:outbox        list of signals (JSON) not yet published as change events
  p:{id}:merges        list of merges into this profile (JSON), for UnmergeProfile
  p:{id}:apart         set of profiles split off this one, never merged back automatically
  id:{t}:{value}       string: the owning profile
  alias                hash: merged profile id -> surviving profile id
  seen:{event id}      applied event ids, expiring after the dedup window
  seg:{name}           sorted set of segment members by entry time
  erased:{digest}      sha1 of salt + "t:value" of erased identifiers, expiring after
                       the suppression period
  erasure-salt         the salt, when PROFILE_ERASURE_SALT does not set one
  workers              sorted set: stream worker -> when its heartbeat expires (epoch s)
  stats                counters (`Stat`)

Main hash fields: `c:<name>` sum, `mn:<name>` minimum, `mx:<name>` maximum,
`l:<name>` latest "<ts_ms>|<value>", `s:<name>` the snapshot last published as change
events (`s:segments` is a comma-separated list). Values inside the latest-wins hashes:
consent "<granted 1/0>|<source system>|<event id>", complaints
"<lifecycle rank>|<status>|<severity>|<category>", incidents
"<lifecycle rank>|<state>|<severity>|<rule>", traits JSON (domain/codec.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from services.common.redis_values import as_text as as_text
from services.common.redis_values import lua_constants as render_constants
from services.common.redis_values import text_map as text_map
from services.profile.domain.codec import COMPLAINTS as COMPLAINTS
from services.profile.domain.codec import CONSENT as CONSENT
from services.profile.domain.codec import CONTACTS as CONTACTS
from services.profile.domain.codec import COUNTER_HASHES as COUNTER_HASHES
from services.profile.domain.codec import INCIDENTS as INCIDENTS
from services.profile.domain.codec import LATEST_HASHES as LATEST_HASHES
from services.profile.domain.codec import SEGMENTS as SEGMENTS
from services.profile.domain.codec import SORTED_SETS as SORTED_SETS
from services.profile.domain.codec import TOUCHPOINTS as TOUCHPOINTS
from services.profile.domain.codec import TRAITS as TRAITS
from services.profile.domain.codec import ComplaintValue as ComplaintValue
from services.profile.domain.codec import ConsentValue as ConsentValue
from services.profile.domain.codec import IncidentValue as IncidentValue
from services.profile.domain.codec import contact_member as contact_member
from services.profile.domain.codec import decode_complaint as decode_complaint
from services.profile.domain.codec import decode_consent as decode_consent
from services.profile.domain.codec import decode_contact as decode_contact
from services.profile.domain.codec import decode_incident as decode_incident
from services.profile.domain.codec import decode_segment_list as decode_segment_list
from services.profile.domain.codec import encode_complaint as encode_complaint
from services.profile.domain.codec import encode_consent as encode_consent
from services.profile.domain.codec import encode_contact as encode_contact
from services.profile.domain.codec import encode_incident as encode_incident
from services.profile.domain.codec import encode_segment_list as encode_segment_list
from services.profile.domain.state import Latest, ProfileState

# Key names.
PROFILE = "p:"
IDENTITY = "id:"
SEGMENT = "seg:"
SEEN = "seen:"
ERASED = "erased:"
ALIAS = "alias"
STATS = "stats"
WORKERS = "workers"
SALT = "erasure-salt"
# Between a profile's key and a sub-key's name: p:{id}:ids.
SUB_SEP = ":"
# The sub-maps that operations write (LATEST_HASHES, COUNTER_HASHES, SORTED_SETS) are
# the domain's (services/profile/domain/codec.py).
SUBKEYS = (
    "ids",
    *LATEST_HASHES,
    *SORTED_SETS,
    *COUNTER_HASHES,
    "events",
    "outbox",
    "merges",
    "apart",
)
# The sub-keys holding a profile's aggregates besides its main hash: what a rebuild writes.
STATE_SUBKEYS = (*LATEST_HASHES, *COUNTER_HASHES, *SORTED_SETS)
# Most alias links followed from a merged profile to its survivor.
FOLLOW_HOPS = 16


class Stat(StrEnum):
    """Fields of the stats hash."""

    APPLIED = "applied"
    # Events not applied: an erased identifier (suppressed), only blocked identifiers.
    SUPPRESSED = "suppressed"
    BLOCKED = "blocked"
    PROFILES_CREATED = "profiles_created"
    MERGES = "merges"
    # Identifiers linked to a known profile.
    STITCHED = "stitched"


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.alias = prefix + ALIAS
        # Stream workers, scored by when their heartbeat expires (epoch seconds).
        self.workers = prefix + WORKERS
        self.salt = prefix + SALT
        self.stats = prefix + STATS

    def profile(self, pid: str, sub: str = "") -> str:
        return f"{self.prefix}{PROFILE}{pid}" + (f"{SUB_SEP}{sub}" if sub else "")

    def all_of_profile(self, pid: str) -> list[str]:
        return [self.profile(pid)] + [self.profile(pid, s) for s in SUBKEYS]

    def profile_id_of(self, key: bytes | str) -> str | None:
        """The profile whose main hash `key` is; None for any other key."""
        text, head = as_text(key), self.prefix + PROFILE
        name = text[len(head) :]
        return name if text.startswith(head) and SUB_SEP not in name else None

    def identity(self, t: str, value: str) -> str:
        return f"{self.prefix}{IDENTITY}{identifier_member(t, value)}"

    def segment(self, name: str) -> str:
        return f"{self.prefix}{SEGMENT}{name}"

    def seen(self, event_id: str) -> str:
        return f"{self.prefix}{SEEN}{event_id}"

    def erased(self, digest: str) -> str:
        return f"{self.prefix}{ERASED}{digest}"


# Replies: redis-py gives bytes, and Lua's cjson encodes an empty array as {}.


def items(raw: Sequence[Any] | dict[str, Any]) -> Sequence[Any]:
    return [] if isinstance(raw, dict) else raw


def pairs(flat: Sequence[bytes | str] | dict[str, Any]) -> dict[str, str]:
    """A flat HGETALL reply [field, value, ...] as a dict."""
    flat = items(flat)
    return {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)}


def scored(flat: Sequence[Any] | dict[str, Any]) -> dict[str, float]:
    """A flat ZRANGE WITHSCORES reply [member, score, ...] as a dict."""
    flat = items(flat)
    return {as_text(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)}


def decode_stats(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in text_map(raw).items()}


# Main hash fields: "<kind>:<name>".
SUM, MINIMUM, MAXIMUM, LATEST, SNAPSHOT = "c", "mn", "mx", "l", "s"
EVENTS = f"{SUM}:events"
CREATED = f"{MINIMUM}:created"
IDENTITY_UPDATED = f"{LATEST}:u.identity"


def main_field(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def split_field(name: str) -> tuple[str, str]:
    kind, _, rest = name.partition(":")
    return kind, rest


def id_count_field(t: str) -> str:
    """The sum counting a profile's identifiers of type `t`."""
    return main_field(SUM, f"ids.{t}")


def encode_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# Packed values.


def encode_latest(ts_ms: int, value: str) -> str:
    return f"{ts_ms}|{value}"


def decode_latest(packed: str) -> Latest:
    ts, _, value = packed.partition("|")
    return Latest(value, int(ts))


def identifier_member(t: str, value: str) -> str:
    """An identifier as a member of the ids hash, and the tail of its identity key."""
    return f"{t}:{value}"


def split_member(member: str) -> tuple[str, str]:
    t, _, value = member.partition(":")
    return t, value


@dataclass(frozen=True)
class Lineage:
    """How an identifier came to the profile: the ids hash's value for it."""

    identifier: tuple[str, str]
    event_id: str
    linked_at_ms: int
    source_system: str


def encode_lineage(event_id: str, ts_ms: int, source_system: str) -> str:
    return f"{event_id}|{ts_ms}|{source_system}"


def decode_lineage(member: str, packed: str) -> Lineage:
    event_id, at, source = [*packed.split("|", 2), "", ""][:3]
    return Lineage(split_member(member), event_id, int(at or 0), source)


def erased_digest(salt: str, t: str, value: str) -> str:
    """What the erased:{digest} key of an erased identifier is named by."""
    return hashlib.sha1(f"{salt}{identifier_member(t, value)}".encode()).hexdigest()


def encode_signal(kind: str, event_id: str, payload: Mapping[str, Any]) -> str:
    """An outbox entry; the resolve script writes `merged` ones itself."""
    return json.dumps({"k": kind, "e": event_id, **payload})


def decode_signal(raw: bytes | str) -> dict[str, Any]:
    signal: dict[str, Any] = json.loads(raw)
    return signal


class MergeRecord(NamedTuple):
    """An entry of p:{id}:merges, written by the resolve script."""

    loser: str
    ids: frozenset[str]


def decode_merge(raw: bytes | str) -> MergeRecord:
    entry = json.loads(raw)
    return MergeRecord(str(entry.get("loser") or ""), frozenset(entry.get("ids") or []))


# A profile's aggregates.


@dataclass
class StoredProfile:
    """A profile's structures as stored (from the apply script's reply or a read)."""

    profile_id: str
    main: dict[str, str]
    ids: set[str]
    traits: dict[str, str]
    consent: dict[str, str]
    complaints: dict[str, str]
    contacts: dict[str, float]
    outbox: list[dict[str, Any]] = field(default_factory=list)
    touchpoints: dict[str, str] = field(default_factory=dict)
    incidents: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, raw: Sequence[Any]) -> StoredProfile:
        """One profile of apply.lua's reply: {pid, main, ids, traits, consent,
        complaints, contacts, outbox, incidents}, each flat as Redis returns it."""
        return cls(
            profile_id=as_text(raw[0]),
            main=pairs(raw[1]),
            ids={as_text(m) for m in items(raw[2])},
            traits=pairs(raw[3]),
            consent=pairs(raw[4]),
            complaints=pairs(raw[5]),
            contacts=scored(raw[6]),
            outbox=[decode_signal(item) for item in items(raw[7])],
            incidents=pairs(raw[8]) if len(raw) > 8 else {},
        )

    def state(self) -> ProfileState:
        return state_from_redis(
            self.profile_id,
            self.main,
            identities=self.ids,
            traits=self.traits,
            consent=self.consent,
            complaints=self.complaints,
            incidents=self.incidents,
            contacts=self.contacts,
            touchpoints=self.touchpoints,
        )


def state_from_redis(
    profile_id: str,
    main: Mapping[str, str],
    *,
    identities: set[str] | frozenset[str] = frozenset(),
    traits: Mapping[str, str] | None = None,
    consent: Mapping[str, str] | None = None,
    complaints: Mapping[str, str] | None = None,
    incidents: Mapping[str, str] | None = None,
    contacts: Mapping[str, float] | None = None,
    touchpoints: Mapping[str, str] | None = None,
) -> ProfileState:
    state = ProfileState(profile_id)
    for key, value in main.items():
        kind, name = split_field(key)
        if kind == SUM:
            state.sums[name] = float(value)
        elif kind == MINIMUM:
            state.minima[name] = float(value)
        elif kind == MAXIMUM:
            state.maxima[name] = float(value)
        elif kind == LATEST:
            state.latest[name] = decode_latest(value)
        elif kind == SNAPSHOT:
            state.snapshot[name] = value
    state.identities = {split_member(i) for i in identities}
    state.traits = {k: decode_latest(v) for k, v in (traits or {}).items()}
    state.consent = {k: decode_latest(v) for k, v in (consent or {}).items()}
    state.complaints = {k: decode_latest(v) for k, v in (complaints or {}).items()}
    state.incidents = {k: decode_latest(v) for k, v in (incidents or {}).items()}
    state.touchpoints = {k: int(v) for k, v in (touchpoints or {}).items()}
    state.contacts = sorted(
        (decode_contact(member, score) for member, score in (contacts or {}).items()),
        key=lambda c: c.ts_ms,
    )
    return state


def state_to_redis(state: ProfileState) -> dict[str, Any]:
    """The inverse of state_from_redis for the aggregates (not ids or events): the
    main hash and STATE_SUBKEYS, contacts as [member, score] pairs."""
    main: dict[str, str] = {}
    main.update({main_field(SUM, k): encode_number(v) for k, v in state.sums.items()})
    main.update({main_field(MINIMUM, k): encode_number(v) for k, v in state.minima.items()})
    main.update({main_field(MAXIMUM, k): encode_number(v) for k, v in state.maxima.items()})
    main.update(
        {main_field(LATEST, k): encode_latest(v.ts_ms, v.value) for k, v in state.latest.items()}
    )

    def packed(latest: Mapping[str, Latest]) -> dict[str, str]:
        return {k: encode_latest(v.ts_ms, v.value) for k, v in latest.items()}

    return {
        "main": main,
        TRAITS: packed(state.traits),
        CONSENT: packed(state.consent),
        COMPLAINTS: packed(state.complaints),
        INCIDENTS: packed(state.incidents),
        TOUCHPOINTS: {k: str(v) for k, v in state.touchpoints.items()},
        CONTACTS: [[contact_member(c), c.ts_ms] for c in state.contacts],
    }


# The Lua scripts.

LUA_DIR = Path(__file__).parent / "lua"
# Rendered as Lua constants in front of every script (see prelude.lua).
LUA_CONSTANTS: dict[str, object] = {
    "KEY": {
        "profile": PROFILE,
        "identity": IDENTITY,
        "segment": SEGMENT,
        "seen": SEEN,
        "erased": ERASED,
        "alias": ALIAS,
        "stats": STATS,
    },
    "SUB_SEP": SUB_SEP,
    "SUB": {name: SUB_SEP + name for name in SUBKEYS},
    "SUBKEYS": SUBKEYS,
    "LATEST_HASHES": LATEST_HASHES,
    "STATE_SUBKEYS": STATE_SUBKEYS,
    "STAT": {s.name.lower(): s.value for s in Stat},
    "FOLLOW_HOPS": FOLLOW_HOPS,
}


def lua_constants() -> str:
    return render_constants(LUA_CONSTANTS, "services/profile/adapters/layout.py")


def lua_script(name: str) -> str:
    """A script with the layout's constants and the shared prelude (key helpers,
    latest-value rule) in front."""
    return "\n".join(
        (lua_constants(), (LUA_DIR / "prelude.lua").read_text(), (LUA_DIR / name).read_text())
    )
