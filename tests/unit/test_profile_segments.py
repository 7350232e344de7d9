"""Segments: loading and validating the TOML file, and evaluating conditions."""

from __future__ import annotations

from pathlib import Path

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.profile.domain.derive import FieldValue, derive
from services.profile.domain.fold import fold
from services.profile.domain.segments import (
    DEFAULT_PATH,
    Condition,
    Segment,
    SegmentConfigError,
    describe,
    evaluate,
    load_segments,
)
from services.profile.settings import ProfileSettings
from tests.factories import (
    at,
    complaint,
    consent,
    home_page_view,
    identify,
    nps,
    order,
    payment_failed,
)

DEFAULTS = {
    "vip",
    "high_value",
    "at_risk",
    "detractors",
    "promoters",
    "open_complaint",
    "frequent_contacts",
    "new_customers",
    "lapsed",
    "payment_trouble",
    "marketing_email_opt_in",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "segments.toml"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> list[Segment]:
    return load_segments(write(tmp_path, text))


# --- loading -----------------------------------------------------------------------------


def test_the_shipped_file_loads_with_every_default_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROFILE_SEGMENTS_FILE", raising=False)
    segments = load_segments()
    assert {s.name for s in segments} == DEFAULTS
    assert all(s.description for s in segments)
    assert load_segments(DEFAULT_PATH) == segments
    at_risk = next(s for s in segments if s.name == "at_risk")
    assert at_risk.all_of == (Condition("churn_risk", ">=", 0.6),)
    assert "at_risk: all(churn_risk >= 0.6)" in describe(segments)


def test_the_env_var_names_the_file_through_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        '[[segment]]\nname = "web_fans"\nall = [{ field = "ch.web", op = ">", value = 10 }]\n',
    )
    monkeypatch.setenv("PROFILE_SEGMENTS_FILE", str(path))
    assert [s.name for s in load_segments(ProfileSettings().segments_file)] == ["web_fans"]
    monkeypatch.delenv("PROFILE_SEGMENTS_FILE")
    assert ProfileSettings().segments_file == DEFAULT_PATH
    assert {s.name for s in load_segments()} == DEFAULTS


def test_all_and_any_both_parse(tmp_path: Path) -> None:
    (segment,) = load_text(
        tmp_path,
        """
[[segment]]
name = "engaged_plus"
description = "Plus plan, engaged by email or app"
all = [{ field = "traits.plan", op = "==", value = "plus" }]
any = [
  { field = "ch.email", op = ">=", value = 3 },
  { field = "ch.app", op = ">=", value = 3 },
  { field = "consent.marketing_push", op = "exists" },
]
""",
    )
    assert segment.all_of == (Condition("traits.plan", "==", "plus"),)
    assert len(segment.any_of) == 3
    assert segment.any_of[2] == Condition("consent.marketing_push", "exists", None)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            '{ field = "churn_risk", op = "=>", value = 0.6 }',
            "unknown op '=>'; expected one of ==, !=, <, <=, >, >=, in, not_in, exists",
        ),
        ('{ field = "churn_risk", op = ">=" }', "value is required for op '>='"),
        (
            '{ field = "churn_rsk", op = ">=", value = 0.6 }',
            "unknown field 'churn_rsk'; did you mean churn_risk",
        ),
        ('{ op = ">=", value = 1 }', "field is required"),
        ('{ field = "churn_risk", op = ">=", value = "high" }', "must be a number"),
        ('{ field = "value_tier", op = "in", value = "vip" }', "must be a non-empty list"),
        ('{ field = "value_tier", op = "in", value = [] }', "must be a non-empty list"),
        ('{ field = "orders", op = "exists", value = 1 }', "must be true or false"),
        ('{ field = "orders", op = ">", value = 1, unit = "x" }', "unknown keys ['unit']"),
        ('{ field = "orders", op = "==", value = [1] }', "string, number or boolean"),
        ('"orders > 1"', "must be a table"),
    ],
)
def test_condition_errors_name_the_segment_and_the_condition(
    tmp_path: Path, condition: str, message: str
) -> None:
    path = write(
        tmp_path,
        f"""
[[segment]]
name = "fine"
all = [{{ field = "orders", op = ">=", value = 1 }}]

[[segment]]
name = "broken"
all = [{{ field = "orders", op = ">=", value = 1 }}]
any = [{{ field = "orders", op = ">=", value = 1 }}, {condition}]
""",
    )
    with pytest.raises(SegmentConfigError) as raised:
        load_segments(path)
    text = str(raised.value)
    assert text.startswith(f"{path}: segment 'broken', condition any[1] ")
    assert message in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[segment]]\nname = "x"\n', "segment 'x': needs at least one condition"),
        ('[[segment]]\nname = "Bad Name"\nall = []\n', "segment #1: name 'Bad Name' must be"),
        ("[[segment]]\nall = []\n", "segment #1: name None must be"),
        (
            '[[segment]]\nname = "a"\nall = [{ field = "orders", op = "exists" }]\n' * 2,
            "segment 'a': defined twice",
        ),
        (
            '[[segment]]\nname = "a"\nwhen = []\nall = [{ field = "orders", op = "exists" }]\n',
            "segment 'a': unknown keys ['when']",
        ),
        ('[[segment]]\nname = "a"\nall = "orders > 1"\n', "all must be a list of conditions"),
        ('[segments]\nname = "a"\n', "unknown top-level keys ['segments']"),
        ('[[segment]\nname = "a"\n', "not valid TOML"),
    ],
)
def test_file_errors_are_clear(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(SegmentConfigError) as raised:
        load_text(tmp_path, toml)
    assert message in str(raised.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SegmentConfigError, match="cannot read the segments file"):
        load_segments(tmp_path / "absent.toml")


def test_traits_and_consent_fields_are_always_allowed(tmp_path: Path) -> None:
    segments = load_text(
        tmp_path,
        """
[[segment]]
name = "anything_goes"
all = [
  { field = "traits.favourite_colour", op = "==", value = "green" },
  { field = "consent.analytics", op = "==", value = true },
]
""",
    )
    assert segments[0].name == "anything_goes"


# --- evaluation --------------------------------------------------------------------------


def holds(field: str, op: str, value: object, fields: dict[str, FieldValue]) -> bool:
    return Condition(field, op, value).holds(fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">=", "in", "not_in"])
