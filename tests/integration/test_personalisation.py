"""Next-best-action through the whole path: events through ingestion, the profile built
by the real worker, Decide answered from it by the personalisation server over gRPC,
outcomes back through Kafka to the profile and into the contact ledger."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as npb
from cx.profile.v1 import profile_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import KafkaSettings, redis_settings
from services.personalisation.domain.catalogue import Catalogue, load_catalogue
from services.personalisation.server import CATALOGUE_HEALTH_NAME
from tests.factories import (
    recent_complaint,
    recent_consent,
    recent_incident,
    recent_login,
    recent_order,
    recent_page,
)
from tests.integration.personalisation_harness import SHIPPED_CATALOGUE, PersonalisationHarness

pytestmark = pytest.mark.integration

SELLING = {"upsell", "cross_sell"}
RECOVERY = "service_recovery"
PURPOSES = (
    ev.ConsentChange.PURPOSE_PERSONALISATION,
    ev.ConsentChange.PURPOSE_MARKETING_EMAIL,
    ev.ConsentChange.PURPOSE_MARKETING_PUSH,
    ev.ConsentChange.PURPOSE_MARKETING_SMS,
)
CHANNELS = {name.removeprefix("CHANNEL_").lower(): v for name, v in ev.Channel.items()}


@pytest.fixture(scope="module")
def nba(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PersonalisationHarness]:
    harness = PersonalisationHarness(
        kafka, redis_settings().redis_url, tmp_path_factory.mktemp("nba")
    )
    harness.start_worker()
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(SHIPPED_CATALOGUE)


def customer(nba: PersonalisationHarness, *extra: ev.TouchpointEvent, consent: bool = True) -> str:
    """A valuable customer with every consent given, plus `extra` events; waits until the
    profile has them all."""
    cid = f"c-{uuid.uuid4().hex[:10]}"
    events = [recent_login(0, customer_id=cid, email=f"{cid}@example.com")]
    events += [recent_page(1 + i, customer_id=cid) for i in range(3)]
    events += [recent_order(10 + i, 400, customer_id=cid) for i in range(3)]
    events += [recent_consent(20 + i, p, consent, customer_id=cid) for i, p in enumerate(PURPOSES)]
    events += list(extra)
    nba.track(events)
    nba.wait_for_profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid, events=len(events))
    return cid


def track_and_wait(nba: PersonalisationHarness, cid: str, event: ev.TouchpointEvent) -> None:
    """Tracks one more event of the customer's and waits until the profile applied it."""
    profile = nba.profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid)
    assert profile is not None
    nba.track([event])
    nba.wait_for_profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid, events=profile.activity.events + 1)


def competing_placements(catalogue: Catalogue) -> list[tuple[str, str]]:
    """(placement, channel) pairs where a service-recovery action and a selling action
    compete."""
    served: dict[tuple[str, str], set[str]] = {}
    for action in catalogue.actions:
        for placement in action.placements:
            if "*" in placement:
                continue
            for channel in action.channels or {placement.split(".", 1)[0]}:
                served.setdefault((placement, channel), set()).add(action.kind)
    return sorted(k for k, kinds in served.items() if RECOVERY in kinds and kinds & SELLING)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


# --- the decision path ---------------------------------------------------------------


def test_decide_for_a_known_customer_answers_from_the_live_profile(
    nba: PersonalisationHarness, catalogue: Catalogue
) -> None:
    cid = customer(nba)
    profile = nba.profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid)
    assert profile is not None
    reply = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)

    assert reply.decision_id
    assert reply.profile_id == profile.profile_id
    assert reply.basis == npb.BASIS_PROFILE
    assert reply.group == npb.GROUP_TREATMENT
    assert not reply.holdout
    assert reply.policy_version == catalogue.version
    assert reply.profile_as_of.ToMilliseconds() > 0
    assert 1 <= len(reply.actions) <= 3
    for rank, action in enumerate(reply.actions, start=1):
        s = action.score
        assert action.rank == rank
        assert action.content.title
        assert s.priority == pytest.approx(
            s.propensity * s.context_weight * s.business_value * s.lever
        )
        assert {r.code for r in action.reasons} >= {"eligibility.passed", "score.propensity"}
    priorities = [a.score.priority for a in reply.actions]
    assert priorities == sorted(priorities, reverse=True)
    # Nothing selling was held back for experience: this customer is fine.
    assert not reply.experience_signals
    assert not [f for f in reply.filtered if f.stage == npb.STAGE_SUITABILITY]
    # Every action of the catalogue is accounted for: chosen or filtered with a policy.
    seen = {a.action_id for a in reply.actions} | {f.action_id for f in reply.filtered}
    assert seen == {a.action_id for a in catalogue.actions}
    assert all(f.policy and f.reason for f in reply.filtered)


