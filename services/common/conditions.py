"""The condition language: named rules, each a condition on a flat dict of fields.

Profile segments, offer eligibility and alert rules all use this one implementation. A
rule file is TOML, one array of tables per kind of rule (`[[segment]]`, `[[offer]]`...):

```toml
[[segment]]
name = "at_risk"                      # lower-case letters, digits, _
description = "Likely to leave soon"
all = [{ field = "churn_risk", op = ">=", value = 0.6 }]
any = [{ field = "orders", op = ">=", value = 1 }, { field = "traits.plan", op = "exists" }]
```

A rule matches when every `all` condition holds and, if `any` is given, at least one `any`
condition holds. Ops: `==`, `!=`, `<`, `<=`, `>`, `>=` (numbers only), `in`, `not_in` (a
non-empty list), `exists` (no value, or `value = false` for "is missing"). A missing or
None field makes every op false except `exists`; a boolean never equals a number; an
ordered op on a non-number is false.

Loading: `parse_rules(document, table, RuleSpec, fields=catalog, source=path)` validates
the tables with the pydantic models below (a service adds its own keys by subclassing
`RuleSpec`) and checks every field against the `FieldCatalog` of what the service offers;
`Rule.fields_read()` lists the fields a loaded rule reads. Every problem is a
`RuleConfigError` in one format that names the file, the rule, the condition (position
and text as written) and the key:

    segments.toml: segment 'broken', condition any[1] { field = "churn_risk", op = "=>",
    value = 0.6 }: unknown op '=>'; expected one of ==, !=, <, <=, >, >=, in, not_in, exists
"""

from __future__ import annotations

import difflib
import json
import operator
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

FieldValue = str | int | float | bool | None
Fields = Mapping[str, FieldValue]
Scalar = str | int | float | bool
OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists")
ORDERED_OPS = frozenset({"<", "<=", ">", ">="})
LIST_OPS = frozenset({"in", "not_in"})
GROUPS = ("all", "any")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class RuleConfigError(ValueError):
    """A rule file is not valid; the message names the file, the rule, the condition and
    the key."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _equal(actual: FieldValue, expected: Scalar) -> bool:
    # True is not 1 here: a flag and a count never compare equal.
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    return actual == expected


# --- evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One test of one field: `churn_risk >= 0.6`."""

    field: str
    op: str
    value: Scalar | tuple[Scalar, ...] | None = None

    def holds(self, fields: Fields) -> bool:
        actual = fields.get(self.field)
        if self.op == "exists":
            return (actual is not None) == (self.value is not False)
        if actual is None:
            return False
        value = self.value
        if isinstance(value, tuple):
            inside = any(_equal(actual, v) for v in value)
            return inside if self.op == "in" else not inside
        if value is None:
            return False
        if self.op == "==":
            return _equal(actual, value)
        if self.op == "!=":
            return not _equal(actual, value)
        if (
            isinstance(actual, bool | str)
            or isinstance(value, bool | str)
            or self.op not in _COMPARE
        ):
            return False
        return _COMPARE[self.op](float(actual), float(value))

    def __str__(self) -> str:
        if self.op == "exists":
            return f"{self.field} exists" if self.value is not False else f"{self.field} missing"
        return f"{self.field} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Rule:
    """A named condition: every `all_of` holds and, when `any_of` is given, one of it."""

    name: str
    description: str = ""
    all_of: tuple[Condition, ...] = ()
    any_of: tuple[Condition, ...] = ()

    def matches(self, fields: Fields) -> bool:
        if not all(c.holds(fields) for c in self.all_of):
            return False
        return not self.any_of or any(c.holds(fields) for c in self.any_of)

    def fields_read(self) -> frozenset[str]:
        """The names of the fields the condition reads."""
        return frozenset(c.field for c in (*self.all_of, *self.any_of))

    def __str__(self) -> str:
        """`name: all(a, b) any(c)`, for logs."""
        parts = []
        if self.all_of:
            parts.append(f"all({', '.join(map(str, self.all_of))})")
        if self.any_of:
            parts.append(f"any({', '.join(map(str, self.any_of))})")
        return f"{self.name}: {' '.join(parts)}"


