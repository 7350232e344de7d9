"""Detection rules: when a negative experience opens an incident, and how severe it is.

The rules file is TOML (`services/alerts/config/rules.toml`; its header documents the
format), validated whole at load: a bad file is refused with a `RuleConfigError` that
names the file, the rule and the key or condition, in the format of the shared condition
language (`services.common.conditions`):

    rules.toml: rule 'detractor_nps', severity[0], condition all[0] { field = "value_teir",
    op = "==", value = "vip" }: unknown field 'value_teir'; did you mean value_tier? (...)
    rules.toml: rule 'repeat_contacts', window: count must be a whole number >= 1

Each `[[rule]]` is a condition (all/any) over the fields of one touchpoint event
(`EVENT_FIELDS`, computed by `services.alerts.domain.detect.facts`) and, except for
spike rules, of the person's profile (`ProfileService.GetFeatures`: the profile's fields,
`segment.<name>`, and `profile.<field>` for a profile field an event field shadows), plus
its kind:
- `event`: one matching event opens (or updates) the person's incident;
- `window`: `count` matching events of one person within `within_s` (of one value of
  `same`, when given), or, with `preceded_by`, a matching event within `within_s` after
  one matching `preceded_by` (a late delivery followed by a contact);
- `spike`: matching events on one touchpoint: `min_count` or more within `window_s`, and
  at least `factor` times the touchpoint's own rate over the `baseline_s` before; it
  clears when the rate stays below that for `clear_hold_s`;
- `timer`: a matching event starts a clock; the incident opens `sla_s` later unless an
  event matching `resolve_when` (for the same `per` value) stops it first.

Severity: the first `severity` entry whose condition holds, else `default_severity`.
Team: the rule's `team`, else the owners file's routing (`services.alerts.domain.owners`).

This module only reads and checks the file (pure apart from reading it); detection is
`services.alerts.domain.detect`, hot reload `services.alerts.adapters.config_files`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from services.alerts.domain.incidents import KINDS, SEVERITIES
from services.common.conditions import (
    GROUPS,
    NAME_RE,
    ConditionSpec,
    FieldCatalog,
    Fields,
    FieldValue,
    Rule,
    RuleConfigError,
    RuleSpec,
    Spec,
    _problem,
    _toml,
    load_toml,
)
from services.profile.domain.segments import load_segments, profile_fields

__all__ = [
    "DEFAULT_PATH",
    "EVENT_FIELDS",
    "PROFILE_PREFIX",
    "SEGMENT_PREFIX",
    "SPIKE_FIELDS",
    "WINDOW_FIELDS",
    "AlertRule",
    "RuleSet",
    "Spike",
    "Timer",
    "Window",
    "event_fields",
    "load_rules",
    "parse_rules_document",
    "person_fields",
]

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config" / "rules.toml"
TABLE = "rule"

# What conditions may test about one event (services.alerts.domain.detect.facts computes
# them; a field the event does not have is missing, and only `exists` holds on it).
EVENT_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "negative": "the negative experience the event shows (services/common/experience.py: "
        "payment_failed, late_delivery, repeat_contact, complaint, detractor, low_csat, "
        "high_effort, negative_sentiment)",
        "touchpoint": "the event's touchpoint, for example checkout.payment",
        "channel": "the channel in lower case (web, app, phone, chat, social...)",
        "payload": "the payload type, for example survey_response",
        "source_system": "the system that produced the event",
        "journey_stage": "the journey stage in lower case (purchase, support...)",
        "survey.metric": "nps, csat or ces",
        "nps": "an NPS answer, 0-10",
        "csat": "a CSAT answer on 1-5 (other scales mapped onto it)",
        "ces": "a CES answer on 1-7 (other scales mapped onto it)",
        "survey.severe_effort": "a CES answer at or above experience.CES_ALERT_FROM",
        "complaint.id": "the complaint's id",
        "complaint.status": "opened, updated, resolved or escalated",
        "complaint.severity": "low, medium, high or critical (missing when unset)",
        "complaint.category": "the complaint's category",
        "delivery.status": "dispatched, in_transit, out_for_delivery, delivered, failed, "
        "returned_to_sender",
        "delivery.carrier": "the carrier",
        "delivery.late_minutes": "minutes a delivered parcel arrived after its promise",
        "delivery.failed": "true for a failed or returned delivery",
        "delivery.severely_late": "delivered at least experience.LATE_DELIVERY_ALERT_MINUTES late",
        "payment.failure_code": "the provider's failure code, for example card_declined",
        "payment.method": "the payment method",
        "payment.attempt": "the attempt number, 1 for the first",
        "app_error.fatal": "true for a crash",
        "app_error.code": "the app's error code",
        "app_error.screen": "the screen it happened on",
        "app_error.app_version": "the app version",
        "sentiment": "a conversation message's sentiment, -1 to 1",
        "message.direction": "inbound or outbound",
        "message.public": "true for a public (social) message",
        "message.public_outcry": "a public inbound message at or below "
        "experience.PUBLIC_SENTIMENT_ALERT_TO",
        "contact.reason": "a support contact's reason code, for example delivery.late",
        "contact.first_contact": "true for the first contact about its reason",
        "contact.resolved": "true when the contact resolved it",
        "contact.queue": "the queue that took the contact",
    }
)
# Fields of a window rule's severity and summary (the triggering event's as well).
WINDOW_FIELDS: Mapping[str, str] = MappingProxyType(
    {"window.count": "matching events of the person within the window"}
)
# Fields of a spike rule's severity and summary.
SPIKE_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "spike.count": "matching events on the touchpoint within window_s",
        "spike.baseline": "the count the touchpoint's baseline expects within window_s",
        "spike.threshold": "the count that opens the spike: max(min_count, factor x baseline)",
    }
)
SEGMENT_PREFIX = "segment."
PROFILE_PREFIX = "profile."
_PROFILE_OPEN = ("traits.", "consent.")


@dataclass(frozen=True)
class _Fields(FieldCatalog):
    """A catalog that also knows the segments, so `segment.<name>` must name one, and
    what a kind of rule may not read (with why)."""

    segments: frozenset[str] = frozenset()
    refused: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or name in self.refused:
            return False
        if name.startswith(SEGMENT_PREFIX) and SEGMENT_PREFIX in self.open_prefixes:
            return name.removeprefix(SEGMENT_PREFIX) in self.segments
        if name.startswith(PROFILE_PREFIX) and PROFILE_PREFIX in self.open_prefixes:
            return name.removeprefix(PROFILE_PREFIX) in profile_fields()
        return super().__contains__(name)

    def problem(self, name: str) -> str:
        if name in self.refused:
            return f"field {name!r}: {self.refused[name]}"
        if name.startswith(SEGMENT_PREFIX) and SEGMENT_PREFIX in self.open_prefixes:
            return f"unknown segment in {name!r}; segments are {', '.join(sorted(self.segments))}"
        return super().problem(name)


@functools.cache
def _segment_names() -> frozenset[str]:
    return frozenset(s.name for s in load_segments())


def event_fields(extra: Mapping[str, str] | None = None) -> _Fields:
    """The fields a spike rule may test: the event's (and `extra`)."""
    names = frozenset(EVENT_FIELDS) | frozenset(extra or ())
    profile = profile_fields()
    refused = {
        name: "a spike is about a touchpoint, not a person: its rule tests event fields only"
        for name in profile.names - names
    }
    return _Fields(names, (), "event fields (see the rules file's header)", frozenset(), refused)


