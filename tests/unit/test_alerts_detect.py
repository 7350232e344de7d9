"""Detection, pure: an event's fields (on the shared definition of a negative
experience), which rules could apply, dedup keys, triggers, and spikes clearing."""

from __future__ import annotations

from typing import Any

import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from hypothesis import given
from hypothesis import strategies as st

from services.alerts.domain import detect
from services.alerts.domain.detect import Person
from services.alerts.domain.owners import load_owners
from services.alerts.domain.rules import EVENT_FIELDS, load_rules
from services.common import experience as xp
from tests.factories import (
    at,
    ces,
    complaint,
    contact,
    csat,
    delivered,
    delivery_failed,
    event,
    home_page_view,
    incident,
    nps,
    order,
    payment_failed,
)

OWNERS = load_owners()
RULES = load_rules(teams=OWNERS.team_names())
VIP = Person("p_vip", {"value_tier": "vip", "churn_band": "low"}, frozenset({"vip"}))


def names(rules: Any) -> set[str]:
    return {r.name for r in rules}


def facts_of(e: ev.TouchpointEvent) -> dict[str, Any]:
    found = detect.facts(e)
    assert found is not None
    assert set(found) <= set(EVENT_FIELDS), set(found) - set(EVENT_FIELDS)
    return found


def test_survey_facts_on_the_shared_scales() -> None:
    f = facts_of(nps(1, 3))
    assert f["payload"] == "survey_response"
    assert f["survey.metric"] == "nps"
    assert f["nps"] == 3
    assert f["negative"] == "detractor"
    assert f["channel"] == "email"
    assert f["journey_stage"] == "support"
    assert "negative" not in facts_of(nps(1, 7))
    assert facts_of(csat(1, 2))["negative"] == "low_csat"
    assert facts_of(csat(1, 2))["csat"] == 2
    # CSAT on another scale is mapped onto 1-5.
    ten = event(
        1,
        survey_response=ev.SurveyResponse(
            survey_id="s",
            metric=ev.SurveyResponse.METRIC_CSAT,
            score=1,
            scale=ev.ScoreScale(min=1, max=9),
        ),
    )
    assert facts_of(ten)["csat"] == 1


@pytest.mark.parametrize(("score", "severe"), [(5, False), (6, True), (7, True)])
def test_severe_effort_is_the_named_ces_threshold(score: int, severe: bool) -> None:
    f = facts_of(ces(1, score))
    assert f["ces"] == score
    assert f["negative"] == "high_effort"  # the profile's threshold, 5
    assert f["survey.severe_effort"] is severe
    assert severe == (score >= xp.CES_ALERT_FROM)


def test_delivery_facts() -> None:
    late = facts_of(delivered(2, late=True))  # a day late
    assert late["negative"] == "late_delivery"
    assert late["delivery.late_minutes"] == 24 * 60
    assert late["delivery.severely_late"] is True
    assert late["delivery.failed"] is False
    on_time = facts_of(delivered(2))
    assert on_time["delivery.late_minutes"] == -24 * 60
    assert on_time["delivery.severely_late"] is False
    assert "negative" not in on_time
    failed = facts_of(delivery_failed(2))
    assert failed["delivery.failed"] is True
    assert failed["delivery.status"] == "failed"
    assert "delivery.late_minutes" not in failed


def test_a_delivery_pages_from_the_named_lateness() -> None:
    update = ev.DeliveryUpdate(order_id="o", status=ev.DeliveryUpdate.STATUS_DELIVERED)
    update.promised_at.FromMilliseconds(at(1))
    update.actual_at.FromMilliseconds(at(1) + (xp.LATE_DELIVERY_ALERT_MINUTES - 1) * 60_000)
    assert not xp.is_severely_late(update)
    update.actual_at.FromMilliseconds(at(1) + xp.LATE_DELIVERY_ALERT_MINUTES * 60_000)
    assert xp.is_severely_late(update)


def social(sentiment: float, *, public: bool = True) -> ev.TouchpointEvent:
    e = event(
        1,
        channel=ev.CHANNEL_SOCIAL,
        conversation_message=ev.ConversationMessage(
            conversation_id="c",
            direction=ev.ConversationMessage.DIRECTION_INBOUND,
            text="never again",
            sentiment=sentiment,
            public=public,
        ),
    )
    e.touchpoint = "social.mention"
    return e


