"""The action catalogue of next-best-action: what may be shown, where, to whom, how often.

The catalogue is a TOML file (`services/personalisation/config/catalogue.toml`; its
header documents the format), validated whole at load: a bad file is refused with a
`RuleConfigError` that names the file, the action (or rule) and the key or condition, in
the format of the shared condition language (`services.common.conditions`):

    catalogue.toml: action 'gold_upgrade': business_value must be a number > 0
    catalogue.toml: action 'gold_upgrade', condition all[0] { field = "order", op = ">=",
    value = 1 }: unknown field 'order'; did you mean orders? (...)

Each `[[action]]` has an id, a kind (`KINDS`), placements (exact names or trailing
wildcards such as `web.*`), channels (`CHANNELS`; none means every channel), content
variants, a business value V and lever L, validity dates, the consent purpose it needs,
eligibility conditions in the shared condition language over the decision fields
(`decision_fields()`), its own contact policy, a prior propensity P per segment and
context weights C: priority = P x C x V x L.

`[[suitability]]` rules are experience-aware suitability: when one holds for the person,
actions of its `suppress` kinds are not offered and actions of its `promote` kinds rank
before everything else. `[kind.<name>]` sets a kind's marketing flag and contact policy,
`[contact]` the global cap of marketing impressions per person per day, and
`[channel_consent]` the consent purpose marketing needs on each channel.

This module only reads and checks the file (pure apart from reading it). Ranking,
consent, suitability and the contact ledger are the arbitration's; hot reload is
`services.personalisation.adapters.catalogue_file`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import tomllib
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from cx.events.v1 import touchpoint_pb2 as ev
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

from services.common.conditions import (
    GROUPS,
    NAME_RE,
    ConditionSpec,
    FieldCatalog,
    Fields,
    Rule,
    RuleConfigError,
    RuleSpec,
    Spec,
    _problem,
    _toml,
    parse_rules,
)
from services.profile.domain.segments import load_segments, profile_fields

__all__ = [
    "CHANNELS",
    "DEFAULT_CHANNEL_CONSENT",
    "DEFAULT_PATH",
    "KINDS",
    "MARKETING_KINDS",
    "PURPOSES",
    "Action",
    "Catalogue",
    "ContactRule",
    "ContextWeight",
    "KindPolicy",
    "SuitabilityRule",
    "Variant",
    "decision_fields",
    "load_catalogue",
    "parse_catalogue",
    "placement_matches",
]

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config" / "catalogue.toml"

KINDS: tuple[str, ...] = (
    "upsell",
    "cross_sell",
    "retention",
    "service_recovery",
    "survey",
    "information",
    "loyalty",
    "onboarding",
)
# A kind's marketing flag when the file does not set it: these sell something.
MARKETING_KINDS = frozenset({"upsell", "cross_sell", "retention", "loyalty"})


def _enum_names(items: Sequence[tuple[str, int]], prefix: str) -> tuple[str, ...]:
    return tuple(name.removeprefix(prefix).lower() for name, number in items if number != 0)


# Lower-case cx.events.v1.Channel names without CHANNEL_ (UNSPECIFIED left out).
CHANNELS: tuple[str, ...] = _enum_names(ev.Channel.items(), "CHANNEL_")
# Lower-case ConsentChange.Purpose names without PURPOSE_: what `consent.<purpose>` is.
PURPOSES: tuple[str, ...] = _enum_names(ev.ConsentChange.Purpose.items(), "PURPOSE_")
# What marketing needs on a channel when the file has no [channel_consent] table.
DEFAULT_CHANNEL_CONSENT: Mapping[str, str] = MappingProxyType(
    {"email": "marketing_email", "sms": "marketing_sms", "push": "marketing_push"}
)

# Placements are lower-case dotted names (web.home.hero); a pattern ends in `.*` (every
# placement under it) or is `*` (every placement).
_SEGMENT = r"[a-z][a-z0-9_]*"
PLACEMENT_RE = re.compile(rf"^(\*|{_SEGMENT}(\.{_SEGMENT})*(\.\*)?)$")
# A deep link or image: an absolute URL (https://..., app://...) or a path.
_LINK_RE = re.compile(r"^([a-z][a-z0-9+.-]*:|/)\S*$")

SEGMENT_PREFIX = "segment."
# Request fields that conditions may test, besides the profile's.
REQUEST_FIELDS = frozenset(
    {
        "placement",
        "channel",
        "hour",
        "weekday",
        "context.device",
        "context.locale",
        "context.page",
        "context.cart_size",
    }
)
DECISION_PREFIXES = ("traits.", "consent.", SEGMENT_PREFIX, "context.attributes.")


def placement_matches(pattern: str, placement: str) -> bool:
    """True when `placement` is `pattern`, or under a `prefix.*` pattern, or any for `*`."""
    if pattern == "*" or pattern == placement:
        return True
    return pattern.endswith(".*") and placement.startswith(pattern[:-1])


# --- the catalogue as loaded ---------------------------------------------------------------


@dataclass(frozen=True)
class ContactRule:
    """How often something may be shown to one person; zero means no limit for each part."""

    # At most this many impressions within `window_days`.
    max_impressions: int = 0
    window_days: float = 7.0
    # None for this many days after the person dismissed it.
    dismiss_cooloff_days: float = 0.0
    # Never again after the person accepted it.
    stop_after_accept: bool = False


@dataclass(frozen=True)
class Variant:
    """One version of an action's content (cx.personalisation.v1.Content)."""

    variant: str
    title: str
    body: str = ""
    image_url: str = ""
    call_to_action: str = ""
    deep_link: str = ""
    # Placements (patterns) this version is written for, for example an agent's script
    # for `agent.panel`; empty: any placement the action serves.
    placements: tuple[str, ...] = ()

    def written_for(self, placement: str) -> bool:
        return any(placement_matches(p, placement) for p in self.placements)


