"""The contact ledger's script against the real Redis: it agrees with the in-memory model
(services/common/contact_ledger.py's LedgerModel) on random sequences of reserves,
outcomes, erasures and time passing; concurrent reserves for one person never exceed a
cap; keys share a slot, expire and are trimmed."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.common.contact_ledger import (
    DAY_MS,
    HOUR_MS,
    OUTCOMES,
    RESULT_TTL_MS,
    AsyncContactLedger,
    Candidate,
    CapRule,
    ContactLedger,
    LedgerKeys,
    LedgerModel,
    Reservation,
)
from services.common.settings import redis_settings

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_000
WEEK_MS = 7 * DAY_MS
L = TypeVar("L", ContactLedger, AsyncContactLedger)


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_settings().redis_url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable ({exc}); start it with `make up`")
    yield client
    client.close()


class RecordingKeys(LedgerKeys):
    """Key names that remember whose they were, for the clean-up (a SCAN for the prefix
    would walk the whole shared database)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.people: set[str] = set()

    def all_of(self, person: str) -> list[str]:
        self.people.add(person)
        return super().all_of(person)


@pytest.fixture
def keys(client: redis.Redis) -> Iterator[RecordingKeys]:
    """A key prefix of the test's own; every ledger written under it is deleted after."""
    keys = RecordingKeys(f"test-ledger-{uuid.uuid4().hex[:8]}:")
    yield keys
    people = sorted(keys.people)
    for i in range(0, len(people), 100):
        client.delete(*[k for p in people[i : i + 100] for k in LedgerKeys.all_of(keys, p)])


def on(ledger: L, keys: RecordingKeys) -> L:
    ledger.keys = keys
    return ledger


@pytest.fixture
def ledger(client: redis.Redis, keys: RecordingKeys) -> ContactLedger:
    return on(ContactLedger(client, keys.prefix), keys)


# The script agrees with the model.

# Four actions over three kinds, two of them marketing.
ACTIONS = (
    ("upsell-1", "upsell", False),
    ("upsell-2", "upsell", True),
    ("promo", "cross_sell", True),
    ("notice", "service", False),
)
KINDS = sorted({kind for _, kind, _ in ACTIONS})
# Windows and cool-offs of a few hours and a retention of a day; time moves in hours, or
# to just before, at or after the moment something recent leaves a window.
RETENTION_DAYS = 1
RULES = st.sampled_from(
    [
        CapRule(),
        CapRule(max_impressions=1, window_ms=2 * HOUR_MS),
        CapRule(max_impressions=2, window_ms=3 * HOUR_MS, dismiss_cooloff_ms=2 * HOUR_MS),
        CapRule(max_impressions=2, window_ms=0),
        CapRule(max_impressions=3, window_ms=WEEK_MS, stop_after_accept=True),
        CapRule(dismiss_cooloff_ms=3 * HOUR_MS, stop_after_accept=True),
        CapRule(dismiss_cooloff_ms=2 * DAY_MS),
    ]
)
STEPS = st.sampled_from([0, 1, HOUR_MS, 2 * HOUR_MS, 12 * HOUR_MS])
OFFSETS = st.sampled_from([-2 * HOUR_MS, -HOUR_MS, -1, 0, 1, HOUR_MS])


