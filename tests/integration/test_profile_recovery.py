"""A worker killed with SIGKILL in the middle of a stream loses nothing and doubles nothing."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb

from services.profile.domain.fold import differences, fold
from tests.integration.profile_harness import ProfileHarness
from tests.integration.test_profile_flow import aggregates

PEOPLE = 300
EVENTS_PER_PERSON = 35


def person_events(rng: random.Random, run: str, i: int) -> list[ev.TouchpointEvent]:
    anon, customer, email = f"{run}-a{i}", f"{run}-c{i}", f"{run}-{i}@example.com"
    start = datetime.now(UTC) - timedelta(days=20) + timedelta(minutes=i)
    out = []
    for n in range(EVENTS_PER_PERSON):
        e = ev.TouchpointEvent(
            event_id=f"{run}-{i}-{n}",
            channel=ev.CHANNEL_WEB,
            touchpoint="site.page",
            journey_stage=ev.JOURNEY_STAGE_CONSIDERATION,
            source_system="recovery-test",
        )
        e.occurred_at.FromDatetime(start + timedelta(hours=n))
        if n < 5:
            e.identities.anonymous_id = anon
            e.page_view.page = f"/p/{n}"
        elif n == 5:
            e.identities.MergeFrom(
                ev.Identities(anonymous_id=anon, customer_id=customer, email=email)
            )
            e.identify.method = ev.Identify.METHOD_LOGIN
        else:
            e.identities.customer_id = customer
            kind = rng.choice(["order", "nps", "csat", "contact", "message", "page"])
            if kind == "order":
                e.order_placed.CopyFrom(
                    ev.OrderPlaced(
                        order_id=f"o-{n}",
                        total=ev.Money(currency_code="EUR", units=rng.randint(5, 300)),
                    )
                )
            elif kind == "nps":
                e.survey_response.CopyFrom(
                    ev.SurveyResponse(
                        survey_id="nps",
                        metric=ev.SurveyResponse.METRIC_NPS,
                        score=rng.randint(0, 10),
                    )
                )
            elif kind == "csat":
                e.survey_response.CopyFrom(
                    ev.SurveyResponse(
                        survey_id="csat",
                        metric=ev.SurveyResponse.METRIC_CSAT,
                        score=rng.randint(1, 5),
                    )
                )
            elif kind == "contact":
                e.support_contact.CopyFrom(
                    ev.SupportContact(
                        contact_id=f"k-{n}",
                        reason=rng.choice(["delivery.late", "billing"]),
                        resolved=rng.random() < 0.5,
                    )
                )
            elif kind == "message":
                e.conversation_message.CopyFrom(
                    ev.ConversationMessage(
                        conversation_id=f"m-{n}",
                        direction=ev.ConversationMessage.DIRECTION_INBOUND,
                        sentiment=round(rng.uniform(-1, 1), 2),
                    )
                )
            else:
                e.page_view.page = "/account"
        out.append(e)
    return out


def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(
    profile_harness: ProfileHarness,
) -> None:
    h = profile_harness
    rng = random.Random(7)
    run = f"rk{uuid.uuid4().hex[:5]}"
    people = [person_events(rng, run, i) for i in range(PEOPLE)]
    total = PEOPLE * EVENTS_PER_PERSON
    assert total >= 10_000
    # Interleave people the way a live stream does, keeping each person's order.
    stream = [person[n] for n in range(EVENTS_PER_PERSON) for person in people]
    applied_before = h.stat("applied")

    def send_paced() -> None:
        for i in range(0, total, 500):
            h.track(stream[i : i + 500])
            time.sleep(0.15)

    sender = threading.Thread(target=send_paced)
    sender.start()
    h.wait_for("a third of the stream", lambda: h.stat("applied") - applied_before > total / 3)
    h.kill_worker(signal.SIGKILL)
    at_kill = h.stat("applied") - applied_before
    h.start_worker()
    sender.join()
    assert at_kill < total, "the worker finished before it was killed"

    h.wait_for("every event", lambda: h.stat("applied") - applied_before >= total, 180)
    time.sleep(1)  # anything applied twice would show here
    assert h.stat("applied") - applied_before == total

    for i, events in enumerate(people):
        profile = h.profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, f"{run}-c{i}")
        assert profile is not None
        assert profile.activity.events == EVENTS_PER_PERSON
        by_anon = h.profile(pb.IDENTIFIER_TYPE_ANONYMOUS_ID, f"{run}-a{i}")
        assert by_anon is not None
        assert by_anon.profile_id == profile.profile_id
        stored = aggregates(h.state(profile.profile_id))
        assert differences(aggregates(fold(events, profile.profile_id)), stored) == [], i
