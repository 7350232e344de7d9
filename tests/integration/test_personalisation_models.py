"""Decide servers and the learned model: a server finds a new checkpoint without a restart,
orders by it, names its version in the reply and the decision log, gives each shown action
the probability it was picked, and keeps serving when a checkpoint cannot be loaded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as npb
from cx.profile.v1 import profile_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import KafkaSettings, redis_settings
from services.personalisation import decision_records
from services.personalisation.adapters.learning_store import model_blob_key as blob_key
from services.personalisation.adapters.learning_store import model_current_key as current_key
from services.personalisation.domain import learning
from services.personalisation.domain.learning import ArmSpec, Model, TrainingExample
from services.personalisation.server import MODEL_HEALTH_NAME
from tests.factories import recent_consent, recent_login, recent_order, recent_page
from tests.integration.personalisation_harness import PersonalisationHarness

pytestmark = pytest.mark.integration

PLACEMENT = "web.home.hero"
# Checkpoints this module wrote, deleted at the end.
WRITTEN: list[str] = []
PURPOSES = (
    ev.ConsentChange.PURPOSE_PERSONALISATION,
    ev.ConsentChange.PURPOSE_MARKETING_EMAIL,
)


@pytest.fixture(scope="module")
def nba(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PersonalisationHarness]:
    harness = PersonalisationHarness(
        kafka, redis_settings().redis_url, tmp_path_factory.mktemp("nba-models")
    )
    harness.start_worker()
    yield harness
    client = harness.nba_redis
    prefix = harness.settings.key_prefix
    client.delete(current_key(prefix), *(blob_key(prefix, v) for v in WRITTEN))
    harness.close()


def customer(nba: PersonalisationHarness) -> str:
    cid = f"c-{uuid.uuid4().hex[:10]}"
    events = [recent_login(0, customer_id=cid)]
    events += [recent_page(1 + i, customer_id=cid) for i in range(2)]
    events += [recent_order(10 + i, 300, customer_id=cid) for i in range(2)]
    events += [recent_consent(20 + i, p, True, customer_id=cid) for i, p in enumerate(PURPOSES)]
    nba.track(events)
    nba.wait_for_profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid, events=len(events))
    return cid


def write_checkpoint(nba: PersonalisationHarness, sequence: int, data: bytes) -> str:
    """A checkpoint as the learner writes it (version named after its bytes)."""
    version = learning.model_version(sequence, data)
    prefix = nba.settings.key_prefix
    client: redis.Redis = nba.nba_redis
    client.set(blob_key(prefix, version), data)
    client.hset(
        current_key(prefix),
        mapping={"version": version, "sequence": sequence, "cursor": "0-0", "trained": 1},
    )
    WRITTEN.append(version)
    return version


def preferring(action_id: str, arms: list[ArmSpec]) -> bytes:
    """A model that learned `action_id` is the one people take, whoever they are."""
    model = Model(learning.load_learning().model.vw_args)
    for i in range(400):
        chosen = i % len(arms)
        model.learn(
            TrainingExample(
                f"t{i}",
                "shared |u x |r y",
                tuple(arms),
                chosen,
                1.0 / len(arms),
                1.0 if arms[chosen].action_id == action_id else 0.0,
            )
        )
    data = model.to_bytes()
    model.close()
    return data


def wait_for_version(nba: PersonalisationHarness, cid: str, version: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if nba.decide(PLACEMENT, ev.CHANNEL_WEB, customer_id=cid).model_version == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"no decision used model {version} within 10 s")


def logged(nba: PersonalisationHarness, version: str) -> list[npb.DecisionRecord]:
    records = [
        npb.DecisionRecord.FromString(value)
        for _, value, _ in nba.records(nba.kafka.decisions_topic)
    ]
    return [r for r in records if r.model_version == version]


def model_health(nba: PersonalisationHarness) -> int:
    stub = health_pb2_grpc.HealthStub(nba.nba_channel)
    status: int = stub.Check(
        health_pb2.HealthCheckRequest(service=MODEL_HEALTH_NAME), timeout=5
    ).status
    return status


def test_servers_switch_model_versions_without_restart(nba: PersonalisationHarness) -> None:
    cid = customer(nba)
    before = nba.decide(PLACEMENT, ev.CHANNEL_WEB, customer_id=cid, max_actions=10)
    # No checkpoint yet: the static rules, deterministic.
    assert before.policy == npb.DECISION_POLICY_STATIC
    assert before.model_version == ""
    assert all(a.probability == 1.0 for a in before.actions)
    eligible = [a.action_id for a in before.actions] + [
        f.action_id
        for f in before.filtered
        if f.stage in (npb.STAGE_PRIORITISATION, npb.STAGE_CONTACT_POLICY)
    ]
    kinds = {a.action_id: a.kind for a in before.actions} | {
        f.action_id: f.kind for f in before.filtered
    }
    assert len(eligible) >= 3
    arms = [ArmSpec(a, kinds[a]) for a in eligible]
    # The static rules' last choice, then another: what a model can change.
    first, second = eligible[-1], eligible[-2]

    for sequence, favourite in ((1, first), (2, second)):
        version = write_checkpoint(nba, sequence, preferring(favourite, arms))
        wait_for_version(nba, cid, version)
        assert model_health(nba) == health_pb2.HealthCheckResponse.SERVING
        replies = [nba.decide(PLACEMENT, ev.CHANNEL_WEB, customer_id=cid) for _ in range(30)]
        assert {r.policy for r in replies} == {npb.DECISION_POLICY_LEARNED}
        assert {r.model_version for r in replies} == {version}
        for reply in replies:
            for action in reply.actions:
                assert 0 < action.probability <= 1
                assert "policy.learned" in {r.code for r in action.reasons}
        deadline = time.monotonic() + 10
        records = logged(nba, version)
        while len(records) < 31 and time.monotonic() < deadline:
            time.sleep(0.2)
            records = logged(nba, version)
        assert len(records) >= 31
        # The order the model sampled (before the contact caps): mostly its favourite.
        firsts = [r.ranked[0].action_id for r in records]
        assert firsts.count(favourite) >= 0.8 * len(firsts)
        for record in records:
            assert record.policy == npb.DECISION_POLICY_LEARNED
            assert {a.action_id for a in record.ranked} == set(eligible)
            choice = decision_records.first_choice(record)
            if choice is not None:
                assert 0 < choice[1] <= 1
            by_id = {r.decision_id: r for r in replies}
            if record.decision_id in by_id:
                answered = [a.probability for a in by_id[record.decision_id].actions]
                assert [a.probability for a in record.chosen] == answered


def test_a_checkpoint_that_cannot_be_loaded_keeps_the_model_in_use(
    nba: PersonalisationHarness,
) -> None:
    cid = customer(nba)
    arms = [ArmSpec("loyalty_points", "loyalty"), ArmSpec("we_miss_you", "retention")]
    good = write_checkpoint(nba, 10, preferring("loyalty_points", arms))
    wait_for_version(nba, cid, good)
    write_checkpoint(nba, 11, b"not a model")
    deadline = time.monotonic() + 10
    while model_health(nba) == health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "a bad checkpoint left the model health SERVING"
        time.sleep(0.1)
    reply = nba.decide(PLACEMENT, ev.CHANNEL_WEB, customer_id=cid)
    assert reply.policy == npb.DECISION_POLICY_LEARNED
    assert reply.model_version == good
    fixed = write_checkpoint(nba, 12, preferring("we_miss_you", arms))
    wait_for_version(nba, cid, fixed)
    deadline = time.monotonic() + 10
    while model_health(nba) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "a good checkpoint did not bring SERVING back"
        time.sleep(0.1)