@pytest.mark.parametrize(
    ("sentiment", "public", "outcry"),
    [(-0.59, True, False), (xp.PUBLIC_SENTIMENT_ALERT_TO, True, True), (-0.9, False, False)],
)
def test_public_outcry_is_the_named_sentiment_threshold(
    sentiment: float, public: bool, outcry: bool
) -> None:
    f = facts_of(social(sentiment, public=public))
    assert f["message.public_outcry"] is outcry
    assert f["negative"] == "negative_sentiment"
    assert f["sentiment"] == pytest.approx(sentiment)
    assert ("social_outcry" in names(detect.candidates(RULES, f))) is outcry


def test_other_payloads() -> None:
    f = facts_of(payment_failed(1))
    assert (f["negative"], f["payment.failure_code"]) == ("payment_failed", "card_declined")
    f = facts_of(complaint(1, "c-1", ev.Complaint.STATUS_OPENED, ev.Complaint.SEVERITY_CRITICAL))
    assert (f["complaint.id"], f["complaint.status"], f["complaint.severity"]) == (
        "c-1",
        "opened",
        "critical",
    )
    f = facts_of(contact(1, "k-1", "delivery.late", resolved=False))
    assert (f["contact.reason"], f["contact.resolved"]) == ("delivery.late", False)
    crash = event(1, app_error=ev.AppError(error_code="E1", fatal=True, screen="checkout"))
    assert facts_of(crash)["app_error.fatal"] is True
    # Envelope facts only: no rule needs more of a page view or an order.
    assert set(facts_of(home_page_view(1))) == {
        "payload",
        "touchpoint",
        "channel",
        "journey_stage",
        "source_system",
    }


def test_the_alerts_own_incident_events_are_ignored() -> None:
    assert detect.facts(incident(1, "inc-1", ev.ExperienceIncident.STATE_OPENED)) is None


def test_candidates_are_judged_on_the_event_alone() -> None:
    assert names(detect.candidates(RULES, facts_of(home_page_view(1)))) == set()
    assert names(detect.candidates(RULES, facts_of(nps(1, 9)))) == set()
    assert names(detect.candidates(RULES, facts_of(nps(1, 2)))) == {"detractor_nps"}
    # An order resolves an open payment failure; a contact counts in two windows.
    assert names(detect.candidates(RULES, facts_of(order(1, 40)))) == {"payment_failed"}
    assert names(detect.candidates(RULES, facts_of(contact(1, "k", "x")))) == {
        "repeat_contacts",
        "late_delivery_then_contact",
    }
    # A late delivery is what late_delivery_then_contact waits for.
    assert "late_delivery_then_contact" in names(
        detect.candidates(RULES, facts_of(delivered(1, late=True)))
    )
    opened = facts_of(complaint(1, "c", ev.Complaint.STATUS_OPENED))
    assert names(detect.candidates(RULES, opened)) == {"complaint_raised", "complaint_sla"}


def test_person_fields_and_segments() -> None:
    f = facts_of(social(-0.8))
    person = Person("p_1", {"value_tier": "vip", "sentiment": 0.4}, frozenset({"vip"}))
    fields = detect.fields_for(f, person, ["vip", "at_risk"])
    assert fields["value_tier"] == "vip"
    # The event's sentiment wins; the profile's is profile.sentiment.
    assert fields["sentiment"] == pytest.approx(-0.8)
    assert fields["profile.sentiment"] == 0.4
    assert fields["segment.vip"] is True
    assert fields["segment.at_risk"] is False
    unknown = detect.fields_for(f, Person("anon-1", known=False), ["vip"])
    assert "segment.vip" not in unknown
    assert detect.fields_for(f, None) == f


def test_person_identifier_is_the_strongest() -> None:
    e = event(1, identities=ev.Identities(anonymous_id="a-1", email="x@example.com"))
    assert detect.person_identifier(e) == ("e", "x@example.com")
    e = event(1, identities=ev.Identities(anonymous_id="a-1", customer_id="c-1"))
    assert detect.person_identifier(e) == ("c", "c-1")
    stand_in = detect.anonymous_profile_id("e", "x@example.com")
    assert stand_in.startswith(detect.ANONYMOUS_PREFIX)
    assert "example" not in stand_in
    assert stand_in == detect.anonymous_profile_id("e", "x@example.com")


