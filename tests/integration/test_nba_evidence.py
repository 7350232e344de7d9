"""`cx nba report` and `cx nba evaluate` against the real broker: decision records and
OfferOutcome events written to topics of the test's own, then both commands run as a
user runs them (`python -m services.cli`, the topics named by the environment) and their
numbers checked against values worked out by hand from the decisions below."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from kafka.admin import KafkaAdminClient

from services.common.kafka_admin import ensure_topics
from services.common.kafka_io import reliable_producer, send_touchpoint, touchpoint_headers
from services.common.settings import KafkaSettings
from services.common.topics import TopicSpec
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
MINUTE_MS = 60_000
SETTLED = NOW_MS - 120 * MINUTE_MS  # long past the 30-minute window
RECENT = NOW_MS - MINUTE_MS  # within it
HERO, BANNER = "web.home.hero", "app.home.banner"
T, H = pb.GROUP_TREATMENT, pb.GROUP_HOLDOUT
OUTCOME = {
    "click": ev.OfferOutcome.OUTCOME_CLICK,
    "accept": ev.OfferOutcome.OUTCOME_ACCEPT,
    "dismiss": ev.OfferOutcome.OUTCOME_DISMISS,
}


def ranked(action_id: str, priority: float, value: float, lever: float) -> pb.RankedAction:
    return pb.RankedAction(
        action_id=action_id,
        kind="upsell" if action_id == "a" else "cross_sell",
        score=pb.ScoreParts(
            propensity=priority / (value * lever),
            context_weight=1.0,
            business_value=value,
            lever=lever,
            priority=priority,
        ),
    )


# Two eligible actions: the static rules pick "a" (priority 3), the control policy "b"
# (value x lever 30 against 25). Accepting "a" earns 25 / 50 = 0.5, "b" 10 / 50 = 0.2; a
# click earns 0.1 (the shipped learning file).
A, B = ranked("a", 3.0, 25.0, 1.0), ranked("b", 1.0, 10.0, 3.0)


def decision(
    decision_id: str,
    placement: str,
    group: pb.Group.ValueType,
    shown: tuple[str, ...],
    probability: float,
    decided_ms: int = SETTLED,
    basis: pb.Basis.ValueType = pb.BASIS_PROFILE,
) -> pb.DecisionRecord:
    record = pb.DecisionRecord(
        decision_id=decision_id,
        profile_id=f"p-{decision_id}" if basis == pb.BASIS_PROFILE else "",
        placement=placement,
        channel=ev.CHANNEL_WEB,
        group=group,
        basis=basis,
        policy=pb.DECISION_POLICY_CONTROL if group == H else pb.DECISION_POLICY_LEARNED,
        ranked=[A, B],
        max_actions=len(shown),
    )
    for rank, action_id in enumerate(shown, start=1):
        chosen = record.chosen.add()
        chosen.CopyFrom(A if action_id == "a" else B)
        chosen.rank = rank
        chosen.probability = probability if rank == 1 else 1.0
    record.decided_at.FromMilliseconds(decided_ms)
    return record


# (decision, its outcomes as (action, outcome, minutes after the decision)), and the
# reward each settles to, by hand.
LOG: list[tuple[pb.DecisionRecord, list[tuple[str, str, float]], float | None]] = [
    # The treatment at the hero, the learned policy showing "a" with 0.6, "b" with 0.4.
    (decision("t1", HERO, T, ("a", "b"), 0.6), [("a", "accept", 2), ("b", "accept", 3)], 0.5),
    (decision("t2", HERO, T, ("a",), 0.6), [("a", "click", 1), ("a", "click", 1)], 0.1),
    (decision("t3", HERO, T, ("b",), 0.4), [("b", "accept", 5)], 0.2),
    (decision("t4", HERO, T, ("b",), 0.4), [], 0.0),
    (decision("t5", HERO, T, ("a",), 0.6), [("a", "dismiss", 1), ("a", "accept", 2)], 0.0),
    (decision("t6", HERO, T, ("a",), 0.6), [("a", "click", 5), ("a", "accept", 40)], 0.1),
    (decision("t7", HERO, T, ("a",), 0.6, RECENT), [("a", "click", 0.5)], None),  # unsettled
    (decision("t8", HERO, T, ("a",), 0.6, RECENT), [("a", "accept", 0.5)], 0.5),
    # The holdout at the hero: the control policy shows "b" with probability 1.
    (decision("h1", HERO, H, ("b",), 1.0), [("b", "accept", 3)], 0.2),
    (decision("h2", HERO, H, ("b",), 1.0), [], 0.0),
    (decision("h3", HERO, H, ("b",), 1.0), [("b", "click", 1)], 0.1),
    (decision("h4", HERO, H, ("b",), 1.0), [], 0.0),
    # Another placement, treatment only.
    (decision("s1", BANNER, T, ("a",), 0.6), [("a", "click", 1)], 0.1),
    (decision("s2", BANNER, T, ("a",), 0.6), [], 0.0),
    # Neither compared nor evaluated: an anonymous visitor, and a decision two days old
    # (left out with --since 1d).
    (decision("x1", HERO, T, ("a",), 1.0, basis=pb.BASIS_ANONYMOUS), [("a", "accept", 1)], 0.5),
    (decision("old", HERO, H, ("b",), 1.0, NOW_MS - 2880 * MINUTE_MS), [("b", "accept", 1)], 0.2),
]


def outcome_event(record: pb.DecisionRecord, action_id: str, what: str, minutes: float) -> Any:
    event = ev.TouchpointEvent(
        event_id=f"nba-{record.decision_id}-{action_id}-{what}",
        identities=ev.Identities(customer_id=f"c-{record.decision_id}"),
        channel=ev.CHANNEL_WEB,
        touchpoint=record.placement,
        source_system="personalisation",
        offer_outcome=ev.OfferOutcome(
            decision_id=record.decision_id,
            offer_id=action_id,
            outcome=OUTCOME[what],
            placement=record.placement,
        ),
    )
    event.occurred_at.FromMilliseconds(record.decided_at.ToMilliseconds() + int(minutes * 60_000))
    return event


def page_view(i: int) -> ev.TouchpointEvent:
    event = ev.TouchpointEvent(
        event_id=f"pv-{i}",
        identities=ev.Identities(customer_id=f"c-{i}"),
        channel=ev.CHANNEL_WEB,
        touchpoint="web.home",
        page_view=ev.PageView(url="https://shop.example/"),
    )
    event.occurred_at.FromMilliseconds(NOW_MS - i * 1000)
    return event


@pytest.fixture(scope="module")
def topics(kafka: KafkaSettings) -> Iterator[KafkaSettings]:
    """The log above on topics of the test's own, deleted afterwards."""
    run = f"evidence-{uuid.uuid4().hex[:8]}"
    settings = kafka.model_copy(
        update={"decisions_topic": f"{run}.decisions", "touchpoints_topic": f"{run}.touchpoints"}
    )
    names = [settings.decisions_topic, settings.touchpoints_topic]
    ensure_topics(kafka.kafka_bootstrap_servers, [TopicSpec(name, 3) for name in names])
    producer = reliable_producer(kafka.kafka_bootstrap_servers, client_id=run)
    try:
        headers = touchpoint_headers()
        for i in range(20):
            send_touchpoint(producer, settings.touchpoints_topic, page_view(i), headers)
        for record, outcomes, _ in LOG:
            key = (record.profile_id or record.decision_id).encode()
            producer.send(settings.decisions_topic, key=key, value=record.SerializeToString())
            for action_id, what, minutes in outcomes:
                event = outcome_event(record, action_id, what, minutes)
                send_touchpoint(producer, settings.touchpoints_topic, event, headers)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    yield settings
    admin = KafkaAdminClient(bootstrap_servers=kafka.kafka_bootstrap_servers)
    try:
        admin.delete_topics(names)
    finally:
        admin.close()


