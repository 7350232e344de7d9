"""Segments: named conditions on a profile's derived fields, defined in TOML.

```toml
[[segment]]
name = "at_risk"
description = "Likely to leave soon"
all = [{ field = "churn_risk", op = ">=", value = 0.6 }]
any = [{ field = "orders", op = ">=", value = 1 }, { field = "traits.plan", op = "exists" }]
```

The condition language (ops, evaluation, validation, error format) is the shared one of
`services.common.conditions`; what is segment-specific lives here: the file and its
environment variable, the `[[segment]]` table, and the fields a profile offers
(`Derived.fields()`: derived fields, `traits.<key>` and `consent.<purpose>`). See
docs/profile-metrics.md.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.common.conditions import (
    Condition,
    FieldCatalog,
    RuleSpec,
    describe,
    load_toml,
    parse_rules,
)
from services.common.conditions import Rule as Segment
from services.common.conditions import RuleConfigError as SegmentConfigError
from services.common.conditions import matching as evaluate
from services.profile.domain.derive import field_names

__all__ = [
    "DEFAULT_PATH",
    "Condition",
    "Segment",
    "SegmentConfigError",
    "describe",
    "evaluate",
    "load_segments",
    "parse_segments",
    "profile_fields",
]

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config" / "segments.toml"
TABLE = "segment"


@functools.cache
def profile_fields() -> FieldCatalog:
    """What segment conditions may test: the fields of `Derived.fields()`."""
    return FieldCatalog(
        field_names(),
        ("traits.", "consent."),
        "derived fields, traits.<key> or consent.<purpose>",
    )


def parse_segments(raw: Mapping[str, Any], source: str = "segments") -> list[Segment]:
    """Segments from a parsed TOML document; `source` prefixes error messages."""
    specs = parse_rules(raw, TABLE, RuleSpec, fields=profile_fields(), source=source)
    return [spec.rule() for spec in specs]


def load_segments(path: Path = DEFAULT_PATH) -> list[Segment]:
    """Segments from `path` (`ProfileSettings.segments_file`; the shipped file by default)."""
    return parse_segments(load_toml(path, "segments file"), str(path))
