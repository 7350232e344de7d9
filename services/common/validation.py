"""Validation and normalisation of TouchpointEvents.

Pure functions, shared by ingestion (which rejects bad events) and by consumers (which
dead-letter records that other producers wrote). Field paths use the protobuf field names,
for example `identities.email` or `survey_response.score`.

The validator bounds everything a later stage must carry, whatever field it is in: the
event's size, nesting depth, every string's length, every list's length, every timestamp
and duration (so converting one can never raise), and finite numbers in free-form
structs. An accepted event therefore always fits in a repartition bundle, parses inside
any wrapper message, and can be stored and derived; and `normalise_and_validate` never
raises, whatever bytes another producer wrote.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from cx.events.v1 import touchpoint_pb2 as ev
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

EVENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
TOUCHPOINT_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}$")
CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
PHONE_STRIP_RE = re.compile(r"[\s().\-]")
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
MAX_ID_LEN = 128
MAX_TEXT_LEN = 4000

# The usual scale of each survey metric, used when an answer does not say its scale.
DEFAULT_SCALES: dict[int, tuple[int, int]] = {
    ev.SurveyResponse.METRIC_CSAT: (1, 5),
    ev.SurveyResponse.METRIC_NPS: (0, 10),
    ev.SurveyResponse.METRIC_CES: (1, 7),
}


@dataclass(frozen=True)
class Violation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int = 64 * 1024
    max_properties_bytes: int = 8 * 1024
    # Nesting of structs and lists inside `properties` and `identify.traits`. Protobuf
    # refuses to parse messages nested deeper than 100 levels, and each level here costs
    # three (Struct, its map entry, Value): ten keeps an event far inside that limit even
    # inside the wrapper messages of later stages.
    max_struct_depth: int = 10
    # Any string field without a tighter rule, and any list.
    max_string_len: int = MAX_TEXT_LEN
    max_list_len: int = 200
    # How far ahead of the receiver's clock an event may claim to have happened.
    max_future_skew: timedelta = timedelta(minutes=5)
    earliest_occurred_at: datetime = datetime(2000, 1, 1, tzinfo=UTC)


DEFAULT_LIMITS = Limits()


def normalise_email(value: str) -> str:
    return value.strip().lower()


def normalise_phone(value: str) -> str:
    """E.164 without separators: `+44 (20) 7946-0000` -> `+442079460000`."""
    stripped = PHONE_STRIP_RE.sub("", value.strip())
    if stripped.startswith("00"):
        stripped = "+" + stripped[2:]
    return stripped


def normalise_identities(ids: ev.Identities) -> None:
    ids.customer_id = ids.customer_id.strip()
    ids.anonymous_id = ids.anonymous_id.strip()
    ids.email = normalise_email(ids.email)
    ids.phone = normalise_phone(ids.phone)


def scale_of(survey: ev.SurveyResponse) -> tuple[int, int]:
    if survey.HasField("scale"):
        return survey.scale.min, survey.scale.max
    return DEFAULT_SCALES.get(survey.metric, (0, 0))


class _Checker:
    """Collects violations for one event."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(Violation(field, description))

    def required_id(self, field: str, value: str) -> None:
        if not value:
            self.add(field, "is required")
        else:
            self.max_len(field, value, MAX_ID_LEN)

    def max_len(self, field: str, value: str, limit: int) -> None:
        if len(value) > limit:
            self.add(field, f"is longer than {limit} characters")

    def enum(self, field: str, value: int, enum: EnumDescriptor, *, required: bool) -> None:
        if value not in enum.values_by_number:
            self.add(field, f"{value} is not a known {enum.name} value")
        elif required and value == 0:
            self.add(field, f"is required (one of {', '.join(_enum_names(enum))})")

    def enum_field(self, parent: Message, name: str, prefix: str, *, required: bool) -> None:
        """`enum` for the field `name` of `parent`, by the enum type it is declared with."""
        enum = cast(EnumDescriptor, parent.DESCRIPTOR.fields_by_name[name].enum_type)
        self.enum(f"{prefix}.{name}", getattr(parent, name), enum, required=required)

    def money(self, field: str, money: ev.Money, *, non_negative: bool = True) -> None:
        if not CURRENCY_RE.match(money.currency_code):
            self.add(f"{field}.currency_code", "must be an ISO 4217 code such as EUR")
        if not -999_999_999 <= money.nanos <= 999_999_999:
            self.add(f"{field}.nanos", "must be within +/-999999999")
        if (money.units > 0 and money.nanos < 0) or (money.units < 0 and money.nanos > 0):
            self.add(f"{field}.nanos", "must have the same sign as units")
        if non_negative and (money.units < 0 or money.nanos < 0):
            self.add(field, "must not be negative")

    def optional_money(self, parent: Message, name: str, prefix: str) -> None:
        if parent.HasField(name):
            self.money(f"{prefix}.{name}", getattr(parent, name))

    def positive(self, field: str, value: int) -> None:
        if value <= 0:
            self.add(field, "must be greater than 0")

    def text(self, field: str, value: str) -> None:
        self.max_len(field, value, MAX_TEXT_LEN)


