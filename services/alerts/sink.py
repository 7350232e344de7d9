"""The local receiver sink: a real HTTP server standing in for PagerDuty, Alertmanager's
webhook receivers, Slack and generic webhooks, for the local stack, the tests, the demo
and the benchmark (port ALERTS_SINK_PORT, 9471).

Endpoints:
- `POST /pagerduty/v2/enqueue`: a PagerDuty Events API v2 event. 202 with PagerDuty's
  reply, or 400 `{"status": "invalid event", ...}`. The sink keeps PagerDuty's alert
  state per (routing key, dedup key), so each record says what PagerDuty would have made
  of it (`effect`: opened, deduplicated, acknowledged, resolved or dropped).
- `POST /alertmanager/webhook`: Alertmanager's webhook notification (version "4").
- `POST /slack/<hook>`: a Slack incoming-webhook message (Block Kit). 200 `ok`, or 400
  `invalid_blocks` / `no_text` / `invalid_payload` as Slack answers.
- `POST /webhook/<name>`: a generic webhook (JSON IncidentChange), its
  `X-Cx-Signature` checked against the secret of the receiver whose URL ends in
  `/webhook/<name>` (401 when it does not match, 404 for an unknown name).
- `GET /received?kind=&since=&dedup_key=&valid=`: what arrived, oldest first (`since`
  is the last `seq` already seen).
- `POST /control {"fail": true, "status": 503, "delay_s": 0}`: answer every receiver
  request with `status` (a receiver that is down) until `{"fail": false}`; `delay_s`
  holds each request that long before handling it (a slow receiver). `GET /control`.

Every request is validated against the documented schema of its kind (the checks name
the field) and appended to a JSONL file (one object a line) with its result: `valid`,
`errors`, `status` answered, `duplicate` (an `X-Cx-Idempotency-Key` already accepted),
`keys` (the dedup keys it is about), `personal_data` (emails or phone numbers found
anywhere in it; there should never be any) and `client_gone` (the sender hung up before
the answer: it will send again). A restarted sink reads its file back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from cx.alerts.v1 import alerts_pb2 as pb
from google.protobuf import json_format

from services.alerts.domain.receivers import receivers_document, resolve_all, webhook_secrets
from services.alerts.receivers.common import personal_data
from services.alerts.receivers.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify

log = logging.getLogger(__name__)

PAGERDUTY, ALERTMANAGER, SLACK, WEBHOOK = "pagerduty", "alertmanager", "slack", "webhook"
KINDS = (PAGERDUTY, ALERTMANAGER, SLACK, WEBHOOK)
RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:?\d{2})$"
)
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ROUTING_KEY_RE = re.compile(r"^[A-Za-z0-9]{32}$")
MAX_BODY = 512 * 1024
KEEP = 100_000

Errors = list[str]


# --- Schemas ------------------------------------------------------------------------


def _str(body: Mapping[str, Any], key: str, where: str, errors: Errors, *, required: bool) -> None:
    if key not in body:
        if required:
            errors.append(f"{where}{key}: is required")
        return
    if not isinstance(body[key], str):
        errors.append(f"{where}{key}: must be a string")
    elif required and not body[key]:
        errors.append(f"{where}{key}: must not be empty")


def _unknown(body: Mapping[str, Any], allowed: tuple[str, ...], where: str, errors: Errors) -> None:
    for key in body:
        if key not in allowed:
            errors.append(f"{where}{key}: is not a field of this schema")


PD_FIELDS = (
    "routing_key",
    "event_action",
    "dedup_key",
    "payload",
    "images",
    "links",
    "client",
    "client_url",
)
PD_PAYLOAD_FIELDS = (
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
)


def validate_pagerduty(body: object) -> Errors:
    """PagerDuty Events API v2, "Send an Alert Event" (developer.pagerduty.com)."""
    if not isinstance(body, dict):
        return ["event: must be a JSON object"]
    errors: Errors = []
    _unknown(body, PD_FIELDS, "", errors)
    _str(body, "routing_key", "", errors, required=True)
    key = body.get("routing_key")
    if isinstance(key, str) and key and not ROUTING_KEY_RE.match(key):
        errors.append("routing_key: must be a 32 character integration key")
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("event_action: must be one of trigger, acknowledge, resolve")
    _str(body, "dedup_key", "", errors, required=action in ("acknowledge", "resolve"))
    dedup = body.get("dedup_key")
    if isinstance(dedup, str) and len(dedup) > 255:
        errors.append("dedup_key: longer than 255 characters")
    for key in ("client", "client_url"):
        _str(body, key, "", errors, required=False)
    payload = body.get("payload")
    if action == "trigger" or payload is not None:
        if not isinstance(payload, dict):
            errors.append("payload: is required (an object) for a trigger event")
        else:
            _unknown(payload, PD_PAYLOAD_FIELDS, "payload.", errors)
            for name in ("summary", "source"):
                _str(payload, name, "payload.", errors, required=True)
            summary = payload.get("summary")
            if isinstance(summary, str) and len(summary) > 1024:
                errors.append("payload.summary: longer than 1024 characters")
            if payload.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("payload.severity: must be one of critical, error, warning, info")
            for name in ("component", "group", "class"):
                _str(payload, name, "payload.", errors, required=False)
            stamp = payload.get("timestamp")
            if stamp is not None and not (isinstance(stamp, str) and _iso8601(stamp)):
                errors.append("payload.timestamp: must be an ISO 8601 timestamp")
            details = payload.get("custom_details")
            if details is not None and not isinstance(details, dict):
                errors.append("payload.custom_details: must be an object")
    for name, required in (("images", "src"), ("links", "href")):
        items = body.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            errors.append(f"{name}: must be an array of objects")
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get(required), str):
                errors.append(f"{name}[{i}].{required}: is required")
    return errors


def _iso8601(text: str) -> bool:
    # PagerDuty's own example is 2015-07-17T08:42:58.315+0000 (no colon in the offset).
    return bool(RFC3339_RE.match(text))


AM_FIELDS = (
    "receiver",
    "status",
    "alerts",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "version",
    "groupKey",
    "truncatedAlerts",
)
AM_ALERT_FIELDS = (
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "generatorURL",
    "fingerprint",
)


def _kv(value: object, where: str, errors: Errors, *, label_names: bool) -> None:
    if not isinstance(value, dict):
        errors.append(f"{where}: must be an object of strings")
        return
    for k, v in value.items():
        if not isinstance(v, str):
            errors.append(f"{where}.{k}: must be a string")
        if label_names and not LABEL_NAME_RE.match(k):
            errors.append(f"{where}.{k}: is not a valid label name")


def validate_alertmanager(body: object) -> Errors:
    """Alertmanager's webhook notification, version 4 (notify/webhook Message and
    template.Data in Alertmanager 0.25)."""
    if not isinstance(body, dict):
        return ["message: must be a JSON object"]
    errors: Errors = []
    for key in AM_FIELDS:
        if key not in body:
            errors.append(f"{key}: is required")
    if body.get("version") != "4":
        errors.append('version: must be "4"')
    for key in ("receiver", "externalURL", "groupKey"):
        _str(body, key, "", errors, required=False)
    if body.get("status") not in ("firing", "resolved"):
        errors.append("status: must be firing or resolved")
    truncated = body.get("truncatedAlerts")
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        errors.append("truncatedAlerts: must be a whole number >= 0")
    _kv(body.get("groupLabels"), "groupLabels", errors, label_names=True)
    _kv(body.get("commonLabels"), "commonLabels", errors, label_names=True)
    _kv(body.get("commonAnnotations"), "commonAnnotations", errors, label_names=False)
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        errors.append("alerts: must be a non-empty array")
        return errors
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            errors.append(f"{where}: must be an object")
            continue
        for key in AM_ALERT_FIELDS:
            if key not in alert:
                errors.append(f"{where}.{key}: is required")
        if alert.get("status") not in ("firing", "resolved"):
            errors.append(f"{where}.status: must be firing or resolved")
        _kv(alert.get("labels"), f"{where}.labels", errors, label_names=True)
        if isinstance(alert.get("labels"), dict) and not alert["labels"]:
            errors.append(f"{where}.labels: at least one label is required")
        _kv(alert.get("annotations"), f"{where}.annotations", errors, label_names=False)
        for key in ("startsAt", "endsAt"):
            value = alert.get(key)
            if not (isinstance(value, str) and RFC3339_RE.match(value)):
                errors.append(f"{where}.{key}: must be an RFC 3339 time")
        for key in ("generatorURL", "fingerprint"):
            _str(alert, key, f"{where}.", errors, required=False)
    return errors


TEXT_TYPES = ("plain_text", "mrkdwn")
MAX_BLOCKS = 50


def _text_object(
    value: object, where: str, errors: Errors, limit: int, types: tuple[str, ...] = TEXT_TYPES
) -> None:
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a text object")
        return
    if value.get("type") not in types:
        errors.append(f"{where}.type: must be one of {', '.join(types)}")
    text = value.get("text")
    if not isinstance(text, str) or not text:
        errors.append(f"{where}.text: is required")
    elif len(text) > limit:
        errors.append(f"{where}.text: longer than {limit} characters")
    allowed = ("type", "text", "emoji") if value.get("type") == "plain_text" else ("type", "text")
    _unknown(value, (*allowed, "verbatim"), f"{where}.", errors)


def _block(block: object, where: str, errors: Errors) -> None:
    if not isinstance(block, dict):
        errors.append(f"{where}: must be an object")
        return
    kind = block.get("type")
    block_id = block.get("block_id")
    if block_id is not None and (not isinstance(block_id, str) or len(block_id) > 255):
        errors.append(f"{where}.block_id: must be a string of at most 255 characters")
    if kind == "header":
        _unknown(block, ("type", "text", "block_id"), f"{where}.", errors)
        _text_object(block.get("text"), f"{where}.text", errors, 150, ("plain_text",))
    elif kind == "section":
        _unknown(block, ("type", "text", "fields", "block_id", "accessory"), f"{where}.", errors)
        if "text" not in block and "fields" not in block:
            errors.append(f"{where}: text or fields is required")
        if "text" in block:
            _text_object(block["text"], f"{where}.text", errors, 3000)
        if "fields" in block:
            fields = block["fields"]
            if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                errors.append(f"{where}.fields: must be an array of 1 to 10 text objects")
            else:
                for i, item in enumerate(fields):
                    _text_object(item, f"{where}.fields[{i}]", errors, 2000)
    elif kind == "context":
        _unknown(block, ("type", "elements", "block_id"), f"{where}.", errors)
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            errors.append(f"{where}.elements: must be an array of 1 to 10 elements")
        else:
            for i, item in enumerate(elements):
                if isinstance(item, dict) and item.get("type") == "image":
                    for key in ("image_url", "alt_text"):
                        _str(item, key, f"{where}.elements[{i}].", errors, required=True)
                else:
                    _text_object(item, f"{where}.elements[{i}]", errors, 2000)
    elif kind == "divider":
        _unknown(block, ("type", "block_id"), f"{where}.", errors)
    else:
        errors.append(f"{where}.type: {kind!r} is not a block this sink knows")


def validate_slack(body: object) -> Errors:
    """A Slack incoming-webhook message: `text` and/or `blocks` (Block Kit reference)."""
    if not isinstance(body, dict):
        return ["message: must be a JSON object"]
    errors: Errors = []
    text, blocks = body.get("text"), body.get("blocks")
    if text is None and blocks is None:
        return ["text: is required when there are no blocks"]
    if text is not None and not isinstance(text, str):
        errors.append("text: must be a string")
    if blocks is not None:
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_BLOCKS:
            errors.append(f"blocks: must be an array of 1 to {MAX_BLOCKS} blocks")
        else:
            for i, block in enumerate(blocks):
                _block(block, f"blocks[{i}]", errors)
    return errors


def validate_webhook(body: bytes) -> tuple[Errors, pb.IncidentChange | None]:
    """Our generic webhook: the canonical JSON of a cx.alerts.v1.IncidentChange."""
    change = pb.IncidentChange()
    try:
        json_format.Parse(body.decode(), change)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        return [f"body: not an IncidentChange: {exc}"], None
    errors: Errors = []
    if change.change == pb.CHANGE_UNSPECIFIED:
        errors.append("change: is required")
    if not change.incident.incident_id:
        errors.append("incident.incidentId: is required")
    if not change.incident.dedup_key:
        errors.append("incident.dedupKey: is required")
    return errors, change


# --- The sink -----------------------------------------------------------------------


def _keys(kind: str, body: Any) -> list[str]:
    """The dedup keys a request is about."""
    if not isinstance(body, dict):
        return []
    if kind == PAGERDUTY:
        key = body.get("dedup_key")
        return [key] if isinstance(key, str) else []
    if kind == ALERTMANAGER:
        alerts = body.get("alerts")
        out = []
        for alert in alerts if isinstance(alerts, list) else []:
            labels = alert.get("labels") if isinstance(alert, dict) else None
            if isinstance(labels, dict) and isinstance(labels.get("dedup_key"), str):
                out.append(labels["dedup_key"])
        return out
    if kind == WEBHOOK:
        incident = body.get("incident")
        key = incident.get("dedupKey") if isinstance(incident, dict) else None
        return [key] if isinstance(key, str) else []
    if kind == SLACK:
        found = re.findall(r"dedup key `([^`]+)`", json.dumps(body))
        return sorted(set(found))
    return []


class Sink:
    """What arrived, PagerDuty's alert state, and the failure switch."""

    def __init__(
        self, log_path: Path | None = None, secrets: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        self.secrets = dict(secrets or {})
        self.records: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.seq = 0
        self.fail = False
        self.fail_status = 503
        self.delay_s = 0.0
        # (routing key, dedup key) -> "triggered" | "acknowledged" while the alert is open.
        self.pd_alerts: dict[tuple[str, str], str] = {}
        self.idempotency_keys: set[str] = set()
        if log_path is not None and log_path.exists():
            self._load(log_path)

    def _load(self, path: Path) -> None:
        with path.open() as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                self._remember(record)
        log.info("sink: %d earlier records read from %s", self.seq, path)

    def _remember(self, record: dict[str, Any]) -> None:
        self.seq = max(self.seq, int(record.get("seq", 0)))
        self.records.append(record)
        if record.get("accepted"):
            if record.get("idempotency_key"):
                self.idempotency_keys.add(record["idempotency_key"])
            if record.get("kind") == PAGERDUTY:
                self._pagerduty_effect(record.get("body"))

    def _pagerduty_effect(self, body: Any) -> str:
        """What PagerDuty makes of a valid event: its alert state per (routing key,
        dedup key), as "Alert De-Duplication" and "Event Action Behavior" describe."""
        if not isinstance(body, dict):
            return ""
        action = body.get("event_action")
        key = (str(body.get("routing_key")), str(body.get("dedup_key") or uuid.uuid4()))
        state = self.pd_alerts.get(key)
        if action == "trigger":
            if state is None:
                self.pd_alerts[key] = "triggered"
                return "opened"
            return "deduplicated"
        if state is None:
            return "dropped"
        if action == "acknowledge":
            if state == "acknowledged":
                return "deduplicated"
            self.pd_alerts[key] = "acknowledged"
            return "acknowledged"
        del self.pd_alerts[key]
        return "resolved"

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        record = {"seq": self.seq, "at_ms": int(time.time() * 1000), **record}
        key = record.get("idempotency_key")
        if record["accepted"]:
            record["duplicate"] = bool(key) and key in self.idempotency_keys
            if key:
                self.idempotency_keys.add(key)
            if record["kind"] == PAGERDUTY:
                record["effect"] = self._pagerduty_effect(record["body"])
        self.records.append(record)
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
        return record

    def query(
        self, kind: str = "", since: int = 0, dedup_key: str = "", valid: bool | None = None
    ) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r["seq"] > since
            and (not kind or r["kind"] == kind)
            and (not dedup_key or dedup_key in r.get("keys", ()))
            and (valid is None or r.get("valid") == valid)
        ]