@dataclass(frozen=True)
class ContextWeight:
    """C's part from one rule on the request's fields: `weight` when `rule` matches."""

    rule: Rule
    weight: float


@dataclass(frozen=True)
class Action:
    action_id: str
    kind: str
    description: str
    # Exact names or trailing-wildcard patterns such as `web.*`.
    placements: tuple[str, ...]
    # Lower-case channel names; empty for every channel.
    channels: frozenset[str]
    # At least one.
    variants: tuple[Variant, ...]
    # V > 0.
    business_value: float
    # L > 0.
    lever: float
    valid_from_ms: int | None
    valid_until_ms: int | None
    # A PURPOSES name, for example `marketing_email`, or None.
    consent_purpose: str | None
    # Counts against the global marketing cap and needs the channel's marketing consent.
    marketing: bool
    # Conditions over `decision_fields()`; None when every person is eligible.
    eligibility: Rule | None
    contact: ContactRule
    # The prior P (0 < P <= 1) when no segment of the person's has one.
    propensity_default: float
    propensity_by_segment: Mapping[str, float] = field(hash=False)
    context_weights: tuple[ContextWeight, ...]

    def serves(self, placement: str, channel: str) -> bool:
        """True when the action may be shown at `placement` on `channel` (lower case)."""
        if self.channels and channel not in self.channels:
            return False
        return any(placement_matches(p, placement) for p in self.placements)

    def active(self, now_ms: int) -> bool:
        """Within its validity dates: from `valid_from` (inclusive) to `valid_until`."""
        if self.valid_from_ms is not None and now_ms < self.valid_from_ms:
            return False
        return self.valid_until_ms is None or now_ms < self.valid_until_ms

    def propensity(self, segments: Collection[str]) -> tuple[float, str]:
        """P and where it came from: the highest prior of the person's segments
        (`prior:segment:<name>`; the first name in order on a tie), else the default."""
        priors = [(-p, name) for name, p in self.propensity_by_segment.items() if name in segments]
        if not priors:
            return self.propensity_default, "prior:default"
        negative, name = min(priors)
        return -negative, f"prior:segment:{name}"

    def context_weight(self, fields: Fields) -> tuple[float, list[str]]:
        """C, the product of the weights of the context rules the request's fields match
        (1 when none does), and those rules' names."""
        weight = 1.0
        names: list[str] = []
        for part in self.context_weights:
            if part.rule.matches(fields):
                weight *= part.weight
                names.append(part.rule.name)
        return weight, names


@dataclass(frozen=True)
class SuitabilityRule:
    """An experience signal: when `rule` holds, no action of `suppress_kinds` is offered
    and actions of `promote_kinds` rank before everything else."""

    name: str
    description: str
    rule: Rule
    suppress_kinds: frozenset[str]
    promote_kinds: frozenset[str]