def _enum_names(enum: EnumDescriptor) -> list[str]:
    return [v.name for v in enum.values if v.number != 0]


def _check_page_view(c: _Checker, p: ev.PageView) -> None:
    if not p.page and not p.url:
        c.add("page_view.page", "page or url is required")
    c.max_len("page_view.url", p.url, 2048)
    c.max_len("page_view.referrer", p.referrer, 2048)


def _check_product_view(c: _Checker, p: ev.ProductView) -> None:
    c.required_id("product_view.product_id", p.product_id)
    c.optional_money(p, "price", "product_view")


def _check_cart_change(c: _Checker, p: ev.CartChange) -> None:
    c.enum_field(p, "action", "cart_change", required=True)
    c.required_id("cart_change.product_id", p.product_id)
    c.positive("cart_change.quantity", p.quantity)
    c.optional_money(p, "unit_price", "cart_change")


def _check_order_placed(c: _Checker, p: ev.OrderPlaced) -> None:
    c.required_id("order_placed.order_id", p.order_id)
    if not p.HasField("total"):
        c.add("order_placed.total", "is required")
    else:
        c.money("order_placed.total", p.total)
    c.optional_money(p, "discount", "order_placed")
    for i, item in enumerate(p.items):
        c.required_id(f"order_placed.items[{i}].product_id", item.product_id)
        c.positive(f"order_placed.items[{i}].quantity", item.quantity)
        c.optional_money(item, "unit_price", f"order_placed.items[{i}]")


def _check_order_cancelled(c: _Checker, p: ev.OrderCancelled) -> None:
    c.required_id("order_cancelled.order_id", p.order_id)
    c.optional_money(p, "refunded", "order_cancelled")


def _check_order_returned(c: _Checker, p: ev.OrderReturned) -> None:
    c.required_id("order_returned.order_id", p.order_id)
    c.optional_money(p, "refunded", "order_returned")


def _check_payment_failed(c: _Checker, p: ev.PaymentFailed) -> None:
    c.optional_money(p, "amount", "payment_failed")
    if not p.failure_code:
        c.add("payment_failed.failure_code", "is required")
    if p.attempt < 0:
        c.add("payment_failed.attempt", "must not be negative")


def _check_delivery_update(c: _Checker, p: ev.DeliveryUpdate) -> None:
    c.required_id("delivery_update.order_id", p.order_id)
    c.enum_field(p, "status", "delivery_update", required=True)
    if p.status == ev.DeliveryUpdate.STATUS_DELIVERED and not p.HasField("actual_at"):
        c.add("delivery_update.actual_at", "is required when status is STATUS_DELIVERED")


def _check_support_contact(c: _Checker, p: ev.SupportContact) -> None:
    c.required_id("support_contact.contact_id", p.contact_id)
    if not CODE_RE.match(p.reason):
        c.add("support_contact.reason", "is required, a lower-case code such as delivery.late")
    for name in ("wait_time", "handle_time"):
        d = getattr(p, name)
        if d.seconds < 0 or d.nanos < 0:
            c.add(f"support_contact.{name}", "must not be negative")


def _check_survey_response(c: _Checker, p: ev.SurveyResponse) -> None:
    c.enum_field(p, "metric", "survey_response", required=True)
    if p.metric not in DEFAULT_SCALES:
        return
    low, high = scale_of(p)
    if p.HasField("scale") and low >= high:
        c.add("survey_response.scale", f"min ({low}) must be less than max ({high})")
        return
    if p.metric == ev.SurveyResponse.METRIC_NPS and (low, high) != (0, 10):
        c.add("survey_response.scale", "NPS is always asked on a 0 to 10 scale")
        return
    if not low <= p.score <= high:
        c.add("survey_response.score", f"{p.score} is outside the scale {low} to {high}")
    c.text("survey_response.comment", p.comment)