def _request_headers(request: web.Request) -> dict[str, str]:
    wanted = (IDEMPOTENCY_HEADER, SIGNATURE_HEADER, "X-Cx-Event", "Content-Type", "User-Agent")
    return {h: request.headers[h] for h in wanted if h in request.headers}


Validator = Callable[[web.Request, bytes], tuple[Errors, Any, int]]


async def _receive(
    sink: Sink,
    request: web.Request,
    kind: str,
    check: Validator,
    reply: Callable[..., web.Response],
) -> web.Response:
    raw = await request.read()
    base: dict[str, Any] = {
        "kind": kind,
        "path": request.path,
        "headers": _request_headers(request),
        "idempotency_key": request.headers.get(IDEMPOTENCY_HEADER, ""),
    }
    if sink.fail:
        sink.record(
            {
                **base,
                "accepted": False,
                "refused": True,
                "status": sink.fail_status,
                "valid": None,
                "errors": [],
                "body": None,
                "keys": [],
            }
        )
        return web.Response(
            status=sink.fail_status, text="receiver unavailable (sink told to fail)"
        )
    if sink.delay_s:
        await asyncio.sleep(sink.delay_s)
    # A sender that went away meanwhile never sees the answer (and will try again).
    transport = request.transport
    client_gone = transport is None or transport.is_closing()
    if len(raw) > MAX_BODY:
        errors, body, status = [f"body: {len(raw)} bytes, more than {MAX_BODY}"], None, 413
    else:
        errors, body, status = check(request, raw)
    valid = not errors
    record = sink.record(
        {
            **base,
            "accepted": valid,
            "refused": False,
            "status": status,
            "valid": valid,
            "errors": errors,
            "body": body if body is not None else raw.decode(errors="replace"),
            "keys": _keys(kind, body),
            "personal_data": personal_data(body) if body is not None else [],
            "client_gone": client_gone,
        }
    )
    if errors:
        log.warning("sink: invalid %s request to %s: %s", kind, request.path, "; ".join(errors))
    return reply(record, errors, body)