class LedgerMachine(RuleBasedStateMachine):
    """The same calls to the script and to the model; every answer and view must agree."""

    client: redis.Redis
    keys: RecordingKeys

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:8]
        self.people = (f"{run}-a", f"{run}-b")
        self.redis = on(
            ContactLedger(self.client, self.keys.prefix, retention_days=RETENTION_DAYS), self.keys
        )
        self.model = LedgerModel(retention_days=RETENTION_DAYS)
        self.now = NOW
        self.candidates: list[Candidate] = []
        self.decisions: list[tuple[str, str]] = []
        # When something was recorded: what time moves to the boundaries of.
        self.times: list[int] = []

    @initialize(
        action_rules=st.lists(RULES, min_size=len(ACTIONS), max_size=len(ACTIONS)),
        kind_rules=st.lists(RULES, min_size=len(KINDS), max_size=len(KINDS)),
    )
    def catalogue(self, action_rules: list[CapRule], kind_rules: list[CapRule]) -> None:
        by_kind = dict(zip(KINDS, kind_rules, strict=True))
        self.candidates = [
            Candidate(action, kind, marketing, rule, by_kind[kind])
            for (action, kind, marketing), rule in zip(ACTIONS, action_rules, strict=True)
        ]

    @rule(ms=STEPS)
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @precondition(lambda self: bool(self.times))
    @rule(back=st.integers(0, 5), span=st.data(), delta=st.sampled_from([-1, 0, 1]))
    def to_a_boundary(self, back: int, span: st.DataObject, delta: int) -> None:
        """To one of the moments something recent leaves a window or a cool-off (the
        catalogue's, the retention, the global window or RESULT_TTL_MS), or a millisecond
        either side; possibly back in time, as callers' clocks differ."""
        spans = {DAY_MS} | {
            ms
            for c in self.candidates
            for r in (c.action_rule, c.kind_rule)
            for ms in (r.window_ms, r.dismiss_cooloff_ms)
            if 0 < ms < DAY_MS
        }
        since = self.times[-1 - back % len(self.times)]
        self.now = since + span.draw(st.sampled_from(sorted(spans))) + delta

    @rule(
        who=st.sampled_from([0, 0, 0, 1]),
        again=st.integers(0, 9),
        order=st.permutations(range(len(ACTIONS))),
        n=st.integers(1, len(ACTIONS)),
        want=st.integers(0, 3),
        per_day=st.integers(0, 3),
    )
    def reserve(
        self, who: int, again: int, order: list[int], n: int, want: int, per_day: int
    ) -> None:
        person = self.people[who]
        if again < len(self.decisions) and again % 3 == 0:
            person, decision = self.decisions[again]
        else:
            decision = uuid.uuid4().hex
            self.decisions.append((person, decision))
        candidates = [self.candidates[i] for i in order[:n]]
        args = (person, decision, self.now, candidates, want, per_day)
        assert self.redis.reserve(*args) == self.model.reserve(*args)
        self.times.append(self.now)

    @precondition(lambda self: bool(self.decisions))
    @rule(
        which=st.integers(0, 3),
        action=st.integers(0, len(ACTIONS) - 1),
        outcome=st.sampled_from(OUTCOMES),
        offset=OFFSETS,
    )
    def outcome(self, which: int, action: int, outcome: str, offset: int) -> None:
        person, decision = self.decisions[-1 - which % len(self.decisions)]
        c = self.candidates[action]
        ts = max(self.now + offset, 0)
        args = (person, decision, c.action_id, c.kind, c.marketing, outcome, ts)
        self.redis.record_outcome(*args)
        self.model.record_outcome(*args)
        self.times.append(ts)

    @rule(who=st.integers(0, 1))
    def forget(self, who: int) -> None:
        self.redis.forget(self.people[who])
        self.model.forget(self.people[who])

    @invariant()
    def views_agree(self) -> None:
        for person in self.people:
            assert self.redis.history(person, self.now) == self.model.history(person, self.now)


def test_the_script_agrees_with_the_model(client: redis.Redis, keys: RecordingKeys) -> None:
    LedgerMachine.client = client
    LedgerMachine.keys = keys
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# Every boundary, exhaustively: something recorded at T, then a reserve a millisecond
# before, at and after T + each span that could matter.

BOUNDARY_RULES = [
    CapRule(max_impressions=1, window_ms=2 * HOUR_MS),
    CapRule(max_impressions=1, window_ms=0),
    CapRule(max_impressions=1, window_ms=WEEK_MS),
    CapRule(dismiss_cooloff_ms=3 * HOUR_MS),
    CapRule(dismiss_cooloff_ms=2 * DAY_MS),
    CapRule(stop_after_accept=True),
]


def test_the_script_agrees_with_the_model_at_every_boundary(
    client: redis.Redis, keys: RecordingKeys
) -> None:
    script = on(ContactLedger(client, keys.prefix, retention_days=RETENTION_DAYS), keys)
    model = LedgerModel(retention_days=RETENTION_DAYS)
    disagreements = []
    cases = itertools.product(
        ("action", "kind"),
        BOUNDARY_RULES,
        ("reserve", "impression", "dismiss", "accept"),
        (-1, 0, 1),
        (False, True),
        (0, 1),
    )
    for n, (scope, rule_, first, delta, again, per_day) in enumerate(cases):
        # Now; the rule's window or cool-off; a day: the retention, the global window and
        # RESULT_TTL_MS.
        for span in {0, rule_.window_ms or DAY_MS, rule_.dismiss_cooloff_ms or DAY_MS, DAY_MS}:
            person = f"p{n}-{span}"
            rules = (rule_, CapRule()) if scope == "action" else (CapRule(), rule_)
            offer = Candidate("a", "k", True, *rules)
            # A kind's rule is tested on an outcome of another action of the kind.
            outcome_of = "a" if scope == "action" or first == "reserve" else "b"
            later = NOW + span + delta
            answers = []
            for ledger in (script, model):
                if first == "reserve":
                    ledger.reserve(person, "d1", NOW, [offer], 1, per_day)
                else:
                    # Once, again, and once more from earlier, reported late.
                    for ts in (NOW, NOW, NOW - 1):
                        ledger.record_outcome(person, "d1", outcome_of, "k", True, first, ts)
                if first in ("reserve", "impression"):
                    # The impression reported (again) later: once its first record is
                    # past the retention, it counts anew.
                    ledger.record_outcome(person, "d1", outcome_of, "k", True, "impression", later)
                decision = "d1" if again else "d2"
                answers.append(
                    (
                        ledger.reserve(person, decision, later, [offer], 1, per_day),
                        ledger.history(person, later),
                    )
                )
            if answers[0] != answers[1]:
                disagreements.append((scope, rule_, first, span, delta, again, per_day, answers))
    assert disagreements == []


