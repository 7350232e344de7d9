"""A worker killed with SIGKILL in the middle of a stream loses nothing and doubles nothing."""

from __future__ import annotations

import functools
import random
import signal
import threading
import time
import uuid

import pytest
from cx.profile.v1 import profile_pb2 as pb
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec

from services.profile.domain.fold import differences, fold
from tests.factories import EVENTS_PER_PERSON, person_events
from tests.integration.profile_harness import ProfileHarness, aggregates

PEOPLE = 300


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


# The larger twin of test_faults.py's SIGKILL test (10,500 events from 300 people, with
# merges): in the slow suite, `make chaos`, as the fast suite already covers the fault.
@pytest.mark.chaos
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