def _json_body(raw: bytes) -> tuple[Any, Errors]:
    try:
        return json.loads(raw), []
    except ValueError as exc:
        return None, [f"body: not JSON: {exc}"]


def _check_json(validate: Callable[[object], Errors]) -> Validator:
    def check(request: web.Request, raw: bytes) -> tuple[Errors, Any, int]:
        body, errors = _json_body(raw)
        if errors:
            return errors, None, 400
        errors = validate(body)
        return errors, body, 400 if errors else 200

    return check


def create_app(sink: Sink) -> web.Application:
    app = web.Application(client_max_size=2 * MAX_BODY)

    async def pagerduty(request: web.Request) -> web.Response:
        def reply(record: dict[str, Any], errors: Errors, body: Any) -> web.Response:
            if errors:
                return web.json_response(
                    {
                        "status": "invalid event",
                        "message": "Event object is invalid",
                        "errors": errors,
                    },
                    status=400,
                )
            key = body.get("dedup_key") or uuid.uuid4().hex
            return web.json_response(
                {"status": "success", "message": "Event processed", "dedup_key": key}, status=202
            )

        return await _receive(sink, request, PAGERDUTY, _check_json(validate_pagerduty), reply)

    async def alertmanager(request: web.Request) -> web.Response:
        def reply(record: dict[str, Any], errors: Errors, body: Any) -> web.Response:
            if errors:
                return web.json_response({"errors": errors}, status=400)
            return web.json_response({"status": "ok"})

        return await _receive(
            sink, request, ALERTMANAGER, _check_json(validate_alertmanager), reply
        )

    async def slack(request: web.Request) -> web.Response:
        def reply(record: dict[str, Any], errors: Errors, body: Any) -> web.Response:
            if not errors:
                return web.Response(text="ok")
            if body is None:
                code = "invalid_payload"
            elif any(e.startswith("text: is required") for e in errors):
                code = "no_text"
            else:
                code = "invalid_blocks"
            return web.Response(status=400, text=code)

        return await _receive(sink, request, SLACK, _check_json(validate_slack), reply)

    async def webhook(request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def check(request: web.Request, raw: bytes) -> tuple[Errors, Any, int]:
            secret = sink.secrets.get(name)
            if secret is None:
                return [f"webhook {name!r}: no receiver has this URL"], None, 404
            body, errors = _json_body(raw)
            signature = request.headers.get(SIGNATURE_HEADER, "")
            if not signature:
                return [f"{SIGNATURE_HEADER}: is required"], body, 401
            if not verify(secret, raw, signature):
                return [f"{SIGNATURE_HEADER}: does not match the body"], body, 401
            if not request.headers.get(IDEMPOTENCY_HEADER):
                errors.append(f"{IDEMPOTENCY_HEADER}: is required")
            if body is not None:
                errors.extend(validate_webhook(raw)[0])
            return errors, body, 400 if errors else 200

        def reply(record: dict[str, Any], errors: Errors, body: Any) -> web.Response:
            if errors:
                return web.json_response({"errors": errors}, status=record["status"])
            return web.json_response({"ok": True, "duplicate": record["duplicate"]})

        return await _receive(sink, request, WEBHOOK, check, reply)

    async def received(request: web.Request) -> web.Response:
        q = request.query
        kind = q.get("kind", "")
        if kind and kind not in KINDS:
            return web.json_response(
                {"error": f"kind must be one of {', '.join(KINDS)}"}, status=400
            )
        try:
            since = int(q.get("since", "0"))
        except ValueError:
            return web.json_response({"error": "since must be a sequence number"}, status=400)
        valid = {"true": True, "false": False}.get(q.get("valid", "").lower())
        records = sink.query(kind, since, q.get("dedup_key", ""), valid)
        return web.json_response({"records": records, "last_seq": sink.seq})

    async def control(request: web.Request) -> web.Response:
        if request.method == "POST":
            body, errors = _json_body(await request.read())
            if errors or not isinstance(body, dict):
                return web.json_response({"error": "a JSON object is expected"}, status=400)
            if "fail" in body:
                sink.fail = bool(body["fail"])
            if "status" in body:
                status = body["status"]
                if not isinstance(status, int) or not 400 <= status <= 599:
                    return web.json_response({"error": "status must be 400-599"}, status=400)
                sink.fail_status = status
            if "delay_s" in body:
                delay = body["delay_s"]
                if not isinstance(delay, int | float) or not 0 <= delay <= 60:
                    return web.json_response({"error": "delay_s must be 0-60"}, status=400)
                sink.delay_s = float(delay)
            log.info(
                "sink: fail=%s status=%d delay=%.2fs", sink.fail, sink.fail_status, sink.delay_s
            )
        return web.json_response(
            {"fail": sink.fail, "status": sink.fail_status, "delay_s": sink.delay_s}
        )

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_post("/pagerduty/v2/enqueue", pagerduty)
    app.router.add_post("/alertmanager/webhook", alertmanager)
    app.router.add_post("/slack/{hook}", slack)
    app.router.add_post("/webhook/{name}", webhook)
    app.router.add_get("/received", received)
    app.router.add_route("*", "/control", control)
    app.router.add_get("/health", health)
    return app


def secrets_from(owners_file: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The HMAC secrets of the webhook receivers in the owners file, by URL name."""
    import tomllib

    document = tomllib.loads(owners_file.read_text())
    specs = receivers_document(document, str(owners_file))
    return webhook_secrets(list(resolve_all(specs, env, str(owners_file)).values()))


def main() -> None:
    import os

    from services.alerts.settings import AlertsSettings
    from services.common.logs import setup_logging
    from services.common.settings import process_settings

    settings, process = AlertsSettings(), process_settings()
    setup_logging("alerts-sink", process.log_level)
    process.cx_var_dir.mkdir(parents=True, exist_ok=True)
    secrets = (
        secrets_from(settings.owners_file, os.environ) if settings.owners_file.exists() else {}
    )
    sink = Sink(process.cx_var_dir / "alerts-sink.jsonl", secrets)
    log.info(
        "alerts sink on %s:%d (webhooks: %s)",
        process.metrics_host,
        settings.sink_port,
        ", ".join(sorted(secrets)) or "none",
    )
    web.run_app(
        create_app(sink),
        host=process.grpc_host,
        port=settings.sink_port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
