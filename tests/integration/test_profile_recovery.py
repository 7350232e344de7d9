"""A worker killed with SIGKILL in the middle of a stream loses nothing and doubles nothing."""

from __future__ import annotations

import functools
import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from cx.events.v1 import touchpoint_pb2 as ev
from cx.profile.v1 import profile_pb2 as pb
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec

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


def end_offsets(admin: KafkaAdminClient, topic: str) -> dict[TopicPartition, int]:
    (described,) = admin.describe_topics([topic])
    parts = [TopicPartition(topic, p["partition_index"]) for p in described["partitions"]]
    latest = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in parts})
    return {tp: found.offset for tp, found in latest.items()}


def committed_up_to(admin: KafkaAdminClient, group: str, ends: dict[TopicPartition, int]) -> bool:
    """Whether the group's committed offsets reached `ends` (nothing left to redeliver)."""
    committed = admin.list_group_offsets(group).get(group, {})
    return all(
        (max(committed[tp].offset, 0) if tp in committed else 0) >= end for tp, end in ends.items()
    )


def wait_until_committed(h: ProfileHarness) -> None:
    """Waits until the worker committed every record of both of its input topics, so
    nothing it read can be processed again. Touchpoints first: the bundles they become
    are on the repartition topic before their offsets are committed, so its end offsets
    read after that are final."""
    admin = KafkaAdminClient(bootstrap_servers=h.kafka.kafka_bootstrap_servers)
    try:
        group = h.settings.consumer_group
        for topic in (h.kafka.touchpoints_topic, h.kafka.profile_events_topic):
            ends = end_offsets(admin, topic)
            assert sum(ends.values()) > 0, topic
            h.wait_for(
                f"{group}'s offsets on {topic} committed to its end",
                functools.partial(committed_up_to, admin, group, ends),
            )
    finally:
        admin.close()


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
    # Once every input record is committed nothing can be applied again: a count still
    # equal to the total then means nothing was applied twice.
    wait_until_committed(h)
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
