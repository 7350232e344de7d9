"""Who owns an incident and where its pages go: teams, routing, receivers, escalation.

The owners file is TOML (`services/alerts/config/owners.toml`; its header documents the
format), validated whole at load: a bad file is refused with a `RuleConfigError` naming
the file, the team (or receiver) and the key, in the format of the shared condition
language (`services.common.conditions`):

    owners.toml: team 'payments', escalation: to: unknown receiver 'pagerduty-x';
    receivers are alertmanager, pagerduty-payments, ...

Routing (`Owners.route`): the rule's own `team` (rules.toml) when it sets one, else the
team that lists the rule by name, else the team whose touchpoint pattern matches the
incident's touchpoint most specifically (exact names before `prefix.*` patterns, longer
prefixes first), else the team that lists the rule's kind, else the default team.

The `[[receiver]]` tables are the notifier's: `services.alerts.domain.receivers` parses
them (and resolves their secrets from the environment); teams name them, and every name
a team uses must be a receiver of the file.

Pure apart from reading the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from services.alerts.domain.incidents import KINDS, SEVERITIES
from services.alerts.domain.receivers import ReceiverSpec, parse_receivers
from services.common.conditions import RuleConfigError, Spec, _problem, _toml, load_toml

__all__ = [
    "DEFAULT_PATH",
    "Escalation",
    "Owners",
    "QuietHours",
    "Team",
    "load_owners",
    "parse_owners",
    "severity_at_least",
    "touchpoint_matches",
]

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config" / "owners.toml"
TOP_LEVEL = ("team", "receiver")

# Team and receiver names: lower case, digits, - and _ (payments, contact-centre,
# pagerduty-payments).
TEAM_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# Touchpoint patterns: a touchpoint (checkout.payment), `prefix.*`, or `*`.
_PART = r"[a-z][a-z0-9_]*"
TOUCHPOINT_PATTERN_RE = re.compile(rf"^(\*|{_PART}(\.{_PART})*(\.\*)?)$")
HHMM_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
# Rule names, as in rules.toml (services.common.conditions.NAME_RE).
RULE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def severity_at_least(severity: str, floor: str) -> bool:
    """True when `severity` is `floor` or more severe (critical > error > warning > info)."""
    return SEVERITIES.index(severity) <= SEVERITIES.index(floor)


def touchpoint_matches(pattern: str, touchpoint: str) -> bool:
    """`pattern` is the touchpoint, a `prefix.*` above it, or `*`."""
    if pattern == "*" or pattern == touchpoint:
        return True
    return pattern.endswith(".*") and touchpoint.startswith(pattern[:-1])


def _specificity(pattern: str) -> tuple[int, int]:
    """Exact names first, then longer prefixes; `*` last."""
    if pattern == "*":
        return (0, 0)
    if pattern.endswith(".*"):
        return (1, len(pattern))
    return (2, len(pattern))


# --- the owners as loaded --------------------------------------------------------------


@dataclass(frozen=True)
class Escalation:
    """Not acknowledged `after_s` after it opened: escalated (ESCALATED) and paged to
    `to`. Only incidents at least `min_severity` escalate."""

    after_s: float
    to: tuple[str, ...]
    min_severity: str = "info"


@dataclass(frozen=True)
class QuietHours:
    """Between `start` and `end` (local time of `timezone`; an end before the start means
    overnight), an incident less severe than `page_from` goes only to `receivers`."""

    start_minute: int
    end_minute: int
    timezone: str
    page_from: str
    receivers: tuple[str, ...]

    def active(self, at_ms: int) -> bool:
        local = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        if self.start_minute <= self.end_minute:
            return self.start_minute <= minute < self.end_minute
        return minute >= self.start_minute or minute < self.end_minute


@dataclass(frozen=True)
class Team:
    name: str
    description: str
    # Touchpoint patterns the team owns (checkout.payment, support.*).
    touchpoints: tuple[str, ...]
    # Rules routed to the team whatever the touchpoint.
    rules: frozenset[str]
    # Rule kinds routed to the team when no rule name or touchpoint decides.
    kinds: frozenset[str]
    receivers: tuple[str, ...]
    escalation: Escalation | None
    quiet_hours: QuietHours | None
    default: bool = False

    def receivers_for(self, severity: str, at_ms: int) -> tuple[str, ...]:
        """The receivers an incident of `severity` is paged to at `at_ms` (quiet hours
        narrow them for the less severe)."""
        quiet = self.quiet_hours
        if (
            quiet is not None
            and not severity_at_least(severity, quiet.page_from)
            and quiet.active(at_ms)
        ):
            return quiet.receivers
        return self.receivers

    def escalate_after_s(self, severity: str) -> float | None:
        """When an incident of `severity` escalates if nobody acknowledged it; None: never
        (`Trigger.escalate_after_s`)."""
        policy = self.escalation
        if policy is None or not severity_at_least(severity, policy.min_severity):
            return None
        return policy.after_s

    def escalation_receivers(self) -> tuple[str, ...]:
        """Who an ESCALATED change is paged to."""
        return self.escalation.to if self.escalation is not None else ()


@dataclass(frozen=True)
class Owners:
    # "owners-" and the first 12 hex digits of the SHA-256 of the file.
    version: str
    source: str
    teams: tuple[Team, ...]
    # Receivers by name, as written (`services.alerts.domain.receivers.resolve` reads
    # their URLs and secrets from the environment).
    receivers: Mapping[str, ReceiverSpec] = field(hash=False)
    _teams: Mapping[str, Team] = field(init=False, repr=False, compare=False, hash=False)
    _patterns: tuple[tuple[str, Team], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_teams", {t.name: t for t in self.teams})
        patterns = [(p, t) for t in self.teams for p in t.touchpoints]
        patterns.sort(key=lambda pair: _specificity(pair[0]), reverse=True)
        object.__setattr__(self, "_patterns", tuple(patterns))

    @property
    def default_team(self) -> Team:
        return next(t for t in self.teams if t.default)

    def team(self, name: str) -> Team | None:
        return self._teams.get(name)

    def team_names(self) -> frozenset[str]:
        return frozenset(self._teams)

    def receiver(self, name: str) -> ReceiverSpec | None:
        return self.receivers.get(name)

    def route(self, rule: str, kind: str, touchpoint: str, override: str = "") -> Team:
        """The team that owns an incident (see the module doc for the order)."""
        if override:
            team = self._teams.get(override)
            if team is not None:
                return team
        for team in self.teams:
            if rule in team.rules:
                return team
        for pattern, team in self._patterns:
            if touchpoint and touchpoint_matches(pattern, touchpoint):
                return team
        for team in self.teams:
            if kind in team.kinds:
                return team
        return self.default_team


# --- the file: pydantic models of its tables -------------------------------------------


def _invalid(problem: str) -> PydanticCustomError:
    return PydanticCustomError("rule_config", "{problem}", {"problem": problem})


class _Strict(Spec):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _name(value: Any, what: str) -> Any:
    if not isinstance(value, str) or not TEAM_RE.match(value):
        if value is None:
            raise _invalid(f"name is required, the {what}'s name (lower case, digits, - and _)")
        raise _invalid(f"name {_toml(value)} must be lower case, digits, - and _")
    return value


def _severity(value: Any, key: str) -> Any:
    if value not in SEVERITIES:
        raise _invalid(f"{key} {_toml(value)} is not one of {', '.join(SEVERITIES)}")
    return value


def _receiver_list(value: Any, key: str, known: Collection[str] | None) -> Any:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"{key} must be a list of receiver names")
    if known is not None:
        for name in value:
            if name not in known:
                raise _invalid(
                    f"{key}: unknown receiver {_toml(name)}; receivers are "
                    f"{', '.join(sorted(known))}"
                )
    return value


class EscalationSpec(_Strict):
    EXAMPLE: ClassVar[str] = '{ after_s = 900, to = ["webhook-ops"], min_severity = "error" }'
    after_s: float = Field(None, validate_default=True)
    to: list[str] = Field(None, validate_default=True)
    min_severity: str = "info"

    @field_validator("after_s", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise _invalid(f"after_s must be a number of seconds > 0, not {_toml(value)}")
        return float(value)

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, value: Any, info: Any) -> Any:
        if value is None or value == []:
            raise _invalid("to is required, a non-empty list of receiver names")
        return _receiver_list(value, "to", (info.context or {}).get("receivers"))

    @field_validator("min_severity", mode="before")
    @classmethod
    def _min(cls, value: Any) -> Any:
        return _severity(value, "min_severity")

    def escalation(self) -> Escalation:
        return Escalation(self.after_s, tuple(self.to), self.min_severity)


class QuietHoursSpec(_Strict):
    EXAMPLE: ClassVar[str] = (
        '{ start = "22:00", end = "07:00", timezone = "Europe/London", page_from = '
        '"critical", receivers = ["slack-cx"] }'
    )
    start: str = Field(None, validate_default=True)
    end: str = Field(None, validate_default=True)
    timezone: str = "UTC"
    page_from: str = "critical"
    receivers: list[str] = Field(None, validate_default=True)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hhmm(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str) or not HHMM_RE.match(value):
            raise _invalid(f'{info.field_name} must be a time such as "22:00", not {_toml(value)}')
        return value

    @field_validator("timezone", mode="before")
    @classmethod
    def _zone(cls, value: Any) -> Any:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise _invalid(
                f"timezone {_toml(value)} is not an IANA time zone such as Europe/London"
            ) from None
        return value

    @field_validator("page_from", mode="before")
    @classmethod
    def _floor(cls, value: Any) -> Any:
        return _severity(value, "page_from")

    @field_validator("receivers", mode="before")
    @classmethod
    def _receivers(cls, value: Any, info: Any) -> Any:
        if value is None:
            raise _invalid("receivers is required: who is told during quiet hours ([] for nobody)")
        return _receiver_list(value, "receivers", (info.context or {}).get("receivers"))

    def quiet_hours(self) -> QuietHours:
        def minute(text: str) -> int:
            hours, minutes = text.split(":")
            return int(hours) * 60 + int(minutes)

        return QuietHours(
            minute(self.start),
            minute(self.end),
            self.timezone,
            self.page_from,
            tuple(self.receivers),
        )


class TeamSpec(_Strict):
    EXAMPLE: ClassVar[str] = '[[team]] with name = "payments" and receivers = [...]'
    name: str = Field(None, validate_default=True)
    description: str = Field("", description="a string")
    touchpoints: list[str] = Field([], description="a list of touchpoint patterns")
    rules: list[str] = Field([], description="a list of rule names")
    kinds: list[str] = Field([], description="a list of rule kinds")
    receivers: list[str] = Field(None, validate_default=True)
    escalation: EscalationSpec | None = Field(
        None, description="a table such as " + EscalationSpec.EXAMPLE
    )
    quiet_hours: QuietHoursSpec | None = Field(
        None, description="a table such as " + QuietHoursSpec.EXAMPLE
    )
    default: bool = Field(False, description="true or false")

    @field_validator("name", mode="before")
    @classmethod
    def _a_name(cls, value: Any) -> Any:
        return _name(value, "team")

    @field_validator("touchpoints", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        if isinstance(value, list):
            for pattern in value:
                if not isinstance(pattern, str) or not TOUCHPOINT_PATTERN_RE.match(pattern):
                    raise _invalid(
                        f"touchpoints: {_toml(pattern)} is not a touchpoint (checkout.payment) "
                        "or a pattern (support.*, or *)"
                    )
        return value

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> Any:
        if isinstance(value, list):
            for rule in value:
                if not isinstance(rule, str) or not RULE_NAME_RE.match(rule):
                    raise _invalid(f"rules: {_toml(rule)} is not a rule name")
        return value

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds(cls, value: Any) -> Any:
        if isinstance(value, list):
            for kind in value:
                if kind not in KINDS:
                    raise _invalid(
                        f"kinds: unknown kind {_toml(kind)}; expected one of {', '.join(KINDS)}"
                    )
        return value

    @field_validator("receivers", mode="before")
    @classmethod
    def _receivers(cls, value: Any, info: Any) -> Any:
        if value is None or value == []:
            raise _invalid("receivers is required, a non-empty list of receiver names")
        return _receiver_list(value, "receivers", (info.context or {}).get("receivers"))

    def team(self) -> Team:
        return Team(
            name=self.name,
            description=self.description,
            touchpoints=tuple(self.touchpoints),
            rules=frozenset(self.rules),
            kinds=frozenset(self.kinds),
            receivers=tuple(self.receivers),
            escalation=self.escalation.escalation() if self.escalation else None,
            quiet_hours=self.quiet_hours.quiet_hours() if self.quiet_hours else None,
            default=self.default,
        )


# --- errors and loading ------------------------------------------------------------------


_NESTED: dict[str, type[BaseModel]] = {
    "escalation": EscalationSpec,
    "quiet_hours": QuietHoursSpec,
}


def _where(label: str, model: type[BaseModel], exc: ValidationError) -> str:
    """`<label>[, <table>]: <problem>` for the first error."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    if loc and loc[0] in _NESTED:
        key = ".".join(loc[1:]) or loc[0]
        return f"{label}, {loc[0]}: {_problem(error, _NESTED[loc[0]], key)}"
    return f"{label}: {_problem(error, model, '.'.join(loc))}"


