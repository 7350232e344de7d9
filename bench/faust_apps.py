"""The Faust app the benchmark's comparison workers share (environment as the worker's)."""

from __future__ import annotations

import sys

import faust

from services.common.settings import kafka_settings
from services.profile.settings import ProfileSettings

kafka = kafka_settings()
settings = ProfileSettings()


def comparison_app() -> tuple[faust.App, faust.TopicT]:
    """An app on the touchpoint topic, configured as the real worker's."""
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{kafka.kafka_bootstrap_servers}",
        store="memory://",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10,
        broker_heartbeat_interval=3,
        web_enabled=False,
    )
    return app, app.topic(kafka.touchpoints_topic, value_type=bytes)


def run_worker(app: faust.App) -> None:
    sys.argv += ["worker", "--without-web", "--loglevel", "warn"]
    app.main()