def person_fields(
    extra: Mapping[str, str] | None = None, segments: Collection[str] | None = None
) -> _Fields:
    """The fields a person's rule may test: the event's, the profile's (`traits.<key>`,
    `consent.<purpose>`, `profile.<field>`), `segment.<name>`, and `extra`."""
    known = frozenset(_segment_names() if segments is None else segments)
    names = frozenset(EVENT_FIELDS) | profile_fields().names | frozenset(extra or ())
    return _Fields(
        names,
        (*_PROFILE_OPEN, SEGMENT_PREFIX, PROFILE_PREFIX),
        "event fields, profile fields, traits.<key>, consent.<purpose>, segment.<name> or "
        "profile.<field>",
        known,
    )


def is_profile_field(name: str) -> bool:
    """Whether a field comes from the profile (GetFeatures) rather than the event."""
    return not (name in EVENT_FIELDS or name in WINDOW_FIELDS or name in SPIKE_FIELDS)


# --- the rules as loaded -----------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    # At least this many matching events of one person...
    count: int
    # ...within this many seconds (the newest event's time and before).
    within_s: float
    # Counted per value of this field ("" for all of the person's matching events).
    same: str = ""
    # When set: the matching event must come within `within_s` after an event matching
    # this (either may arrive first).
    preceded_by: Rule | None = None