def test_the_decision_log_has_every_decision_without_email_or_phone(
    nba: PersonalisationHarness,
) -> None:
    cid = customer(nba)
    reply = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, explain=False)
    assert not reply.filtered  # only with explain

    def logged() -> npb.DecisionRecord | None:
        for key, value, _ in nba.records(nba.kafka.decisions_topic):
            record = npb.DecisionRecord.FromString(value)
            if record.decision_id == reply.decision_id:
                assert key == reply.profile_id.encode()
                return record
        return None

    record = nba.wait_for("the decision record", logged, timeout_s=30)
    assert record.profile_id == reply.profile_id
    assert [a.action_id for a in record.chosen] == [a.action_id for a in reply.actions]
    assert record.chosen[0].probability == 1.0
    assert record.policy_version == reply.policy_version
    assert record.features["consent.personalisation"] is True
    assert record.ranked
    assert record.candidates
    assert record.filtered
    assert cid not in str(record)
    assert "@" not in str(record)


def test_an_open_complaint_suppresses_every_upsell_and_ranks_recovery_first(
    nba: PersonalisationHarness, catalogue: Catalogue
) -> None:
    cid = customer(nba)
    complaint = recent_complaint(40, customer_id=cid)
    nba.track([complaint])
    nba.wait_for(
        "the open complaint",
        lambda: (
            (p := nba.profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid)) is not None
            and p.cx.open_complaints > 0
        ),
    )
    pairs = competing_placements(catalogue)
    assert len(pairs) >= 3, pairs
    for placement, channel in pairs:
        reply = nba.decide(placement, CHANNELS[channel], customer_id=cid, max_actions=3)
        assert "open_complaint" in reply.experience_signals, (placement, channel, str(reply)[-600:])
        kinds = [a.kind for a in reply.actions]
        assert not SELLING & set(kinds), (placement, kinds)
        held = [f for f in reply.filtered if f.kind in SELLING]
        for item in held:
            if item.stage not in (npb.STAGE_ELIGIBILITY, npb.STAGE_CONSENT):
                assert item.stage == npb.STAGE_SUITABILITY, (placement, item)
                assert item.policy.startswith("suitability:")
                assert item.reason
        recovery_possible = (
            any(
                f.kind == RECOVERY and f.stage not in (npb.STAGE_ELIGIBILITY, npb.STAGE_CONSENT)
                for f in reply.filtered
            )
            or RECOVERY in kinds
        )
        if recovery_possible:
            assert kinds, placement
            assert kinds[0] == RECOVERY, (placement, kinds)
            reasons = {r.code for r in reply.actions[0].reasons}
            assert "suitability.recovery_first" in reasons
    hero = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=1)
    assert hero.actions[0].kind == RECOVERY
    assert any(f.stage == npb.STAGE_SUITABILITY for f in hero.filtered)

    # Resolving the complaint lifts the suppression.
    resolved = ev.TouchpointEvent()
    resolved.CopyFrom(complaint)
    resolved.event_id = f"{complaint.event_id}-resolved"
    resolved.complaint.status = ev.Complaint.STATUS_RESOLVED
    resolved.occurred_at.FromMilliseconds(complaint.occurred_at.ToMilliseconds() + 60_000)
    nba.track([resolved])
    nba.wait_for(
        "the complaint resolved",
        lambda: (
            (p := nba.profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid)) and not p.cx.open_complaints
        ),
    )
    after = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)
    assert "open_complaint" not in after.experience_signals
    assert not [f for f in after.filtered if f.stage == npb.STAGE_SUITABILITY]


