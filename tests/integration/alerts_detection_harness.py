"""The alerts worker through its real process, on an isolated profile pipeline: its own
touchpoint topic, key prefix and consumer groups (tests/support/isolation.py), the
profile worker and an in-process profile server (so people have value tiers), and the
alerts worker as a child process pointed at them, with the shipped rules made quick
(spike windows and the complaint SLA in seconds) and a metrics port to read its counts.

A plain module, not a test module (tests/integration/test_alerts_detection.py imports it).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from kafka import KafkaProducer

from services.alerts.adapters.incidents import IncidentStore
from services.alerts.adapters.layout import AlertKeys, as_text, decode_outbox_entry
from services.alerts.domain.incidents import IncidentRecord
from services.alerts.domain.rules import DEFAULT_PATH as SHIPPED_RULES
from services.common.grpc_server import ServiceServer
from services.common.settings import KafkaSettings
from services.profile.server import build_server as build_profile
from tests.integration.profile_harness import ProfileHarness
from tests.support.processes import free_port, metric

ALERTS = "alerts"
# The shipped rules with their clocks in seconds: (what the file says, what tests use).
QUICK = (
    (
        "spike = { window_s = 300, baseline_s = 3600, factor = 3, min_count = 10, "
        "clear_hold_s = 300 }",
        "spike = { window_s = 6, baseline_s = 120, factor = 3, min_count = 4, clear_hold_s = 1 }",
    ),
    (
        'timer = { sla_s = 172800, per = "complaint.id" }',
        'timer = { sla_s = 2, per = "complaint.id" }',
    ),
)


def quick_rules(path: Path) -> Path:
    text = SHIPPED_RULES.read_text()
    for shipped, quick in QUICK:
        assert shipped in text, shipped
        text = text.replace(shipped, quick)
    path.write_text(text)
    return path


class AlertsDetectionHarness(ProfileHarness):
    def __init__(self, base: KafkaSettings, redis_url: str, log_dir: Path) -> None:
        super().__init__(base, redis_url, log_dir, name="alerts")
        # The profile server the alerts worker reads, on a port of its own, so a test can
        # stop it and start it again where the worker looks.
        self.features_port = free_port()
        self.features_server: ServiceServer | None = None
        self.start_features()
        self.metrics_port = free_port()
        self.rules_file = quick_rules(log_dir / f"{self.run}-rules.toml")
        self.env.update(
            {
                "ALERTS_KEY_PREFIX": self.settings.key_prefix,
                "ALERTS_CONSUMER_GROUP": f"{self.run}-alerts",
                "ALERTS_PROFILE_ADDRESS": f"127.0.0.1:{self.features_port}",
                "ALERTS_RULES_FILE": str(self.rules_file),
                "ALERTS_WORKER_METRICS_PORT": str(self.metrics_port),
                "ALERTS_TIMER_EVERY_S": "0.2",
            }
        )
        self.alerts = IncidentStore(self.redis, self.settings.key_prefix)
        self.keys = AlertKeys(self.settings.key_prefix)
        self.producer = KafkaProducer(bootstrap_servers=base.kafka_bootstrap_servers)

    # --- processes ----------------------------------------------------------------------

    def start_alerts(self) -> None:
        self.start_worker("services.alerts.worker", ALERTS)

    def start_features(self) -> None:
        server = build_profile(self.reader, self.publisher, f"127.0.0.1:{self.features_port}")
        server.start()
        self.features_server = server

    def stop_features(self) -> None:
        if self.features_server is not None:
            self.features_server.stop(grace_s=0)
            self.features_server = None

    def metric(self, name: str, **labels: str) -> float:
        """A counter of the alerts worker, from its /metrics (0 when not yet counted)."""
        return metric(self.metrics_port, name, **labels)

    # --- events --------------------------------------------------------------------------

    def produce_raw(self, value: bytes | None, key: bytes = b"raw") -> None:
        """A record straight onto the touchpoint topic, past ingestion's validation."""
        self.producer.send(self.kafka.touchpoints_topic, key=key, value=value).get(timeout=10)

    def make_vip(self, customer_id: str) -> None:
        """Orders worth a VIP's value, then waits until GetFeatures says vip."""
        order = now_event("checkout.order", customer_id, minutes_ago=60 * 24 * 30)
        order.channel, order.journey_stage = ev.CHANNEL_WEB, ev.JOURNEY_STAGE_PURCHASE
        order.order_placed.CopyFrom(
            ev.OrderPlaced(
                order_id=f"o-{uuid.uuid4()}", total=ev.Money(currency_code="EUR", units=4000)
            )
        )
        self.track([order])

        def vip() -> bool:
            try:
                reply = self.profiles.GetFeatures(
                    pb.GetFeaturesRequest(
                        identifier=pb.Identifier(
                            type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value=customer_id
                        ),
                        names=["value_tier"],
                    ),
                    timeout=5,
                )
            except Exception:
                return False
            return reply.features.fields["value_tier"].string_value == "vip"

        self.wait_for(f"{customer_id} to be a vip", vip, timeout_s=30)

    # --- incidents -----------------------------------------------------------------------

    def incidents(self, rule: str | None = None) -> list[IncidentRecord]:
        raw: list[bytes] = self.redis.zrange(self.keys.incidents, 0, -1)  # type: ignore[assignment]
        ids = [as_text(m) for m in raw]
        out = [r for r in (self.alerts.get_record(i) for i in ids) if r is not None]
        return [r for r in out if rule is None or r.rule == rule]

    def incident_of(self, dedup_key: str) -> IncidentRecord | None:
        incident_id = self.alerts.open_incident(dedup_key)
        return self.alerts.get_record(incident_id) if incident_id else None

    def wait_incident(self, what: str, check: Any, timeout_s: float = 30) -> Any:
        return self.wait_for(what, check, timeout_s=timeout_s)

    def outbox(self) -> list[Any]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrange(  # type: ignore[assignment]
            self.keys.outbox
        )
        return [decode_outbox_entry(entry_id, fields) for entry_id, fields in entries]

    def pages(self, incident_id: str) -> list[str]:
        """The changes of one incident that receivers are told, in order."""
        return [e.change for e in self.outbox() if e.incident_id == incident_id and e.page]

    def person_incidents(self, profile_id: str) -> list[IncidentRecord]:
        return [r for r in self.incidents() if r.profile_id == profile_id]

    def profile_id(self, customer_id: str) -> str:
        found = self.profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, customer_id)
        assert found is not None, customer_id
        return str(found.profile_id)

    def close(self) -> None:
        self.stop_features()
        self.producer.close()
        super().close()