def _tables(document: Mapping[str, Any], table: str, source: str) -> list[Any]:
    items = document.get(table, [])
    if not isinstance(items, list):
        raise RuleConfigError(f"{source}: {table} must be an array of tables ([[{table}]])")
    return items


def _label(table: str, item: Any, index: int) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    valid = isinstance(name, str) and TEAM_RE.match(name)
    return f"{table} {name!r}" if valid else f"{table} #{index + 1}"


def parse_owners(document: Mapping[str, Any], source: str, raw: bytes | None = None) -> Owners:
    """The owners of a parsed TOML document; `source` (the file) prefixes error messages,
    `raw` (the file's bytes) gives the version."""
    extra = sorted(set(document) - set(TOP_LEVEL))
    if extra:
        raise RuleConfigError(
            f"{source}: unknown top-level keys {extra}; expected [[team]] and [[receiver]]"
        )
    receivers = parse_receivers(document.get("receiver"), source)
    if not receivers:
        raise RuleConfigError(f"{source}: no receivers; define at least one [[receiver]]")

    teams: list[Team] = []
    claimed: dict[str, str] = {}
    context = {"receivers": frozenset(receivers)}
    for index, item in enumerate(_tables(document, "team", source)):
        label = _label("team", item, index)
        try:
            team = TeamSpec.model_validate(item, context=context).team()
        except ValidationError as exc:
            raise RuleConfigError(f"{source}: {_where(label, TeamSpec, exc)}") from None
        if any(t.name == team.name for t in teams):
            raise RuleConfigError(f"{source}: {label}: defined twice")
        for pattern in team.touchpoints:
            if pattern in claimed:
                raise RuleConfigError(
                    f"{source}: {label}: touchpoints: {pattern!r} is already owned by "
                    f"team {claimed[pattern]!r}"
                )
            claimed[pattern] = team.name
        for rule in team.rules:
            other = next((t.name for t in teams if rule in t.rules), None)
            if other is not None:
                raise RuleConfigError(
                    f"{source}: {label}: rules: {rule!r} is already routed to team {other!r}"
                )
        teams.append(team)
    if not teams:
        raise RuleConfigError(f"{source}: no teams; define at least one [[team]]")
    defaults = [t.name for t in teams if t.default]
    if len(defaults) != 1:
        raise RuleConfigError(
            f"{source}: exactly one team must have default = true (the team of incidents "
            f"no rule, touchpoint or kind routes); found {len(defaults)}"
            + (f" ({', '.join(defaults)})" if defaults else "")
        )
    if raw is None:
        raw = json.dumps(document, sort_keys=True, default=str).encode()
    return Owners(
        version="owners-" + hashlib.sha256(raw).hexdigest()[:12],
        source=source,
        teams=tuple(teams),
        receivers=receivers,
    )


def load_owners(path: Path = DEFAULT_PATH) -> Owners:
    """The owners file at `path` (`AlertsSettings.owners_file`); RuleConfigError if bad."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleConfigError(f"{path}: cannot read the owners file ({exc})") from exc
    return parse_owners(load_toml(path, "owners file"), str(path), raw)
