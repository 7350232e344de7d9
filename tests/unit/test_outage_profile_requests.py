"""ProfileService request checks: identifiers on reads are judged like ingested ones."""

from __future__ import annotations

import pytest
from cx.profile.v1 import profile_pb2 as pb

from services.common.grpc_errors import InvalidArgument
from services.common.validation import MAX_ID_LEN
from services.profile.service import parse_identifier


def ident(t: int, value: str = "c-1") -> pb.Identifier:
    return pb.Identifier(type=t, value=value)  # type: ignore[arg-type]


def test_an_unknown_identifier_type_says_so() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_identifier(ident(57))
    assert str(info.value).startswith("identifier.type: 57 is not a known IdentifierType (")
    assert "CUSTOMER_ID" in str(info.value)


def test_a_missing_identifier_type_is_required() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_identifier(ident(pb.IDENTIFIER_TYPE_UNSPECIFIED))
    assert str(info.value).startswith("identifier.type: is required")


@pytest.mark.parametrize(
    ("t", "value"),
    [
        (pb.IDENTIFIER_TYPE_CUSTOMER_ID, "c" * (MAX_ID_LEN + 1)),
        (pb.IDENTIFIER_TYPE_ANONYMOUS_ID, "a" * (MAX_ID_LEN + 1)),
        (pb.IDENTIFIER_TYPE_PROFILE_ID, "p" * (MAX_ID_LEN + 1)),
        (pb.IDENTIFIER_TYPE_EMAIL, "a" * 60 + "@" + "b" * 300 + ".com"),
        (pb.IDENTIFIER_TYPE_EMAIL, "x" * 100_000),
        (pb.IDENTIFIER_TYPE_PHONE, "+4" + "1" * 5000),
    ],
)
def test_over_long_identifier_values_are_refused_naming_the_field(t: int, value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_identifier(ident(t, value), field="identifier")
    assert str(info.value).startswith("identifier.value: ")


@pytest.mark.parametrize(
    ("t", "value", "parsed"),
    [
        (pb.IDENTIFIER_TYPE_CUSTOMER_ID, "c" * MAX_ID_LEN, ("c", "c" * MAX_ID_LEN)),
        (pb.IDENTIFIER_TYPE_EMAIL, " Ada@Example.com ", ("e", "ada@example.com")),
        (pb.IDENTIFIER_TYPE_PHONE, "+44 (20) 7946-0000", ("p", "+442079460000")),
        (pb.IDENTIFIER_TYPE_PROFILE_ID, "p_123", ("pid", "p_123")),
    ],
)
def test_identifiers_are_normalised_as_at_ingestion(
    t: int, value: str, parsed: tuple[str, str]
) -> None:
    assert parse_identifier(ident(t, value)) == parsed


def test_a_malformed_email_names_the_value() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_identifier(ident(pb.IDENTIFIER_TYPE_EMAIL, "nope"))
    assert str(info.value).startswith("identifier.value: ")
