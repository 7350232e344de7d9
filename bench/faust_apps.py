"""The Faust app the benchmark's comparison workers share: built by the same factory as
the real worker's (`services.common.stream_worker.faust_app`), on the same settings."""

from __future__ import annotations

import sys

import faust

from services.common.settings import kafka_settings, process_settings
from services.common.stream_worker import faust_app, raw_topic
from services.profile.settings import ProfileSettings


def comparison_app(settings: ProfileSettings) -> tuple[faust.App, faust.TopicT]:
    """An app on the touchpoint topic, configured as the real worker's."""
    kafka = kafka_settings()
    app = faust_app(settings.consumer_group, kafka, process_settings().cx_var_dir / "faust")
    return app, raw_topic(app, kafka.touchpoints_topic)


def run_worker(app: faust.App) -> None:
    sys.argv += ["worker", "--without-web", "--loglevel", "warn"]
    app.main()
