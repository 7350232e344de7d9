"""Reference fold of events into a ProfileState, in memory (pure).

This is what the Redis apply script does, written in plain Python: tests fold the same
events here and compare with what Redis stored (`differences`). The op semantics follow
`state.py`:

- `["c", name, amount]`: sums[name] += amount;
- `["mn", name, v]` / `["mx", name, v]`: keep the minimum / maximum;
- `["l", name, value]`: latest[name] = Latest(value, ts) when ts is newer than the stored
  one, or equal with a greater value (string order), so any order of events agrees;
- `["h", sub, key, value]`: the same rule inside the sub-map `sub` (traits, consent,
  complaints, incidents);
- `["hc", "touchpoints", key, n]`: a counter in the touchpoint hash;
- `["z", "contacts", member]`: a contact scored by ts; the same member again keeps the
  greatest ts (ZADD GT).

An event id applies once per fold; every identifier an event carries is added to
`identities` as (code, value), codes from `services/common/identifiers.py`. Sub-map,
counter hash and sorted set names, and contact members, are the stored layout's
(`codec.py`, re-exported by `services/profile/adapters/layout.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev

from services.common.identifiers import identifiers_of as identifiers_of
from services.profile.domain.codec import (
    COUNTER_HASHES,
    LATEST_HASHES,
    SORTED_SETS,
    contact_member,
    decode_contact,
)
from services.profile.domain.effects import Effects, effects_of, timestamp_ms
from services.profile.domain.state import Latest, ProfileState


def _newer(ts_ms: int, value: str, current: Latest | None) -> bool:
    if current is None:
        return True
    return ts_ms > current.ts_ms or (ts_ms == current.ts_ms and value > current.value)


def _add_contact(state: ProfileState, member: str, ts_ms: int) -> None:
    for i, existing in enumerate(state.contacts):
        if contact_member(existing) == member:
            if ts_ms > existing.ts_ms:
                state.contacts[i] = decode_contact(member, ts_ms)
            break
    else:
        state.contacts.append(decode_contact(member, ts_ms))
    # The order Redis returns a sorted set in: by score, then by member.
    state.contacts.sort(key=lambda c: (c.ts_ms, contact_member(c)))


def apply_effects(state: ProfileState, effects: Effects, ts_ms: int) -> None:
    """Applies one event's operations to `state`, in place, as the apply script does."""
    for op in effects.ops:
        kind: Any = op[0]
        if kind == "c":
            state.sums[op[1]] = state.sums.get(op[1], 0.0) + float(op[2])
        elif kind == "mn":
            current = state.minima.get(op[1])
            if current is None or float(op[2]) < current:
                state.minima[op[1]] = float(op[2])
        elif kind == "mx":
            current = state.maxima.get(op[1])
            if current is None or float(op[2]) > current:
                state.maxima[op[1]] = float(op[2])
        elif kind == "l":
            name, value = op[1], str(op[2])
            if _newer(ts_ms, value, state.latest.get(name)):
                state.latest[name] = Latest(value, ts_ms)
        elif kind == "h":
            sub, key, value = op[1], op[2], str(op[3])
            if sub not in LATEST_HASHES:
                raise ValueError(f"unknown sub-map {sub!r} in op {op!r}")
            target: dict[str, Latest] = getattr(state, sub)
            if _newer(ts_ms, value, target.get(key)):
                target[key] = Latest(value, ts_ms)
        elif kind == "hc":
            if op[1] not in COUNTER_HASHES:
                raise ValueError(f"unknown counter hash {op[1]!r} in op {op!r}")
            state.touchpoints[op[2]] = state.touchpoints.get(op[2], 0) + int(op[3])
        elif kind == "z":
            if op[1] not in SORTED_SETS:
                raise ValueError(f"unknown sorted set {op[1]!r} in op {op!r}")
            _add_contact(state, str(op[2]), ts_ms)
        else:
            raise ValueError(f"unknown op {op!r}")


class Folder:
    """Folds events one at a time, applying each event id once."""

    def __init__(self, profile_id: str = "p") -> None:
        self.state = ProfileState(profile_id)
        self.seen: set[str] = set()

    def add(self, event: ev.TouchpointEvent) -> bool:
        """Applies the event; False when its id was already applied."""
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        self.state.identities.update(identifiers_of(event))
        apply_effects(self.state, effects_of(event), timestamp_ms(event))
        return True


def fold(events: Iterable[ev.TouchpointEvent], profile_id: str = "p") -> ProfileState:
    folder = Folder(profile_id)
    for event in events:
        folder.add(event)
    return folder.state


def differences(
    expected: ProfileState, actual: ProfileState, *, rel_tol: float = 1e-9, abs_tol: float = 1e-9
) -> list[str]:
    """What differs between two states, ignoring the snapshot and the profile id: sums
    within a float tolerance (the order of additions changes the last bits), the rest
    exactly. Empty when they agree."""
    out: list[str] = []
    for name in sorted(expected.sums.keys() | actual.sums.keys()):
        a, b = expected.sums.get(name), actual.sums.get(name)
        if a is None or b is None or not math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol):
            out.append(f"sums[{name!r}]: expected {a}, got {b}")
    for attr in ("minima", "maxima", "latest", *LATEST_HASHES):
        left: dict[str, object] = getattr(expected, attr)
        right: dict[str, object] = getattr(actual, attr)
        for name in sorted(left.keys() | right.keys()):
            if left.get(name) != right.get(name):
                out.append(f"{attr}[{name!r}]: expected {left.get(name)}, got {right.get(name)}")
    if expected.identities != actual.identities:
        out.append(
            f"identities: missing {sorted(expected.identities - actual.identities)}, "
            f"unexpected {sorted(actual.identities - expected.identities)}"
        )
    if expected.touchpoints != actual.touchpoints:
        out.append(f"touchpoints: expected {expected.touchpoints}, got {actual.touchpoints}")
    if sorted(expected.contacts, key=contact_member) != sorted(actual.contacts, key=contact_member):
        out.append(f"contacts: expected {expected.contacts}, got {actual.contacts}")
    return out