@dataclass(frozen=True)
class Spike:
    window_s: float
    baseline_s: float
    factor: float
    min_count: int
    clear_hold_s: float

    def threshold(self, baseline_count: int) -> float:
        """The count within `window_s` that opens the spike, given the matching events
        in the baseline period (`baseline_s - window_s` seconds before the window)."""
        return max(float(self.min_count), self.factor * self.expected(baseline_count))

    def expected(self, baseline_count: int) -> float:
        """What the baseline expects within one window."""
        return baseline_count * self.window_s / (self.baseline_s - self.window_s)


@dataclass(frozen=True)
class Timer:
    sla_s: float
    # One clock per value of this field for the person ("" for one per person).
    per: str = ""


@dataclass(frozen=True)
class AlertRule:
    name: str
    description: str
    kind: str  # KINDS
    # When the rule's event matches (for windows: each counted event).
    when: Rule
    # The owning team, overriding the owners file's routing ("" to route).
    team: str
    # (severity, condition) in order: the first that holds gives the severity.
    severities: tuple[tuple[str, Rule], ...]
    default_severity: str
    # `{field}` placeholders filled from the triggering event's fields ("" for the
    # description and the touchpoint).
    summary: str
    window: Window | None = None
    spike: Spike | None = None
    timer: Timer | None = None
    # An event of the person matching this resolves the rule's open incident.
    resolve_when: Rule | None = None
    # Resolve the incident this long after its last matching event (event rules).
    resolve_after_s: float | None = None
    # Rules whose open incident for the person this rule's triggers join instead.
    groups_with: tuple[str, ...] = ()

    @property
    def per_person(self) -> bool:
        return self.kind != "spike"

    def severity(self, fields: Fields) -> str:
        for value, rule in self.severities:
            if rule.matches(fields):
                return value
        return self.default_severity

    def describe(self, fields: Fields) -> str:
        """The incident's summary for the triggering event's fields."""
        if not self.summary:
            where = fields.get("touchpoint")
            return f"{self.description or self.name} at {where}" if where else self.name
        return _render(self.summary, fields)

    def rules(self) -> list[Rule]:
        """Every condition of the rule (matching, severities, window, resolution)."""
        out = [self.when, *(r for _, r in self.severities)]
        if self.window is not None and self.window.preceded_by is not None:
            out.append(self.window.preceded_by)
        if self.resolve_when is not None:
            out.append(self.resolve_when)
        return out

    def fields_read(self) -> frozenset[str]:
        names = {name for r in self.rules() for name in r.fields_read()}
        names.update(_placeholders(self.summary))
        if self.window is not None and self.window.same:
            names.add(self.window.same)
        if self.timer is not None and self.timer.per:
            names.add(self.timer.per)
        return frozenset(names)


@dataclass(frozen=True)
class RuleSet:
    # "rules-" and the first 12 hex digits of the SHA-256 of the file.
    version: str
    source: str
    rules: tuple[AlertRule, ...]
    _by_name: Mapping[str, AlertRule] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({r.name: r for r in self.rules}))

    def rule(self, name: str) -> AlertRule | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return [r.name for r in self.rules]

    def profile_fields_read(self) -> frozenset[str]:
        """The profile fields (GetFeatures names) some rule reads: `profile.<x>` as x;
        segments come with every reply."""
        out: set[str] = set()
        for rule in self.rules:
            for name in rule.fields_read():
                if name.startswith(SEGMENT_PREFIX) or not is_profile_field(name):
                    continue
                out.add(name.removeprefix(PROFILE_PREFIX))
        return frozenset(out)


