"""One policy's run over the world's requests, through the service's own decision path:

    arbitration.rank (the shipped catalogue)  ->  the policy's order
      ->  LedgerModel.reserve (the contact ledger's semantics, the catalogue's caps)
      ->  arbitration.finish  ->  policy.probabilities

then the person's hidden truth (`truth.py`) decides what they do, the outcome reaches the
contact ledger (accepts and dismisses, a few seconds to a minute and a half later), and
the learned policies' learner trains online as the learner process does: a decision
settles at its accept or dismiss, else `window.settle_after_s` after it (reward of the
best outcome seen: a click, or 0); its example is rebuilt from the decision's log record
(`records.training_example`) and `Model.learn`s; every `checkpoint.every_decisions`
trained examples the weights are copied (`Model.to_bytes` -> `Model(...)`) and the
deciders switch to that version. Before the first checkpoint the deciders have no model
and use the static rules, as the service does. `checkpoint.every_s` is not simulated:
20,000 decisions spread over 28 simulated days are a couple of minutes apart, so a
timer would checkpoint after nearly every decision, fresher than a busy deployment is.
Everyone is in the treatment group (no holdout) and allows personalisation, and every
request asks for one action: every decision is one the policies differ on.

Policies:
  random    uniform among the actions the rules and the ledger allow (the ranked actions
            shuffled; the ledger takes the first it allows)
  static    the rules' order, P x C x V x L (`policy.order` without a model: STATIC)
  plain_vw  the same bandit and learner, but ranked with the catalogue's suitability
            rules removed (no experience rules: nothing suppressed or promoted)
  service   this service: the rules, then the learned model (`policy.order`: LEARNED)
  oracle    knows the true expected reward and takes the best action among those the
            same rules and contact ledger allow (myopic: the best now)
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cx.personalisation.v1 import personalisation_pb2 as pb

from bench.decisions import truth
from bench.decisions.population import World
from bench.decisions.records import decision_record, training_example
from services.common.conditions import FieldValue
from services.common.contact_ledger import LedgerModel
from services.personalisation.domain import arbitration, policy
from services.personalisation.domain.arbitration import DecisionRequest, ProfileView, Ranking
from services.personalisation.domain.catalogue import Action, Catalogue
from services.personalisation.domain.learning import LearningConfig, Model, model_version
from services.personalisation.domain.policy import Choice, PolicyKind

POLICIES = ("random", "static", "plain_vw", "service", "oracle")
LEARNED = frozenset({"plain_vw", "service"})
SELLING_KINDS = frozenset({"upsell", "cross_sell"})


@dataclass(frozen=True)
class Moment:
    """A request with the person's profile at that moment (the same for every policy)."""

    request: DecisionRequest
    profile: ProfileView
    # Profile and request fields together: what the truth reads.
    fields: dict[str, FieldValue]
    trouble: frozenset[str]
    hour: int
    draw: float
    delay_ms: int


@dataclass(frozen=True)
class LedgerOutcome:
    """An accept or dismiss on its way to the contact ledger."""

    person: str
    decision_id: str
    action_id: str
    kind: str
    marketing: bool
    outcome: str
    ts_ms: int


@dataclass(frozen=True)
class Settlement:
    """A decision settled with its reward, on its way to the learner."""

    record: pb.DecisionRecord
    reward: float


@dataclass(frozen=True, order=True)
class Due:
    when_ms: int
    sequence: int
    event: LedgerOutcome | Settlement = field(compare=False)


@dataclass
class Run:
    policy: str
    rewards: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    path_s: list[float] = field(default_factory=list)
    shown: int = 0
    # Upsells and cross-sells shown during an open complaint / any negative experience.
    upsells_in_complaint: int = 0
    cross_sells_in_complaint: int = 0
    selling_in_trouble: int = 0
    recovery_in_trouble: int = 0
    # The contact ledger: decisions where it refused at least one eligible action, and
    # where it refused them all (nothing shown); decisions with nothing eligible at all.
    capped: int = 0
    starved: int = 0
    nothing_eligible: int = 0
    checkpoints: int = 0
    trained: int = 0
    seconds: float = 0.0
    # The service's log: serialised DecisionRecords and each one's settled reward, and
    # for each the static rules' exact expected reward on that logged context.
    records: list[bytes] = field(default_factory=list)
    record_rewards: list[float] = field(default_factory=list)
    static_on_log: list[float] = field(default_factory=list)