def test_an_open_incident_ranks_recovery_first_until_it_is_resolved(
    nba: PersonalisationHarness, catalogue: Catalogue
) -> None:
    """The alerts service reports an incident about the person as an ExperienceIncident
    event; the profile counts it in open_incidents, which the catalogue's open_incident
    suitability rule reads through GetFeatures, like an open complaint."""
    cid = customer(nba)
    before = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)
    assert not before.experience_signals
    assert before.actions[0].kind != RECOVERY

    incident_id = f"inc-{uuid.uuid4().hex[:10]}"
    track_and_wait(
        nba,
        cid,
        recent_incident(40, incident_id, ev.ExperienceIncident.STATE_OPENED, customer_id=cid),
    )
    reply = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)
    assert "open_incident" in reply.experience_signals, str(reply)[-600:]
    kinds = [a.kind for a in reply.actions]
    assert kinds[0] == RECOVERY, kinds
    assert not SELLING & set(kinds), kinds
    assert "suitability.recovery_first" in {r.code for r in reply.actions[0].reasons}
    held = [f for f in reply.filtered if f.stage == npb.STAGE_SUITABILITY]
    assert held
    assert all(f.kind in SELLING for f in held), held
    assert "suitability:open_incident" in {f.policy for f in held}
    # Every placement where recovery and selling compete.
    for placement, channel in competing_placements(catalogue):
        other = nba.decide(placement, CHANNELS[channel], customer_id=cid, max_actions=3)
        assert "open_incident" in other.experience_signals, placement
        assert not SELLING & {a.kind for a in other.actions}, placement

    # Acknowledged is still open; resolved lifts it.
    track_and_wait(
        nba,
        cid,
        recent_incident(41, incident_id, ev.ExperienceIncident.STATE_ACKNOWLEDGED, customer_id=cid),
    )
    acknowledged = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)
    assert "open_incident" in acknowledged.experience_signals
    track_and_wait(
        nba,
        cid,
        recent_incident(42, incident_id, ev.ExperienceIncident.STATE_RESOLVED, customer_id=cid),
    )
    after = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)
    assert "open_incident" not in after.experience_signals
    assert not after.experience_signals
    assert not [f for f in after.filtered if f.stage == npb.STAGE_SUITABILITY]
    # Selling is back: chosen, or held back only by the contact caps the decisions above
    # used up.
    selling = [a.kind for a in after.actions if a.kind in SELLING]
    capped = [
        f.kind for f in after.filtered if f.kind in SELLING and f.stage == npb.STAGE_CONTACT_POLICY
    ]
    assert selling or capped, str(after)[-600:]


def test_consent_withdrawal_takes_effect_on_the_next_decision(
    nba: PersonalisationHarness, catalogue: Catalogue
) -> None:
    cid = customer(nba)
    email = nba.decide("email.weekly", ev.CHANNEL_EMAIL, customer_id=cid, max_actions=3)
    marketing = {a.action_id for a in catalogue.actions if a.marketing}
    assert marketing & {a.action_id for a in email.actions}, email

    nba.track(
        [recent_consent(50, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, False, customer_id=cid)]
    )
    nba.wait_for(
        "the withdrawal",
        lambda: any(
            c.purpose == ev.ConsentChange.PURPOSE_MARKETING_EMAIL and not c.granted
            for c in (nba.profile(pb.IDENTIFIER_TYPE_CUSTOMER_ID, cid) or pb.Profile()).consents
        ),
    )
    after = nba.decide("email.weekly", ev.CHANNEL_EMAIL, customer_id=cid, max_actions=3)
    assert not marketing & {a.action_id for a in after.actions}
    assert any(f.policy == "consent:marketing_email" for f in after.filtered)

    # Without personalisation consent the profile is not used at all.
    nba.track(
        [recent_consent(51, ev.ConsentChange.PURPOSE_PERSONALISATION, False, customer_id=cid)]
    )
    nba.wait_for(
        "generic decisions",
        lambda: (
            nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid).basis
            == npb.BASIS_NO_PERSONALISATION_CONSENT
        ),
    )
    generic = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)
    assert not generic.experience_signals
    for action in generic.actions:
        assert action.score.propensity_source == "prior:default"
        assert "basis.no_personalisation_consent" in {r.code for r in action.reasons}