_PLACEHOLDER_RE = re.compile(r"\{([a-z][a-z0-9_.]*)\}")


def _placeholders(template: str) -> list[str]:
    return _PLACEHOLDER_RE.findall(template)


def _show(value: FieldValue) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if not value.is_integer() else str(int(value))
    return str(value)


def _render(template: str, fields: Fields) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: _show(fields.get(m.group(1))), template)


# --- the file: pydantic models of its tables ---------------------------------------------


def _invalid(problem: str) -> PydanticCustomError:
    return PydanticCustomError("rule_config", "{problem}", {"problem": problem})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(value: Any, key: str, *, zero: bool = False) -> float:
    if value is None:
        raise _invalid(f"{key} is required, a number of seconds")
    if not _is_number(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise _invalid(f"{key} must be a number of seconds {bound}, not {_toml(value)}")
    return float(value)


def _known_field(name: Any, key: str, info: ValidationInfo) -> Any:
    if not isinstance(name, str) or not name:
        raise _invalid(f"{key} must be a field name such as contact.reason")
    catalog = (info.context or {}).get("fields")
    if isinstance(catalog, FieldCatalog) and name not in catalog:
        raise _invalid(f"{key}: {catalog.problem(name)}")
    return name


class _Strict(Spec):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ConditionsSpec(RuleSpec):
    """A nameless condition: `{ all = [...], any = [...] }`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    EXAMPLE: ClassVar[str] = (
        '{ all = [{ field = "complaint.status", op = "==", value = "resolved" }] }'
    )
    name: str | None = None  # type: ignore[assignment]

    def condition(self, name: str) -> Rule:
        return Rule(
            name,
            self.description,
            tuple(c.condition() for c in self.all_of),
            tuple(c.condition() for c in self.any_of),
        )


class SeveritySpec(ConditionsSpec):
    """`{ value = "critical", all = [...], any = [...] }`."""

    EXAMPLE: ClassVar[str] = (
        '{ value = "critical", all = [{ field = "value_tier", op = "==", value = "vip" }] }'
    )
    value: str = Field(None, validate_default=True)

    @field_validator("value", mode="before")
    @classmethod
    def _a_severity(cls, value: Any) -> Any:
        if value not in SEVERITIES:
            raise _invalid(f"value {_toml(value)} is not a severity ({', '.join(SEVERITIES)})")
        return value


class WindowSpec(_Strict):
    EXAMPLE: ClassVar[str] = '{ count = 3, within_s = 604800, same = "contact.reason" }'
    count: int = Field(1, validate_default=True)
    within_s: float = Field(None, validate_default=True)
    same: str = ""
    preceded_by: ConditionsSpec | None = Field(
        None, description="a table of conditions such as " + ConditionsSpec.EXAMPLE
    )

    @field_validator("count", mode="before")
    @classmethod
    def _a_count(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _invalid(f"count must be a whole number >= 1, not {_toml(value)}")
        return value

    @field_validator("within_s", mode="before")
    @classmethod
    def _within(cls, value: Any) -> Any:
        return _seconds(value, "within_s")

    @field_validator("same", mode="before")
    @classmethod
    def _same(cls, value: Any, info: ValidationInfo) -> Any:
        return value if value == "" else _known_field(value, "same", info)

    @model_validator(mode="after")
    def _something_to_count(self) -> WindowSpec:
        if self.same and self.preceded_by is not None:
            raise _invalid(
                "same and preceded_by do not go together: the event preceded_by waits for "
                "need not have the same field"
            )
        if self.count < 2 and self.preceded_by is None:
            raise _invalid(
                "count must be 2 or more (or give preceded_by): one event is an event rule"
            )
        return self

    def window(self, rule: str) -> Window:
        before = self.preceded_by.condition(f"{rule}.preceded_by") if self.preceded_by else None
        return Window(self.count, self.within_s, self.same, before)


class SpikeSpec(_Strict):
    EXAMPLE: ClassVar[str] = (
        "{ window_s = 300, baseline_s = 3600, factor = 3, min_count = 10, clear_hold_s = 300 }"
    )
    window_s: float = Field(None, validate_default=True)
    baseline_s: float = Field(None, validate_default=True)
    factor: float = Field(None, validate_default=True)
    min_count: int = Field(None, validate_default=True)
    clear_hold_s: float = Field(None, validate_default=True)

    @field_validator("window_s", "baseline_s", mode="before")
    @classmethod
    def _periods(cls, value: Any, info: ValidationInfo) -> Any:
        return _seconds(value, str(info.field_name))

    @field_validator("clear_hold_s", mode="before")
    @classmethod
    def _hold(cls, value: Any) -> Any:
        return _seconds(value, "clear_hold_s", zero=True)

    @field_validator("factor", mode="before")
    @classmethod
    def _a_factor(cls, value: Any) -> Any:
        if not _is_number(value) or value < 1:
            raise _invalid(f"factor must be a number >= 1, not {_toml(value)}")
        return float(value)

    @field_validator("min_count", mode="before")
    @classmethod
    def _a_minimum(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _invalid(f"min_count must be a whole number >= 1, not {_toml(value)}")
        return value

    @model_validator(mode="after")
    def _baseline_longer(self) -> SpikeSpec:
        if self.baseline_s <= self.window_s:
            raise _invalid(
                f"baseline_s ({self.baseline_s:g}) must be longer than window_s "
                f"({self.window_s:g}): the baseline is the period before the window"
            )
        return self

    def spike(self) -> Spike:
        return Spike(self.window_s, self.baseline_s, self.factor, self.min_count, self.clear_hold_s)


class TimerSpec(_Strict):
    EXAMPLE: ClassVar[str] = '{ sla_s = 172800, per = "complaint.id" }'
    sla_s: float = Field(None, validate_default=True)
    per: str = ""

    @field_validator("sla_s", mode="before")
    @classmethod
    def _sla(cls, value: Any) -> Any:
        return _seconds(value, "sla_s")

    @field_validator("per", mode="before")
    @classmethod
    def _per(cls, value: Any, info: ValidationInfo) -> Any:
        return value if value == "" else _known_field(value, "per", info)

    def timer(self) -> Timer:
        return Timer(self.sla_s, self.per)


# The table each kind needs, with an example of it.
_KIND_TABLES: dict[str, str] = {
    "window": WindowSpec.EXAMPLE,
    "spike": SpikeSpec.EXAMPLE,
    "timer": TimerSpec.EXAMPLE,
}


class AlertRuleSpec(RuleSpec):
    """A `[[rule]]` as written."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    EXAMPLE: ClassVar[str] = '[[rule]] with name, kind = "event" and all = [...]'
    kind: str = Field(None, validate_default=True)
    team: str = ""
    summary: str = Field("", description="a string with {field} placeholders")
    severity: list[SeveritySpec] = Field(
        [], description="a list of tables such as " + SeveritySpec.EXAMPLE
    )
    default_severity: str = "warning"
    window: WindowSpec | None = Field(None, description="a table such as " + WindowSpec.EXAMPLE)
    spike: SpikeSpec | None = Field(None, description="a table such as " + SpikeSpec.EXAMPLE)
    timer: TimerSpec | None = Field(None, description="a table such as " + TimerSpec.EXAMPLE)
    resolve_when: ConditionsSpec | None = Field(
        None, description="a table of conditions such as " + ConditionsSpec.EXAMPLE
    )
    resolve_after_s: float | None = None
    groups_with: list[str] = Field([], description="a list of rule names")

    @field_validator("kind", mode="before")
    @classmethod
    def _a_kind(cls, value: Any) -> Any:
        if value not in KINDS:
            what = "kind is required" if value is None else f"unknown kind {_toml(value)}"
            raise _invalid(f"{what}; expected one of {', '.join(KINDS)}")
        return value

    @field_validator("team", mode="before")
    @classmethod
    def _a_team(cls, value: Any, info: ValidationInfo) -> Any:
        teams = (info.context or {}).get("teams")
        if value and teams is not None and value not in teams:
            raise _invalid(
                f"team: unknown team {_toml(value)}; the owners file has {', '.join(sorted(teams))}"
            )
        return value

    @field_validator("default_severity", mode="before")
    @classmethod
    def _a_default(cls, value: Any) -> Any:
        if value not in SEVERITIES:
            raise _invalid(
                f"default_severity {_toml(value)} is not a severity ({', '.join(SEVERITIES)})"
            )
        return value

    @field_validator("summary", mode="before")
    @classmethod
    def _a_summary(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            for name in _placeholders(value):
                _known_field(name, f"summary placeholder {{{name}}}", info)
        return value

    @field_validator("resolve_after_s", mode="before")
    @classmethod
    def _after(cls, value: Any) -> Any:
        return None if value is None else _seconds(value, "resolve_after_s")

    @field_validator("groups_with", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, list):
            for name in value:
                if not isinstance(name, str) or not NAME_RE.match(name):
                    raise _invalid(f"groups_with: {_toml(name)} is not a rule name")
        return value

    @model_validator(mode="after")
    def _fits_its_kind(self) -> AlertRuleSpec:
        for kind, example in _KIND_TABLES.items():
            present = getattr(self, kind) is not None
            if self.kind == kind and not present:
                raise _invalid(f"a {kind} rule needs {kind} = {example}")
            if self.kind != kind and present:
                raise _invalid(f"{kind} is only for {kind} rules (this one is {self.kind})")
        if self.kind == "spike":
            for key in ("resolve_when", "resolve_after_s"):
                if getattr(self, key) is not None:
                    raise _invalid(f"{key}: a spike resolves itself (spike.clear_hold_s)")
            if self.groups_with:
                raise _invalid("groups_with: a spike is about a touchpoint, not a person")
        if self.kind == "timer" and self.resolve_when is None:
            raise _invalid(
                "a timer rule needs resolve_when, the event that stops its clock "
                "(otherwise every match opens an incident sla_s later)"
            )
        if self.kind == "window" and self.resolve_after_s is not None:
            raise _invalid(
                "resolve_after_s: a window's incident resolves when the window has no events "
                "for within_s"
            )
        if self.name in self.groups_with:
            raise _invalid("groups_with: a rule cannot group with itself")
        return self

    def alert_rule(self) -> AlertRule:
        return AlertRule(
            name=self.name,
            description=self.description,
            kind=self.kind,
            when=self.rule(),
            team=self.team,
            severities=tuple(
                (s.value, s.condition(f"{self.name}.severity[{i}]"))
                for i, s in enumerate(self.severity)
            ),
            default_severity=self.default_severity,
            summary=self.summary,
            window=self.window.window(self.name) if self.window else None,
            spike=self.spike.spike() if self.spike else None,
            timer=self.timer.timer() if self.timer else None,
            resolve_when=(
                self.resolve_when.condition(f"{self.name}.resolve_when")
                if self.resolve_when
                else None
            ),
            resolve_after_s=self.resolve_after_s,
            groups_with=tuple(self.groups_with),
        )


# --- errors ------------------------------------------------------------------------------


def _nested(model: type[BaseModel], key: object) -> tuple[type[BaseModel], bool] | None:
    """The model of the table (False) or array of tables (True) at `key` of `model`."""
    for name, info in model.model_fields.items():
        if key not in (name, info.alias):
            continue
        annotation: Any = info.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        many = typing.get_origin(annotation) is list
        inner = typing.get_args(annotation)[0] if many else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, many
    return None


def _where(label: str, item: Any, model: type[BaseModel], exc: ValidationError) -> str:
    """`<label>[, <table>...][, condition <group>[i] <as written>]: <problem>` for the first
    error, walking into nested tables (`window`, `window, preceded_by`, `severity[0]`)."""
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    where = label
    while loc:
        head = loc[0]
        if head in GROUPS and len(loc) >= 2 and isinstance(loc[1], int):
            raw = item[head][loc[1]]
            key = ".".join(map(str, loc[2:]))
            where = f"{where}, condition {head}[{loc[1]}] {_toml(raw)}"
            return f"{where}: {_problem(error, ConditionSpec, key)}"
        nested = _nested(model, head)
        if nested is None:
            break
        inner, many = nested
        if many and (len(loc) < 2 or not isinstance(loc[1], int)):
            break
        model = inner
        if many:
            item = item[head][loc[1]]
            where = f"{where}, {head}[{loc[1]}]"
            loc = loc[2:]
        else:
            item = item[head]
            where = f"{where}, {head}"
            loc = loc[1:]
    return f"{where}: {_problem(error, model, '.'.join(map(str, loc)))}"


# --- loading -----------------------------------------------------------------------------


def _catalog(kind: Any, segments: Collection[str] | None) -> FieldCatalog:
    if kind == "spike":
        return event_fields(SPIKE_FIELDS)
    extra = dict(WINDOW_FIELDS) if kind == "window" else {}
    return person_fields(extra, segments)


def parse_rules_document(
    document: Mapping[str, Any],
    source: str,
    raw: bytes | None = None,
    *,
    teams: Collection[str] | None = None,
    segments: Collection[str] | None = None,
) -> RuleSet:
    """The rules of a parsed TOML document. `source` (the file) prefixes error messages;
    `raw`, the file's bytes, gives the version; `teams` are the owners file's team names
    a rule's `team` may use (unchecked when None); `segments` the segment names
    `segment.<name>` may use (by default the profile's shipped segments)."""
    extra = sorted(set(document) - {TABLE})
    if extra:
        raise RuleConfigError(f"{source}: unknown top-level keys {extra}; use [[{TABLE}]]")
    items = document.get(TABLE, [])
    if not isinstance(items, list):
        raise RuleConfigError(f"{source}: {TABLE} must be an array of tables ([[{TABLE}]])")
    rules: list[AlertRule] = []
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        valid = isinstance(name, str) and NAME_RE.match(name)
        label = f"{TABLE} {name!r}" if valid else f"{TABLE} #{index + 1}"
        kind = item.get("kind") if isinstance(item, dict) else None
        context = {"fields": _catalog(kind, segments), "teams": teams}
        try:
            spec = AlertRuleSpec.model_validate(item, context=context)
        except ValidationError as exc:
            raise RuleConfigError(f"{source}: {_where(label, item, AlertRuleSpec, exc)}") from None
        if any(r.name == spec.name for r in rules):
            raise RuleConfigError(f"{source}: {label}: defined twice")
        rules.append(spec.alert_rule())
    by_name = {r.name: r for r in rules}
    for rule in rules:
        for other in rule.groups_with:
            target = by_name.get(other)
            if target is None:
                raise RuleConfigError(
                    f"{source}: {TABLE} {rule.name!r}: groups_with: unknown rule {other!r}"
                )
            if not target.per_person:
                raise RuleConfigError(
                    f"{source}: {TABLE} {rule.name!r}: groups_with: {other!r} is a spike "
                    "(a touchpoint's incident); only a person's incidents can be joined"
                )
    if raw is None:
        raw = json.dumps(document, sort_keys=True, default=str).encode()
    return RuleSet(
        version="rules-" + hashlib.sha256(raw).hexdigest()[:12],
        source=source,
        rules=tuple(rules),
    )


def load_rules(
    path: Path = DEFAULT_PATH,
    *,
    teams: Collection[str] | None = None,
    segments: Collection[str] | None = None,
) -> RuleSet:
    """The rules file at `path` (`AlertsSettings.rules_file`); RuleConfigError if bad."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleConfigError(f"{path}: cannot read the rules file ({exc})") from exc
    return parse_rules_document(
        load_toml(path, "rules file"), str(path), raw, teams=teams, segments=segments
    )
