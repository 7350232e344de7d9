"""The receivers' payload builders against the documented schemas (the sink's validators
encode them: PagerDuty Events API v2, Alertmanager API v2 postable alerts and webhook
notifications, Slack Block Kit, our signed webhook), no personal data in any payload,
and the receivers' configuration."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cx.alerts.v1 import alerts_pb2 as pb
from google.protobuf import json_format

from services.alerts.domain.receivers import (
    ReceiverConfigError,
    local_secret,
    parse_receivers,
    resolve,
    webhook_secrets,
)
from services.alerts.receivers import alertmanager, pagerduty, slack, webhook
from services.alerts.receivers.build import build_request
from services.alerts.receivers.common import (
    MAX_DEDUP_KEY,
    dedup_key,
    personal_data,
    scrub,
)
from services.alerts.receivers.sender import DeliveryError, classify, retry_after
from services.alerts.sink import (
    LABEL_NAME_RE,
    RFC3339_RE,
    validate_alertmanager,
    validate_pagerduty,
    validate_slack,
    validate_webhook,
)

NOW_MS = 1_800_000_000_000
ROUTING_KEY = "0123456789abcdef0123456789abcdef"
EMAIL, PHONE = "ada.lovelace@example.com", "+447700900123"


def incident(**kw: Any) -> pb.Incident:
    inc = pb.Incident(
        incident_id="inc-0001",
        dedup_key="detractor_nps:pid:p-42",
        rule="detractor_nps",
        kind=pb.RULE_KIND_EVENT,
        state=pb.STATE_TRIGGERED,
        severity=pb.SEVERITY_CRITICAL,
        team="cx",
        summary="VIP detractor: NPS 2",
        profile_id="p-42",
        touchpoint="survey.nps",
        count=2,
        version=1,
    )
    inc.first_seen.FromMilliseconds(NOW_MS - 60_000)
    inc.last_seen.FromMilliseconds(NOW_MS)
    for i in range(7):
        e = inc.evidence.add(
            event_id=f"evt-{i}",
            touchpoint="survey.nps",
            payload="survey_response",
            negative="detractor",
        )
        e.occurred_at.FromMilliseconds(NOW_MS - i * 1000)
        e.scores["nps"] = 2.0
    inc.deliveries.add(receiver="pagerduty-cx", change="OPENED", status="delivered")
    for key, value in kw.items():
        if key in ("acknowledged_at", "resolved_at"):
            getattr(inc, key).FromMilliseconds(value)
        else:
            setattr(inc, key, value)
    return inc


def change(
    kind: pb.Change.ValueType = pb.CHANGE_OPENED, at_ms: int = NOW_MS, **kw: Any
) -> pb.IncidentChange:
    message = pb.IncidentChange(incident=incident(**kw), change=kind)
    message.at.FromMilliseconds(at_ms)
    return message


def acknowledged(**kw: Any) -> pb.IncidentChange:
    return change(
        pb.CHANGE_ACKNOWLEDGED,
        NOW_MS + 1000,
        state=pb.STATE_ACKNOWLEDGED,
        acknowledged_by=f"Ada <{EMAIL}>",
        acknowledged_at=NOW_MS + 1000,
        version=2,
        **kw,
    )


def resolved(**kw: Any) -> pb.IncidentChange:
    return change(
        pb.CHANGE_RESOLVED,
        NOW_MS + 2000,
        state=pb.STATE_RESOLVED,
        resolved_by=EMAIL,
        resolved_at=NOW_MS + 2000,
        resolution=f"called back on {PHONE}",
        version=3,
        **kw,
    )


PERSONAL: dict[str, Any] = {"summary": f"Detractor {EMAIL}, call {PHONE}"}
ALL_CHANGES = [change(**PERSONAL), acknowledged(**PERSONAL), resolved(**PERSONAL)]


# --- what counts as personal data ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [EMAIL, PHONE, "+44 7700 900123", "+1 (555) 123-4567", "(555) 123-4567", "A.B@sub.ex.co"],
)
def test_personal_data_is_found_and_scrubbed(text: str) -> None:
    assert personal_data({"a": [f"x {text} y"]})
    assert not personal_data(scrub(f"x {text} y"))


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T10:15:00.123Z",
        "detractor_nps:pid:p-42",
        "inc-0190f3a2b1c-4f2a9e",
        "0123456789abcdef0123456789abcdef",
        "9f1c2b6e-3d4a-4e5f-8a9b-0c1d2e3f4a5b",
        "nps=2 csat=1",
        "late by 1500 minutes",
    ],
)
def test_ids_and_times_are_not_personal_data(text: str) -> None:
    assert personal_data(text) == []
    assert scrub(text) == text


@pytest.mark.parametrize("message", ALL_CHANGES, ids=["opened", "acknowledged", "resolved"])
@pytest.mark.parametrize("kind", ["pagerduty", "alertmanager", "slack", "webhook"])
def test_no_email_or_phone_in_any_payload(kind: str, message: pb.IncidentChange) -> None:
    if kind == "pagerduty":
        body: object = pagerduty.event(message, ROUTING_KEY)
    elif kind == "alertmanager":
        body = alertmanager.alert(message)
    elif kind == "slack":
        body = slack.message(message)
    else:
        body = json.loads(webhook.body(message))
    assert personal_data(body) == []
    text = json.dumps(body)
    assert EMAIL not in text
    assert "7700" not in text


# --- PagerDuty Events API v2 -------------------------------------------------------------


def test_pagerduty_trigger_follows_the_schema() -> None:
    event = pagerduty.event(change(), ROUTING_KEY)
    assert validate_pagerduty(event) == []
    assert event["event_action"] == "trigger"
    assert event["routing_key"] == ROUTING_KEY
    assert event["dedup_key"] == "detractor_nps:pid:p-42"
    payload = event["payload"]
    assert payload["severity"] == "critical"
    assert payload["summary"] == "VIP detractor: NPS 2"
    assert payload["source"] == "cx-platform/survey.nps"
    assert payload["class"] == "detractor_nps"
    assert payload["group"] == "cx"
    assert RFC3339_RE.match(payload["timestamp"])
    details = payload["custom_details"]
    assert details["profile_id"] == "p-42"
    assert details["incident_id"] == "inc-0001"
    assert [e["event_id"] for e in details["evidence"]] == [f"evt-{i}" for i in range(5)]
    assert details["evidence"][0]["scores"] == {"nps": 2.0}


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (pb.SEVERITY_CRITICAL, "critical"),
        (pb.SEVERITY_ERROR, "error"),
        (pb.SEVERITY_WARNING, "warning"),
        (pb.SEVERITY_INFO, "info"),
        (pb.SEVERITY_UNSPECIFIED, "info"),
    ],
)
def test_pagerduty_severities(severity: int, expected: str) -> None:
    event = pagerduty.event(change(severity=severity), ROUTING_KEY)
    assert event["payload"]["severity"] == expected
    assert validate_pagerduty(event) == []


def test_pagerduty_acknowledge_and_resolve_carry_the_same_dedup_key() -> None:
    trigger = pagerduty.event(change(), ROUTING_KEY)
    ack = pagerduty.event(acknowledged(), ROUTING_KEY)
    res = pagerduty.event(resolved(), ROUTING_KEY)
    assert ack == {
        "routing_key": ROUTING_KEY,
        "event_action": "acknowledge",
        "dedup_key": trigger["dedup_key"],
    }
    assert res == {**ack, "event_action": "resolve"}
    assert validate_pagerduty(ack) == validate_pagerduty(res) == []


def test_pagerduty_escalation_is_a_trigger() -> None:
    event = pagerduty.event(change(pb.CHANGE_ESCALATED, escalation_level=1), ROUTING_KEY)
    assert event["event_action"] == "trigger"
    assert event["payload"]["custom_details"]["escalation_level"] == 1


def test_pagerduty_updates_are_not_paged() -> None:
    with pytest.raises(ValueError, match="UPDATED"):
        pagerduty.event(change(pb.CHANGE_UPDATED), ROUTING_KEY)


def test_pagerduty_limits() -> None:
    long = change(summary="x" * 5000, dedup_key="r:pid:" + "p" * 400)
    event = pagerduty.event(long, ROUTING_KEY)
    assert validate_pagerduty(event) == []
    assert len(event["payload"]["summary"]) == 1024
    assert len(event["dedup_key"]) == MAX_DEDUP_KEY
    # Stable and distinct: the same long key always, another long key differently.
    assert dedup_key(long.incident) == event["dedup_key"]
    other = change(dedup_key="r:pid:" + "p" * 399 + "q").incident
    assert dedup_key(other) != event["dedup_key"]


def test_pagerduty_touchpoint_incident_without_a_person() -> None:
    event = pagerduty.event(
        change(profile_id="", dedup_key="spike:tp:checkout.payment"), ROUTING_KEY
    )
    assert validate_pagerduty(event) == []
    assert "profile_id" not in event["payload"]["custom_details"]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda e: e.pop("routing_key"), "routing_key: is required"),
        (lambda e: e.update(routing_key="short"), "routing_key: must be a 32"),
        (lambda e: e.update(event_action="page"), "event_action"),
        (lambda e: e["payload"].update(severity="high"), "payload.severity"),
        (lambda e: e["payload"].pop("source"), "payload.source: is required"),
        (lambda e: e["payload"].update(summary=""), "payload.summary"),
        (lambda e: e["payload"].update(timestamp="yesterday"), "payload.timestamp"),
        (lambda e: e["payload"].update(custom_details=[1]), "payload.custom_details"),
        (lambda e: e.update(dedup_key="k" * 256), "dedup_key: longer than 255"),
        (lambda e: e.update(links=[{"text": "no href"}]), "links[0].href"),
        (lambda e: e.update(extra=1), "extra: is not a field"),
        (lambda e: e.pop("payload"), "payload: is required"),
    ],
)
def test_pagerduty_validation_names_the_field(mutate: Any, problem: str) -> None:
    event = pagerduty.event(change(), ROUTING_KEY)
    mutate(event)
    assert any(problem in e for e in validate_pagerduty(event)), validate_pagerduty(event)


def test_pagerduty_resolve_needs_a_dedup_key() -> None:
    errors = validate_pagerduty({"routing_key": ROUTING_KEY, "event_action": "resolve"})
    assert errors == ["dedup_key: is required"]


# --- Alertmanager API v2 -------------------------------------------------------------------


def test_alertmanager_alert_follows_the_postable_schema() -> None:
    alert = alertmanager.alert(change())
    assert set(alert) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert all(LABEL_NAME_RE.match(k) and isinstance(v, str) for k, v in alert["labels"].items())
    assert all(isinstance(v, str) for v in alert["annotations"].values())
    assert RFC3339_RE.match(alert["startsAt"])
    assert RFC3339_RE.match(alert["endsAt"])
    assert alert["labels"]["dedup_key"] == "detractor_nps:pid:p-42"
    assert alert["labels"]["alertname"] == "detractor_nps"
    assert alert["annotations"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "VIP detractor: NPS 2"
    assert alert["annotations"]["evidence"].count("\n") == 4
    # Firing: ends far ahead (Alertmanager's resolve_timeout must not resolve it).
    assert alert["endsAt"] > "2027"


def test_alertmanager_labels_do_not_change_during_the_incident() -> None:
    # The severity rose with a later event; the resolve must hit the same alert.
    opened = alertmanager.alert(change(severity=pb.SEVERITY_WARNING))
    later = [alertmanager.alert(c) for c in (acknowledged(), resolved())]
    assert all(a["labels"] == opened["labels"] for a in later)
    assert "severity" not in opened["labels"]


def test_alertmanager_resolve_sets_ends_at() -> None:
    alert = alertmanager.alert(resolved())
    assert alert["endsAt"] == "2027-01-15T08:00:02.000Z"
    assert alert["startsAt"] == "2027-01-15T07:59:00.000Z"
    assert alert["annotations"]["state"] == "resolved"


def test_alertmanager_drops_empty_labels() -> None:
    alert = alertmanager.alert(change(profile_id=""))
    assert "profile_id" not in alert["labels"]


def test_alertmanager_request_posts_a_list_to_the_v2_api() -> None:
    request = alertmanager.request(change(), "http://127.0.0.1:9095/")
    assert request.url == "http://127.0.0.1:9095/api/v2/alerts"
    assert isinstance(json.loads(request.body), list)


def webhook_notification(**kw: Any) -> dict[str, Any]:
    """An Alertmanager 0.25 webhook notification (notify/webhook.Message)."""
    body: dict[str, Any] = {
        "receiver": "cx-alerts-sink",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "detractor_nps", "dedup_key": "detractor_nps:pid:p-42"},
                "annotations": {"summary": "VIP detractor"},
                "startsAt": "2026-11-23T15:14:18.635Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "cx://alerts/incidents/inc-0001",
                "fingerprint": "8eb1c32257fae7be",
            }
        ],
        "groupLabels": {"alertname": "detractor_nps"},
        "commonLabels": {"alertname": "detractor_nps"},
        "commonAnnotations": {"summary": "VIP detractor"},
        "externalURL": "http://vm:9095",
        "version": "4",
        "groupKey": '{}:{alertname="detractor_nps"}',
        "truncatedAlerts": 0,
    }
    body.update(kw)
    return body


def test_alertmanager_webhook_validation() -> None:
    assert validate_alertmanager(webhook_notification()) == []
    assert validate_alertmanager(webhook_notification(version="3")) == ['version: must be "4"']
    assert "status: must be firing or resolved" in validate_alertmanager(
        webhook_notification(status="ok")
    )
    bad_alert = webhook_notification()
    bad_alert["alerts"][0]["labels"] = {"bad-name": "x"}
    bad_alert["alerts"][0]["endsAt"] = "soon"
    errors = validate_alertmanager(bad_alert)
    assert "alerts[0].labels.bad-name: is not a valid label name" in errors
    assert "alerts[0].endsAt: must be an RFC 3339 time" in errors
    missing = webhook_notification()
    del missing["groupKey"]
    assert validate_alertmanager(missing) == ["groupKey: is required"]


# --- Slack -----------------------------------------------------------------------------


def test_slack_message_follows_block_kit() -> None:
    message = slack.message(change())
    assert validate_slack(message) == []
    header, fields, evidence, context = message["blocks"]
    assert header["type"] == "header"
    assert header["text"]["type"] == "plain_text"
    assert header["text"]["text"] == "Opened: VIP detractor: NPS 2"
    assert fields["type"] == "section"
    assert len(fields["fields"]) <= 10
    assert "*Profile*\np-42" in [f["text"] for f in fields["fields"]]
    assert evidence["text"]["text"].count("•") == 5
    assert context["type"] == "context"
    assert "dedup key `detractor_nps:pid:p-42`" in context["elements"][0]["text"]
    assert message["text"].startswith(":red_circle: Opened:")


def test_slack_limits() -> None:
    message = slack.message(change(summary="y" * 500))
    assert validate_slack(message) == []
    assert len(message["blocks"][0]["text"]["text"]) == 150


@pytest.mark.parametrize("message", ALL_CHANGES, ids=["opened", "acknowledged", "resolved"])
def test_slack_every_change(message: pb.IncidentChange) -> None:
    assert validate_slack(slack.message(message)) == []


def test_slack_validation_names_the_block() -> None:
    too_long = {"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]}
    assert validate_slack(too_long) == ["blocks[0].text.text: longer than 150 characters"]
    mrkdwn_header = {"blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]}
    assert validate_slack(mrkdwn_header) == ["blocks[0].text.type: must be one of plain_text"]
    eleven = {"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}]}
    assert validate_slack(eleven) == ["blocks[0].fields: must be an array of 1 to 10 text objects"]
    assert validate_slack({}) == ["text: is required when there are no blocks"]
    assert validate_slack({"blocks": [{"type": "video"}]}) == [
        "blocks[0].type: 'video' is not a block this sink knows"
    ]


# --- Webhooks -----------------------------------------------------------------------------


def test_webhook_is_a_signed_incident_change() -> None:
    request = webhook.request(
        change(**PERSONAL),
        "http://127.0.0.1:9471/webhook/ops",
        "s3cret",
        "1800000000000-0:webhook-ops",
    )
    headers = request.headers
    assert headers["X-Cx-Idempotency-Key"] == "1800000000000-0:webhook-ops"
    assert headers["X-Cx-Event"] == "OPENED"
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", headers["X-Cx-Signature"])
    assert webhook.verify("s3cret", request.body, headers["X-Cx-Signature"])
    assert not webhook.verify("other", request.body, headers["X-Cx-Signature"])
    assert not webhook.verify("s3cret", request.body + b" ", headers["X-Cx-Signature"])
    errors, parsed = validate_webhook(request.body)
    assert errors == []
    assert parsed is not None
    assert parsed.incident.dedup_key == "detractor_nps:pid:p-42"
    assert parsed.incident.summary == "Detractor [email], call [phone]"
    # The delivery history stays inside the platform.
    assert not parsed.incident.deliveries


def test_webhook_validation() -> None:
    assert validate_webhook(b"{}")[0] == [
        "change: is required",
        "incident.incidentId: is required",
        "incident.dedupKey: is required",
    ]
    assert validate_webhook(b'{"nope": 1}')[0][0].startswith("body: not an IncidentChange")


def test_every_request_carries_the_idempotency_key() -> None:
    env = {"PD_KEY": ROUTING_KEY}
    specs = parse_receivers(
        [
            {
                "name": "pd",
                "type": "pagerduty",
                "url": "http://127.0.0.1:1/pagerduty/v2/enqueue",
                "routing_key_env": "PD_KEY",
            },
            {"name": "am", "type": "alertmanager", "url": "http://127.0.0.1:9095"},
            {"name": "sl", "type": "slack", "url": "http://127.0.0.1:1/slack/x"},
            {"name": "wh", "type": "webhook", "url": "http://127.0.0.1:1/webhook/ops"},
        ],
        "owners.toml",
    )
    for spec in specs.values():
        request = build_request(resolve(spec, env), change(), f"1-0:{spec.name}")
        assert request.headers["X-Cx-Idempotency-Key"] == f"1-0:{spec.name}"
        assert request.headers["Content-Type"] == "application/json"
    pd = build_request(resolve(specs["pd"], env), change(), "k")
    assert json.loads(pd.body)["routing_key"] == ROUTING_KEY


# --- Receivers' configuration ---------------------------------------------------------------


def test_receiver_config_errors_name_the_receiver_and_key() -> None:
    with pytest.raises(ReceiverConfigError, match=r"owners.toml: receiver 'pd': type"):
        parse_receivers([{"name": "pd", "type": "pager", "url": "http://x"}], "owners.toml")
    with pytest.raises(ReceiverConfigError, match=r"receiver 'pd': url: .*http"):
        parse_receivers([{"name": "pd", "type": "pagerduty", "url": "ftp://x"}], "owners.toml")
    with pytest.raises(ReceiverConfigError, match=r"receiver #1: name"):
        parse_receivers([{"name": "Bad Name", "type": "slack", "url": "http://x"}], "o")
    with pytest.raises(ReceiverConfigError, match=r"receiver 'a': defined twice"):
        parse_receivers([{"name": "a", "type": "slack", "url": "http://x"}] * 2, "o")
    with pytest.raises(ReceiverConfigError, match=r"receiver 'a': secret_env"):
        parse_receivers(
            [{"name": "a", "type": "webhook", "url": "http://x", "secret_env": "lower"}], "o"
        )


def test_secrets_come_only_from_the_environment() -> None:
    specs = parse_receivers(
        [
            {
                "name": "pd",
                "type": "pagerduty",
                "url": "https://events.pagerduty.com/v2/enqueue",
                "routing_key_env": "PD_KEY",
            },
            {
                "name": "wh",
                "type": "webhook",
                "url": "http://127.0.0.1:9471/webhook/ops",
                "secret_env": "WH_SECRET",
                "url_env": "WH_URL",
            },
        ],
        "owners.toml",
    )
    with pytest.raises(ReceiverConfigError, match="PD_KEY is not set"):
        resolve(specs["pd"], {})
    assert resolve(specs["pd"], {"PD_KEY": ROUTING_KEY}).routing_key == ROUTING_KEY
    # A loopback receiver works without its variable (the local sink).
    local = resolve(specs["wh"], {})
    assert local.secret == local_secret("webhook-secret", "wh")
    assert resolve(specs["wh"], {"WH_SECRET": "abc"}).secret == "abc"
    with pytest.raises(ReceiverConfigError, match="WH_SECRET is not set"):
        resolve(specs["wh"], {"WH_URL": "https://hooks.example.net/ops"})
    moved = resolve(specs["wh"], {"WH_URL": "https://hooks.example.net/ops", "WH_SECRET": "z"})
    assert moved.url == "https://hooks.example.net/ops"
    assert webhook_secrets([local]) == {"ops": local.secret}


def test_rate_limits_by_type_and_routing_key() -> None:
    specs = parse_receivers(
        [
            {"name": "a", "type": "pagerduty", "url": "http://127.0.0.1/x"},
            {"name": "b", "type": "pagerduty", "url": "http://127.0.0.1/x", "rate_per_min": 30},
            {"name": "c", "type": "alertmanager", "url": "http://127.0.0.1:9095"},
        ],
        "o",
    )
    a, b, c = (resolve(s, {}) for s in specs.values())
    assert (a.rate_per_min, b.rate_per_min, c.rate_per_min) == (120.0, 30.0, 0.0)
    assert a.rate_key.startswith("pagerduty:")
    assert a.rate_key != b.rate_key
    assert len(a.routing_key) == 32


# --- Retry classification ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (404, False),
        (408, True),
        (413, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
    ],
)
def test_failures_worth_retrying(status: int, retryable: bool) -> None:
    with pytest.raises(DeliveryError) as caught:
        classify(status, "no", None)
    assert caught.value.retryable is retryable
    assert caught.value.status == status


def test_success_and_retry_after() -> None:
    classify(202, "")
    with pytest.raises(DeliveryError) as caught:
        classify(429, "slow down", "7")
    assert caught.value.retry_after_s == 7.0
    assert retry_after(None) is None
    assert retry_after("garbage") is None


def test_canonical_json_round_trip() -> None:
    message = change()
    parsed = pb.IncidentChange()
    json_format.Parse(webhook.body(message), parsed)
    assert parsed.incident.incident_id == message.incident.incident_id
    assert parsed.change == pb.CHANGE_OPENED
