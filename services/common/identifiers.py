"""Identifier types: one table for every service.

A person is known by the identifiers events carry (`cx.events.v1.Identities`), and a
profile also by its own id. Each type is written here once, with every name it goes by:

| enum (`cx.profile.v1.IdentifierType`) | code | name (Identities field, config) | strength |
|---|---|---|---|
| IDENTIFIER_TYPE_CUSTOMER_ID  | `c`   | `customer_id`  | 1 |
| IDENTIFIER_TYPE_ANONYMOUS_ID | `a`   | `anonymous_id` | 4 |
| IDENTIFIER_TYPE_EMAIL        | `e`   | `email`        | 2 |
| IDENTIFIER_TYPE_PHONE        | `p`   | `phone`        | 3 |
| IDENTIFIER_TYPE_PROFILE_ID   | `pid` | `profile_id` (no Identities field) | - |

- The code is what stored data uses (identity keys `id:{code}:{value}`, members
  `{code}:{value}`): changing one changes data at rest.
- The name is the enum's suffix in lower case; it is the Identities field and the key in
  configuration files such as `services/profile/config/identity.toml`.
- Strength orders a person's identifiers for identity resolution: a new profile's id
  derives from the event's strongest identifier, and a merge keeps the profile found by
  the strongest one.
- Normalisation and validation are ingestion's (`services/common/validation.py`), so a
  lookup takes exactly the identifiers that events may carry.

The table is in enum order; messages that list the types follow it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.common.validation import (
    MAX_ID_LEN,
    normalise_and_validate,
    normalise_email,
    normalise_phone,
)


class InvalidIdentifier(ValueError):
    """What is wrong with an identifier: `part` is "type" or "value"."""

    def __init__(self, part: str, description: str) -> None:
        super().__init__(f"{part}: {description}")
        self.part = part
        self.description = description


@dataclass(frozen=True)
class IdentifierType:
    proto: pb.IdentifierType.ValueType
    code: str
    # Identity resolution: 1 is the strongest; 0 for the profile id (not resolved).
    strength: int
    normalise: Callable[[str], str]

    @property
    def name(self) -> str:
        """`customer_id`, ..., `profile_id`: the Identities field and the config name."""
        return pb.IdentifierType.Name(self.proto).removeprefix("IDENTIFIER_TYPE_").lower()

    @property
    def person(self) -> bool:
        """Whether events carry it (an Identities field); False for the profile id."""
        return self.name in ev.Identities.DESCRIPTOR.fields_by_name

    def parse(self, value: str) -> str:
        """`value` as stored: normalised as ingestion does, judged by ingestion's own
        validator (lengths, email and E.164 forms); raises InvalidIdentifier."""
        value = value.strip()
        if not value:
            raise InvalidIdentifier("value", "is required")
        if not self.person:
            if len(value) > MAX_ID_LEN:
                raise InvalidIdentifier("value", f"is longer than {MAX_ID_LEN} characters")
            return value
        probe = ev.TouchpointEvent(identities=ev.Identities(**{self.name: self.normalise(value)}))
        for violation in normalise_and_validate(probe):
            if violation.field == "event" or violation.field.startswith("identities"):
                raise InvalidIdentifier("value", violation.description)
        return str(getattr(probe.identities, self.name))


def _strip(value: str) -> str:
    return value.strip()


CUSTOMER_ID = IdentifierType(pb.IDENTIFIER_TYPE_CUSTOMER_ID, "c", 1, _strip)
ANONYMOUS_ID = IdentifierType(pb.IDENTIFIER_TYPE_ANONYMOUS_ID, "a", 4, _strip)
EMAIL = IdentifierType(pb.IDENTIFIER_TYPE_EMAIL, "e", 2, normalise_email)
PHONE = IdentifierType(pb.IDENTIFIER_TYPE_PHONE, "p", 3, normalise_phone)
PROFILE_ID = IdentifierType(pb.IDENTIFIER_TYPE_PROFILE_ID, "pid", 0, _strip)

IDENTIFIER_TYPES = (CUSTOMER_ID, ANONYMOUS_ID, EMAIL, PHONE, PROFILE_ID)
PERSON_TYPES = tuple(t for t in IDENTIFIER_TYPES if t.person)
BY_PROTO = {t.proto: t for t in IDENTIFIER_TYPES}
BY_CODE = {t.code: t for t in IDENTIFIER_TYPES}
BY_NAME = {t.name: t for t in IDENTIFIER_TYPES}
# "CUSTOMER_ID, ANONYMOUS_ID, EMAIL, PHONE, PROFILE_ID", for messages.
TYPE_NAMES = ", ".join(t.name.upper() for t in IDENTIFIER_TYPES)


def identifier_type(proto: pb.IdentifierType.ValueType) -> IdentifierType:
    """The type of a request's `Identifier.type`; raises InvalidIdentifier."""
    if proto == pb.IDENTIFIER_TYPE_UNSPECIFIED:
        raise InvalidIdentifier("type", f"is required (one of {TYPE_NAMES})")
    kind = BY_PROTO.get(proto)
    if kind is None:
        raise InvalidIdentifier("type", f"{proto} is not a known IdentifierType ({TYPE_NAMES})")
    return kind


def parse_identifier(identifier: pb.Identifier) -> tuple[IdentifierType, str]:
    """A request's identifier: its type and its value as stored; raises InvalidIdentifier."""
    kind = identifier_type(identifier.type)
    return kind, kind.parse(identifier.value)


def identifiers_of(event: ev.TouchpointEvent) -> list[tuple[str, str]]:
    """(code, value) of every identifier the event carries, in table order."""
    ids = event.identities
    return [(t.code, value) for t in PERSON_TYPES if (value := getattr(ids, t.name))]


def identities_of(code: str, value: str) -> ev.Identities:
    """The Identities that carry one person's identifier."""
    return ev.Identities(**{BY_CODE[code].name: value})