def moments(world: World) -> list[Moment]:
    out = []
    for r in world.requests:
        fields, segments = world.profile(r)
        person = world.people[r.person]
        request = DecisionRequest(r.placement, r.channel, r.now_ms, dict(r.context), want=1)
        profile = ProfileView(person.person_id, fields, segments, as_of_ms=r.now_ms)
        both = {**fields, **arbitration.request_fields(request)}
        hour = datetime.fromtimestamp(r.now_ms / 1000, UTC).hour
        out.append(Moment(request, profile, both, truth.troubles(fields), hour, r.draw, r.delay_ms))
    return out


def without_suitability(catalogue: Catalogue) -> Catalogue:
    """The catalogue with its experience rules removed (the plain bandit's)."""
    return replace(catalogue, suitability=(), version=catalogue.version + "-no-suitability")


class Learner:
    """The learner process in miniature: trains on settled decisions, checkpoints every
    `every` examples; `serving` is the deciders' model (the last checkpoint)."""

    def __init__(self, config: LearningConfig) -> None:
        self.config = config
        self.model = Model(config.model.vw_args)
        self.serving: Model | None = None
        self.trained = 0
        self.sequence = 0

    def learn(self, record: pb.DecisionRecord, reward: float) -> None:
        example = training_example(record, reward)
        if example is None:
            return
        self.model.learn(example)
        self.trained += 1
        if self.trained % self.config.checkpoint.every_decisions == 0:
            self.checkpoint()

    def checkpoint(self) -> None:
        self.sequence += 1
        blob = self.model.to_bytes()
        previous = self.serving
        self.serving = Model(self.config.model.vw_args, model_version(self.sequence, blob), blob)
        if previous is not None:
            previous.close()

    def close(self) -> None:
        self.model.close()
        if self.serving is not None:
            self.serving.close()


def _expected(
    action: Action, m: Moment, goodwill: float, config: LearningConfig
) -> tuple[truth.Odds, float]:
    odds = truth.odds(action, m.fields, m.request.placement, m.hour, goodwill, m.trouble)
    return odds, truth.expected_reward(odds, action.business_value, config.rewards)


def _reordered(ranking: Ranking, order: Sequence[int]) -> Choice:
    arms = tuple(s.action.action_id for s in ranking.ranked)
    ranked = tuple(ranking.ranked[i] for i in order)
    return Choice(replace(ranking, ranked=ranked), PolicyKind.STATIC, "", None, arms)