def cx(settings: KafkaSettings, *args: str) -> Any:
    """`cx nba ARGS --json` in a process of its own, on the test's topics."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DECISIONS_TOPIC": settings.decisions_topic,
        "TOUCHPOINTS_TOPIC": settings.touchpoints_topic,
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "nba", *args, "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def rewards(placement: str, group: pb.Group.ValueType) -> list[float]:
    """The settled rewards of the compared decisions (profile, not the old one)."""
    return [
        reward
        for record, _, reward in LOG
        if reward is not None
        and record.placement == placement
        and record.group == group
        and record.basis == pb.BASIS_PROFILE
        and record.decision_id != "old"
    ]


def test_report_gives_the_reward_rates_difference_and_lift_by_hand(
    topics: KafkaSettings,
) -> None:
    data = cx(topics, "report", "--since", "1d")
    # 16 decisions logged; "old" is before --since; t7 is within its window with a click.
    assert data["log"] == {"read": 15, "settled": 14, "unsettled": 1, "outcomes": 13}
    rows = {row["placement"]: row for row in data["placements"]}
    assert list(rows) == [BANNER, HERO, "all"]

    hero = rows[HERO]
    treatment, holdout = rewards(HERO, T), rewards(HERO, H)
    assert treatment == [0.5, 0.1, 0.2, 0.0, 0.0, 0.1, 0.5]
    assert holdout == [0.2, 0.0, 0.1, 0.0]
    assert hero["treatment"]["decisions"] == 7
    assert hero["treatment"]["reward_rate"] == pytest.approx(1.4 / 7)
    assert hero["holdout"]["decisions"] == 4
    assert hero["holdout"]["reward_rate"] == pytest.approx(0.3 / 4)
    # The difference 0.2 - 0.075 and Welch's interval (t with its degrees of freedom).
    var_t = statistics.variance(treatment) / 7
    var_h = statistics.variance(holdout) / 4
    se = math.sqrt(var_t + var_h)
    df = (var_t + var_h) ** 2 / (var_t**2 / 6 + var_h**2 / 3)
    difference = hero["difference"]
    assert difference["value"] == pytest.approx(0.125)
    assert difference["stderr"] == pytest.approx(se)
    half = difference["high"] - difference["value"]
    assert 2.2 < half / se < 2.6  # t(0.975) for about 8.7 degrees of freedom
    assert df == pytest.approx(8.7, abs=0.3)
    # The lift (0.2 - 0.075) / 0.075 (its delta-method stderr), and the interval of the
    # log ratio log(0.2 / 0.075), exponentiated.
    lift = hero["lift"]
    assert lift["value"] == pytest.approx(0.125 / 0.075)
    lift_se = math.sqrt(var_t / 0.075**2 + 0.2**2 * var_h / 0.075**4)
    assert lift["stderr"] == pytest.approx(lift_se)
    log_se = math.sqrt(var_t / 0.2**2 + var_h / 0.075**2)
    log_ratio = math.log(0.2 / 0.075)
    assert lift["low"] == pytest.approx(math.exp(log_ratio - 1.959964 * log_se) - 1)
    assert lift["high"] == pytest.approx(math.exp(log_ratio + 1.959964 * log_se) - 1)
    assert lift["low"] > -1

    banner = rows[BANNER]
    assert banner["treatment"]["decisions"] == 2
    assert banner["holdout"]["decisions"] == 0
    assert banner["difference"] is None
    assert banner["note"].startswith("not enough data")

    everything = rows["all"]
    assert everything["treatment"]["decisions"] == 9
    assert everything["treatment"]["reward"] == pytest.approx(1.5)
    assert everything["holdout"]["decisions"] == 4


def test_the_whole_log_includes_the_old_decision(topics: KafkaSettings) -> None:
    data = cx(topics, "report", "--placement", HERO)
    assert data["log"]["read"] == 14  # every hero decision, "old" and the anonymous one too
    (hero, everything) = data["placements"]
    assert hero["holdout"]["decisions"] == 5
    assert hero["holdout"]["reward_rate"] == pytest.approx(0.5 / 5)
    assert everything["holdout"] == hero["holdout"]


def test_evaluate_static_control_and_logged_by_hand(topics: KafkaSettings) -> None:
    # Evaluated: the treatment's settled hero decisions t1-t6 and t8 (p: a 0.6, b 0.4).
    static = cx(topics, "evaluate", "--policy", "static", "--placement", HERO)
    assert static["decisions"] == 7
    # The static rules pick "a", shown in t1, t2, t5, t6, t8: rewards 0.5, 0.1, 0, 0.1, 0.5.
    assert static["matched"] == 5
    terms = [0.5 / 0.6, 0.1 / 0.6, 0.0, 0.0, 0.0, 0.1 / 0.6, 0.5 / 0.6]
    assert static["ips"]["value"] == pytest.approx(sum(terms) / 7)  # 2/7
    assert static["ips"]["stderr"] == pytest.approx(statistics.stdev(terms) / math.sqrt(7))
    assert static["snips"]["value"] == pytest.approx(1.2 / 5)
    assert static["effective_sample_size"] == pytest.approx(5.0)
    assert static["logged"]["value"] == pytest.approx(1.4 / 7)

    control = cx(topics, "evaluate", "--policy", "control", "--placement", HERO)
    # The control picks "b", shown in t3 (0.2) and t4 (0) with probability 0.4.
    assert control["matched"] == 2
    assert control["ips"]["value"] == pytest.approx(0.2 / 0.4 / 7)
    assert control["snips"]["value"] == pytest.approx(0.1)

    logged = cx(topics, "evaluate", "--policy", "logged", "--placement", HERO)
    assert logged["ips"]["value"] == pytest.approx(0.2)
    assert logged["snips"]["value"] == pytest.approx(0.2)
    assert logged["effective_sample_size"] == pytest.approx(7.0)
