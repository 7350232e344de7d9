"""Detection state on the local Redis agrees with its memory twin (which the pipeline's
unit tests use): random sequences of window counts, preceded-by pairs, spike counts with
their baselines, open spikes and quiet schedules give the same answers, redelivered
event ids included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.alerts.adapters.layout import AlertKeys
from services.alerts.adapters.windows import DetectionState, MemoryDetectionState
from services.common.settings import redis_settings

pytestmark = pytest.mark.integration

WITHIN, WINDOW, BASELINE = 10_000, 5_000, 60_000
EVENTS = [f"e{i}" for i in range(12)]  # few ids: redeliveries happen

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("count"),
            st.sampled_from(["a", "b"]),
            st.sampled_from(EVENTS),
            st.integers(0, 40_000),
        ),
        st.tuples(
            st.just("precede"),
            st.sampled_from(["hit", "pre"]),
            st.sampled_from(EVENTS),
            st.integers(0, 40_000),
        ),
        st.tuples(
            st.just("spike"),
            st.sampled_from(["checkout.payment", "app.checkout"]),
            st.sampled_from(EVENTS),
            st.integers(0, 200_000),
        ),
        st.tuples(
            st.just("quiet"),
            st.sampled_from(["k1", "k2"]),
            st.just(""),
            st.integers(0, 100_000),
        ),
    ),
    max_size=40,
)


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_settings().redis_url)
    try:
        c.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable ({exc}); start the stack with `make up`")
    yield c
    c.close()


def forget(client: redis.Redis, prefix: str) -> None:
    """Deletes the keys these tests write (by name: the shared Redis holds many)."""
    keys = AlertKeys(prefix)
    state = DetectionState(client, keys)
    names = [keys.window("r", k) for k in ("a", "b", "p:hit", "p:pre", "p1")]
    for touchpoint in ("checkout.payment", "app.checkout"):
        names += [keys.spike("s", touchpoint), keys.baseline("s", touchpoint)]
    client.delete(*names, state.spikes_key, state.quiet_key)


def run(state: Any, sequence: list[tuple[str, str, str, int]]) -> list[Any]:
    out: list[Any] = []
    for op, what, event_id, at in sequence:
        if op == "count":
            out.append(state.count("r", what, event_id, at, WITHIN))
        elif op == "precede":
            out.append(state.precede("r", "p", what, event_id, at, WITHIN))
        elif op == "spike":
            counted = state.spike("s", what, event_id, at, WINDOW, BASELINE)
            out.append(counted)
            if counted.count >= 3:
                state.open_spike("s", what, float(counted.count))
            out.append(state.count_now("s", what, at + 1000, WINDOW))
        else:
            state.resolve_quiet([(what, at)])
            out.append(state.due_quiet(50_000))
    out.append(state.open_spikes())
    for key, due in state.due_quiet(10**9):
        state.drop_quiet(key, due)
    out.append(state.due_quiet(10**9))
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=ops)
def test_redis_and_memory_agree(
    client: redis.Redis, sequence: list[tuple[str, str, str, int]]
) -> None:
    prefix = f"test-win-{uuid.uuid4().hex[:8]}:"
    try:
        on_redis = run(DetectionState(client, AlertKeys(prefix)), sequence)
        in_memory = run(MemoryDetectionState(), sequence)
        assert on_redis == in_memory
    finally:
        forget(client, prefix)


def test_a_spikes_state_and_keys_expire(client: redis.Redis) -> None:
    prefix = f"test-win-{uuid.uuid4().hex[:8]}:"
    keys = AlertKeys(prefix)
    state = DetectionState(client, keys)
    try:
        state.spike("s", "checkout.payment", "e1", 1_000_000, WINDOW, BASELINE)
        state.count("r", "p1", "e1", 1_000_000, WITHIN)
        for key in (keys.spike("s", "checkout.payment"), keys.baseline("s", "checkout.payment")):
            assert 0 < int(client.pttl(key)) <= BASELINE + 2 * WINDOW + 60_000
        assert 0 < int(client.pttl(keys.window("r", "p1"))) <= 2 * WITHIN + 60_000
        state.open_spike("s", "checkout.payment", 4.0)
        state.mark_below("s", "checkout.payment", 123)
        (spike,) = state.open_spikes()
        assert (spike.rule, spike.touchpoint, spike.threshold, spike.below_since_ms) == (
            "s",
            "checkout.payment",
            4.0,
            123,
        )
        state.close_spike("s", "checkout.payment")
        assert state.open_spikes() == []
    finally:
        forget(client, prefix)


def test_an_open_spike_below_its_threshold_still_counts_events(client: redis.Redis) -> None:
    # The baseline hash holds the spike's 'open' and 'below' marks next to its buckets;
    # the script once read 'below' as a bucket and failed every event of the touchpoint.
    prefix = f"test-win-{uuid.uuid4().hex[:8]}:"
    state = DetectionState(client, AlertKeys(prefix))
    try:
        state.spike("s", "checkout.payment", "e1", 1_000_000, WINDOW, BASELINE)
        state.open_spike("s", "checkout.payment", 4.0)
        state.mark_below("s", "checkout.payment", 1_000_500)
        later = state.spike("s", "checkout.payment", "e2", 1_001_000, WINDOW, BASELINE)
        assert later.count == 2
        (spike,) = state.open_spikes()
        assert spike.below_since_ms == 1_000_500
    finally:
        forget(client, prefix)