def _check_review(c: _Checker, p: ev.Review) -> None:
    high = p.rating_max or 5
    if high < 2 or high > 10:
        c.add("review.rating_max", "must be between 2 and 10")
    elif not 1 <= p.rating <= high:
        c.add("review.rating", f"{p.rating} is outside 1 to {high}")
    c.text("review.text", p.text)


def _check_complaint(c: _Checker, p: ev.Complaint) -> None:
    c.required_id("complaint.complaint_id", p.complaint_id)
    c.enum_field(p, "status", "complaint", required=True)
    c.enum_field(p, "severity", "complaint", required=False)
    c.text("complaint.description", p.description)


def _check_conversation_message(c: _Checker, p: ev.ConversationMessage) -> None:
    c.required_id("conversation_message.conversation_id", p.conversation_id)
    c.enum_field(p, "direction", "conversation_message", required=True)
    if not -1.0 <= p.sentiment <= 1.0:
        c.add("conversation_message.sentiment", f"{p.sentiment} is outside -1 to 1")
    c.text("conversation_message.text", p.text)


def _check_message_engagement(c: _Checker, p: ev.MessageEngagement) -> None:
    c.required_id("message_engagement.message_id", p.message_id)
    c.enum_field(p, "action", "message_engagement", required=True)


def _check_app_error(c: _Checker, p: ev.AppError) -> None:
    if not p.error_code:
        c.add("app_error.error_code", "is required")
    c.text("app_error.message", p.message)


def _check_identify(c: _Checker, p: ev.Identify) -> None:
    c.enum_field(p, "method", "identify", required=False)


def _check_consent_change(c: _Checker, p: ev.ConsentChange) -> None:
    c.enum_field(p, "purpose", "consent_change", required=True)


def _check_offer_outcome(c: _Checker, p: ev.OfferOutcome) -> None:
    c.required_id("offer_outcome.decision_id", p.decision_id)
    c.required_id("offer_outcome.offer_id", p.offer_id)
    c.enum_field(p, "outcome", "offer_outcome", required=True)


def _check_experience_incident(c: _Checker, p: ev.ExperienceIncident) -> None:
    c.required_id("experience_incident.incident_id", p.incident_id)
    c.required_id("experience_incident.rule", p.rule)
    c.enum_field(p, "state", "experience_incident", required=True)


# Each payload's checks, given the payload (the event's field of the same name).
PAYLOAD_CHECKS: dict[str, Callable[[_Checker, Any], None]] = {
    "page_view": _check_page_view,
    "product_view": _check_product_view,
    "cart_change": _check_cart_change,
    "order_placed": _check_order_placed,
    "order_cancelled": _check_order_cancelled,
    "order_returned": _check_order_returned,
    "payment_failed": _check_payment_failed,
    "delivery_update": _check_delivery_update,
    "support_contact": _check_support_contact,
    "survey_response": _check_survey_response,
    "review": _check_review,
    "complaint": _check_complaint,
    "conversation_message": _check_conversation_message,
    "message_engagement": _check_message_engagement,
    "app_error": _check_app_error,
    "identify": _check_identify,
    "consent_change": _check_consent_change,
    "offer_outcome": _check_offer_outcome,
    "experience_incident": _check_experience_incident,
}


def _check_identities(c: _Checker, ids: ev.Identities) -> None:
    if not (ids.customer_id or ids.anonymous_id or ids.email or ids.phone):
        c.add("identities", "at least one of customer_id, anonymous_id, email, phone is required")
        return
    c.max_len("identities.customer_id", ids.customer_id, MAX_ID_LEN)
    c.max_len("identities.anonymous_id", ids.anonymous_id, MAX_ID_LEN)
    if ids.email and (len(ids.email) > 254 or not EMAIL_RE.match(ids.email)):
        c.add("identities.email", "is not an email address")
    if ids.phone and not E164_RE.match(ids.phone):
        c.add("identities.phone", "must be in E.164 form, + and country code then 6-14 digits")


def _check_envelope(c: _Checker, event: ev.TouchpointEvent, now: datetime, limits: Limits) -> None:
    if not event.event_id:
        c.add("event_id", "is required")
    elif not EVENT_ID_RE.match(event.event_id):
        c.add("event_id", "must be 1-128 characters of letters, digits and . _ : @ -")
    if not event.HasField("occurred_at"):
        c.add("occurred_at", "is required")
    else:
        occurred = event.occurred_at.ToDatetime(tzinfo=UTC)
        if occurred > now + limits.max_future_skew:
            c.add("occurred_at", f"is more than {limits.max_future_skew} in the future")
        elif occurred < limits.earliest_occurred_at:
            c.add("occurred_at", f"is before {limits.earliest_occurred_at.date()}")
    _check_identities(c, event.identities)
    c.enum("channel", event.channel, ev.Channel.DESCRIPTOR, required=True)
    if not TOUCHPOINT_RE.match(event.touchpoint):
        c.add("touchpoint", "is required, a dotted lower-case id such as checkout.payment")
    c.enum("journey_stage", event.journey_stage, ev.JourneyStage.DESCRIPTOR, required=True)
    if not event.source_system:
        c.add("source_system", "is required")
    else:
        c.max_len("source_system", event.source_system, 64)
    if event.HasField("properties"):
        size = event.properties.ByteSize()
        if size > limits.max_properties_bytes:
            c.add("properties", f"is {size} bytes, more than {limits.max_properties_bytes}")


