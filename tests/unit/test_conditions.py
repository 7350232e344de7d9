"""The shared condition language: loading with one error format, each op, fields read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from services.common.conditions import (
    Condition,
    FieldCatalog,
    FieldValue,
    Rule,
    RuleConfigError,
    RuleSpec,
    describe,
    load_toml,
    matching,
    parse_rules,
)

CATALOG = FieldCatalog(
    frozenset({"orders", "churn_risk", "value_tier", "opted_in"}),
    ("traits.",),
    "offer fields or traits.<key>",
)


class OfferSpec(RuleSpec):
    """A rule with a key of its own, as a service would add."""

    priority: int = Field(0, description="a whole number")


def offers(*items: dict[str, Any]) -> list[OfferSpec]:
    return parse_rules({"offer": list(items)}, "offer", OfferSpec, fields=CATALOG, source="o.toml")


def error(*items: dict[str, Any]) -> str:
    with pytest.raises(RuleConfigError) as raised:
        offers(*items)
    return str(raised.value)


def rule(**raw: Any) -> dict[str, Any]:
    return {"name": "winback", **raw}


# --- loading -----------------------------------------------------------------------------


def test_a_rule_loads_with_its_own_keys_and_lists_the_fields_it_reads() -> None:
    (spec,) = offers(
        rule(
            description="Come back",
            priority=3,
            all=[{"field": "churn_risk", "op": ">=", "value": 0.6}],
            any=[
                {"field": "value_tier", "op": "in", "value": ["vip", "high"]},
                {"field": "traits.plan", "op": "exists"},
            ],
        )
    )
    assert spec.priority == 3
    assert spec.rule() == Rule(
        "winback",
        "Come back",
        all_of=(Condition("churn_risk", ">=", 0.6),),
        any_of=(Condition("value_tier", "in", ("vip", "high")), Condition("traits.plan", "exists")),
    )
    assert spec.rule().fields_read() == {"churn_risk", "value_tier", "traits.plan"}
    assert str(spec.rule()) == (
        "winback: all(churn_risk >= 0.6) any(value_tier in ('vip', 'high'), traits.plan exists)"
    )
    assert describe([spec.rule()]) == [str(spec.rule())]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            {"field": "orders", "op": "gte", "value": 1},
            'condition all[1] { field = "orders", op = "gte", value = 1 }: '
            "unknown op 'gte'; expected one of ==, !=, <, <=, >, >=, in, not_in, exists",
        ),
        (
            {"field": "order", "op": ">=", "value": 1},
            'condition all[1] { field = "order", op = ">=", value = 1 }: '
            "unknown field 'order'; did you mean orders? (offer fields or traits.<key>)",
        ),
        (
            {"op": ">=", "value": 1},
            'condition all[1] { op = ">=", value = 1 }: field is required',
        ),
        (
            {"field": "orders", "op": ">="},
            'condition all[1] { field = "orders", op = ">=" }: value is required for op \'>=\'',
        ),
        (
            {"field": "orders", "op": "<", "value": "3"},
            "value of < must be a number, not '3'",
        ),
        ({"field": "orders", "op": ">", "value": True}, "value of > must be a number, not True"),
        ({"field": "value_tier", "op": "not_in", "value": []}, "must be a non-empty list"),
        ({"field": "value_tier", "op": "in", "value": [["vip"]]}, "must be a non-empty list"),
        ({"field": "opted_in", "op": "exists", "value": "no"}, "must be true or false"),
        ({"field": "orders", "op": "!=", "value": {"a": 1}}, "string, number or boolean"),
        (
            {"field": "orders", "op": "==", "value": 1, "unit": "x", "as": 2},
            "unknown keys ['as', 'unit'] (expected field, op, value)",
        ),
        ("orders >= 1", 'condition all[1] "orders >= 1": must be a table such as { field'),
    ],
)
def test_a_bad_condition_is_named_by_file_rule_position_and_key(
    condition: Any, message: str
) -> None:
    good = {"field": "orders", "op": ">=", "value": 1}
    text = error(rule(all=[good, condition]))
    assert text.startswith("o.toml: offer 'winback', condition all[1] ")
    assert message in text


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"all": []}], "o.toml: offer #1: name None must be lower-case letters"),
        ([rule(name="Win Back")], "o.toml: offer #1: name 'Win Back' must be"),
        (["winback"], "o.toml: offer #1: must be a table"),
        ([rule()], "o.toml: offer 'winback': needs at least one condition in all or any"),
        (
            [rule(when=[], all=[])],
            "o.toml: offer 'winback': unknown keys ['when'] "
            "(expected name, description, all, any, priority)",
        ),
        ([rule(any="orders > 1")], "o.toml: offer 'winback': any must be a list of conditions"),
        ([rule(description=3, any=[])], "o.toml: offer 'winback': description must be a string"),
        (
            [rule(priority="high", all=[{"field": "orders", "op": "exists"}])],
            "o.toml: offer 'winback': priority must be a whole number",
        ),
        (
            [rule(all=[{"field": "orders", "op": "exists"}])] * 2,
            "o.toml: offer 'winback': defined twice",
        ),
    ],
)
def test_a_bad_rule_is_named_with_the_key(items: list[Any], message: str) -> None:
    assert error(*items).startswith(message)


def test_document_errors_name_the_table() -> None:
    with pytest.raises(
        RuleConfigError, match=r"unknown top-level keys \['offers'\]; use \[\[offer"
    ):
        parse_rules({"offers": []}, "offer", OfferSpec, source="o.toml")
    with pytest.raises(RuleConfigError, match=r"offer must be an array of tables"):
        parse_rules({"offer": {}}, "offer", OfferSpec, source="o.toml")
    assert parse_rules({}, "offer", OfferSpec) == []


def test_without_a_catalog_any_field_loads_and_a_catalog_lists_unknown_names() -> None:
    raw = {"offer": [rule(all=[{"field": "anything", "op": "exists"}])]}
    (spec,) = parse_rules(raw, "offer", OfferSpec)
    assert CATALOG.unknown(spec.rule().fields_read()) == ["anything"]
    assert CATALOG.unknown(["orders", "traits.x"]) == []
    assert "traits.colour" in CATALOG
    assert "trait.colour" not in CATALOG


def test_toml_files_load_with_errors_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "offers.toml"
    path.write_text('[[offer]]\nname = "a"\nall = [{ field = "orders", op = ">", value = 0 }]\n')
    (spec,) = parse_rules(load_toml(path), "offer", OfferSpec, fields=CATALOG)
    assert spec.rule().all_of == (Condition("orders", ">", 0),)
    path.write_text("[[offer]\n")
    with pytest.raises(RuleConfigError, match=f"^{path}: not valid TOML"):
        load_toml(path)
    with pytest.raises(RuleConfigError, match="cannot read the offers file"):
        load_toml(tmp_path / "absent.toml", "offers file")


# --- evaluation --------------------------------------------------------------------------

FIELDS: dict[str, FieldValue] = {
    "count": 3,
    "risk": 0.6,
    "tier": "high",
    "flag": True,
    "none": None,
}
# (op, [(field, value, whether it holds on FIELDS)])
OP_CASES: list[tuple[str, list[tuple[str, Any, bool]]]] = [
    ("==", [("count", 3, True), ("count", 3.0, True), ("count", 4, False), ("count", True, False)]),
    ("==", [("tier", "high", True), ("flag", True, True), ("flag", 1, False)]),
    ("!=", [("count", 4, True), ("count", 3, False), ("flag", 1, True), ("tier", "high", False)]),
    ("<", [("count", 3.5, True), ("count", 3, False), ("tier", 1, False)]),
    ("<=", [("count", 3, True), ("count", 2, False)]),
    (">", [("risk", 0.6, False), ("risk", 0.5, True), ("flag", 0, False)]),
    (">=", [("risk", 0.6, True), ("risk", 0.61, False)]),
    ("in", [("tier", ("vip", "high"), True), ("tier", ("vip",), False), ("flag", (1,), False)]),
    ("in", [("count", (1, 2, 3), True)]),
    ("not_in", [("tier", ("vip", "high"), False), ("tier", ("low",), True)]),
    ("exists", [("count", None, True), ("count", False, False), ("none", None, False)]),
]
MISSING_CASES = [("none", False, True), ("absent", None, False), ("absent", False, True)]


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [(f, op, v, holds) for op, cases in OP_CASES for f, v, holds in cases]
    + [(f, "exists", v, holds) for f, v, holds in MISSING_CASES],
)
def test_each_op(field: str, op: str, value: Any, expected: bool) -> None:
    assert Condition(field, op, value).holds(FIELDS) is expected


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">=", "in", "not_in"])
def test_a_missing_or_none_field_is_false_for_every_op_but_exists(op: str) -> None:
    value: Any = ("x",) if op in ("in", "not_in") else 1
    assert Condition("absent", op, value).holds(FIELDS) is False
    assert Condition("none", op, value).holds(FIELDS) is False


def test_all_must_hold_and_one_of_any() -> None:
    both = Rule(
        "both",
        all_of=(Condition("count", ">=", 1),),
        any_of=(Condition("tier", "==", "vip"), Condition("flag", "==", True)),
    )
    only_all = Rule("only_all", all_of=(Condition("count", ">=", 5),))
    only_any = Rule("only_any", any_of=(Condition("risk", ">", 0.9),))
    assert both.matches(FIELDS)
    assert not both.matches({**FIELDS, "flag": False})
    assert not both.matches({**FIELDS, "count": 0})
    assert matching([both, only_all, only_any], FIELDS) == {"both"}
    assert matching([both, only_all, only_any], {"count": 9, "risk": 1.0}) == {
        "only_all",
        "only_any",
    }
