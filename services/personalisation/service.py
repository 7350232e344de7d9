"""PersonalisationService: next-best-action decisions and their outcomes.

Handlers return a reply or raise a `ServiceError`; the shared `StatusInterceptor` answers
the code and counts every call (see services/common/grpc_errors.py).
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

import grpc
from cx.events.v1 import touchpoint_pb2 as ev
from cx.personalisation.v1 import personalisation_pb2 as pb
from cx.personalisation.v1 import personalisation_pb2_grpc
from prometheus_client import Counter

from services.common.conditions import FieldValue
from services.common.contact_ledger import ContactLedger
from services.common.grpc_errors import (
    DependencyUnavailable,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    InvalidRequest,
    NotFound,
)
from services.common.identifiers import (
    PROFILE_ID,
    InvalidIdentifier,
    identities_of,
    parse_identifier,
)
from services.common.touchpoint_publisher import PublishError, TouchpointPublisher
from services.common.validation import normalise_and_validate
from services.personalisation.adapters.catalogue_file import CatalogueFile
from services.personalisation.adapters.decisions import (
    ChosenAction,
    DecisionLog,
    DecisionStore,
    StoredDecision,
)
from services.personalisation.adapters.model_source import ModelSource
from services.personalisation.adapters.profile_source import ProfileSource
from services.personalisation.domain import arbitration, policy
from services.personalisation.domain.arbitration import (
    Decision,
    DecisionRequest,
    ProfileView,
    Stage,
)
from services.personalisation.domain.catalogue import PURPOSES, Catalogue
from services.personalisation.domain.learning import LEARNER_FIELDS
from services.personalisation.settings import PersonalisationSettings
from services.personalisation.views import (
    BASES,
    POLICIES,
    action_message,
    catalogue_actions,
    channel_name,
    chosen,
    context_values,
    decision_record,
    filtered_action,
    set_probabilities,
)

MAX_ACTIONS = 10
# The catalogue's placement names (without its wildcards), at most 100 characters.
PLACEMENT_RE = re.compile(r"^(?=.{1,100}$)[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
ATTRIBUTE_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_CONTEXT_TEXT = 500
MAX_ATTRIBUTES = 50
MAX_CART_ITEMS = 200
# An outcome may be dated this far ahead of the server's clock (clock skew).
OUTCOME_CLOCK_SKEW_MS = 5 * 60 * 1000
# Kept from the client's deadline for answering after the broker's acknowledgement.
DEADLINE_MARGIN_S = 0.2
OUTCOME_NAMES = {
    ev.OfferOutcome.OUTCOME_IMPRESSION: "impression",
    ev.OfferOutcome.OUTCOME_CLICK: "click",
    ev.OfferOutcome.OUTCOME_ACCEPT: "accept",
    ev.OfferOutcome.OUTCOME_DISMISS: "dismiss",
}
# Consent purposes a decision may check: every ConsentChange purpose.
CONSENT_FIELDS = frozenset(f"consent.{purpose}" for purpose in PURPOSES)
# The journey stage an outcome event is tagged with, by the kind of action.
KIND_STAGES = {
    "upsell": ev.JOURNEY_STAGE_CONSIDERATION,
    "cross_sell": ev.JOURNEY_STAGE_CONSIDERATION,
    "retention": ev.JOURNEY_STAGE_RENEWAL,
    "service_recovery": ev.JOURNEY_STAGE_SUPPORT,
    "survey": ev.JOURNEY_STAGE_ADVOCACY,
    "onboarding": ev.JOURNEY_STAGE_ONBOARDING,
}
# Outcome events' ids derive from what they report, so a repeated report counts once.
OUTCOME_NAMESPACE = uuid.UUID("6f1d3c52-8a4e-4d2b-9a57-0c3e1f6b2d84")

DECISIONS = Counter(
    "cx_personalisation_decisions",
    "Decisions made, by placement, group and basis",
    ["placement", "group", "basis"],
)
FILTERED = Counter(
    "cx_personalisation_filtered_actions",
    "Actions held back from a decision, by stage and policy",
    ["stage", "policy"],
)
OUTCOMES = Counter("cx_personalisation_outcomes", "Outcomes reported, by outcome", ["outcome"])


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: str, field: str, limit: int = MAX_CONTEXT_TEXT) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"is longer than {limit} characters")
    return value


def context_fields(context: pb.RequestContext) -> dict[str, FieldValue]:
    """The request context as decision fields (`context.*`), validated."""
    if len(context.cart_product_ids) > MAX_CART_ITEMS:
        raise InvalidArgument("context.cart_product_ids", f"has more than {MAX_CART_ITEMS} items")
    for i, product in enumerate(context.cart_product_ids):
        _text(product, f"context.cart_product_ids[{i}]", 200)
    if len(context.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument("context.attributes", f"has more than {MAX_ATTRIBUTES} entries")
    _text(context.device, "context.device", 64)
    _text(context.locale, "context.locale", 35)
    _text(context.page, "context.page")
    for key, value in context.attributes.items():
        if not ATTRIBUTE_KEY_RE.match(key):
            raise InvalidArgument(
                "context.attributes", f"key {key[:80]!r} must be 1-64 letters, digits, _ . -"
            )
        _text(value, f"context.attributes[{key}]")
    return context_values(context)


def profile_names(catalogue: Catalogue) -> tuple[str, ...]:
    """What a decision asks the profile for: the fields the catalogue and the learner
    read, and every consent."""
    return tuple(sorted(catalogue.fields_read() | LEARNER_FIELDS | CONSENT_FIELDS))


class PersonalisationServicer(personalisation_pb2_grpc.PersonalisationServiceServicer):
    def __init__(
        self,
        settings: PersonalisationSettings,
        catalogue: CatalogueFile,
        profiles: ProfileSource,
        ledger: ContactLedger,
        store: DecisionStore,
        decision_log: DecisionLog | None,
        publisher: TouchpointPublisher | None,
        models: ModelSource | None = None,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.profiles = profiles
        self.ledger = ledger
        self.store = store
        self.decision_log = decision_log
        self.publisher = publisher
        self.models = models
        self._names: tuple[str, tuple[str, ...]] = ("", ())

    # --- Decide -------------------------------------------------------------------------

    def _parse_decide(self, request: pb.DecideRequest, now_ms: int) -> DecisionRequest:
        if not request.placement:
            raise InvalidArgument("placement", "is required, for example web.home.hero")
        if not PLACEMENT_RE.match(request.placement):
            raise InvalidArgument(
                "placement",
                "must be lower-case dotted names such as web.home.hero (a-z, 0-9, _; at most 100)",
            )
        if request.channel == ev.CHANNEL_UNSPECIFIED:
            raise InvalidArgument("channel", "is required, for example CHANNEL_WEB")
        if request.channel not in ev.Channel.values():
            raise InvalidArgument("channel", f"{request.channel} is not a known Channel")
        if not 0 <= request.max_actions <= MAX_ACTIONS:
            raise InvalidArgument("max_actions", f"must be 1 to {MAX_ACTIONS} (0 means 1)")
        return DecisionRequest(
            placement=request.placement,
            channel=channel_name(request.channel),
            now_ms=now_ms,
            context=context_fields(request.context),
            want=request.max_actions or 1,
        )

    def _identifier(self, request: pb.DecideRequest) -> tuple[str, str] | None:
        ident = request.identifier
        if not request.HasField("identifier") or (not ident.type and not ident.value):
            return None
        try:
            kind, value = parse_identifier(ident)
        except InvalidIdentifier as exc:
            raise InvalidArgument(f"identifier.{exc.part}", exc.description) from exc
        return kind.code, value

    def _timeout(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        budget = self.settings.profile_timeout_s
        return budget if remaining is None else max(min(budget, remaining - 0.05), 0.01)

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        now_ms = _now_ms()
        decision_request = self._parse_decide(request, now_ms)
        identifier = self._identifier(request)
        catalogue = self.catalogue.current
        profile: ProfileView | None = None
        if identifier is not None:
            # Worked out once per catalogue version, not per decision.
            if self._names[0] != catalogue.version:
                self._names = (catalogue.version, profile_names(catalogue))
            names = self._names[1]
            profile = self.profiles.features(*identifier, names, self._timeout(context))
        # The ledger's key for the person: their profile, else the identifier they came with.
        if profile is not None:
            person = profile.profile_id
        elif identifier is not None:
            person = f"{identifier[0]}:{identifier[1]}"
        else:
            person = ""
        # The holdout is a share of profiles: without one, the ranking is generic anyway,
        # and a person keeps their group once their profile exists.
        holdout = profile is not None and arbitration.in_holdout(
            profile.profile_id, self.settings.holdout_percent, self.settings.holdout_salt
        )
        ranking = arbitration.rank(
            catalogue, decision_request, profile, identified=identifier is not None, holdout=holdout
        )
        decision_id = uuid.uuid4().hex
        # The policy orders the eligible actions (the learned model samples its order);
        # the contact ledger then takes the first it allows.
        choice = policy.order(
            ranking,
            decision_request,
            self.models.current if self.models is not None else None,
            decision_id,
        )
        if person:
            reservation = self.ledger.reserve(
                person,
                decision_id,
                now_ms,
                arbitration.candidates(catalogue, choice.ranking),
                decision_request.want,
                catalogue.marketing_per_day,
            )
        else:
            reservation = arbitration.choose_without_ledger(choice.ranking, decision_request.want)
        decision = arbitration.finish(choice.ranking, reservation)
        self.store.save(
            StoredDecision(
                decision_id=decision_id,
                profile_id=profile.profile_id if profile else "",
                person=person,
                identifier=identifier if identifier and identifier[0] != PROFILE_ID.code else None,
                placement=decision_request.placement,
                channel=decision_request.channel,
                decided_at_ms=now_ms,
                actions=tuple(
                    ChosenAction(s.action.action_id, s.action.kind, s.action.marketing)
                    for s in decision.chosen
                ),
            )
        )
        reply = self._reply(
            decision_id, decision, profile, catalogue.version, person, decision_request.placement
        )
        reply.policy = POLICIES[choice.policy]
        reply.model_version = choice.model_version
        unavailable = policy.unavailable(decision, reservation)
        set_probabilities(
            reply.actions, choice, policy.probabilities(choice, decision, unavailable)
        )
        if request.explain:
            reply.filtered.extend(filtered_action(f) for f in decision.filtered)
        if self.decision_log is not None:
            record = decision_record(
                reply, request.context, decision_request, decision, unavailable
            )
            self.decision_log.append(reply.profile_id or reply.decision_id, record)
        self._count(decision_request.placement, reply, decision)
        return reply

    def _reply(
        self,
        decision_id: str,
        decision: Decision,
        profile: ProfileView | None,
        version: str,
        person: str,
        placement: str,
    ) -> pb.DecideResponse:
        ranking = decision.ranking
        reply = pb.DecideResponse(
            decision_id=decision_id,
            actions=chosen(decision, person, placement),
            profile_id=profile.profile_id if profile else "",
            policy_version=version,
            group=pb.GROUP_HOLDOUT if ranking.holdout else pb.GROUP_TREATMENT,
            holdout=ranking.holdout,
            basis=BASES[ranking.basis],
            experience_signals=list(ranking.signals),
        )
        if profile is not None and profile.as_of_ms is not None:
            reply.profile_as_of.FromMilliseconds(profile.as_of_ms)
        return reply

    def _count(self, placement: str, reply: pb.DecideResponse, decision: Decision) -> None:
        group = "holdout" if reply.holdout else "treatment"
        DECISIONS.labels(placement, group, decision.ranking.basis.value).inc()
        for item in decision.filtered:
            if item.stage is not Stage.ELIGIBILITY and item.stage is not Stage.PRIORITISATION:
                FILTERED.labels(item.stage.value, item.policy).inc()

    # --- ReportOutcome ------------------------------------------------------------------

    def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        if not request.decision_id:
            raise InvalidArgument("decision_id", "is required")
        if len(request.decision_id) > 64:
            raise InvalidArgument("decision_id", "is not a decision id this service issued")
        if not request.action_id:
            raise InvalidArgument("action_id", "is required")
        outcome = OUTCOME_NAMES.get(request.outcome)
        if outcome is None:
            raise InvalidArgument(
                "outcome", "is required: OUTCOME_IMPRESSION, _CLICK, _ACCEPT or _DISMISS"
            )
        stored = self.store.load(request.decision_id)
        if stored is None:
            days = self.settings.decision_ttl_s / 86400
            raise NotFound(
                f"decision {request.decision_id!r} is unknown or expired "
                f"(outcomes are taken for {days:g} days after a decision)"
            )
        action = stored.action(request.action_id)
        if action is None:
            shown = ", ".join(a.action_id for a in stored.actions) or "none"
            raise InvalidArgument(
                "action_id", f"{request.action_id!r} was not chosen by this decision ({shown})"
            )
        now_ms = _now_ms()
        ts_ms = request.occurred_at.ToMilliseconds() if request.HasField("occurred_at") else now_ms
        if ts_ms > now_ms + OUTCOME_CLOCK_SKEW_MS:
            raise InvalidArgument("occurred_at", "is in the future")
        if ts_ms < stored.decided_at_ms - OUTCOME_CLOCK_SKEW_MS:
            raise InvalidArgument("occurred_at", "is before the decision was made")
        identifier = stored.identifier
        if identifier is None and stored.profile_id:
            identifier = self.profiles.person_identifier(stored.profile_id, self._timeout(context))
        if identifier is None:
            raise FailedPrecondition(
                "the decision was for a visitor without an identifier: "
                "there is no profile to record the outcome on"
            )
        event = self._outcome_event(stored, action, request.outcome, ts_ms, identifier)
        self._publish(event, context)
        if stored.person:
            self.ledger.record_outcome(
                stored.person,
                stored.decision_id,
                action.action_id,
                action.kind,
                action.marketing,
                outcome,
                ts_ms,
            )
        OUTCOMES.labels(outcome).inc()
        return pb.ReportOutcomeResponse(event_id=event.event_id, profile_id=stored.profile_id)

    def _outcome_event(
        self,
        stored: StoredDecision,
        action: ChosenAction,
        outcome: ev.OfferOutcome.Outcome.ValueType,
        ts_ms: int,
        identifier: tuple[str, str],
    ) -> ev.TouchpointEvent:
        name = f"{stored.decision_id}/{action.action_id}/{outcome}"
        event = ev.TouchpointEvent(
            event_id=f"nba-{uuid.uuid5(OUTCOME_NAMESPACE, name)}",
            identities=identities_of(*identifier),
            channel=ev.Channel.Value(f"CHANNEL_{stored.channel.upper()}"),
            touchpoint=stored.placement,
            journey_stage=KIND_STAGES.get(action.kind, ev.JOURNEY_STAGE_USAGE),
            source_system="personalisation",
            offer_outcome=ev.OfferOutcome(
                decision_id=stored.decision_id,
                offer_id=action.action_id,
                outcome=outcome,
                placement=stored.placement,
            ),
        )
        event.occurred_at.FromMilliseconds(ts_ms)
        now = datetime.now(UTC)
        event.received_at.FromDatetime(now)
        violations = normalise_and_validate(event, now=now)
        if violations:
            raise InvalidRequest("; ".join(map(str, violations)))
        return event

    def _publish(self, event: ev.TouchpointEvent, context: grpc.ServicerContext) -> None:
        if self.publisher is None:
            raise DependencyUnavailable("Kafka", "outcome events are not configured")
        remaining = context.time_remaining()
        try:
            self.publisher.publish(
                [event], timeout_s=None if remaining is None else remaining - DEADLINE_MARGIN_S
            )
        except DependencyUnavailable:
            raise
        except PublishError as exc:
            raise Internal(str(exc)) from exc

    # --- the catalogue ------------------------------------------------------------------

    def ListActions(
        self, request: pb.ListActionsRequest, context: grpc.ServicerContext
    ) -> pb.ListActionsResponse:
        if request.placement and not PLACEMENT_RE.match(request.placement):
            raise InvalidArgument(
                "placement", "must be a lower-case dotted name such as web.home.hero"
            )
        catalogue = self.catalogue.current
        reply = pb.ListActionsResponse(
            actions=catalogue_actions(catalogue, _now_ms(), request.placement, request.kind),
            catalogue_version=catalogue.version,
        )
        reply.loaded_at.FromMilliseconds(self.catalogue.loaded_at_ms)
        return reply

    def GetAction(
        self, request: pb.GetActionRequest, context: grpc.ServicerContext
    ) -> pb.GetActionResponse:
        if not request.action_id:
            raise InvalidArgument("action_id", "is required")
        catalogue = self.catalogue.current
        action = catalogue.action(request.action_id)
        if action is None:
            raise NotFound(f"no action {request.action_id!r} in catalogue {catalogue.version}")
        return pb.GetActionResponse(
            action=action_message(action, _now_ms()), catalogue_version=catalogue.version
        )
