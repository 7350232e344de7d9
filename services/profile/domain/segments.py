"""Segments: named conditions on a profile's derived fields, defined in TOML.

```toml
[[segment]]
name = "at_risk"
description = "Likely to leave soon"
all = [{ field = "churn_risk", op = ">=", value = 0.6 }]
any = [{ field = "orders", op = ">=", value = 1 }, { field = "traits.plan", op = "exists" }]
```

A profile is in a segment when every `all` condition holds and, if `any` is given, at
least one `any` condition holds. A missing or None field makes a condition false, except
`exists` (true when the field has a value; `value = false` inverts it). The file is
checked when loaded: an unknown op or field, or a missing or mistyped value, is an error
naming the segment and the condition. See docs/profile-metrics.md.
"""

from __future__ import annotations

import difflib
import operator
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.profile.domain.derive import FieldValue, field_names

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config" / "segments.toml"
ENV_VAR = "PROFILE_SEGMENTS_FILE"
OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists")
ORDERED_OPS = frozenset({"<", "<=", ">", ">="})
LIST_OPS = frozenset({"in", "not_in"})
OPEN_PREFIXES = ("traits.", "consent.")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
Scalar = str | int | float | bool
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class SegmentConfigError(ValueError):
    """The segments file is not valid; the message names the segment and condition."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(actual: FieldValue, expected: Scalar) -> bool:
    # True is not 1 here: a flag and a count never compare equal.
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    return actual == expected


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Scalar | tuple[Scalar, ...] | None = None

    def holds(self, fields: Mapping[str, FieldValue]) -> bool:
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
class Segment:
    name: str
    description: str
    all_of: tuple[Condition, ...] = ()
    any_of: tuple[Condition, ...] = ()

    def matches(self, fields: Mapping[str, FieldValue]) -> bool:
        if not all(c.holds(fields) for c in self.all_of):
            return False
        return not self.any_of or any(c.holds(fields) for c in self.any_of)


def evaluate(segments: Iterable[Segment], fields: Mapping[str, FieldValue]) -> set[str]:
    """Names of the segments the fields are in."""
    return {s.name for s in segments if s.matches(fields)}


# ---------------------------------------------------------------------------------------


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _condition(raw: Any, known: frozenset[str]) -> Condition:
    """One condition, or a SegmentConfigError with the problem (the caller says where)."""
    if not isinstance(raw, dict):
        raise SegmentConfigError(
            'must be a table such as { field = "churn_risk", op = ">=", value = 0.6 }'
        )
    unknown_keys = sorted(set(raw) - {"field", "op", "value"})
    if unknown_keys:
        raise SegmentConfigError(f"unknown keys {unknown_keys} (expected field, op, value)")
    name, op = raw.get("field"), raw.get("op")
    if not isinstance(name, str) or not name:
        raise SegmentConfigError("field is required, a field name such as churn_risk")
    if not (name.startswith(OPEN_PREFIXES) or name in known):
        close = difflib.get_close_matches(name, sorted(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SegmentConfigError(
            f"unknown field {name!r}{hint} (derived fields, traits.<key> or consent.<purpose>)"
        )
    if op not in OPS:
        raise SegmentConfigError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    has_value = "value" in raw
    value = raw.get("value")
    if op == "exists":
        if has_value and not isinstance(value, bool):
            raise SegmentConfigError("value of exists, when given, must be true or false")
        return Condition(name, op, value if has_value else None)
    if not has_value:
        raise SegmentConfigError(f"value is required for op {op!r}")
    if op in LIST_OPS:
        if not isinstance(value, list) or not value or not all(_scalar(v) for v in value):
            raise SegmentConfigError(f"value of {op} must be a non-empty list of values")
        return Condition(name, op, tuple(value))
    if op in ORDERED_OPS:
        if not _is_number(value):
            raise SegmentConfigError(f"value of {op} must be a number, not {value!r}")
        return Condition(name, op, value)
    if not _scalar(value):
        raise SegmentConfigError(f"value of {op} must be a string, number or boolean")
    return Condition(name, op, value)


def parse_segments(raw: Mapping[str, Any], source: str = "segments") -> list[Segment]:
    """Segments from a parsed TOML document; `source` prefixes error messages."""
    extra = sorted(set(raw) - {"segment"})
    if extra:
        raise SegmentConfigError(f"{source}: unknown top-level keys {extra}; use [[segment]]")
    items = raw.get("segment", [])
    if not isinstance(items, list):
        raise SegmentConfigError(f"{source}: segment must be an array of tables ([[segment]])")
    known = field_names()
    segments: list[Segment] = []
    names: set[str] = set()
    for index, item in enumerate(items):
        label = f"{source}: segment #{index + 1}"
        if not isinstance(item, dict):
            raise SegmentConfigError(f"{label}: must be a table")
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise SegmentConfigError(
                f"{label}: name {name!r} must be lower-case letters, digits and _ "
                "(starting with a letter, at most 64)"
            )
        label = f"{source}: segment {name!r}"
        if name in names:
            raise SegmentConfigError(f"{label}: defined twice")
        names.add(name)
        unknown_keys = sorted(set(item) - {"name", "description", "all", "any"})
        if unknown_keys:
            raise SegmentConfigError(
                f"{label}: unknown keys {unknown_keys} (expected name, description, all, any)"
            )
        description = item.get("description", "")
        if not isinstance(description, str):
            raise SegmentConfigError(f"{label}: description must be a string")
        groups: dict[str, tuple[Condition, ...]] = {}
        for group in ("all", "any"):
            conditions = item.get(group, [])
            if not isinstance(conditions, list):
                raise SegmentConfigError(f"{label}: {group} must be a list of conditions")
            parsed = []
            for i, cond in enumerate(conditions):
                try:
                    parsed.append(_condition(cond, known))
                except SegmentConfigError as exc:
                    where = f"{label}, condition {group}[{i}] {cond}"
                    raise SegmentConfigError(f"{where}: {exc}") from None
            groups[group] = tuple(parsed)
        if not groups["all"] and not groups["any"]:
            raise SegmentConfigError(f"{label}: needs at least one condition in all or any")
        segments.append(Segment(name, description, groups["all"], groups["any"]))
    return segments


def load_segments(path: Path | None = None) -> list[Segment]:
    """Segments from `path`, else from $PROFILE_SEGMENTS_FILE, else the shipped file."""
    if path is None:
        env = os.environ.get(ENV_VAR, "")
        path = Path(env) if env else DEFAULT_PATH
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise SegmentConfigError(f"{path}: cannot read the segments file ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SegmentConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_segments(raw, str(path))


def describe(segments: Sequence[Segment]) -> list[str]:
    """One line per segment, for logs: `name: all(a, b) any(c)`."""
    lines = []
    for s in segments:
        parts = []
        if s.all_of:
            parts.append(f"all({', '.join(map(str, s.all_of))})")
        if s.any_of:
            parts.append(f"any({', '.join(map(str, s.any_of))})")
        lines.append(f"{s.name}: {' '.join(parts)}")
    return lines
