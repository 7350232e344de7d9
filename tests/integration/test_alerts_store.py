"""The incident store against the real Redis: the store's contract (tests/support/alerts.py,
which the in-memory store also passes), racing writers on one dedup key, the outbox
entry written in the same call as the change, and random sequences of operations agreeing
with the in-memory store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from cx.alerts.v1 import alerts_pb2 as pb
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.alerts.adapters.incidents import IncidentStore, MemoryIncidentStore
from services.alerts.adapters.layout import OUTBOX_GROUP
from services.alerts.domain.incidents import (
    DUPLICATE,
    OPENED,
    SEVERITIES,
    UPDATED,
    Matcher,
    TriggerResult,
    person_key,
)
from services.common.settings import redis_settings
from tests.support.alerts import (
    NOW,
    SequentialIds,
    Store,
    StoreContract,
    clean,
    make_trigger,
    outbox_changes,
    redis_store,
)
from tests.support.alerts import silence as silence_record

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_settings().redis_url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable ({exc}); start it with `make up`")
    yield client
    client.close()


@pytest.fixture
def store(client: redis.Redis) -> Iterator[IncidentStore]:
    store = redis_store(client, f"test-alerts-{uuid.uuid4().hex[:8]}:")
    yield store
    clean(client, store)


class TestRedisStore(StoreContract):
    pass


def test_twenty_racing_triggers_open_one_incident(store: IncidentStore) -> None:
    start = threading.Barrier(20)

    def fire(i: int) -> str:
        start.wait()
        return store.trigger(make_trigger(f"e{i}", now_ms=NOW + i)).change

    with ThreadPoolExecutor(20) as pool:
        changes = list(pool.map(fire, range(20)))
    assert changes.count(OPENED) == 1
    assert changes.count(UPDATED) == 19
    [incident] = store.list_incidents().incidents
    assert incident.count == 20
    assert incident.version == 20
    assert [c for c, *_ in outbox_changes(store)] == ["OPENED"] + ["UPDATED"] * 19
    assert [v for *_, v in outbox_changes(store)] == list(range(1, 21))


def test_twenty_racing_redeliveries_count_once(store: IncidentStore) -> None:
    start = threading.Barrier(20)

    def fire(_: int) -> str:
        start.wait()
        return store.trigger(make_trigger("e1")).change

    with ThreadPoolExecutor(20) as pool:
        changes = list(pool.map(fire, range(20)))
    assert sorted(changes) == [DUPLICATE] * 19 + [OPENED]
    assert len(outbox_changes(store)) == 1


def test_racing_acknowledgements_one_wins(store: IncidentStore) -> None:
    store.trigger(make_trigger("e1"))
    start = threading.Barrier(10)

    def ack(i: int) -> str:
        start.wait()
        try:
            return store.acknowledge("inc-0001", f"user{i}", NOW + 1).acknowledged_by
        except Exception as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(ack, range(10)))
    assert outcomes.count("InvalidTransition") == 9
    assert [c for c, *_ in outbox_changes(store)] == ["OPENED", "ACKNOWLEDGED"]


def test_change_and_outbox_entry_are_one_write(client: redis.Redis, store: IncidentStore) -> None:
    """The incident's version and the outbox's last entry always agree: a commit whose
    check fails writes neither."""
    store.trigger(make_trigger("e1"))
    key = store.keys.incident("inc-0001")
    # Another writer changes the incident between this writer's read and its commit.
    real_record_of = store._record_of
    raced: list[bool] = []

    def racing_record_of(incident_id: str):  # type: ignore[no-untyped-def]
        record = real_record_of(incident_id)
        if not raced:
            raced.append(True)
            client.hset(key, "version", "7")
        return record

    store._record_of = racing_record_of  # type: ignore[method-assign]
    acked = store.acknowledge("inc-0001", "alice", NOW + 1)
    assert acked.version == 8
    assert [(c, v) for c, _, _, v in outbox_changes(store)] == [("OPENED", 1), ("ACKNOWLEDGED", 8)]


def test_outbox_entry_decodes_to_the_stored_incident(store: IncidentStore) -> None:
    store.trigger(make_trigger("e1", escalate_after_s=60))
    store.fire_due(NOW + 60_000)
    [opened, escalated] = store.read_outbox("0-0", 0)
    assert opened.message.change == pb.CHANGE_OPENED
    assert escalated.message.change == pb.CHANGE_ESCALATED
    stored = store.get("inc-0001")
    assert stored is not None
    assert escalated.message.incident == stored
    assert escalated.version == stored.version == 2
    assert escalated.at_ms > 0


def test_outbox_consumer_group_reads_every_change(store: IncidentStore) -> None:
    store.ensure_outbox_group()
    store.ensure_outbox_group()  # again: no error
    store.trigger(make_trigger("e1"))
    store.acknowledge("inc-0001", "alice", NOW + 1)
    reply: Any = store.client.xreadgroup(OUTBOX_GROUP, "t", {store.keys.outbox: ">"}, count=10)
    assert [len(entries) for _, entries in reply] == [2]


def test_read_outbox_blocks_until_a_change(store: IncidentStore) -> None:
    tail = store.outbox_tail()
    assert tail == "0-0"
    timer = threading.Timer(0.2, lambda: store.trigger(make_trigger("e1")))
    timer.start()
    entries = store.read_outbox(tail, 3000)
    timer.join()
    assert [e.change for e in entries] == ["OPENED"]
    assert store.outbox_tail() == entries[0].entry_id
    assert store.read_outbox(entries[0].entry_id, 50) == []


def test_seen_markers_expire(client: redis.Redis, store: IncidentStore) -> None:
    store.trigger(make_trigger("e1"))
    ttl = client.pttl(store.keys.seen("detractor", "e1"))
    assert 7 * 86_400_000 < ttl <= 8 * 86_400_000


# --- Random sequences: Redis agrees with the in-memory store ----------------------------

PEOPLE = ("p1", "p2", "p3", "")
RULES = ("detractor", "complaint_high", "payment_failed")
TOUCHPOINTS = ("checkout.payment", "web.home")


class StoresAgree(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(redis_settings().redis_url)
        self.redis = redis_store(self.client, f"test-alerts-{uuid.uuid4().hex[:8]}:")
        self.memory = MemoryIncidentStore(SequentialIds(), SequentialIds("sil"))
        self.now = NOW
        self.ids: list[str] = []

    def teardown(self) -> None:
        clean(self.client, self.redis)
        self.client.close()

    def both(self, call: Callable[[Store], object]) -> object:
        outcomes = []
        for store in (self.redis, self.memory):
            try:
                outcomes.append(call(store))
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        r, m = outcomes
        assert r == m
        return m

    @rule(
        who=st.sampled_from(PEOPLE),
        rule_name=st.sampled_from(RULES),
        touchpoint=st.sampled_from(TOUCHPOINTS),
        event=st.integers(0, 30),
        severity=st.sampled_from(SEVERITIES),
        group=st.booleans(),
        escalate=st.sampled_from([None, 60.0]),
        sla=st.booleans(),
        advance=st.integers(0, 120_000),
    )
    def trigger(
        self,
        who: str,
        rule_name: str,
        touchpoint: str,
        event: int,
        severity: str,
        group: bool,
        escalate: float | None,
        sla: bool,
        advance: int,
    ) -> None:
        self.now += advance
        t = make_trigger(
            f"ev{event}",
            rule=rule_name if who else f"{rule_name}_spike",
            kind="event" if who else "spike",
            profile_id=who,
            touchpoint=touchpoint,
            severity=severity,
            now_ms=self.now,
            escalate_after_s=escalate,
            groups_with=("complaint_high",) if group and rule_name != "complaint_high" else (),
            sla_due_ms=self.now + 300_000 if sla and who else None,
        )
        result = self.both(lambda s: s.trigger(t))
        assert isinstance(result, TriggerResult)
        if result.incident_id and result.incident_id not in self.ids:
            self.ids.append(result.incident_id)

    @precondition(lambda self: bool(self.ids))
    @rule(pick=st.integers(0, 1000), resolve=st.booleans(), advance=st.integers(0, 60_000))
    def change(self, pick: int, resolve: bool, advance: int) -> None:
        self.now += advance
        incident_id = self.ids[pick % len(self.ids)]
        now = self.now
        if resolve:
            self.both(lambda s: s.resolve(incident_id, "alice", "done", now))
        else:
            self.both(lambda s: s.acknowledge(incident_id, "bob", now))

    @rule(who=st.sampled_from(PEOPLE), rule_name=st.sampled_from(RULES))
    def resolve_key(self, who: str, rule_name: str) -> None:
        key = person_key(rule_name, who) if who else f"{rule_name}_spike:tp:checkout.payment"
        now = self.now
        self.both(lambda s: s.resolve_key(key, "clear", now))

    @rule(advance=st.integers(0, 400_000))
    def fire(self, advance: int) -> None:
        self.now += advance
        now = self.now
        self.both(lambda s: sorted(s.fire_due(now)))

    @rule(
        name=st.sampled_from(["team", "rule", "touchpoint", "profile_id", "severity"]),
        value=st.sampled_from(["cx", "detractor", "checkout.", "p1", "critical"]),
        prefix=st.booleans(),
        length=st.integers(1, 600_000),
    )
    def silence(self, name: str, value: str, prefix: bool, length: int) -> None:
        record = silence_record(Matcher(name, value, prefix), start=self.now, end=self.now + length)
        now = self.now
        self.both(lambda s: s.create_silence(record, now))

    @invariant()
    def same_incidents(self) -> None:
        for incident_id in self.ids:
            r, m = self.redis.get(incident_id), self.memory.get(incident_id)
            assert r is not None
            assert m is not None
            assert r == m
        assert outbox_changes(self.redis) == outbox_changes(self.memory)
        for states in ([], ["triggered"], ["acknowledged", "resolved"]):
            r_page = self.redis.list_incidents(states=states, page_size=200)
            m_page = self.memory.list_incidents(states=states, page_size=200)
            assert [i.incident_id for i in r_page.incidents] == [
                i.incident_id for i in m_page.incidents
            ]
            assert r_page.total == m_page.total


def test_random_sequences_agree_with_the_memory_store() -> None:
    run_state_machine_as_test(
        StoresAgree,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
