"""Receivers: where pages go (the `[[receiver]]` tables of owners.toml), pure.

A receiver has a name (what teams list and what delivery history and idempotency markers
name), a type (pagerduty | alertmanager | slack | webhook) and a URL. Secrets never live
in the file: a PagerDuty routing key, a webhook's HMAC secret and a Slack webhook URL
are read from the environment variables the receiver names. For the local stack, whose
receivers point at the loopback sink (services/alerts/sink.py), an unset variable falls
back to a value derived from the receiver's name, so `make up` works without secrets; a
receiver outside the loopback refuses to resolve without its secret.

```toml
[[receiver]]
name = "care-pagerduty"
type = "pagerduty"
url = "http://127.0.0.1:9471/pagerduty/v2/enqueue"
routing_key_env = "ALERTS_CARE_PAGERDUTY_ROUTING_KEY"
rate_per_min = 120        # optional: PagerDuty's limit is ~120 events a minute per key

[[receiver]]
name = "alertmanager"
type = "alertmanager"
url = "http://127.0.0.1:9095"            # POST {url}/api/v2/alerts
url_env = "ALERTS_ALERTMANAGER_URL"      # optional: overrides url when set

[[receiver]]
name = "care-slack"
type = "slack"
url = "http://127.0.0.1:9471/slack/care"
webhook_url_env = "ALERTS_CARE_SLACK_WEBHOOK_URL"

[[receiver]]
name = "care-webhook"
type = "webhook"
url = "http://127.0.0.1:9471/webhook/care"
secret_env = "ALERTS_CARE_WEBHOOK_SECRET"
```
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.conditions import RuleConfigError

PAGERDUTY, ALERTMANAGER, SLACK, WEBHOOK = "pagerduty", "alertmanager", "slack", "webhook"
RECEIVER_TYPES = (PAGERDUTY, ALERTMANAGER, SLACK, WEBHOOK)
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
# Requests a minute by type when the file does not say (0: no limit). PagerDuty's Events
# API v2 takes about 120 calls a minute per integration key (developer docs, "Events API
# Rate Limits"); Slack's incoming webhooks about one message a second.
DEFAULT_RATE_PER_MIN = {PAGERDUTY: 120.0, ALERTMANAGER: 0.0, SLACK: 60.0, WEBHOOK: 0.0}
DEFAULT_BURST = {PAGERDUTY: 10, ALERTMANAGER: 1, SLACK: 1, WEBHOOK: 1}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ReceiverConfigError(RuleConfigError):
    """A receiver that cannot be used: the message names the file, the receiver and the key."""


class ReceiverSpec(BaseModel):
    """One `[[receiver]]` table as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    EXAMPLE: ClassVar[str] = '[[receiver]] name = "care-pagerduty", type = "pagerduty", url = ...'

    name: str
    type: Literal["pagerduty", "alertmanager", "slack", "webhook"]
    url: str = Field(min_length=1)
    url_env: str = ""
    webhook_url_env: str = ""
    routing_key_env: str = ""
    secret_env: str = ""
    rate_per_min: float | None = Field(default=None, ge=0)
    burst: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must be 1-64 lower-case letters, digits, _ or -, from a letter")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("url_env", "webhook_url_env", "routing_key_env", "secret_env")
    @classmethod
    def _env(cls, value: str) -> str:
        if value and not ENV_RE.match(value):
            raise ValueError("must be an environment variable name (A-Z, 0-9, _)")
        return value


@dataclass(frozen=True)
class Receiver:
    """A receiver ready to send to: URL and secrets resolved from the environment."""

    name: str
    type: str
    url: str
    routing_key: str = ""
    secret: str = ""
    rate_per_min: float = 0.0
    burst: int = 1

    @property
    def rate_key(self) -> str:
        """What its rate limit is counted against: PagerDuty limits per integration key,
        so receivers sharing a routing key share a bucket."""
        if self.type == PAGERDUTY:
            return f"pagerduty:{self.routing_key}"
        return f"{self.type}:{self.name}"

    @property
    def local(self) -> bool:
        return (urlsplit(self.url).hostname or "") in LOOPBACK_HOSTS


def parse_receivers(items: object, source: str) -> dict[str, ReceiverSpec]:
    """The `[[receiver]]` array of tables of a document, by name."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise ReceiverConfigError(f"{source}: receiver must be an array of tables ([[receiver]])")
    specs: dict[str, ReceiverSpec] = {}
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        label = (
            f"receiver {name!r}"
            if isinstance(name, str) and NAME_RE.match(name)
            else f"receiver #{index + 1}"
        )
        try:
            spec = ReceiverSpec.model_validate(item)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            key = ".".join(map(str, error["loc"])) or "table"
            raise ReceiverConfigError(f"{source}: {label}: {key}: {error['msg']}") from None
        if spec.name in specs:
            raise ReceiverConfigError(f"{source}: {label}: defined twice")
        specs[spec.name] = spec
    return specs


def local_secret(kind: str, name: str) -> str:
    """The stand-in secret of a loopback receiver whose variable is unset: 32 hex
    characters (the shape of a PagerDuty integration key), stable per receiver."""
    return hashlib.sha256(f"cx-local-{kind}:{name}".encode()).hexdigest()[:32]


def resolve(spec: ReceiverSpec, env: Mapping[str, str], source: str = "owners") -> Receiver:
    """The receiver with its URL and secrets from `env` (os.environ in the processes)."""
    label = f"{source}: receiver {spec.name!r}"
    url = spec.url
    for var in (spec.url_env, spec.webhook_url_env):
        if var and env.get(var):
            url = env[var]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReceiverConfigError(f"{label}: url {url!r} is not an http:// or https:// URL")
    local = parts.hostname in LOOPBACK_HOSTS

    def secret(var: str, kind: str, key: str) -> str:
        if var and env.get(var):
            return env[var]
        if local:
            return local_secret(kind, spec.name)
        missing = f"environment variable {var} is not set" if var else f"{key} is not given"
        raise ReceiverConfigError(f"{label}: {missing} (secrets come only from the environment)")

    routing_key = (
        secret(spec.routing_key_env, "routing-key", "routing_key_env")
        if spec.type == PAGERDUTY
        else ""
    )
    hmac_secret = (
        secret(spec.secret_env, "webhook-secret", "secret_env") if spec.type == WEBHOOK else ""
    )
    rate = DEFAULT_RATE_PER_MIN[spec.type] if spec.rate_per_min is None else spec.rate_per_min
    burst = DEFAULT_BURST[spec.type] if spec.burst is None else spec.burst
    return Receiver(spec.name, spec.type, url, routing_key, hmac_secret, rate, burst)


def resolve_all(
    specs: Mapping[str, ReceiverSpec], env: Mapping[str, str], source: str = "owners"
) -> dict[str, Receiver]:
    return {name: resolve(spec, env, source) for name, spec in specs.items()}


def webhook_secrets(receivers: Sequence[Receiver]) -> dict[str, str]:
    """The sink's view: HMAC secret by the last path segment of each webhook URL
    (`/webhook/<name>`)."""
    out: dict[str, str] = {}
    for r in receivers:
        if r.type == WEBHOOK:
            out[urlsplit(r.url).path.rstrip("/").rsplit("/", 1)[-1]] = r.secret
    return out


def receivers_document(document: Mapping[str, Any], source: str) -> dict[str, ReceiverSpec]:
    """The receivers of a parsed owners document."""
    return parse_receivers(document.get("receiver"), source)