def now_event(touchpoint: str, customer_id: str, *, minutes_ago: float = 0) -> ev.TouchpointEvent:
    e = ev.TouchpointEvent(
        event_id=f"al-{uuid.uuid4()}",
        identities=ev.Identities(customer_id=customer_id),
        channel=ev.CHANNEL_WEB,
        touchpoint=touchpoint,
        journey_stage=ev.JOURNEY_STAGE_SUPPORT,
        source_system="tests",
    )
    e.occurred_at.FromDatetime(datetime.now(UTC) - timedelta(minutes=minutes_ago, seconds=1))
    return e


def nps(customer_id: str, score: int) -> ev.TouchpointEvent:
    e = now_event("survey.nps", customer_id)
    e.channel = ev.CHANNEL_EMAIL
    e.survey_response.CopyFrom(
        ev.SurveyResponse(survey_id="nps", metric=ev.SurveyResponse.METRIC_NPS, score=score)
    )
    return e


def contact(customer_id: str, reason: str, *, minutes_ago: float = 0) -> ev.TouchpointEvent:
    e = now_event("support.phone", customer_id, minutes_ago=minutes_ago)
    e.channel = ev.CHANNEL_PHONE
    e.support_contact.CopyFrom(
        ev.SupportContact(contact_id=f"k-{uuid.uuid4()}", reason=reason, resolved=False)
    )
    return e


def payment_failed(customer_id: str, at: datetime | None = None) -> ev.TouchpointEvent:
    e = now_event("checkout.payment", customer_id)
    if at is not None:
        e.occurred_at.FromDatetime(at)
    e.journey_stage = ev.JOURNEY_STAGE_PURCHASE
    e.payment_failed.CopyFrom(
        ev.PaymentFailed(order_id=f"o-{uuid.uuid4()}", failure_code="card_declined", attempt=1)
    )
    return e


def late_delivery(customer_id: str, *, minutes_ago: float) -> ev.TouchpointEvent:
    e = now_event("delivery.doorstep", customer_id, minutes_ago=minutes_ago)
    e.channel, e.journey_stage = ev.CHANNEL_FIELD, ev.JOURNEY_STAGE_PURCHASE
    update = ev.DeliveryUpdate(
        order_id=f"o-{uuid.uuid4()}", status=ev.DeliveryUpdate.STATUS_DELIVERED
    )
    update.actual_at.CopyFrom(e.occurred_at)
    update.promised_at.FromDatetime(e.occurred_at.ToDatetime(tzinfo=UTC) - timedelta(hours=30))
    e.delivery_update.CopyFrom(update)
    return e


def complaint(
    customer_id: str,
    complaint_id: str,
    status: ev.Complaint.Status.ValueType,
    severity: ev.Complaint.Severity.ValueType = ev.Complaint.SEVERITY_LOW,
) -> ev.TouchpointEvent:
    e = now_event("support.complaint", customer_id)
    e.channel = ev.CHANNEL_PHONE
    e.complaint.CopyFrom(
        ev.Complaint(
            complaint_id=complaint_id, status=status, severity=severity, category="delivery"
        )
    )
    return e


def ids(events: Sequence[ev.TouchpointEvent]) -> list[str]:
    return [e.event_id for e in events]
