"""Valid events for tests; each test changes what it is about."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cx.events.v1 import touchpoint_pb2 as ev


def page_view(**identities: str) -> ev.TouchpointEvent:
    event = ev.TouchpointEvent(
        event_id=f"test-{uuid.uuid4()}",
        channel=ev.CHANNEL_WEB,
        touchpoint="catalogue.product",
        journey_stage=ev.JOURNEY_STAGE_CONSIDERATION,
        source_system="tests",
        identities=ev.Identities(**(identities or {"anonymous_id": f"anon-{uuid.uuid4()}"})),
        page_view=ev.PageView(page="/products/42", url="https://shop.example/products/42"),
    )
    event.occurred_at.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    return event


def survey(
    metric: ev.SurveyResponse.Metric.ValueType, score: int, **identities: str
) -> ev.TouchpointEvent:
    event = page_view(**identities)
    event.touchpoint = "survey.post_contact"
    event.channel = ev.CHANNEL_EMAIL
    event.journey_stage = ev.JOURNEY_STAGE_SUPPORT
    event.survey_response.CopyFrom(ev.SurveyResponse(survey_id="s1", metric=metric, score=score))
    return event
