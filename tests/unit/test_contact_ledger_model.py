"""The contact ledger's semantics, on its in-memory model (the Redis script is held to the
same model by tests/integration/test_contact_ledger.py): caps per action, per kind and
the global marketing cap, dismiss cool-offs, stop after accept, rolling windows,
retention, idempotency; and the key layout and script constants."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from services.common.contact_ledger import (
    ACTION_ACCEPTED,
    ACTION_DISMISS_COOLOFF,
    ACTION_MAX_IMPRESSIONS,
    DAY_MS,
    GLOBAL_MARKETING_PER_DAY,
    HOUR_MS,
    KIND_ACCEPTED,
    KIND_DISMISS_COOLOFF,
    KIND_MAX_IMPRESSIONS,
    LUA_PATH,
    POLICIES,
    RESULT_TTL_MS,
    Candidate,
    CapRule,
    Impression,
    LedgerKeys,
    LedgerModel,
    LedgerView,
    Refusal,
    Reservation,
    ago_text,
    lua_script,
    span_text,
)

NOW = 1_700_000_000_000
WEEK_MS = 7 * DAY_MS
NO_CAP = CapRule()
UPSELL_3_A_WEEK = CapRule(max_impressions=3, window_ms=WEEK_MS)
P = "profile-1"


def cand(
    action: str,
    kind: str = "service",
    *,
    marketing: bool = False,
    rule: CapRule = NO_CAP,
    kind_rule: CapRule = NO_CAP,
) -> Candidate:
    return Candidate(action, kind, marketing, rule, kind_rule)


class Clock:
    """Decision ids and times for one test."""

    def __init__(self) -> None:
        self.now = NOW
        self.n = 0

    def decision(self) -> str:
        self.n += 1
        return f"d{self.n}"

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def ledger() -> LedgerModel:
    return LedgerModel()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def decide(
    ledger: LedgerModel,
    clock: Clock,
    candidates: list[Candidate],
    want: int = 1,
    per_day: int = 0,
    person: str = P,
) -> Reservation:
    return ledger.reserve(person, clock.decision(), clock.now, candidates, want, per_day)


def policies(r: Reservation) -> dict[str, str]:
    return {x.action_id: x.policy for x in r.refused}


# Caps per action and per kind.


def test_action_cap_within_a_rolling_window(ledger: LedgerModel, clock: Clock) -> None:
    offer = cand("upsell-1", "upsell", rule=UPSELL_3_A_WEEK)
    for _ in range(3):
        assert decide(ledger, clock, [offer]).chosen == ("upsell-1",)
        clock.advance(DAY_MS)
    refused = decide(ledger, clock, [offer])
    assert refused == Reservation(
        (),
        (
            Refusal(
                "upsell-1",
                ACTION_MAX_IMPRESSIONS,
                "shown 3 times in the last 7 days (at most 3)",
            ),
        ),
    )
    # The first impression leaves the window 7 days after it (now + 4 days here): one free.
    clock.advance(4 * DAY_MS - 1)
    assert decide(ledger, clock, [offer]).chosen == ()
    clock.advance(1)
    assert decide(ledger, clock, [offer]).chosen == ("upsell-1",)
    assert decide(ledger, clock, [offer]).chosen == ()


def test_a_window_of_zero_is_the_whole_retention(clock: Clock) -> None:
    ledger = LedgerModel(retention_days=30)
    offer = cand("welcome", rule=CapRule(max_impressions=1, window_ms=0))
    assert decide(ledger, clock, [offer]).chosen == ("welcome",)
    clock.advance(29 * DAY_MS)
    r = decide(ledger, clock, [offer])
    assert r.refused[0].detail == "shown 1 time in the last 30 days (at most 1)"
    clock.advance(DAY_MS)
    assert decide(ledger, clock, [offer]).chosen == ("welcome",)


def test_kind_cap_counts_every_action_of_the_kind(ledger: LedgerModel, clock: Clock) -> None:
    two_a_week = CapRule(max_impressions=2, window_ms=WEEK_MS)
    a = cand("upsell-a", "upsell", kind_rule=two_a_week)
    b = cand("upsell-b", "upsell", kind_rule=two_a_week)
    other = cand("tip", "education", kind_rule=two_a_week)
    assert decide(ledger, clock, [a]).chosen == ("upsell-a",)
    assert decide(ledger, clock, [b]).chosen == ("upsell-b",)
    r = decide(ledger, clock, [a, b, other], want=3)
    assert r.chosen == ("tip",)
    assert r.refused == (
        Refusal(
            "upsell-a",
            KIND_MAX_IMPRESSIONS,
            "upsell actions shown 2 times in the last 7 days (at most 2)",
        ),
        Refusal(
            "upsell-b",
            KIND_MAX_IMPRESSIONS,
            "upsell actions shown 2 times in the last 7 days (at most 2)",
        ),
    )


def test_the_action_rule_is_checked_before_the_kind_rule(ledger: LedgerModel, clock: Clock) -> None:
    once = CapRule(max_impressions=1, window_ms=WEEK_MS)
    offer = cand("upsell-1", "upsell", rule=once, kind_rule=once)
    decide(ledger, clock, [offer])
    assert policies(decide(ledger, clock, [offer])) == {"upsell-1": ACTION_MAX_IMPRESSIONS}


def test_choices_within_one_decision_count_against_later_candidates(
    ledger: LedgerModel, clock: Clock
) -> None:
    once_a_week = CapRule(max_impressions=1, window_ms=WEEK_MS)
    a = cand("upsell-a", "upsell", kind_rule=once_a_week)
    b = cand("upsell-b", "upsell", kind_rule=once_a_week)
    r = decide(ledger, clock, [a, b], want=2)
    assert r.chosen == ("upsell-a",)
    assert policies(r) == {"upsell-b": KIND_MAX_IMPRESSIONS}


def test_candidates_beyond_want_are_checked_but_not_recorded(
    ledger: LedgerModel, clock: Clock
) -> None:
    ledger.record_outcome(P, "d0", "x", "service", False, "dismiss", clock.now)
    cooled = CapRule(dismiss_cooloff_ms=DAY_MS)
    r = decide(ledger, clock, [cand("a"), cand("b"), cand("x", rule=cooled), cand("c")], want=1)
    assert r.chosen == ("a",)
    assert policies(r) == {"x": ACTION_DISMISS_COOLOFF}
    assert [i.action_id for i in ledger.history(P, clock.now).impressions] == ["a"]


def test_want_zero_chooses_nothing_and_still_explains(ledger: LedgerModel, clock: Clock) -> None:
    ledger.record_outcome(P, "d0", "x", "service", False, "accept", clock.now)
    stop = CapRule(stop_after_accept=True)
    r = decide(ledger, clock, [cand("a"), cand("x", rule=stop)], want=0)
    assert r.chosen == ()
    assert policies(r) == {"x": ACTION_ACCEPTED}
    assert ledger.history(P, clock.now).impressions == ()


# The global cap of marketing impressions a day.


def test_global_marketing_cap_across_actions_rolling_24_hours(
    ledger: LedgerModel, clock: Clock
) -> None:
    promos = [cand(f"promo-{i}", "cross_sell", marketing=True) for i in range(4)]
    for promo in promos[:2]:
        assert decide(ledger, clock, [promo], per_day=2).chosen == (promo.action_id,)
        clock.advance(HOUR_MS)
    r = decide(ledger, clock, [promos[2], cand("service-notice")], per_day=2)
    assert r.chosen == ("service-notice",)
    assert r.refused == (
        Refusal(
            "promo-2",
            GLOBAL_MARKETING_PER_DAY,
            "2 marketing impressions in the last 24 hours (at most 2 a day)",
        ),
    )
    # 24 hours after the first one, one of the two has left the window.
    clock.advance(22 * HOUR_MS - 1)
    assert decide(ledger, clock, [promos[3]], per_day=2).chosen == ()
    clock.advance(1)
    assert decide(ledger, clock, [promos[3]], per_day=2).chosen == ("promo-3",)


def test_non_marketing_actions_neither_count_nor_are_capped(
    ledger: LedgerModel, clock: Clock
) -> None:
    for i in range(5):
        assert decide(ledger, clock, [cand(f"notice-{i}")], per_day=1).chosen == (f"notice-{i}",)
    promo = cand("promo", marketing=True)
    assert decide(ledger, clock, [promo], per_day=1).chosen == ("promo",)
    assert decide(ledger, clock, [cand("notice-5")], per_day=1).chosen == ("notice-5",)
    assert policies(decide(ledger, clock, [cand("promo-2", marketing=True)], per_day=1)) == {
        "promo-2": GLOBAL_MARKETING_PER_DAY
    }


def test_a_global_cap_of_zero_is_no_cap(ledger: LedgerModel, clock: Clock) -> None:
    for i in range(10):
        assert decide(ledger, clock, [cand(f"p{i}", marketing=True)], per_day=0).chosen


def test_the_global_cap_counts_marketing_chosen_in_the_same_decision(
    ledger: LedgerModel, clock: Clock
) -> None:
    promos = [cand(f"promo-{i}", marketing=True) for i in range(3)]
    r = decide(ledger, clock, promos, want=3, per_day=2)
    assert r.chosen == ("promo-0", "promo-1")
    assert policies(r) == {"promo-2": GLOBAL_MARKETING_PER_DAY}


# Dismiss cool-off and stop after accept.


def test_dismiss_cooloff_per_action(ledger: LedgerModel, clock: Clock) -> None:
    rule = CapRule(dismiss_cooloff_ms=14 * DAY_MS)
    offer = cand("upsell-1", "upsell", rule=rule)
    sibling = cand("upsell-2", "upsell", rule=rule)
    d = clock.decision()
    ledger.reserve(P, d, clock.now, [offer], 1, 0)
    ledger.record_outcome(P, d, "upsell-1", "upsell", False, "dismiss", clock.now + 1000)
    clock.advance(2 * DAY_MS + 1000)
    r = decide(ledger, clock, [offer, sibling])
    assert r.chosen == ("upsell-2",)
    assert r.refused == (
        Refusal(
            "upsell-1",
            ACTION_DISMISS_COOLOFF,
            "dismissed 2.0 days ago (none for 14 days after a dismiss)",
        ),
    )
    clock.advance(12 * DAY_MS - 1)
    assert decide(ledger, clock, [offer]).chosen == ()
    clock.advance(1)
    assert decide(ledger, clock, [offer]).chosen == ("upsell-1",)


def test_dismiss_cooloff_per_kind(ledger: LedgerModel, clock: Clock) -> None:
    kind_rule = CapRule(dismiss_cooloff_ms=3 * DAY_MS)
    ledger.record_outcome(P, "d0", "upsell-1", "upsell", True, "dismiss", clock.now)
    clock.advance(5 * HOUR_MS)
    r = decide(ledger, clock, [cand("upsell-2", "upsell", kind_rule=kind_rule), cand("tip")])
    assert r.chosen == ("tip",)
    assert r.refused == (
        Refusal(
            "upsell-2",
            KIND_DISMISS_COOLOFF,
            "a upsell action was dismissed 5.0 hours ago (no upsell action for 3 days after"
            " a dismiss)",
        ),
    )


def test_stop_after_accept_per_action_and_per_kind(ledger: LedgerModel, clock: Clock) -> None:
    stop = CapRule(stop_after_accept=True)
    ledger.record_outcome(P, "d0", "card-upgrade", "upsell", False, "accept", clock.now)
    clock.advance(30 * DAY_MS)
    r = decide(
        ledger,
        clock,
        [
            cand("card-upgrade", "upsell", rule=stop),
            cand("loan", "upsell", kind_rule=stop),
            cand("savings", "upsell"),
        ],
    )
    assert r.chosen == ("savings",)
    assert r.refused == (
        Refusal("card-upgrade", ACTION_ACCEPTED, "accepted 30.0 days ago (none after an accept)"),
        Refusal(
            "loan",
            KIND_ACCEPTED,
            "a upsell action was accepted 30.0 days ago (no upsell action after an accept)",
        ),
    )


def test_the_latest_dismiss_counts_whatever_order_they_come_in(
    ledger: LedgerModel, clock: Clock
) -> None:
    for ts in (clock.now - DAY_MS, clock.now - 3 * DAY_MS, clock.now - 2 * DAY_MS):
        ledger.record_outcome(P, "d0", "a", "k", False, "dismiss", ts)
    view = ledger.history(P, clock.now)
    assert view.last_dismiss_by_action == {"a": clock.now - DAY_MS}
    assert view.last_dismiss_by_kind == {"k": clock.now - DAY_MS}


def test_impressions_and_outcomes_later_than_now_count(ledger: LedgerModel, clock: Clock) -> None:
    ledger.record_outcome(P, "d0", "a", "k", False, "impression", clock.now + HOUR_MS)
    ledger.record_outcome(P, "d0", "b", "k", False, "dismiss", clock.now + HOUR_MS)
    r = decide(
        ledger,
        clock,
        [
            cand("a", "k", rule=CapRule(max_impressions=1)),
            cand("b", "k", rule=CapRule(dismiss_cooloff_ms=DAY_MS)),
        ],
    )
    assert policies(r) == {"a": ACTION_MAX_IMPRESSIONS, "b": ACTION_DISMISS_COOLOFF}
    assert "just now" in r.refused[1].detail


# Idempotency.


def test_a_repeated_reserve_returns_the_first_result(ledger: LedgerModel, clock: Clock) -> None:
    offer = cand("upsell-1", "upsell", rule=UPSELL_3_A_WEEK)
    first = ledger.reserve(P, "dec-1", clock.now, [offer, cand("tip")], 1, 0)
    # Given anything else, while the result is kept: the same answer, nothing recorded.
    again = ledger.reserve(P, "dec-1", clock.now + HOUR_MS, [cand("tip")], 3, 0)
    assert first == again == Reservation(("upsell-1",), ())
    assert len(ledger.history(P, clock.now).impressions) == 1


def test_a_decision_that_chose_nothing_is_kept_too(ledger: LedgerModel, clock: Clock) -> None:
    once_an_hour = cand("a", rule=CapRule(max_impressions=1, window_ms=HOUR_MS))
    decide(ledger, clock, [once_an_hour])
    first = ledger.reserve(P, "dec-2", clock.now, [once_an_hour], 1, 0)
    assert first.chosen == ()
    # The cap is free again, but the decision was made.
    clock.advance(2 * HOUR_MS)
    assert ledger.reserve(P, "dec-2", clock.now, [once_an_hour], 1, 0) == first
    assert decide(ledger, clock, [once_an_hour]).chosen == ("a",)


def test_a_result_expires_and_the_rerun_counts_no_action_twice(
    ledger: LedgerModel, clock: Clock
) -> None:
    five = CapRule(max_impressions=5)
    ledger.reserve(P, "dec-1", clock.now, [cand("a", rule=five)], 1, 0)
    clock.advance(RESULT_TTL_MS)
    r = ledger.reserve(P, "dec-1", clock.now, [cand("a", rule=five), cand("b")], 2, 0)
    assert r.chosen == ("a", "b")
    shown = ledger.history(P, clock.now).impressions
    assert [(i.action_id, i.ts_ms) for i in shown] == [
        ("a", NOW),
        ("b", NOW + RESULT_TTL_MS),
    ]


def test_impression_outcomes_count_once_per_decision_and_action(
    ledger: LedgerModel, clock: Clock
) -> None:
    offer = cand("upsell-1", "upsell", rule=UPSELL_3_A_WEEK)
    d = clock.decision()
    ledger.reserve(P, d, clock.now, [offer], 1, 0)
    for _ in range(3):
        ledger.record_outcome(P, d, "upsell-1", "upsell", False, "impression", clock.now + 5)
    # An impression reported without a reservation (outreach): counts once, repeats do not.
    for _ in range(2):
        ledger.record_outcome(P, "outreach-7", "upsell-1", "upsell", False, "impression", clock.now)
    view = ledger.history(P, clock.now)
    assert [(i.decision_id, i.ts_ms) for i in view.impressions] == [
        ("d1", NOW),
        ("outreach-7", NOW),
    ]
    assert decide(ledger, clock, [offer]).chosen == ("upsell-1",)
    assert decide(ledger, clock, [offer]).chosen == ()


def test_repeated_outcomes_and_clicks_change_nothing(ledger: LedgerModel, clock: Clock) -> None:
    for _ in range(2):
        ledger.record_outcome(P, "d0", "a", "k", True, "dismiss", clock.now)
        ledger.record_outcome(P, "d0", "a", "k", True, "accept", clock.now)
    before = ledger.history(P, clock.now)
    ledger.record_outcome(P, "d0", "a", "k", True, "click", clock.now + 1)
    after = ledger.history(P, clock.now)
    assert (
        before
        == after
        == LedgerView(
            (),
            last_dismiss_by_action={"a": NOW},
            last_dismiss_by_kind={"k": NOW},
            last_accept_by_action={"a": NOW},
            last_accept_by_kind={"k": NOW},
        )
    )


# Retention, history, erasure.


def test_nothing_older_than_the_retention_counts(clock: Clock) -> None:
    ledger = LedgerModel(retention_days=10)
    stop = CapRule(stop_after_accept=True, max_impressions=1, window_ms=30 * DAY_MS)
    d = clock.decision()
    ledger.reserve(P, d, clock.now, [cand("a", rule=stop)], 1, 0)
    ledger.record_outcome(P, d, "a", "service", False, "accept", clock.now)
    clock.advance(10 * DAY_MS - 1)
    assert policies(decide(ledger, clock, [cand("a", rule=stop)])) == {"a": ACTION_ACCEPTED}
    assert len(ledger.history(P, clock.now).impressions) == 1
    clock.advance(1)
    assert ledger.history(P, clock.now) == LedgerView()
    assert decide(ledger, clock, [cand("a", rule=stop)]).chosen == ("a",)


def test_history_lists_impressions_oldest_first(ledger: LedgerModel, clock: Clock) -> None:
    decide(ledger, clock, [cand("b"), cand("a", "upsell", marketing=True)], want=2)
    clock.advance(1000)
    decide(ledger, clock, [cand("c")])
    assert ledger.history(P, clock.now).impressions == (
        Impression(NOW, "d1", "a", "upsell", True),
        Impression(NOW, "d1", "b", "service", False),
        Impression(NOW + 1000, "d2", "c", "service", False),
    )


def test_people_are_apart_and_forget_erases_one(ledger: LedgerModel, clock: Clock) -> None:
    once = cand("a", rule=CapRule(max_impressions=1))
    assert decide(ledger, clock, [once], person="p1").chosen == ("a",)
    assert decide(ledger, clock, [once], person="p2").chosen == ("a",)
    ledger.forget("p1")
    assert ledger.history("p1", clock.now) == LedgerView()
    assert decide(ledger, clock, [once], person="p1").chosen == ("a",)
    assert decide(ledger, clock, [once], person="p2").chosen == ()


# Arguments.


@pytest.mark.parametrize(
    ("person", "decision", "candidates", "want", "per_day", "match"),
    [
        ("", "d", [cand("a")], 1, 0, "person"),
        ("p", "", [cand("a")], 1, 0, "decision_id"),
        ("p", "d|1", [cand("a")], 1, 0, "decision_id"),
        ("p", "d", [cand("a|b")], 1, 0, "action_id"),
        ("p", "d", [cand("a", "k|x")], 1, 0, "kind"),
        ("p", "d", [cand("a"), cand("a")], 2, 0, "twice"),
        ("p", "d", [cand("a", rule=CapRule(max_impressions=-1))], 1, 0, "negative"),
        ("p", "d", [cand("a")], -1, 0, "want"),
        ("p", "d", [cand("a")], 1, -1, "marketing_per_day"),
    ],
)
def test_reserve_rejects_what_the_layout_cannot_hold(
    ledger: LedgerModel,
    person: str,
    decision: str,
    candidates: list[Candidate],
    want: int,
    per_day: int,
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        ledger.reserve(person, decision, NOW, candidates, want, per_day)


def test_record_outcome_rejects_unknown_outcomes_and_times(ledger: LedgerModel) -> None:
    with pytest.raises(ValueError, match="outcome"):
        ledger.record_outcome(P, "d", "a", "k", False, "convert", NOW)
    with pytest.raises(ValueError, match="ts_ms"):
        ledger.record_outcome(P, "d", "a", "k", False, "dismiss", -1)


# Texts, keys, the script's constants.


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (14 * DAY_MS, "14 days"),
        (DAY_MS, "24 hours"),
        (HOUR_MS, "1 hour"),
        (DAY_MS + DAY_MS // 2, "36 hours"),
        (2 * DAY_MS + DAY_MS // 2, "2.5 days"),
        (HOUR_MS // 2, "0.5 hours"),
    ],
)
def test_span_text(ms: int, text: str) -> None:
    assert span_text(ms) == text


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (2 * DAY_MS, "2.0 days ago"),
        (90 * 60_000, "1.5 hours ago"),
        (60_000, "1 minute ago"),
        (59_999, "just now"),
        (-5, "just now"),
    ],
)
def test_ago_text(ms: int, text: str) -> None:
    assert ago_text(ms) == text


@pytest.mark.parametrize("person", ["p-1", "e:someone@example.com", "odd}person", "{x}", "a{b"])
def test_a_persons_keys_share_one_cluster_slot(person: str) -> None:
    keys = LedgerKeys("cx:").all_of(person)
    assert keys[0] == f"cx:ledger:{{{person}}}:idx"
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_the_script_gets_every_constant_it_uses() -> None:
    script = lua_script()
    body = LUA_PATH.read_text()
    rendered = set(re.findall(r"^local (\w+) = ", script[: -len(body)], re.MULTILINE))
    code = re.sub(r"--[^\n]*|'[^']*'", "", body)
    used = set(re.findall(r"\b([A-Z][A-Z_]+)\b", code)) - {"KEYS", "ARGV", "HIGH"}
    assert used <= rendered
    for policy in POLICIES:
        assert f"'{policy}'" in script