@dataclass(frozen=True)
class KindPolicy:
    kind: str
    marketing: bool
    contact: ContactRule


@dataclass(frozen=True)
class Catalogue:
    # "catalogue-" and the first 12 hex digits of the SHA-256 of the file.
    version: str
    source: str
    actions: tuple[Action, ...]
    suitability: tuple[SuitabilityRule, ...]
    # Every KINDS entry.
    kinds: Mapping[str, KindPolicy] = field(hash=False)
    # Marketing impressions per person per rolling 24 hours, over every placement and
    # channel; 0 for no cap.
    marketing_per_day: int
    # Channel -> the consent purpose a marketing action needs on it.
    channel_consent: Mapping[str, str] = field(hash=False)
    _by_id: Mapping[str, Action] = field(init=False, repr=False, compare=False)
    _fields_read: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = MappingProxyType({a.action_id: a for a in self.actions})
        object.__setattr__(self, "_by_id", by_id)
        # Every decision asks for these: worked out once per loaded catalogue.
        object.__setattr__(self, "_fields_read", self._profile_fields_read())

    def action(self, action_id: str) -> Action | None:
        return self._by_id.get(action_id)

    def fields_read(self) -> frozenset[str]:
        """The profile fields that eligibility, context and suitability rules read: what a
        decision must fetch (request fields and segments are not)."""
        return self._fields_read

    def _profile_fields_read(self) -> frozenset[str]:
        rules = [s.rule for s in self.suitability]
        for action in self.actions:
            if action.eligibility is not None:
                rules.append(action.eligibility)
            rules.extend(c.rule for c in action.context_weights)
        profile = profile_fields()
        return frozenset(name for r in rules for name in r.fields_read() if name in profile)


# --- the fields conditions may test ------------------------------------------------------


@functools.cache
def decision_fields() -> FieldCatalog:
    """What catalogue conditions may test: the profile's fields (`profile_fields()`:
    derived fields, `traits.<key>`, `consent.<purpose>`; among the derived fields
    `open_incidents`, the alerts service's incidents about the person not yet resolved),
    `segment.<name>` (True when the person is in the segment), the request's `placement`,
    `channel` (lower case), `hour` (0-23 UTC), `weekday` (0 = Monday), `context.device`,
    `context.locale`, `context.page`, `context.cart_size` (int) and
    `context.attributes.<key>`."""
    return FieldCatalog(
        profile_fields().names | REQUEST_FIELDS,
        DECISION_PREFIXES,
        "profile fields, traits.<key>, consent.<purpose>, segment.<name>, placement, "
        "channel, hour, weekday, context.<device|locale|page|cart_size>, "
        "context.attributes.<key>",
    )


@dataclass(frozen=True)
class _CheckedFields(FieldCatalog):
    """`decision_fields()` that also knows the segments, so `segment.<name>` must name one."""

    segments: frozenset[str] = frozenset()

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name.startswith(SEGMENT_PREFIX):
            return name.removeprefix(SEGMENT_PREFIX) in self.segments
        return super().__contains__(name)

    def problem(self, name: str) -> str:
        if name.startswith(SEGMENT_PREFIX):
            return f"unknown segment in {name!r}; segments are {', '.join(sorted(self.segments))}"
        return super().problem(name)


# --- the file: pydantic models of its tables -----------------------------------------------


def _invalid(problem: str) -> PydanticCustomError:
    return PydanticCustomError("rule_config", "{problem}", {"problem": problem})