def simulate(
    world_moments: Sequence[Moment],
    name: str,
    catalogue: Catalogue,
    config: LearningConfig,
    *,
    seed: int = 7,
    keep_log: bool = False,
) -> Run:
    """Runs policy `name` over the moments; `keep_log`: keep the decision records (the
    learned policies build them anyway, for their learner)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    started = time.perf_counter()
    ranked_with = without_suitability(catalogue) if name == "plain_vw" else catalogue
    ledger = LedgerModel()
    learner = Learner(config) if name in LEARNED else None
    shuffle = random.Random(f"{seed}:random")
    goodwill: dict[str, float] = {}
    # Ledger outcomes and settlements, by when they are due.
    pending: list[Due] = []
    sequence = 0
    run = Run(name)
    rewards = config.rewards
    settle_ms = int(config.window.settle_after_s * 1000)
    for i, m in enumerate(world_moments):
        now = m.request.now_ms
        while pending and pending[0].when_ms <= now:
            event = heapq.heappop(pending).event
            if isinstance(event, LedgerOutcome):
                ledger.record_outcome(
                    event.person,
                    event.decision_id,
                    event.action_id,
                    event.kind,
                    event.marketing,
                    event.outcome,
                    event.ts_ms,
                )
            elif learner is not None:
                learner.learn(event.record, event.reward)
        person = m.profile.profile_id
        decision_id = f"s{seed}-{i:06d}"
        mood = goodwill.get(person, 1.0)

        t0 = time.perf_counter()
        ranking = arbitration.rank(
            ranked_with, m.request, m.profile, identified=True, holdout=False
        )
        if name == "random":
            order = list(range(len(ranking.ranked)))
            shuffle.shuffle(order)
            choice = _reordered(ranking, order)
        elif name == "oracle":
            values = [_expected(s.action, m, mood, config)[1] for s in ranking.ranked]
            order = sorted(
                range(len(values)), key=lambda j: (-values[j], ranking.ranked[j].action.action_id)
            )
            choice = _reordered(ranking, order)
        else:
            model = learner.serving if learner is not None else None
            choice = policy.order(ranking, m.request, model, decision_id)
        reservation = ledger.reserve(
            person,
            decision_id,
            now,
            arbitration.candidates(ranked_with, choice.ranking),
            m.request.want,
            ranked_with.marketing_per_day,
        )
        decision = arbitration.finish(choice.ranking, reservation)
        unavailable = policy.unavailable(decision, reservation)
        slot = policy.probabilities(choice, decision, unavailable)
        run.path_s.append(time.perf_counter() - t0)
        if reservation.refused:
            run.capped += 1
        if not ranking.ranked:
            run.nothing_eligible += 1
        elif not decision.chosen:
            run.starved += 1

        reward = expected = 0.0
        outcome = "none"
        if decision.chosen:
            action = decision.chosen[0].action
            odds, expected = _expected(action, m, mood, config)
            outcome = truth.outcome(odds, m.draw)
            reward = rewards.settle(truth.OUTCOMES_OF[outcome], action.business_value)
            run.shown += 1
            if truth.annoys(action, m.trouble):
                goodwill[person] = truth.dented(mood)
            if m.trouble and action.kind in SELLING_KINDS:
                run.selling_in_trouble += 1
            if m.trouble and action.kind == "service_recovery":
                run.recovery_in_trouble += 1
            if "complaint" in m.trouble:
                if action.kind == "upsell":
                    run.upsells_in_complaint += 1
                elif action.kind == "cross_sell":
                    run.cross_sells_in_complaint += 1
            if outcome in ("accept", "dismiss"):
                sequence += 1
                ts = now + m.delay_ms
                heapq.heappush(
                    pending,
                    Due(
                        ts,
                        sequence,
                        LedgerOutcome(
                            person,
                            decision_id,
                            action.action_id,
                            action.kind,
                            action.marketing,
                            outcome,
                            ts,
                        ),
                    ),
                )
        run.rewards.append(reward)
        run.expected.append(expected)

        if learner is not None or keep_log:
            record = decision_record(
                decision_id,
                person,
                m.request,
                choice,
                decision,
                slot,
                unavailable,
                ranked_with.version,
            )
            if learner is not None and decision.chosen:
                due = now + (m.delay_ms if outcome in ("accept", "dismiss") else settle_ms)
                sequence += 1
                heapq.heappush(pending, Due(due, sequence, Settlement(record, reward)))
            if keep_log:
                run.records.append(record.SerializeToString())
                run.record_rewards.append(reward)
                run.static_on_log.append(_static_on_log(ranking, unavailable, m, mood, config))
    if learner is not None:
        run.checkpoints = learner.sequence
        run.trained = learner.trained
        learner.close()
    run.seconds = time.perf_counter() - started
    return run


def _static_on_log(
    ranking: Ranking, unavailable: set[str], m: Moment, mood: float, config: LearningConfig
) -> float:
    """The static rules' exact expected reward on this logged decision: the first ranked
    action (promoted first, then by P x C x V x L) the ledger had not already ruled out."""
    for scored in ranking.ranked:
        if scored.action.action_id not in unavailable:
            return _expected(scored.action, m, mood, config)[1]
    return 0.0