def test_evaluate_and_trigger() -> None:
    e = nps(1, 2)
    e.touchpoint = "survey.nps"
    f = facts_of(e)
    rules = detect.candidates(RULES, f)
    fields = detect.fields_for(f, VIP)
    evaluation = detect.evaluate(rules, fields, VIP, f)
    assert [(m.rule.name, m.role) for m in evaluation.matches] == [("detractor_nps", "hit")]
    t = detect.trigger(evaluation.matches[0].rule, OWNERS, e, fields, VIP.profile_id, at(1))
    assert t is not None
    assert t.dedup_key == "detractor_nps:pid:p_vip"
    assert (t.severity, t.team, t.kind, t.profile_id) == ("critical", "cx", "event", "p_vip")
    assert t.escalate_after_s == 3600  # cx escalates critical incidents after an hour
    assert t.groups_with == ("complaint_raised",)
    assert t.evidence.event_id == e.event_id
    assert t.evidence.negative == "detractor"
    assert t.evidence.scores == {"nps": 2.0}
    assert t.summary == "NPS 2 from a customer of value tier vip (churn risk low) at survey.nps"
    # Without a person, a person's rule does not match (spikes still could).
    assert detect.evaluate(rules, f, None, f).matches == ()


def test_timer_keys_per_complaint_and_resolutions() -> None:
    sla = RULES.rule("complaint_sla")
    assert sla is not None
    opened = complaint(1, "c-7", ev.Complaint.STATUS_OPENED)
    f = detect.fields_for(facts_of(opened), VIP)
    t = detect.trigger(sla, OWNERS, opened, f, "p_vip", at(1))
    assert t is not None
    assert t.dedup_key == "complaint_sla:pid:p_vip:c-7"
    assert t.sla_due_ms == at(1) + 48 * 3600 * 1000
    assert t.team == "contact-centre"
    resolved = complaint(2, "c-7", ev.Complaint.STATUS_RESOLVED)
    rf = facts_of(resolved)
    evaluation = detect.evaluate(detect.candidates(RULES, rf), detect.fields_for(rf, VIP), VIP, rf)
    assert evaluation.matches == ()
    assert {r.dedup_key for r in evaluation.resolutions} == {
        "complaint_sla:pid:p_vip:c-7",
        "complaint_raised:pid:p_vip",
    }
    # An id that cannot be part of a key is hashed, never dropped.
    odd = complaint(1, "c|7 x", ev.Complaint.STATUS_OPENED)
    key = detect.dedup_key(sla, "p", facts_of(odd))
    assert key is not None
    assert "|" not in key
    assert key.startswith("complaint_sla:pid:p:h")


def test_spike_keys_are_per_touchpoint() -> None:
    spike = RULES.rule("checkout_payment_spike")
    assert spike is not None
    assert detect.dedup_key(spike, "p_1", {"touchpoint": "checkout.payment"}) == (
        "checkout_payment_spike:tp:checkout.payment"
    )
    e = payment_failed(1)
    e.touchpoint = "checkout.payment"
    t = detect.trigger(spike, OWNERS, e, {**facts_of(e), "spike.count": 10}, "p_1", at(1))
    assert t is not None
    assert (t.profile_id, t.team, t.severity) == ("", "payments", "error")


@given(
    st.integers(0, 100),
    st.floats(1, 100),
    st.one_of(st.none(), st.integers(0, 10_000)),
    st.integers(0, 20_000),
    st.floats(0, 10),
)
def test_a_spike_clears_only_after_holding_below_its_threshold(
    count: int, threshold: float, below: int | None, now: int, hold_s: float
) -> None:
    step, since = detect.spike_step(count, threshold, below, now, hold_s)
    if count >= threshold:
        assert (step, since) == (detect.STILL, None)
        return
    start = now if below is None else below
    assert since == start
    assert step == (detect.CLEAR if now - start >= hold_s * 1000 else detect.HOLD)