class _Strict(Spec):
    """A table whose values are taken as written: no "3" for 3, no true for 1."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ContactSpec(_Strict):
    EXAMPLE: ClassVar[str] = (
        "{ max_impressions = 3, window_days = 7, dismiss_cooloff_days = 14, "
        "stop_after_accept = true }"
    )
    max_impressions: int = Field(0, ge=0, description="a whole number >= 0 (0: no cap)")
    window_days: float = Field(7.0, gt=0, allow_inf_nan=False, description="a number of days > 0")
    dismiss_cooloff_days: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="a number of days >= 0"
    )
    stop_after_accept: bool = Field(False, description="true or false")

    def contact(self) -> ContactRule:
        return ContactRule(
            self.max_impressions,
            self.window_days,
            self.dismiss_cooloff_days,
            self.stop_after_accept,
        )


# The contact policy of a table that sets none (frozen, so shared).
NO_LIMIT = ContactSpec.model_validate({})


class VariantSpec(_Strict):
    EXAMPLE: ClassVar[str] = '[[action.variant]] with id = "a" and title = "..."'
    id: str = Field(None, validate_default=True)
    title: str = Field(None, validate_default=True)
    body: str = Field("", description="a string")
    image_url: str = Field("", description="a string")
    call_to_action: str = Field("", description="a string")
    deep_link: str = Field("", description="a string")
    placements: list[str] = Field([], description="a list of placements or patterns")

    @field_validator("placements", mode="before")
    @classmethod
    def _variant_placements(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise _invalid("placements must be a list of placements or patterns")
        for item in value:
            if not isinstance(item, str) or not PLACEMENT_RE.match(item):
                raise _invalid(
                    f"placement {_toml(item)} must be a lower-case dotted name such as "
                    "agent.panel, or a pattern such as web.*"
                )
        return value

    @field_validator("id", mode="before")
    @classmethod
    def _an_id(cls, value: Any) -> Any:
        if not isinstance(value, str) or not NAME_RE.match(value):
            if value is None:
                raise _invalid("id is required, lower-case letters, digits and _")
            raise _invalid(f"id {_toml(value)} must be lower-case letters, digits and _")
        return value

    @field_validator("title", mode="before")
    @classmethod
    def _a_title(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise _invalid("title is required, a non-empty string")
        return value

    @field_validator("image_url", "deep_link", mode="before")
    @classmethod
    def _a_link(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and value and not _LINK_RE.match(value):
            raise _invalid(
                f"{info.field_name} {value!r} must be an absolute URL (https://..., app://...) "
                "or a path starting with /"
            )
        return value

    def variant(self) -> Variant:
        return Variant(
            self.id,
            self.title,
            self.body,
            self.image_url,
            self.call_to_action,
            self.deep_link,
            tuple(self.placements),
        )


class ContextSpec(RuleSpec):
    """`{ name = "mobile", weight = 1.3, all = [...] }`: C's factor when the rule matches."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    EXAMPLE: ClassVar[str] = (
        '{ name = "on_mobile", weight = 1.3, all = [{ field = "context.device", op = "==", '
        'value = "mobile" }] }'
    )
    name: str | None = None  # type: ignore[assignment]
    weight: float = Field(None, validate_default=True)

    @field_validator("weight", mode="before")
    @classmethod
    def _a_weight(cls, value: Any) -> Any:
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise _invalid(f"weight must be a number > 0, not {_toml(value)}")
        return float(value)

    def weighted(self, index: int) -> ContextWeight:
        rule = Rule(
            self.name or f"context[{index}]",
            self.description,
            tuple(c.condition() for c in self.all_of),
            tuple(c.condition() for c in self.any_of),
        )
        return ContextWeight(rule, self.weight)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any, key: str = "kind") -> Any:
    if value not in KINDS:
        where = "" if key == "kind" else f"{key}: "
        raise _invalid(f"{where}unknown kind {_toml(value)}; expected one of {', '.join(KINDS)}")
    return value


def _epoch_ms(value: Any, key: str) -> int | None:
    """An RFC 3339 date-time with an offset (TOML's or a string), or a date (midnight UTC)."""
    if value is None:
        return None
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time(), UTC)
    elif isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d([Tt ].+)?", value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and len(value) == 10:
            moment = moment.replace(tzinfo=UTC)
    if moment is None or moment.tzinfo is None:
        raise _invalid(
            f"{key} must be an RFC 3339 date-time with an offset, such as "
            f"2026-12-01T00:00:00Z, or a date, not {_toml(str(value))}"
        )
    return int(moment.timestamp() * 1000)