def test_anonymous_and_unknown_visitors_get_a_generic_decision(
    nba: PersonalisationHarness,
) -> None:
    anonymous = nba.decide("web.home.hero", ev.CHANNEL_WEB)
    assert anonymous.basis == npb.BASIS_ANONYMOUS
    assert not anonymous.profile_id
    unknown = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=f"nobody-{uuid.uuid4()}")
    assert unknown.basis == npb.BASIS_UNKNOWN_PROFILE
    for reply in (anonymous, unknown):
        assert all(
            a.kind not in SELLING or a.score.propensity_source == "prior:default"
            for a in reply.actions
        )


# --- contact policy -------------------------------------------------------------------


def test_caps_hold_under_concurrent_decisions(
    nba: PersonalisationHarness, catalogue: Catalogue
) -> None:
    cid = customer(nba)
    placements = [("web.home.hero", ev.CHANNEL_WEB), ("app.home.banner", ev.CHANNEL_APP)]

    def decide(i: int) -> npb.DecideResponse:
        placement, channel = placements[i % len(placements)]
        return nba.decide(placement, channel, customer_id=cid, max_actions=2)

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(decide, range(48)))
    shown: dict[str, int] = {}
    for reply in replies:
        for ranked in reply.actions:
            shown[ranked.action_id] = shown.get(ranked.action_id, 0) + 1
    by_id = {a.action_id: a for a in catalogue.actions}
    marketing = sum(n for a, n in shown.items() if by_id[a].marketing)
    if catalogue.marketing_per_day:
        assert marketing <= catalogue.marketing_per_day, shown
    for action_id, count in shown.items():
        action = by_id[action_id]
        for rule in (action.contact, catalogue.kinds[action.kind].contact):
            if rule.max_impressions and rule.window_days >= 1:
                assert count <= rule.max_impressions, (action_id, count, rule)
    capped = [f for r in replies for f in r.filtered if f.stage == npb.STAGE_CONTACT_POLICY]
    assert capped
    assert all(f.policy.startswith("contact:") for f in capped)


def test_a_dismiss_holds_the_action_back_and_outcomes_reach_the_profile(
    nba: PersonalisationHarness, catalogue: Catalogue
) -> None:
    cid = customer(nba)
    first = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid)
    dismissed = first.actions[0].action_id
    action = catalogue.action(dismissed)
    assert action is not None
    rules = (action.contact, catalogue.kinds[action.kind].contact)
    assert any(r.dismiss_cooloff_days for r in rules), "the hero's first action has a cool-off"

    outcome = npb.ReportOutcomeRequest(
        decision_id=first.decision_id,
        action_id=dismissed,
        outcome=ev.OfferOutcome.OUTCOME_DISMISS,
    )
    reply = nba.nba.ReportOutcome(outcome, timeout=10)
    again = nba.nba.ReportOutcome(outcome, timeout=10)
    assert reply.event_id == again.event_id
    assert reply.profile_id == first.profile_id

    def decide(_: int) -> npb.DecideResponse:
        return nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid, max_actions=3)

    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(decide, range(16)))
    for r in later:
        assert dismissed not in {a.action_id for a in r.actions}
        held = [f for f in r.filtered if f.action_id == dismissed]
        assert held
        assert held[0].stage == npb.STAGE_CONTACT_POLICY
        assert "dismiss" in held[0].policy or "max_impressions" in held[0].policy

    # The outcome reached the profile once (as an OfferOutcome event), and the ledger.
    def outcome_events() -> list[ev.TouchpointEvent] | None:
        timeline = nba.profiles.GetTimeline(
            pb.GetTimelineRequest(
                identifier=pb.Identifier(type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value=cid)
            ),
            timeout=10,
        )
        found = [
            e.event for e in timeline.entries if e.event.WhichOneof("payload") == "offer_outcome"
        ]
        return found or None

    events = nba.wait_for("the outcome on the profile", outcome_events)
    time.sleep(1)  # a second copy, if the repeated report made one, would be applied by now
    events = outcome_events() or []
    assert len(events) == 1
    assert events[0].offer_outcome.decision_id == first.decision_id
    assert events[0].offer_outcome.offer_id == dismissed
    history = nba.ledger.history(first.profile_id, int(time.time() * 1000))
    assert dismissed in str(history)


# --- errors -----------------------------------------------------------------------------