# Timestamp range of RFC 3339 (0001-01-01 to 9999-12-31), which protobuf's conversions take.
_MIN_TIMESTAMP_S = -62_135_596_800
_MAX_TIMESTAMP_S = 253_402_300_799
_MAX_DURATION_S = 315_576_000_000
_NANOS = 1_000_000_000


def valid_timestamp(ts: timestamp_pb2.Timestamp) -> bool:
    seconds, nanos = ts.seconds, ts.nanos
    return _MIN_TIMESTAMP_S <= seconds <= _MAX_TIMESTAMP_S and 0 <= nanos < _NANOS


def _check_duration(c: _Checker, field: str, d: duration_pb2.Duration) -> None:
    seconds, nanos = d.seconds, d.nanos
    if abs(seconds) > _MAX_DURATION_S or abs(nanos) >= _NANOS:
        c.add(field, "is not a valid duration (seconds within +/-10000 years, |nanos| < 1e9)")
    elif (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        c.add(field, "is not a valid duration (seconds and nanos must have the same sign)")


def _finite(number: float) -> bool:
    return number - number == 0.0  # False for NaN and both infinities


def _check_struct_value(
    c: _Checker, field: str, value: struct_pb2.Value, depth: int, limits: Limits
) -> None:
    """A google.protobuf.Value: nesting bounded, numbers finite (JSON has no NaN)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not _finite(value.number_value):
            c.add(field, "is not a finite number")
    elif kind == "struct_value":
        _check_struct(c, field, value.struct_value, depth + 1, limits)
    elif kind == "list_value":
        items = value.list_value.values
        if depth + 1 > limits.max_struct_depth:
            c.add(field, f"is nested more than {limits.max_struct_depth} levels deep")
        elif len(items) > limits.max_list_len:
            c.add(field, f"has {len(items)} items, more than {limits.max_list_len}")
        else:
            for i, item in enumerate(items):
                _check_struct_value(c, f"{field}[{i}]", item, depth + 1, limits)


def _check_struct(
    c: _Checker, field: str, struct: struct_pb2.Struct, depth: int, limits: Limits
) -> None:
    if depth > limits.max_struct_depth:
        c.add(field, f"is nested more than {limits.max_struct_depth} levels deep")
        return
    for key, value in struct.fields.items():
        if len(key) > MAX_ID_LEN:
            c.add(f"{field}.{key[:40]}", f"is a key longer than {MAX_ID_LEN} characters")
        elif value.WhichOneof("kind") in _NESTED_OR_NUMBER:
            _check_struct_value(c, f"{field}.{key}", value, depth, limits)


_NESTED_OR_NUMBER = {"number_value", "struct_value", "list_value"}
_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_CHECKED = {_STRING, _MESSAGE, FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


_SPECIAL = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
}
_FLOATING = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_WALKS: dict[tuple[str, bool], bool] = {}


def _needs_walk(descriptor: Descriptor, strings: bool) -> bool:
    """Whether a message of this type can hold anything `_check_bounds` must look at.

    Types of only bounded scalars (and, when `strings` is False, strings) are skipped:
    the walk runs for every event, and most of its sub-messages are such types.
    """
    key = (descriptor.full_name, strings)
    if key not in _WALKS:
        _WALKS[key] = False  # a recursive type is decided by its other fields
        _WALKS[key] = any(
            fd.is_repeated
            or fd.type in _FLOATING
            or (strings and fd.type == _STRING)
            or _walks_into(fd, strings)
            for fd in descriptor.fields
        )
    return _WALKS[key]


def _walks_into(fd: FieldDescriptor, strings: bool) -> bool:
    """Whether a message field's value can hold anything to check."""
    sub = fd.message_type
    if fd.type != _MESSAGE or sub is None:
        return False
    return sub.full_name in _SPECIAL or _needs_walk(sub, strings)


def _check_bounds(
    c: _Checker, message: Message, prefix: str, limits: Limits, strings: bool = True
) -> None:
    """Bounds every set field of a message, recursively, whatever its type.

    Typed checks that follow may assume what this guarantees: timestamps and durations
    convert, structs are shallow, numbers are finite, strings and lists are bounded.
    `strings` False skips string lengths: the caller knows the whole message is shorter
    than the limit (a string has at most as many characters as its UTF-8 bytes).
    Field paths are only built for violations: this runs for every event.
    """
    for fd, value in message.ListFields():
        kind = fd.type
        if kind == _STRING and not strings:
            if fd.is_repeated and len(value) > limits.max_list_len:
                c.add(prefix + fd.name, f"has {len(value)} items, more than {limits.max_list_len}")
            continue
        if kind == _MESSAGE and not fd.is_repeated and not _walks_into(fd, strings):
            continue
        if fd.is_repeated:
            if len(value) > limits.max_list_len:
                c.add(prefix + fd.name, f"has {len(value)} items, more than {limits.max_list_len}")
            elif kind in _CHECKED:
                for i, item in enumerate(value):
                    _check_bounds_one(c, kind, prefix, f"{fd.name}[{i}]", item, limits, strings)
        elif kind in _CHECKED:
            _check_bounds_one(c, kind, prefix, fd.name, value, limits, strings)


def _check_bounds_one(
    c: _Checker, kind: int, prefix: str, name: str, value: Any, limits: Limits, strings: bool
) -> None:
    if kind == _STRING:
        if len(value) > limits.max_string_len:
            c.add(prefix + name, f"is longer than {limits.max_string_len} characters")
    elif kind == _MESSAGE:
        if isinstance(value, timestamp_pb2.Timestamp):
            if not valid_timestamp(value):
                c.add(
                    prefix + name,
                    "is not a valid timestamp (0001-01-01 to 9999-12-31, 0 <= nanos < 1e9)",
                )
        elif isinstance(value, duration_pb2.Duration):
            _check_duration(c, prefix + name, value)
        elif isinstance(value, struct_pb2.Struct):
            _check_struct(c, prefix + name, value, 1, limits)
        elif isinstance(value, struct_pb2.Value):
            _check_struct_value(c, prefix + name, value, 1, limits)
        elif isinstance(value, struct_pb2.ListValue):
            _check_struct_value(c, prefix + name, struct_pb2.Value(list_value=value), 0, limits)
        else:
            if _needs_walk(value.DESCRIPTOR, strings):
                _check_bounds(c, value, f"{prefix}{name}.", limits, strings)
    elif not _finite(value):
        c.add(prefix + name, "is not a finite number")


def normalise_and_validate(
    event: ev.TouchpointEvent,
    *,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Violation]:
    """Normalises the event's identities in place and returns what is wrong with it.

    An empty list means the event is valid. `now` is the clock future timestamps are
    judged against (consumers pass the record's timestamp).
    """
    c = _Checker()
    try:
        size = event.ByteSize()
        if size > limits.max_event_bytes:
            c.add("event", f"is {size} bytes, more than {limits.max_event_bytes}")
            return c.violations
        _check_bounds(c, event, "", limits, strings=size > limits.max_string_len)
        if c.violations:
            # The typed checks below assume these bounds hold.
            return c.violations
        normalise_identities(event.identities)
        _check_envelope(c, event, now or datetime.now(UTC), limits)
        kind = event.WhichOneof("payload")
        if kind is None:
            c.add("payload", "is required: set one event type such as page_view or order_placed")
        else:
            PAYLOAD_CHECKS[kind](c, getattr(event, kind))
    except Exception as exc:  # a validator that raises would stop a stream: never
        c.add("event", f"cannot be validated ({type(exc).__name__}: {exc})")
    return c.violations


def partition_key(event: ev.TouchpointEvent) -> bytes:
    """Kafka key that keeps one person's events in order: the most stable identifier.

    Ingestion cannot know which profile an identifier belongs to; the profile service
    re-keys by profile id after identity resolution.
    """
    ids = event.identities
    for kind, value in (
        ("customer_id", ids.customer_id),
        ("anonymous_id", ids.anonymous_id),
        ("email", ids.email),
        ("phone", ids.phone),
    ):
        if value:
            return _hashed_key(kind, value)
    return _hashed_key("event_id", event.event_id)


def _hashed_key(kind: str, value: str) -> bytes:
    # Hashed so that emails and phone numbers do not appear in keys (logs, tools, metrics).
    return hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=16).hexdigest().encode()
