"""The demo's journey generator and summary, without a network."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from cx.events.v1 import touchpoint_pb2 as ev

from services.common.experience import NEGATIVE_KINDS, NegativeExperience, negative_experiences
from services.common.validation import normalise_and_validate
from services.demo import summary
from services.demo.journeys import (
    OUTAGE_FAILURE,
    RECENT_END_S,
    DemoConfig,
    Journey,
    generate,
)
from services.demo.kafka_section import KafkaTouchpoints
from services.demo.profile_section import ProfileSection
from services.demo.run import lanes
from services.demo.sections import build_sections
from services.demo.summary import DemoRun, FunctionSection, Summary, SummarySection

DETRACTOR, LOW_CSAT = NegativeExperience.DETRACTOR, NegativeExperience.LOW_CSAT
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CONFIG = DemoConfig(customers=2000, negative_share=0.15, seed=7, days=30)


@pytest.fixture(scope="module")
def journeys() -> list[Journey]:
    return generate(CONFIG, NOW)


def when(event: ev.TouchpointEvent) -> datetime:
    return event.occurred_at.ToDatetime(tzinfo=UTC)


def serialised(journeys: list[Journey]) -> list[bytes]:
    return [e.SerializeToString(deterministic=True) for j in journeys for e in j.events]


def test_same_seed_gives_the_same_events() -> None:
    config = DemoConfig(customers=60, seed=3)
    first, again = generate(config, NOW), generate(config, NOW)
    assert serialised(first) == serialised(again)
    assert [j.customer for j in first] == [j.customer for j in again]
    assert serialised(generate(DemoConfig(customers=60, seed=4), NOW)) != serialised(first)


def test_a_customer_does_not_depend_on_how_many_are_generated() -> None:
    few = generate(DemoConfig(customers=20, negative_share=0.0, seed=7), NOW)
    many = generate(DemoConfig(customers=40, negative_share=0.0, seed=7), NOW)
    assert serialised(few) == serialised(many[:20])


def test_every_event_is_valid(journeys: list[Journey]) -> None:
    problems = Counter[str]()
    for journey in journeys:
        for event in journey.events:
            copy = ev.TouchpointEvent.FromString(event.SerializeToString())
            problems.update(str(v) for v in normalise_and_validate(copy, now=NOW))
    assert problems == Counter()


def test_event_ids_are_unique(journeys: list[Journey]) -> None:
    ids = [e.event_id for j in journeys for e in j.events]
    assert len(ids) > 50 * len(journeys) // 2
    assert len(set(ids)) == len(ids)


def test_events_are_in_order_within_the_window_and_never_in_the_future(
    journeys: list[Journey],
) -> None:
    earliest = NOW - timedelta(days=CONFIG.days)
    for journey in journeys:
        times = [when(e) for e in journey.events]
        assert times == sorted(times), journey.customer.customer_id
        assert earliest <= times[0]
        assert times[-1] < NOW


def test_delivery_times_are_not_in_the_future(journeys: list[Journey]) -> None:
    for journey in journeys:
        for event in journey.events:
            if event.HasField("delivery_update"):
                assert event.delivery_update.actual_at == event.occurred_at
                assert event.delivery_update.actual_at.ToDatetime(tzinfo=UTC) < NOW


def test_anonymous_browsing_precedes_an_identify_linking_it(journeys: list[Journey]) -> None:
    identified = [j for j in journeys if j.customer.identifies]
    assert 0.85 < len(identified) / len(journeys) < 1.0
    for journey in identified:
        kinds = [e.WhichOneof("payload") for e in journey.events]
        first = kinds.index("identify")
        identify = journey.events[first]
        assert identify.identities.customer_id == journey.customer.customer_id
        assert identify.identities.email == journey.customer.email
        assert identify.identities.anonymous_id
        before = journey.events[:first]
        assert before, "browses before signing up or logging in"
        for event in before:
            assert event.WhichOneof("payload") in {"page_view", "product_view"}
            assert event.identities == ev.Identities(anonymous_id=identify.identities.anonymous_id)


def test_anonymous_only_visitors_never_carry_a_known_identifier(
    journeys: list[Journey],
) -> None:
    visitors = [j for j in journeys if not j.customer.identifies]
    assert visitors
    for journey in visitors:
        assert not journey.negative
        for event in journey.events:
            ids = event.identities
            assert ids.anonymous_id in {journey.customer.anonymous_id, journey.customer.device_id}
            assert ids == ev.Identities(anonymous_id=ids.anonymous_id)


def test_store_visits_carry_only_an_email_and_calls_only_a_phone(
    journeys: list[Journey],
) -> None:
    store = [e for j in journeys for e in j.events if e.channel == ev.CHANNEL_STORE]
    calls = [
        (j.customer, e)
        for j in journeys
        for e in j.events
        if e.channel == ev.CHANNEL_PHONE and j.customer.phone
    ]
    assert store
    assert calls
    for event in store:
        assert event.identities.email
        assert not event.identities.customer_id
    for customer, event in calls:
        assert not event.identities.customer_id
        assert not event.identities.email
        assert event.identities.phone.replace(" ", "") == customer.phone


def test_journeys_cover_the_channels_and_event_types(journeys: list[Journey]) -> None:
    events = [e for j in journeys for e in j.events]
    payloads = {e.WhichOneof("payload") for e in events}
    assert payloads >= {
        "page_view",
        "product_view",
        "identify",
        "cart_change",
        "order_placed",
        "payment_failed",
        "delivery_update",
        "message_engagement",
        "support_contact",
        "survey_response",
        "review",
        "complaint",
        "conversation_message",
        "consent_change",
        "order_returned",
    }
    channels = {e.channel for e in events}
    assert channels >= {
        ev.CHANNEL_WEB,
        ev.CHANNEL_APP,
        ev.CHANNEL_STORE,
        ev.CHANNEL_PHONE,
        ev.CHANNEL_CHAT,
        ev.CHANNEL_EMAIL,
        ev.CHANNEL_SOCIAL,
    }
    phones = [e for e in events if e.HasField("identify") and e.identities.phone]
    assert phones, "some sign-ups give a phone"
    assert all(e.touchpoint and "." in e.touchpoint for e in events)


def test_negative_share_is_close_to_the_requested_share(journeys: list[Journey]) -> None:
    share = sum(1 for j in journeys if j.negative) / len(journeys)
    assert abs(share - CONFIG.negative_share) <= 0.05
    counts = Counter(kind for j in journeys for kind in j.negative)
    assert set(counts) == set(NEGATIVE_KINDS), "every kind of negative experience occurs"


def test_the_tally_matches_what_was_planned(journeys: list[Journey]) -> None:
    for journey in journeys:
        assert journey.negative == set(journey.customer.planned_negative)


def test_late_deliveries_arrive_after_the_promise(journeys: list[Journey]) -> None:
    late = 0
    for journey in journeys:
        for event in journey.events:
            d = event.delivery_update
            if event.HasField("delivery_update") and d.status == d.STATUS_DELIVERED:
                is_late = d.actual_at.ToNanoseconds() > d.promised_at.ToNanoseconds()
                late += is_late
                assert not is_late or "late_delivery" in journey.negative
    assert late > 0


def test_a_negative_experience_is_recent(journeys: list[Journey]) -> None:
    # The alerts service pages only on events of the last week: a customer with a
    # negative experience ends the journey within RECENT_END_S, trouble in the latest order.
    negative = [j for j in journeys if j.negative]
    for journey in negative:
        assert NOW - when(journey.events[-1]) <= timedelta(seconds=RECENT_END_S + 60)
    lately = [
        j
        for j in negative
        if any(negative_experiences(e) and NOW - when(e) <= timedelta(days=7) for e in j.events)
    ]
    assert len(lately) >= 0.8 * len(negative)


def outage_attempts(journey: Journey) -> list[ev.TouchpointEvent]:
    return [
        e
        for e in journey.events
        if e.HasField("payment_failed")
        and e.payment_failed.failure_code == OUTAGE_FAILURE[0]
        and NOW - when(e) <= timedelta(minutes=4)
    ]


def test_the_payment_outage_is_a_burst_of_failures_at_checkout_payment(
    journeys: list[Journey],
) -> None:
    caught = [j for j in journeys if j.customer.in_outage]
    assert len(caught) == CONFIG.outage_customers == 12
    for journey in caught:
        assert NegativeExperience.PAYMENT_FAILED in journey.customer.planned_negative
        attempts = outage_attempts(journey)
        assert [e.payment_failed.attempt for e in attempts] in ([1, 2], [1, 2, 3])
        assert {e.touchpoint for e in attempts} == {"checkout.payment"}
        assert len({e.payment_failed.order_id for e in attempts}) == 1
        for e in attempts:
            assert timedelta(minutes=1) <= NOW - when(e) <= timedelta(minutes=4)
            assert e.identities.customer_id == journey.customer.customer_id
    assert not any(outage_attempts(j) for j in journeys if not j.customer.in_outage)


def test_the_outage_takes_only_customers_with_a_negative_experience() -> None:
    few = generate(DemoConfig(customers=40, negative_share=0.1, seed=3), NOW)
    assert {j.customer.index for j in few if j.customer.in_outage} == {
        j.customer.index for j in few if j.customer.planned_negative
    }
    none = generate(DemoConfig(customers=100, negative_share=0.3, seed=3, outage_customers=0), NOW)
    assert not any(j.customer.in_outage or outage_attempts(j) for j in none)


@pytest.mark.parametrize("share", [0.0, 0.4])
def test_the_share_is_controllable(share: float) -> None:
    result = generate(DemoConfig(customers=400, negative_share=share, seed=11), NOW)
    negative = sum(1 for j in result if j.negative)
    assert negative == round(400 * share)


def test_no_negative_share_gives_no_negative_experiences() -> None:
    result = generate(DemoConfig(customers=500, negative_share=0.0, seed=5), NOW)
    for journey in result:
        assert not journey.negative
        for event in journey.events:
            payload = event.WhichOneof("payload")
            assert payload not in {"payment_failed", "complaint"}
            if payload == "survey_response":
                r = event.survey_response
                assert not (r.metric == r.METRIC_NPS and r.score <= 6), DETRACTOR
                assert not (r.metric == r.METRIC_CSAT and r.score <= 2), LOW_CSAT
            if payload == "support_contact":
                assert event.support_contact.resolved


def test_lanes_keep_each_customer_in_order_and_lose_nothing(journeys: list[Journey]) -> None:
    some = journeys[:200]
    split = lanes(some, 3)
    assert len(split) == 3
    assert sorted(e.event_id for lane in split for e in lane) == sorted(
        e.event_id for j in some for e in j.events
    )
    for lane in split:
        times = [when(e) for e in lane]
        assert times == sorted(times)
    position = {e.event_id: i for lane in split for i, e in enumerate(lane)}
    for journey in some:
        indexes = [position[e.event_id] for e in journey.events]
        assert indexes == sorted(indexes)


def _run() -> DemoRun:
    return DemoRun(
        seed=1,
        customers=(),
        negative={},
        sent=10,
        accepted=9,
        rejected=1,
        started_at=NOW,
        finished_at=NOW,
    )


class _BrokenBefore:
    title = "Alerts"

    def before(self) -> None:
        raise ConnectionRefusedError("alerts at 127.0.0.1:50054 refused the connection")

    def lines(self, run: DemoRun) -> list[str]:
        raise AssertionError("not called when before() failed")


def test_a_failing_section_is_shown_as_unavailable() -> None:
    def profiles(run: DemoRun) -> list[str]:
        raise summary.SectionUnavailable("profile service at 127.0.0.1:50052 is not reachable")

    def works(run: DemoRun) -> list[str]:
        return [f"accepted {run.accepted}"]

    def not_built() -> SummarySection:
        raise ModuleNotFoundError("No module named 'services.demo.no_such_module'")

    report = Summary(
        build_sections(
            [
                ("Profiles", lambda: FunctionSection("Profiles", profiles)),
                ("Works", lambda: FunctionSection("Works", works)),
                ("Alerts", _BrokenBefore),
                ("Offers", not_built),
            ]
        )
    )
    report.before()
    lines = report.render(_run())
    assert lines == [
        "Profiles",
        "  unavailable: profile service at 127.0.0.1:50052 is not reachable",
        "Works",
        "  accepted 9",
        "Alerts",
        "  unavailable: ConnectionRefusedError: alerts at 127.0.0.1:50054 refused the connection",
        "Offers",
        "  unavailable: cannot be built: "
        "ModuleNotFoundError: No module named 'services.demo.no_such_module'",
    ]


def test_the_summary_lists_the_sections_without_connecting() -> None:
    sections = build_sections()
    assert [s.title for s in sections] == ["Kafka", "Profiles", "Personalisation", "Alerts"]
    assert isinstance(sections[0], KafkaTouchpoints)
    assert isinstance(sections[1], ProfileSection)


def test_the_kafka_section_fails_gracefully() -> None:
    offline = KafkaTouchpoints(bootstrap="127.0.0.1:1", topic="cx.touchpoints.v1")
    offline.count = _refuse  # type: ignore[method-assign]
    report = Summary([offline, FunctionSection("Next", lambda run: ["still rendered"])])
    report.before()
    assert report.render(_run()) == [
        "Kafka",
        "  unavailable: Kafka at 127.0.0.1:1 is not reachable",
        "Next",
        "  still rendered",
    ]


def test_the_profile_section_says_when_the_profile_service_does_not_answer() -> None:
    report = Summary([ProfileSection("127.0.0.1:1")])
    report.before()
    (title, line) = report.render(_run())
    assert title == "Profiles"
    assert line.startswith("  unavailable: the profile service at 127.0.0.1:1 did not answer: ")
    assert "UNAVAILABLE" in line


def _refuse() -> int:
    raise summary.SectionUnavailable("Kafka at 127.0.0.1:1 is not reachable")
