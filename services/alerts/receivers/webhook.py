"""Generic webhooks: the IncidentChange as JSON (protobuf's canonical JSON mapping),
signed with HMAC-SHA256, pure.

Headers:
- `X-Cx-Signature: sha256=<hex>`: HMAC-SHA256 of the exact body bytes with the
  receiver's secret (compare in constant time).
- `X-Cx-Idempotency-Key`: the same for every attempt of one change to one receiver
  (`<outbox entry id>:<receiver>`): a receiver that sees it twice got a retry whose
  first attempt's answer was lost, and should do nothing again.
- `X-Cx-Event`: the change (OPENED, ACKNOWLEDGED, RESOLVED, ESCALATED).
"""

from __future__ import annotations

import hashlib
import hmac

from cx.alerts.v1 import alerts_pb2 as pb
from google.protobuf import json_format

from services.alerts.receivers.common import Request, change_name, shareable_change

SIGNATURE_HEADER = "X-Cx-Signature"
IDEMPOTENCY_HEADER = "X-Cx-Idempotency-Key"
EVENT_HEADER = "X-Cx-Event"
SIGNATURE_PREFIX = "sha256="


def body(change: pb.IncidentChange) -> bytes:
    return json_format.MessageToJson(shareable_change(change), indent=None, sort_keys=True).encode()


def signature(secret: str, payload: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def verify(secret: str, payload: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, payload), header)


def request(change: pb.IncidentChange, url: str, secret: str, idempotency_key: str) -> Request:
    payload = body(change)
    return Request(
        url,
        payload,
        {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(secret, payload),
            IDEMPOTENCY_HEADER: idempotency_key,
            EVENT_HEADER: change_name(change),
        },
    )