# Concurrency: one script call at a time per Redis, so no cap is exceeded.


def run_at_once(n: int, call: object) -> list[Reservation]:
    """`call(i)` for i in range(n), from n threads released together."""
    start = threading.Barrier(n)

    def one(i: int) -> Reservation:
        start.wait()
        return call(i)  # type: ignore[operator, no-any-return]

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_reserves_never_exceed_the_action_cap(ledger: ContactLedger) -> None:
    offer = Candidate(
        "upsell-1", "upsell", False, CapRule(max_impressions=3, window_ms=WEEK_MS), CapRule()
    )
    for round_ in range(5):
        person = f"person-{round_}"
        results = run_at_once(
            20, lambda i, p=person: ledger.reserve(p, f"d{i}", NOW + i, [offer], 1, 0)
        )
        assert sum(len(r.chosen) for r in results) == 3
        assert sum(len(r.refused) for r in results) == 17
        assert len(ledger.history(person, NOW + 100).impressions) == 3


def test_concurrent_reserves_keep_the_global_cap_across_actions(ledger: ContactLedger) -> None:
    promos = [Candidate(f"promo-{i}", "cross_sell", True, CapRule(), CapRule()) for i in range(20)]

    def reserve(i: int) -> Reservation:
        mine = random.Random(i).sample(promos, 6)
        return ledger.reserve("person", f"d{i}", NOW + i, mine, 2, 5)

    results = run_at_once(20, reserve)
    assert sum(len(r.chosen) for r in results) == 5
    shown = ledger.history("person", NOW + 100).impressions
    assert len(shown) == 5
    assert all(i.marketing for i in shown)


def test_concurrent_repeats_of_one_decision_record_it_once(ledger: ContactLedger) -> None:
    offers = [Candidate(f"a{i}", "k", False, CapRule(), CapRule()) for i in range(4)]
    results = run_at_once(20, lambda i: ledger.reserve("person", "dec", NOW + i, offers, 2, 0))
    assert {r.chosen for r in results} == {("a0", "a1")}
    assert len(ledger.history("person", NOW + 100).impressions) == 2


# Keys.


def test_keys_expire_after_the_retention_and_erasure_deletes_them(
    client: redis.Redis, ledger: ContactLedger
) -> None:
    offer = Candidate("a", "k", True, CapRule(), CapRule())
    ledger.reserve("p:1", "d1", NOW, [offer], 1, 0)
    ledger.record_outcome("p:1", "d1", "a", "k", True, "dismiss", NOW)
    keys = ledger.keys.all_of("p:1")
    assert all(k.startswith(f"{ledger.keys.prefix}ledger:{{p:1}}:") for k in keys)
    for key in keys:
        assert 89 * DAY_MS < client.pttl(key) <= 90 * DAY_MS
    ledger.forget("p:1")
    assert client.exists(*keys) == 0


def test_old_impressions_and_results_are_trimmed(
    client: redis.Redis, ledger: ContactLedger
) -> None:
    offer = Candidate("a", "k", True, CapRule(), CapRule())
    ledger.reserve("p", "d1", NOW, [offer], 1, 0)
    index, _, decisions = ledger.keys.all_of("p")
    # One impression (five entries: marketing) and one kept result.
    assert client.zcard(index) == 6
    ledger.reserve("p", "d2", NOW + RESULT_TTL_MS, [offer], 1, 0)
    assert client.hkeys(decisions) == [b"d2"]
    assert client.zcard(index) == 11
    ledger.reserve("p", "d3", NOW + ledger.retention_ms + 1, [offer], 1, 0)
    # d1's impression is past the retention, d2's result past its TTL.
    assert client.hkeys(decisions) == [b"d3"]
    assert client.zcard(index) == 11
    assert [i.decision_id for i in ledger.history("p", NOW + ledger.retention_ms).impressions] == [
        "d2",
        "d3",
    ]


async def test_the_asyncio_ledger_is_the_same_ledger(
    client: redis.Redis, keys: RecordingKeys
) -> None:
    aclient = aioredis.Redis.from_url(redis_settings().redis_url)
    try:
        aledger = on(AsyncContactLedger(aclient, keys.prefix), keys)
        once = Candidate("a", "k", True, CapRule(max_impressions=1), CapRule())
        first = await aledger.reserve(
            "p", "d1", NOW, [once, once.__class__("b", "k", False, CapRule(), CapRule())], 2, 0
        )
        assert first.chosen == ("a", "b")
        await aledger.record_outcome("p", "d1", "a", "k", True, "accept", NOW + 1)
        sync = on(ContactLedger(client, keys.prefix), keys)
        assert sync.reserve("p", "d2", NOW + 2, [once], 1, 0).chosen == ()
        assert await aledger.history("p", NOW + 2) == sync.history("p", NOW + 2)
        await aledger.forget("p")
        assert sync.history("p", NOW + 2).impressions == ()
    finally:
        await aclient.aclose()
