"""The learning loop end to end, with a strong, simple signal: people on a phone take one
action, people on a desktop another, and the static rules would show a third to both.
Decisions through the personalisation server over gRPC, outcomes through ReportOutcome,
the learner process joining them from Kafka and checkpointing to Redis, and the server
picking up each new model without a restart: the next decisions change with the device."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as npb
from cx.profile.v1 import profile_pb2 as pb

from services.common.redis_values import as_text
from services.common.settings import KafkaSettings, redis_settings
from services.personalisation.adapters.learning_store import (
    LearningStore,
    current_info,
    model_blob_key,
)
from tests.factories import recent_consent, recent_login
from tests.integration.learner_harness import learner_env, quick_learning
from tests.integration.personalisation_harness import PersonalisationHarness
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

PLACEMENT = "web.home.hero"
# Three information actions without caps: the static rules always show `size_guide`
# (the highest prior); phone users take `store_finder`, desktop users `gift_cards`.
CATALOGUE = """
[contact]
marketing_per_day = 3

[[action]]
id = "size_guide"
kind = "information"
placements = ["web.home.hero"]
business_value = 50.0
propensity = { default = 0.3 }
[[action.variant]]
id = "a"
title = "Find your size"

[[action]]
id = "store_finder"
kind = "information"
placements = ["web.home.hero"]
business_value = 50.0
propensity = { default = 0.1 }
[[action.variant]]
id = "a"
title = "Find a store"

[[action]]
id = "gift_cards"
kind = "information"
placements = ["web.home.hero"]
business_value = 50.0
propensity = { default = 0.1 }
[[action.variant]]
id = "a"
title = "Gift cards"
"""
TAKES = {"mobile": "store_finder", "desktop": "gift_cards"}
STATIC_CHOICE = "size_guide"


@pytest.fixture(scope="module")
def nba(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PersonalisationHarness]:
    tmp = tmp_path_factory.mktemp("nba-learning")
    catalogue = tmp / "catalogue.toml"
    catalogue.write_text(CATALOGUE)
    harness = PersonalisationHarness(
        kafka, redis_settings().redis_url, tmp, name="nbalearn", catalogue=catalogue
    )
    prefix = harness.settings.key_prefix
    learning = quick_learning(
        Path(tmp) / "learning.toml", settle_after_s=1.0, every_decisions=20, every_s=1.0
    )
    harness.env.update(learner_env(harness.run, prefix, learning, free_port()))
    harness.start_worker()
    harness.start_worker("services.personalisation.learner", "learner")
    yield harness
    harness.kill_worker(signal.SIGTERM, "learner")
    store = LearningStore(harness.nba_redis, prefix, 1.0)
    info = current_info(harness.nba_redis, prefix)
    versions = [as_text(v) for v in harness.nba_redis.lrange(store.versions_key, 0, -1)]
    if info is not None:
        versions.append(info.version)
    keys = store.shared_keys() + [model_blob_key(prefix, v) for v in versions]
    for decision_id in DECISIONS:
        keys += store.decision_keys(decision_id)
    for i in range(0, len(keys), 1000):
        harness.nba_redis.delete(*keys[i : i + 1000])
    harness.close()


DECISIONS: list[str] = []


def customer(nba: PersonalisationHarness) -> str:
    cid = f"c-{uuid.uuid4().hex[:10]}"
    events = [
        recent_login(0, customer_id=cid),
        recent_consent(1, ev.ConsentChange.PURPOSE_PERSONALISATION, True, customer_id=cid),
    ]
    nba.track(events)
    nba.wait_for_profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid, events=len(events))
    return cid


def decide(nba: PersonalisationHarness, cid: str, device: str) -> npb.DecideResponse:
    reply = nba.decide(PLACEMENT, ev.CHANNEL_WEB, customer_id=cid, explain=False, device=device)
    DECISIONS.append(reply.decision_id)
    return reply


def test_outcomes_reach_the_learner_and_change_the_next_decisions(
    nba: PersonalisationHarness,
) -> None:
    people = [customer(nba) for _ in range(2)]
    # Before any outcome: the static rules, the same action on every device.
    for device in TAKES:
        reply = decide(nba, people[0], device)
        assert reply.policy == npb.DECISION_POLICY_STATIC
        assert [a.action_id for a in reply.actions] == [STATIC_CHOICE]

    # People act: each takes the action of their device when it is shown (accept: 50 / 50
    # = reward 1), and ignores anything else (no outcome: reward 0 when its window ends).
    versions: set[str] = set()
    # The probability the model gave each device's favourite when it last showed it.
    confidence = dict.fromkeys(TAKES, 0.0)
    deadline = time.monotonic() + 120
    i = 0
    while time.monotonic() < deadline and min(confidence.values()) < 0.9:
        device = ("mobile", "desktop")[i % 2]
        reply = decide(nba, people[i % len(people)], device)
        i += 1
        (shown,) = reply.actions
        if reply.model_version:
            versions.add(reply.model_version)
        if shown.action_id == TAKES[device]:
            if reply.policy == npb.DECISION_POLICY_LEARNED:
                confidence[device] = shown.probability
            nba.nba.ReportOutcome(
                npb.ReportOutcomeRequest(
                    decision_id=reply.decision_id,
                    action_id=shown.action_id,
                    outcome=ev.OfferOutcome.OUTCOME_ACCEPT,
                ),
                timeout=10,
            )
        time.sleep(0.01)
    assert len(versions) >= 2, "servers never switched to a newer model"
    assert min(confidence.values()) >= 0.9, (
        f"after {i} decisions the model does not follow the device: {confidence}"
    )

    # The next decisions, for someone new, follow what was learned for their device
    # (the model still explores a little: most, not all).
    newcomer = customer(nba)
    for device, action in TAKES.items():
        firsts = Counter(decide(nba, newcomer, device).actions[0].action_id for _ in range(20))
        assert firsts[action] >= 14, (device, firsts)
        assert firsts[STATIC_CHOICE] <= 4, (device, firsts)