def test_unknown_decisions_and_actions_are_refused(nba: PersonalisationHarness) -> None:
    unknown = npb.ReportOutcomeRequest(
        decision_id=uuid.uuid4().hex, action_id="x", outcome=ev.OfferOutcome.OUTCOME_CLICK
    )
    with pytest.raises(grpc.RpcError) as caught:
        nba.nba.ReportOutcome(unknown, timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown or expired" in (caught.value.details() or "")

    cid = customer(nba)
    decision = nba.decide("web.home.hero", ev.CHANNEL_WEB, customer_id=cid)
    wrong = npb.ReportOutcomeRequest(
        decision_id=decision.decision_id,
        action_id="not_chosen",
        outcome=ev.OfferOutcome.OUTCOME_CLICK,
    )
    with pytest.raises(grpc.RpcError) as caught:
        nba.nba.ReportOutcome(wrong, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "action_id" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (npb.DecideRequest(channel=ev.CHANNEL_WEB), "placement"),
        (npb.DecideRequest(placement="Web Home!", channel=ev.CHANNEL_WEB), "placement"),
        (npb.DecideRequest(placement="web.home.hero"), "channel"),
        (
            npb.DecideRequest(placement="web.home.hero", channel=ev.CHANNEL_WEB, max_actions=11),
            "max_actions",
        ),
        (
            npb.DecideRequest(placement="web.home.hero", channel=ev.CHANNEL_WEB, max_actions=-1),
            "max_actions",
        ),
        (
            npb.DecideRequest(
                placement="web.home.hero",
                channel=ev.CHANNEL_WEB,
                identifier=pb.Identifier(type=pb.IDENTIFIER_TYPE_EMAIL, value="not-an-email"),
            ),
            "identifier.value",
        ),
        (
            npb.DecideRequest(
                placement="web.home.hero",
                channel=ev.CHANNEL_WEB,
                identifier=pb.Identifier(value="c-1"),
            ),
            "identifier.type",
        ),
        (
            npb.DecideRequest(
                placement="web.home.hero",
                channel=ev.CHANNEL_WEB,
                context=npb.RequestContext(page="x" * 5000),
            ),
            "context.page",
        ),
    ],
)
def test_bad_decide_requests_name_the_field(
    nba: PersonalisationHarness, request_: npb.DecideRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        nba.nba.Decide(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field), caught.value.details()


def test_the_catalogue_is_served_and_reloaded_without_restart(
    nba: PersonalisationHarness, catalogue: Catalogue
) -> None:
    listed = nba.nba.ListActions(npb.ListActionsRequest(), timeout=5)
    assert {a.action_id for a in listed.actions} == {a.action_id for a in catalogue.actions}
    one = catalogue.actions[0]
    got = nba.nba.GetAction(npb.GetActionRequest(action_id=one.action_id), timeout=5)
    assert got.action.kind == one.kind
    assert got.catalogue_version == catalogue.version
    assert code_of(
        lambda: nba.nba.GetAction(npb.GetActionRequest(action_id="nope"), timeout=5)
    ) == (grpc.StatusCode.NOT_FOUND)

    health = health_pb2_grpc.HealthStub(nba.nba_channel)

    def catalogue_health() -> int:
        request = health_pb2.HealthCheckRequest(service=CATALOGUE_HEALTH_NAME)
        return int(health.Check(request, timeout=5).status)

    path: Path = nba.catalogue_path
    original = path.read_text()
    try:
        # A bad edit is refused: the last good version stays live, health says so.
        path.write_text(original.replace("business_value =", "business_value = -", 1))
        nba.wait_for(
            "the catalogue reported NOT_SERVING",
            lambda: catalogue_health() == health_pb2.HealthCheckResponse.NOT_SERVING,
            timeout_s=20,
        )
        still = nba.nba.ListActions(npb.ListActionsRequest(), timeout=5)
        assert still.catalogue_version == catalogue.version
        # A good edit goes live without restart.
        path.write_text(original + "\n# edited\n")
        nba.wait_for(
            "the new version live",
            lambda: (
                nba.nba.ListActions(npb.ListActionsRequest(), timeout=5).catalogue_version
                != catalogue.version
            ),
            timeout_s=20,
        )
        nba.wait_for(
            "the catalogue SERVING again",
            lambda: catalogue_health() == health_pb2.HealthCheckResponse.SERVING,
            timeout_s=20,
        )
    finally:
        path.write_text(original)