def matching(rules: Iterable[Rule], fields: Fields) -> set[str]:
    """Names of the rules the fields match."""
    return {r.name for r in rules if r.matches(fields)}


@dataclass(frozen=True)
class FieldCatalog:
    """The fields a service offers to conditions: fixed names, plus any name that starts
    with one of `open_prefixes` (for open-ended maps such as `traits.<key>`)."""

    names: frozenset[str]
    open_prefixes: tuple[str, ...] = ()
    # What an "unknown field" error says is allowed.
    described_as: str = "a known field"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.names or name.startswith(self.open_prefixes))

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names this catalog does not offer (for example of `Rule.fields_read()`)."""
        return sorted(n for n in names if n not in self)

    def problem(self, name: str) -> str:
        close = difflib.get_close_matches(name, sorted(self.names), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown field {name!r}{hint} ({self.described_as})"


# --- loading: pydantic models of a rule file ---------------------------------------------


def _invalid(problem: str) -> PydanticCustomError:
    # The problem travels in the context so that braces in it are not a template.
    return PydanticCustomError("rule_config", "{problem}", {"problem": problem})


class Spec(BaseModel):
    """A TOML table with a fixed set of keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Shown when the value is not a table at all.
    EXAMPLE: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _a_table_with_known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _invalid(f"must be a table{' such as ' + cls.EXAMPLE if cls.EXAMPLE else ''}")
        keys = [f.alias or name for name, f in cls.model_fields.items()]
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise _invalid(f"unknown keys {unknown} (expected {', '.join(keys)})")
        return data


