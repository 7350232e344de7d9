"""The identifier table (services/common/identifiers.py) and its uses in configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.common.identifiers import (
    BY_CODE,
    BY_NAME,
    BY_PROTO,
    CUSTOMER_ID,
    EMAIL,
    IDENTIFIER_TYPES,
    PERSON_TYPES,
    PHONE,
    PROFILE_ID,
    TYPE_NAMES,
    IdentifierType,
    InvalidIdentifier,
    identifier_type,
    identifiers_of,
    identities_of,
    parse_identifier,
)
from services.common.validation import MAX_ID_LEN
from services.profile.settings import Guardrails, ProfileSettings


def test_the_table_covers_every_identifier_type_in_enum_order() -> None:
    known = [v for v in pb.IdentifierType.values() if v != pb.IDENTIFIER_TYPE_UNSPECIFIED]
    assert [t.proto for t in IDENTIFIER_TYPES] == sorted(known)
    assert [t.code for t in IDENTIFIER_TYPES] == ["c", "a", "e", "p", "pid"]
    assert [t.name for t in IDENTIFIER_TYPES] == [
        "customer_id",
        "anonymous_id",
        "email",
        "phone",
        "profile_id",
    ]
    assert TYPE_NAMES == "CUSTOMER_ID, ANONYMOUS_ID, EMAIL, PHONE, PROFILE_ID"
    for table in (BY_PROTO, BY_CODE, BY_NAME):
        assert list(table.values()) == list(IDENTIFIER_TYPES)


def test_people_are_the_identities_fields() -> None:
    assert [t.name for t in PERSON_TYPES] == list(ev.Identities.DESCRIPTOR.fields_by_name)
    assert not PROFILE_ID.person


def test_strength_orders_resolution_customer_id_first() -> None:
    ranked = sorted(PERSON_TYPES, key=lambda t: t.strength)
    assert [t.code for t in ranked] == ["c", "e", "p", "a"]


def test_identifiers_of_an_event_in_table_order() -> None:
    event = ev.TouchpointEvent(
        identities=ev.Identities(phone="+441234567890", customer_id="c-1", anonymous_id="")
    )
    assert identifiers_of(event) == [("c", "c-1"), ("p", "+441234567890")]
    assert identifiers_of(ev.TouchpointEvent()) == []


@pytest.mark.parametrize("t", PERSON_TYPES, ids=lambda t: t.name)
def test_identities_of_round_trip(t: IdentifierType) -> None:
    event = ev.TouchpointEvent(identities=identities_of(t.code, "v"))
    assert identifiers_of(event) == [(t.code, "v")]


@pytest.mark.parametrize(
    ("kind", "raw", "stored"),
    [
        (CUSTOMER_ID, "  c-1 ", "c-1"),
        (EMAIL, " Ann@Example.ORG ", "ann@example.org"),
        (PHONE, "+44 (20) 7946-0000", "+442079460000"),
        (PHONE, "0044 20 7946 0000", "+442079460000"),
        (PROFILE_ID, " p_abc ", "p_abc"),
    ],
)
def test_parse_normalises_as_ingestion_does(kind: IdentifierType, raw: str, stored: str) -> None:
    assert kind.parse(raw) == stored


@pytest.mark.parametrize(
    ("kind", "raw", "description"),
    [
        (EMAIL, "not-an-email", "is not an email address"),
        (PHONE, "12345", "must be in E.164 form"),
        (CUSTOMER_ID, "   ", "is required"),
        (CUSTOMER_ID, "x" * (MAX_ID_LEN + 1), f"is longer than {MAX_ID_LEN} characters"),
        (PROFILE_ID, "x" * (MAX_ID_LEN + 1), f"is longer than {MAX_ID_LEN} characters"),
    ],
)
def test_parse_rejects_what_ingestion_rejects(
    kind: IdentifierType, raw: str, description: str
) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        kind.parse(raw)
    assert info.value.part == "value"
    assert info.value.description.startswith(description)


def test_request_identifiers() -> None:
    kind, value = parse_identifier(pb.Identifier(type=pb.IDENTIFIER_TYPE_EMAIL, value="A@B.io"))
    assert (kind, value) == (EMAIL, "a@b.io")
    assert identifier_type(pb.IDENTIFIER_TYPE_PROFILE_ID) is PROFILE_ID
    with pytest.raises(InvalidIdentifier) as info:
        identifier_type(pb.IDENTIFIER_TYPE_UNSPECIFIED)
    assert (info.value.part, info.value.description) == (
        "type",
        f"is required (one of {TYPE_NAMES})",
    )
    with pytest.raises(InvalidIdentifier) as info:
        identifier_type(99)  # type: ignore[arg-type]
    assert info.value.description == f"99 is not a known IdentifierType ({TYPE_NAMES})"


def test_guardrails_use_the_config_names() -> None:
    guardrails = Guardrails.load(ProfileSettings().identity_file)
    assert guardrails.limits == {"c": 1, "e": 5, "p": 5, "a": 50}
    assert ("e", "test@example.com") in guardrails.blocked
    assert ("c", "guest") in guardrails.blocked


def test_guardrails_refuse_an_unknown_type(tmp_path: Path) -> None:
    path = tmp_path / "identity.toml"
    path.write_text("[limits]\nprofile_id = 1\n")
    with pytest.raises(ValueError, match="profile_id is not an identifier type"):
        Guardrails.load(path)