def test_a_missing_or_none_field_makes_a_condition_false(op: str) -> None:
    value: object = ("x",) if op in ("in", "not_in") else 1
    assert holds("nps_last", op, value, {}) is False
    assert holds("nps_last", op, value, {"nps_last": None}) is False


def test_exists() -> None:
    assert holds("nps_last", "exists", None, {"nps_last": 0}) is True
    assert holds("nps_last", "exists", None, {"nps_last": None}) is False
    assert holds("nps_last", "exists", None, {}) is False
    assert holds("nps_last", "exists", False, {}) is True
    assert holds("nps_last", "exists", False, {"nps_last": 3}) is False


def test_comparisons() -> None:
    f: dict[str, FieldValue] = {
        "churn_risk": 0.6,
        "orders": 3,
        "value_tier": "high",
        "consent.marketing_email": True,
    }
    assert holds("churn_risk", ">=", 0.6, f)
    assert not holds("churn_risk", ">", 0.6, f)
    assert holds("orders", "<", 3.5, f)
    assert holds("orders", "<=", 3, f)
    assert holds("orders", "==", 3.0, f)
    assert holds("orders", "!=", 4, f)
    assert holds("value_tier", "in", ("vip", "high"), f)
    assert not holds("value_tier", "not_in", ("vip", "high"), f)
    assert holds("value_tier", "not_in", ("low",), f)
    assert holds("consent.marketing_email", "==", True, f)
    # A flag is not a number and a string is not ordered against numbers.
    assert not holds("consent.marketing_email", "==", 1, f)
    assert not holds("consent.marketing_email", ">=", 1, f)
    assert not holds("value_tier", ">", 1, f)


def test_all_and_any_combine() -> None:
    segment = Segment(
        "s",
        "",
        all_of=(Condition("orders", ">=", 1),),
        any_of=(Condition("nps_category", "==", "promoter"), Condition("reviews", ">=", 2)),
    )
    assert segment.matches({"orders": 1, "nps_category": "promoter"})
    assert segment.matches({"orders": 1, "reviews": 2})
    assert not segment.matches({"orders": 1, "reviews": 1})
    assert not segment.matches({"orders": 0, "nps_category": "promoter"})
    only_any = Segment("t", "", any_of=(Condition("orders", ">=", 1),))
    assert evaluate([segment, only_any], {"orders": 2, "reviews": 5}) == {"s", "t"}
    assert evaluate([segment, only_any], {}) == set()


# --- default segments on real profiles ---------------------------------------------------


def members(events: list[ev.TouchpointEvent], now_day: float) -> set[str]:
    return evaluate(load_segments(DEFAULT_PATH), derive(fold(events), at(now_day)).fields())


def test_a_new_big_spender_who_opted_in() -> None:
    events = [
        identify(0, plan="plus"),
        consent(0, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=True),
        order(1, 900, "o-1"),
        order(5, 300, "o-2"),
        nps(6, 10),
        payment_failed(7),
    ]
    assert members(events, now_day=8) == {
        "vip",
        "high_value",
        "promoters",
        "new_customers",
        "payment_trouble",
        "marketing_email_opt_in",
    }


def test_a_lapsed_unhappy_customer() -> None:
    events = [
        order(0, 60),
        nps(10, 2),
        complaint(11, "c-1", ev.Complaint.STATUS_OPENED),
        consent(12, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, granted=False),
    ]
    assert members(events, now_day=200) == {"at_risk", "detractors", "open_complaint", "lapsed"}


def test_a_visitor_is_in_no_segment() -> None:
    assert members([home_page_view(0)], now_day=1) == set()