class ConditionSpec(Spec):
    """`{ field = ..., op = ..., value = ... }` as written in the file."""

    EXAMPLE: ClassVar[str] = '{ field = "orders", op = ">=", value = 1 }'
    field: str = Field(None, validate_default=True)
    op: str = Field(None, validate_default=True)
    value: Any = None

    @field_validator("field", mode="before")
    @classmethod
    def _known_field(cls, name: Any, info: ValidationInfo) -> Any:
        if not isinstance(name, str) or not name:
            raise _invalid("field is required, the name of a field such as orders")
        catalog = (info.context or {}).get("fields")
        if isinstance(catalog, FieldCatalog) and name not in catalog:
            raise _invalid(catalog.problem(name))
        return name

    @field_validator("op", mode="before")
    @classmethod
    def _known_op(cls, op: Any) -> Any:
        if op not in OPS:
            raise _invalid(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
        return op

    @model_validator(mode="after")
    def _value_fits_the_op(self) -> ConditionSpec:
        op, value = self.op, self.value
        if op == "exists":
            if value is not None and not isinstance(value, bool):
                raise _invalid("value of exists, when given, must be true or false")
        elif value is None:
            raise _invalid(f"value is required for op {op!r}")
        elif op in LIST_OPS:
            if not isinstance(value, list) or not value or not all(map(_is_scalar, value)):
                raise _invalid(f"value of {op} must be a non-empty list of values")
        elif op in ORDERED_OPS:
            if not _is_number(value):
                raise _invalid(f"value of {op} must be a number, not {value!r}")
        elif not _is_scalar(value):
            raise _invalid(f"value of {op} must be a string, number or boolean")
        return self

    def condition(self) -> Condition:
        value = tuple(self.value) if isinstance(self.value, list) else self.value
        return Condition(self.field, self.op, value)


class RuleSpec(Spec):
    """A named rule as written in the file. Services with more keys subclass it."""

    name: str = Field(None, validate_default=True)
    description: str = Field("", description="a string")
    all_of: list[ConditionSpec] = Field([], alias="all", description="a list of conditions")
    any_of: list[ConditionSpec] = Field([], alias="any", description="a list of conditions")

    @field_validator("name", mode="before")
    @classmethod
    def _a_name(cls, name: Any) -> Any:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _invalid(
                f"name {name!r} must be lower-case letters, digits and _ "
                "(starting with a letter, at most 64)"
            )
        return name

    @model_validator(mode="after")
    def _some_condition(self) -> RuleSpec:
        if not self.all_of and not self.any_of:
            raise _invalid("needs at least one condition in all or any")
        return self

    def rule(self) -> Rule:
        return Rule(
            self.name,
            self.description,
            tuple(c.condition() for c in self.all_of),
            tuple(c.condition() for c in self.any_of),
        )


SpecT = TypeVar("SpecT", bound=RuleSpec)


def _toml_key(key: Any) -> str:
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml(key)


def _toml(value: Any) -> str:
    """A value as TOML inline syntax, to quote what the file says."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        pairs = (f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items())
        return "{ " + ", ".join(pairs) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _problem(error: ErrorDetails, model: type[BaseModel], key: str) -> str:
    if error["type"] == "rule_config":
        return str((error.get("ctx") or {}).get("problem", error["msg"]))
    if error["type"] == "missing":
        return f"{key} is required"
    field = next((f for n, f in model.model_fields.items() if key in (n, f.alias)), None)
    if field is not None and field.description:
        return f"{key} must be {field.description}"
    return f"{key}: {error['msg']}"


def _where(label: str, item: Any, model: type[BaseModel], exc: ValidationError) -> str:
    """`<rule>[, condition <group>[i] <as written>]: <problem>` for the first error."""
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    if len(loc) >= 2 and loc[0] in GROUPS and isinstance(loc[1], int):
        raw = item[loc[0]][loc[1]]
        key = ".".join(map(str, loc[2:]))
        where = f"{label}, condition {loc[0]}[{loc[1]}] {_toml(raw)}"
        return f"{where}: {_problem(error, ConditionSpec, key)}"
    return f"{label}: {_problem(error, model, '.'.join(map(str, loc)))}"


def parse_rules(
    document: Mapping[str, Any],
    table: str,
    model: type[SpecT],
    *,
    fields: FieldCatalog | None = None,
    source: str = "rules",
) -> list[SpecT]:
    """The `[[table]]` rules of a parsed TOML document, validated as `model` (conditions
    checked against `fields` when given); `source` (the file) prefixes error messages."""
    extra = sorted(set(document) - {table})
    if extra:
        raise RuleConfigError(f"{source}: unknown top-level keys {extra}; use [[{table}]]")
    items = document.get(table, [])
    if not isinstance(items, list):
        raise RuleConfigError(f"{source}: {table} must be an array of tables ([[{table}]])")
    specs: list[SpecT] = []
    names: set[str] = set()
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        valid_name = isinstance(name, str) and NAME_RE.match(name)
        label = f"{table} {name!r}" if valid_name else f"{table} #{index + 1}"
        try:
            spec = model.model_validate(item, context={"fields": fields})
        except ValidationError as exc:
            raise RuleConfigError(f"{source}: {_where(label, item, model, exc)}") from None
        if spec.name in names:
            raise RuleConfigError(f"{source}: {label}: defined twice")
        names.add(spec.name)
        specs.append(spec)
    return specs


def load_toml(path: Path, what: str = "rules file") -> dict[str, Any]:
    """A TOML file as a dict; a RuleConfigError when it cannot be read or parsed."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise RuleConfigError(f"{path}: cannot read the {what} ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RuleConfigError(f"{path}: not valid TOML ({exc})") from exc


def describe(rules: Sequence[Rule]) -> list[str]:
    """One line per rule, for logs: `name: all(a, b) any(c)`."""
    return [str(r) for r in rules]
