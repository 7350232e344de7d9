"""One incident change to one receiver: the HTTP request, by the receiver's type."""

from __future__ import annotations

from cx.alerts.v1 import alerts_pb2 as pb

from services.alerts.domain.receivers import ALERTMANAGER, PAGERDUTY, SLACK, WEBHOOK, Receiver
from services.alerts.receivers import alertmanager, pagerduty, slack, webhook
from services.alerts.receivers.common import Request
from services.alerts.receivers.webhook import IDEMPOTENCY_HEADER


def build_request(receiver: Receiver, change: pb.IncidentChange, idempotency_key: str) -> Request:
    """The request; every type carries `X-Cx-Idempotency-Key` (receivers that do not know
    it ignore an unknown header)."""
    if receiver.type == PAGERDUTY:
        built = pagerduty.request(change, receiver.url, receiver.routing_key)
    elif receiver.type == ALERTMANAGER:
        built = alertmanager.request(change, receiver.url)
    elif receiver.type == SLACK:
        built = slack.request(change, receiver.url)
    elif receiver.type == WEBHOOK:
        return webhook.request(change, receiver.url, receiver.secret, idempotency_key)
    else:
        raise ValueError(f"receiver {receiver.name!r}: unknown type {receiver.type!r}")
    built.headers[IDEMPOTENCY_HEADER] = idempotency_key
    return built