class ActionSpec(RuleSpec):
    """An `[[action]]` as written: the rule's `name` is its `id`; `all`/`any` (eligibility)
    are optional."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    EXAMPLE: ClassVar[str] = '[[action]] with id = "..." and kind = "..."'
    name: str = Field(None, alias="id", validate_default=True)
    kind: str = Field(None, validate_default=True)
    placements: list[str] = Field(None, validate_default=True)
    channels: list[str] = Field([], description="a list of channel names")
    variants: list[VariantSpec] = Field(
        [],
        alias="variant",
        validate_default=True,
        description="a list of tables ([[action.variant]])",
    )
    business_value: float = Field(gt=0, allow_inf_nan=False, description="a number > 0")
    lever: float = Field(1.0, gt=0, allow_inf_nan=False, description="a number > 0")
    valid_from: int | None = None
    valid_until: int | None = None
    consent_purpose: str | None = None
    marketing: bool | None = Field(None, description="true or false")
    contact: ContactSpec = Field(NO_LIMIT, description="a table such as " + ContactSpec.EXAMPLE)
    propensity: dict[str, float] = Field(None, validate_default=True)
    context: list[ContextSpec] = Field([], description="a list of context weight tables")

    @field_validator("name", mode="before")
    @classmethod
    def _a_name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not NAME_RE.match(value):
            rule = "lower-case letters, digits and _ (starting with a letter, at most 64)"
            if value is None:
                raise _invalid(f"id is required, {rule}")
            raise _invalid(f"id {_toml(value)} must be {rule}")
        return value

    @field_validator("kind", mode="before")
    @classmethod
    def _a_kind(cls, value: Any) -> Any:
        return _kind(value)

    @field_validator("placements", mode="before")
    @classmethod
    def _placements(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise _invalid(
                "placements must be a non-empty list of placements such as web.home.hero or "
                "patterns such as web.*"
            )
        for placement in value:
            if not isinstance(placement, str) or not PLACEMENT_RE.match(placement):
                raise _invalid(
                    f"placements: {_toml(placement)} is not a placement (lower-case dotted "
                    "names such as web.home.hero) or a pattern (a trailing .* such as web.*, "
                    "or *)"
                )
        return value

    @field_validator("channels", mode="before")
    @classmethod
    def _channels(cls, value: Any) -> Any:
        if isinstance(value, list):
            for channel in value:
                if channel not in CHANNELS:
                    raise _invalid(
                        f"channels: unknown channel {_toml(channel)}; expected one of "
                        f"{', '.join(CHANNELS)}"
                    )
        return value

    @field_validator("variants", mode="after")
    @classmethod
    def _some_variant(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        if not value:
            raise _invalid("needs at least one variant ([[action.variant]] with id and title)")
        seen: set[str] = set()
        for variant in value:
            if variant.id in seen:
                raise _invalid(f"variant {variant.id!r} defined twice")
            seen.add(variant.id)
        return value

    @field_validator("valid_from", "valid_until", mode="before")
    @classmethod
    def _a_moment(cls, value: Any, info: ValidationInfo) -> Any:
        return _epoch_ms(value, str(info.field_name))

    @field_validator("consent_purpose", mode="before")
    @classmethod
    def _a_purpose(cls, value: Any) -> Any:
        if value is not None and value not in PURPOSES:
            raise _invalid(
                f"unknown consent_purpose {_toml(value)}; expected one of {', '.join(PURPOSES)}"
            )
        return value

    @field_validator("propensity", mode="before")
    @classmethod
    def _priors(cls, value: Any, info: ValidationInfo) -> Any:
        example = "propensity = { default = 0.03, vip = 0.08 }"
        if not isinstance(value, dict):
            raise _invalid(f"propensity is required, a table such as {example}")
        if "default" not in value:
            raise _invalid(
                "propensity.default is required (the prior P when none of the person's "
                f"segments has one), as in {example}"
            )
        segments = (info.context or {}).get("segments")
        for key, p in value.items():
            if key != "default" and segments is not None and key not in segments:
                raise _invalid(
                    f"propensity.{key}: unknown segment {key!r}; segments are "
                    f"{', '.join(sorted(segments))}"
                )
            if not _is_number(p) or not 0 < p <= 1:
                raise _invalid(f"propensity.{key} must be a number in (0, 1], not {_toml(p)}")
        return {key: float(p) for key, p in value.items()}

    @model_validator(mode="after")
    def _some_condition(self) -> ActionSpec:
        # Eligibility is optional: an action without conditions suits everyone.
        if (
            self.valid_from is not None
            and self.valid_until is not None
            and self.valid_until <= self.valid_from
        ):
            raise _invalid("valid_until must be later than valid_from")
        return self

    def action(self, kinds: Mapping[str, KindPolicy]) -> Action:
        eligibility = self.rule() if self.all_of or self.any_of else None
        priors = {k: p for k, p in self.propensity.items() if k != "default"}
        return Action(
            action_id=self.name,
            kind=self.kind,
            description=self.description,
            placements=tuple(self.placements),
            channels=frozenset(self.channels),
            variants=tuple(v.variant() for v in self.variants),
            business_value=self.business_value,
            lever=self.lever,
            valid_from_ms=self.valid_from,
            valid_until_ms=self.valid_until,
            consent_purpose=self.consent_purpose,
            marketing=kinds[self.kind].marketing if self.marketing is None else self.marketing,
            eligibility=eligibility,
            contact=self.contact.contact(),
            propensity_default=self.propensity["default"],
            propensity_by_segment=MappingProxyType(priors),
            context_weights=tuple(c.weighted(i) for i, c in enumerate(self.context)),
        )


class SuitabilitySpec(RuleSpec):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    suppress: list[str] = Field([], description="a list of kinds")
    promote: list[str] = Field([], description="a list of kinds")

    @field_validator("suppress", "promote", mode="before")
    @classmethod
    def _kinds(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list):
            for kind in value:
                _kind(kind, str(info.field_name))
        return value

    @model_validator(mode="after")
    def _not_both(self) -> SuitabilitySpec:
        both = sorted(set(self.suppress) & set(self.promote))
        if both:
            raise _invalid(f"kinds both suppressed and promoted: {', '.join(both)}")
        return self

    def suitability(self) -> SuitabilityRule:
        return SuitabilityRule(
            self.name,
            self.description,
            self.rule(),
            frozenset(self.suppress),
            frozenset(self.promote),
        )


class KindSpec(_Strict):
    EXAMPLE: ClassVar[str] = "[kind.upsell] with marketing = true and contact = { ... }"
    marketing: bool | None = Field(None, description="true or false")
    contact: ContactSpec = Field(NO_LIMIT, description="a table such as " + ContactSpec.EXAMPLE)


class GlobalContactSpec(_Strict):
    EXAMPLE: ClassVar[str] = "[contact] with marketing_per_day = 3"
    marketing_per_day: int = Field(0, ge=0, description="a whole number >= 0 (0: no cap)")


TOP_LEVEL = ("action", "suitability", "kind", "contact", "channel_consent")


# --- errors ------------------------------------------------------------------------------


def _nested(model: type[BaseModel], key: object) -> tuple[type[BaseModel], bool] | None:
    """The model of the table (False) or array of tables (True) at `key` of `model`."""
    for name, info in model.model_fields.items():
        if key not in (name, info.alias):
            continue
        annotation = info.annotation
        many = typing.get_origin(annotation) is list
        inner = typing.get_args(annotation)[0] if many else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, many
    return None


def _where(label: str, item: Any, model: type[BaseModel], exc: ValidationError) -> str:
    """`<label>[, <table>...][, condition <group>[i] <as written>]: <problem>` for the
    first error, walking into nested tables (`contact`, `variant 'a'`, `context[0]`)."""
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
        model, many = nested
        if many:
            if len(loc) < 2 or not isinstance(loc[1], int):
                break
            item = item[head][loc[1]]
            name = item.get("id", item.get("name")) if isinstance(item, dict) else None
            ref = f" {name!r}" if isinstance(name, str) and NAME_RE.match(name) else f"[{loc[1]}]"
            where = f"{where}, {head}{ref}"
            loc = loc[2:]
        else:
            item = item[head]
            where = f"{where}, {head}"
            loc = loc[1:]
    return f"{where}: {_problem(error, model, '.'.join(map(str, loc)))}"


def _table(document: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise RuleConfigError(f"{source}: {key} must be a table ([{key}])")
    return value


# --- loading -------------------------------------------------------------------------------


def _kind_policies(document: Mapping[str, Any], source: str) -> dict[str, KindPolicy]:
    tables = _table(document, "kind", source)
    policies: dict[str, KindPolicy] = {}
    for kind, item in tables.items():
        if kind not in KINDS:
            raise RuleConfigError(
                f"{source}: kind {kind!r}: unknown kind; expected one of {', '.join(KINDS)}"
            )
        try:
            spec = KindSpec.model_validate(item)
        except ValidationError as exc:
            where = _where(f"kind {kind!r}", item, KindSpec, exc)
            raise RuleConfigError(f"{source}: {where}") from None
        marketing = kind in MARKETING_KINDS if spec.marketing is None else spec.marketing
        policies[kind] = KindPolicy(kind, marketing, spec.contact.contact())
    for kind in KINDS:
        policies.setdefault(kind, KindPolicy(kind, kind in MARKETING_KINDS, ContactRule()))
    return {kind: policies[kind] for kind in KINDS}


def _channel_consent(document: Mapping[str, Any], source: str) -> dict[str, str]:
    if "channel_consent" not in document:
        return dict(DEFAULT_CHANNEL_CONSENT)
    table = _table(document, "channel_consent", source)
    for channel, purpose in table.items():
        if channel not in CHANNELS:
            raise RuleConfigError(
                f"{source}: channel_consent: unknown channel {channel!r}; expected one of "
                f"{', '.join(CHANNELS)}"
            )
        if purpose not in PURPOSES:
            raise RuleConfigError(
                f"{source}: channel_consent.{channel}: unknown consent purpose "
                f"{_toml(purpose)}; expected one of {', '.join(PURPOSES)}"
            )
    return dict(table)


def _actions(document: Mapping[str, Any], source: str, context: dict[str, Any]) -> list[ActionSpec]:
    items = document.get("action", [])
    if not isinstance(items, list):
        raise RuleConfigError(f"{source}: action must be an array of tables ([[action]])")
    if not items:
        raise RuleConfigError(f"{source}: no actions; define at least one [[action]]")
    specs: list[ActionSpec] = []
    ids: set[str] = set()
    for index, item in enumerate(items):
        action_id = item.get("id") if isinstance(item, dict) else None
        valid_id = isinstance(action_id, str) and NAME_RE.match(action_id)
        label = f"action {action_id!r}" if valid_id else f"action #{index + 1}"
        try:
            spec = ActionSpec.model_validate(item, context=context)
        except ValidationError as exc:
            raise RuleConfigError(f"{source}: {_where(label, item, ActionSpec, exc)}") from None
        if spec.name in ids:
            raise RuleConfigError(f"{source}: {label}: defined twice")
        ids.add(spec.name)
        specs.append(spec)
    return specs


def parse_catalogue(
    document: Mapping[str, Any],
    source: str,
    raw: bytes | None = None,
    *,
    segments: Collection[str] | None = None,
) -> Catalogue:
    """The catalogue of a parsed TOML document. `source` (the file) prefixes error
    messages; `raw`, the file's bytes, gives the version (else the document does);
    `segments` are the segment names priors and `segment.<name>` may use (by default
    those of the profile's shipped segments file)."""
    name = source
    extra = sorted(set(document) - set(TOP_LEVEL))
    if extra:
        raise RuleConfigError(
            f"{name}: unknown top-level keys {extra}; expected {', '.join(TOP_LEVEL)}"
        )
    if segments is None:
        segments = [s.name for s in load_segments()]
    known = frozenset(segments)
    base = decision_fields()
    fields = _CheckedFields(base.names, base.open_prefixes, base.described_as, known)

    kinds = _kind_policies(document, name)
    contact_table = _table(document, "contact", name)
    try:
        contact = GlobalContactSpec.model_validate(contact_table)
    except ValidationError as exc:
        where = _where("contact", contact_table, GlobalContactSpec, exc)
        raise RuleConfigError(f"{name}: {where}") from None
    channel_consent = _channel_consent(document, name)
    suitability = parse_rules(
        {"suitability": document.get("suitability", [])},
        "suitability",
        SuitabilitySpec,
        fields=fields,
        source=name,
    )
    actions = _actions(document, name, {"fields": fields, "segments": known})

    if raw is None:
        raw = json.dumps(document, sort_keys=True, default=str).encode()
    return Catalogue(
        version="catalogue-" + hashlib.sha256(raw).hexdigest()[:12],
        source=source,
        actions=tuple(spec.action(kinds) for spec in actions),
        suitability=tuple(spec.suitability() for spec in suitability),
        kinds=MappingProxyType(kinds),
        marketing_per_day=contact.marketing_per_day,
        channel_consent=MappingProxyType(channel_consent),
    )


def _read(path: Path) -> tuple[bytes, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleConfigError(f"{path}: cannot read the catalogue file ({exc})") from exc
    try:
        return raw, tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RuleConfigError(f"{path}: not valid TOML ({exc})") from exc


def load_catalogue(
    path: Path = DEFAULT_PATH, *, segments: Collection[str] | None = None
) -> Catalogue:
    """The catalogue in `path`; a RuleConfigError on any problem."""
    raw, document = _read(path)
    return parse_catalogue(document, str(path), raw, segments=segments)
