"""Learning from outcomes, pure but for Vowpal Wabbit (a library, no I/O): what a decision's
context looks like to the contextual bandit, what an outcome is worth, and how the
learned probabilities order the eligible actions.

The bandit only ever sees the actions that passed eligibility, consent and the experience
rules (`arbitration.rank`), and its order then goes through the contact ledger, so
exploring cannot break a rule. Everything here is shared by the Decide servers, the
learner process, offline evaluation (`cx nba evaluate`) and the simulator
(`bench/decisions`), so the four agree on features, rewards and probabilities.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import vowpalwabbit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.conditions import FieldValue
from services.common.contact_ledger import (
    GLOBAL_MARKETING_PER_DAY,
    KIND_MAX_IMPRESSIONS,
    Reservation,
)

# The profile fields the learner reads (besides every `segment.<name>`), and how each is
# turned into a categorical feature. Decisions ask the profile for these on top of the
# catalogue's fields, and the decision log keeps them, so the learner and offline
# evaluation rebuild a decision's context from its log record alone.
CATEGORICAL_FIELDS = (
    "value_tier",
    "journey_stage",
    "churn_band",
    "nps_category",
    "last_channel",
)
# Numbers, as buckets: (field, upper bounds). A value falls in the first bucket whose bound
# it does not exceed; above the last bound it is `>last`.
BUCKETED_FIELDS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("csat_last", (1, 2, 3, 4, 5)),
    ("ces_last", (2, 4, 5, 6, 7)),
    ("open_complaints", (0, 1)),
    ("open_incidents", (0, 1)),
    ("repeat_contacts_30d", (0, 1, 2)),
    ("days_since_nps", (7, 30, 90)),
    ("orders", (0, 1, 3, 10)),
    ("days_since_last_seen", (1, 7, 30, 90)),
    ("clv_total", (0, 100, 500, 2000)),
)
FLAG_FIELDS = ("payment_failure_open", "delivery_problem_open")
LEARNER_FIELDS = frozenset(
    (*CATEGORICAL_FIELDS, *(name for name, _ in BUCKETED_FIELDS), *FLAG_FIELDS)
)
SEGMENT_PREFIX = "segment."
# The request's fields the learner reads (see arbitration.request_fields).
REQUEST_FIELDS = ("placement", "channel", "context.device")
# UTC hour in four parts of the day.
DAY_PARTS = ((6, "night"), (12, "morning"), (18, "afternoon"), (24, "evening"))

OUTCOMES = ("impression", "click", "accept", "dismiss")
# After these, nothing more is expected of the decision: it is settled at once.
FINAL_OUTCOMES = frozenset({"accept", "dismiss"})

DEFAULT_LEARNING_FILE = Path(__file__).resolve().parent.parent / "config" / "learning.toml"


# --- configuration -----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rewards(_Strict):
    no_outcome: float = 0.0
    impression: float = 0.0
    click: float = 0.1
    dismiss: float = 0.0
    accept: float | Literal["value"] = "value"
    value_scale: float = Field(default=50.0, gt=0)

    def of(self, outcome: str, business_value: float) -> float:
        """What one outcome of an action worth `business_value` earns."""
        if outcome == "accept":
            if self.accept == "value":
                return business_value / self.value_scale
            return self.accept
        if outcome == "click":
            return self.click
        if outcome == "dismiss":
            return self.dismiss
        if outcome == "impression":
            return self.impression
        raise ValueError(f"unknown outcome {outcome!r}")

    def settle(self, outcomes: Iterable[str], business_value: float) -> float:
        """A decision's reward: the best of its outcomes, `no_outcome` without any."""
        return max((self.of(o, business_value) for o in outcomes), default=self.no_outcome)


class Window(_Strict):
    settle_after_s: float = Field(default=1800.0, gt=0)


class ModelOptions(_Strict):
    vw_args: str = "--squarecb -q ua -q ra"


class Checkpoint(_Strict):
    every_decisions: int = Field(default=200, ge=1)
    every_s: float = Field(default=10.0, gt=0)
    keep_versions: int = Field(default=3, ge=1)


class LearningConfig(_Strict):
    rewards: Rewards = Rewards()
    window: Window = Window()
    model: ModelOptions = ModelOptions()
    checkpoint: Checkpoint = Checkpoint()


class LearningConfigError(ValueError):
    pass


def load_learning(path: Path = DEFAULT_LEARNING_FILE) -> LearningConfig:
    """The learning file, validated whole; errors name the key."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LearningConfigError(f"{path}: {exc}") from exc
    try:
        config = LearningConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise LearningConfigError(f"{path}: {problems}") from exc
    Model.check_args(config.model.vw_args)
    return config


# --- features ----------------------------------------------------------------------------


def _token(value: object) -> str:
    # VW's text format splits on spaces and reserves | and :.
    text = str(value).strip().lower() or "empty"
    return text.replace(" ", "_").replace("|", "_").replace(":", "_")


def bucket(value: float, bounds: Sequence[float]) -> str:
    for bound in bounds:
        if value <= bound:
            return f"le{bound:g}"
    return f"gt{bounds[-1]:g}"


def day_part(hour: int) -> str:
    return next(name for end, name in DAY_PARTS if hour < end)


def context_features(fields: Mapping[str, FieldValue]) -> str:
    """The shared (person and request) line of a decision, from its decision fields: the
    profile's (as `rank` saw them, `segment.*` included) and the request's."""
    person: list[str] = []
    for name in CATEGORICAL_FIELDS:
        value = fields.get(name)
        if value is not None:
            person.append(f"{name}={_token(value)}")
    for name, bounds in BUCKETED_FIELDS:
        value = fields.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        person.append(f"{name}={bucket(value, bounds)}")
    for name in FLAG_FIELDS:
        if fields.get(name) is True:
            person.append(name)
    person.extend(
        "seg=" + _token(name.removeprefix(SEGMENT_PREFIX))
        for name in sorted(fields)
        if name.startswith(SEGMENT_PREFIX) and fields[name] is True
    )
    request = [f"{name}={_token(fields.get(name))}" for name in REQUEST_FIELDS]
    hour = fields.get("hour")
    if isinstance(hour, int) and not isinstance(hour, bool):
        request.append(f"daypart={day_part(hour)}")
    return "shared |u " + " ".join(person) + " |r " + " ".join(request)


@dataclass(frozen=True)
class ArmSpec:
    """An action as the bandit sees it."""

    action_id: str
    kind: str

    def features(self) -> str:
        return f"|a id={_token(self.action_id)} kind={_token(self.kind)}"


def example_lines(
    shared: str, arms: Sequence[ArmSpec], label: tuple[int, float, float] | None = None
) -> list[str]:
    """A cb_explore_adf multi-line example; `label` = (index, cost, probability)."""
    lines = [shared]
    for i, arm in enumerate(arms):
        prefix = ""
        if label is not None and label[0] == i:
            prefix = f"0:{label[1]:.6g}:{label[2]:.6g} "
        lines.append(prefix + arm.features())
    return lines


@dataclass(frozen=True)
class TrainingExample:
    """A settled decision: the context, the arms offered, which was shown first, with what
    probability, and the reward it earned."""

    decision_id: str
    shared: str
    arms: tuple[ArmSpec, ...]
    chosen: int
    probability: float
    reward: float


# --- the model ---------------------------------------------------------------------------


class Model:
    """A cb_explore_adf Vowpal Wabbit workspace with its version. VW workspaces are not
    thread-safe: every call holds the model's lock (a predict is tens of microseconds)."""

    def __init__(self, vw_args: str, version: str = "", model_bytes: bytes | None = None):
        self.vw_args = vw_args
        self.version = version
        self._lock = threading.Lock()
        self._path: str | None = None
        args = f"--cb_explore_adf --quiet {vw_args}"
        if model_bytes is not None:
            fd, path = tempfile.mkstemp(prefix="cx-vw-", suffix=".model")
            with os.fdopen(fd, "wb") as f:
                f.write(model_bytes)
            self._path = path
            # The saved model carries the options it was trained with (reductions,
            # exploration, interactions): -i restores them, so `vw_args` is not repeated.
            args = f"--quiet -i {path}"
        self._vw = vowpalwabbit.Workspace(args)
        self._closed = False
        if self._path is not None:
            os.unlink(self._path)
            self._path = None

    @staticmethod
    def check_args(vw_args: str) -> None:
        """Raises LearningConfigError when VW refuses the options."""
        try:
            vowpalwabbit.Workspace(f"--cb_explore_adf --quiet {vw_args}").finish()
        except Exception as exc:  # VW raises plain RuntimeError and friends
            raise LearningConfigError(f"model.vw_args {vw_args!r}: {exc}") from exc

    def predict(self, shared: str, arms: Sequence[ArmSpec]) -> list[float]:
        """The probability of each arm (sums to 1)."""
        if not arms:
            return []
        with self._lock:
            if self._closed:
                raise RuntimeError(f"model {self.version or '(new)'} is closed")
            pmf = self._vw.predict(example_lines(shared, arms))
        values = [max(float(p), 0.0) for p in pmf]
        total = sum(values)
        if len(values) != len(arms) or total <= 0:
            return [1.0 / len(arms)] * len(arms)
        return [v / total for v in values]

    def learn(self, example: TrainingExample) -> None:
        # VW minimises cost: the cost is the negative reward.
        lines = example_lines(
            example.shared,
            example.arms,
            (example.chosen, -example.reward, max(example.probability, 1e-6)),
        )
        with self._lock:
            self._vw.learn(lines)

    def to_bytes(self) -> bytes:
        fd, path = tempfile.mkstemp(prefix="cx-vw-", suffix=".model")
        os.close(fd)
        try:
            with self._lock:
                self._vw.save(path)
            return Path(path).read_bytes()
        finally:
            os.unlink(path)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._vw.finish()


def model_version(sequence: int, model_bytes: bytes) -> str:
    """A checkpoint's name: its sequence number and a digest of its bytes."""
    return f"m{sequence}-{hashlib.sha256(model_bytes).hexdigest()[:8]}"


# --- ordering by the learned probabilities -----------------------------------------------


def draw(decision_id: str, step: int) -> float:
    """A uniform number in [0, 1) fixed by the decision id: a decision is reproducible."""
    digest = hashlib.sha256(f"{decision_id}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Ordered:
    """The eligible actions in the sampled order, and each one's probability (the
    learned distribution, within its tier: promoted actions come first)."""

    order: tuple[int, ...]
    pmf: tuple[float, ...]
    promoted: tuple[bool, ...]


def sample_order(pmf: Sequence[float], promoted: Sequence[bool], decision_id: str) -> Ordered:
    """Samples an order of the arms without replacement (Plackett-Luce on `pmf`), the
    promoted arms first. The first arm of the order that the contact ledger allows is
    then shown with probability pmf / (sum of pmf over the allowed arms of its tier):
    see `slot_probabilities`."""
    order: list[int] = []
    step = 0
    for tier in (True, False):
        left = [i for i in range(len(pmf)) if promoted[i] is tier]
        while left:
            total = sum(pmf[i] for i in left)
            if total <= 0:
                order.extend(left)
                break
            u = draw(decision_id, step) * total
            step += 1
            acc = 0.0
            pick = left[-1]
            for i in left:
                acc += pmf[i]
                if u < acc:
                    pick = i
                    break
            order.append(pick)
            left.remove(pick)
    return Ordered(tuple(order), tuple(pmf), tuple(promoted))


def refused_before(reservation: Reservation, chosen: Sequence[tuple[str, bool]]) -> set[str]:
    """The actions the ledger would have refused before this decision recorded anything:
    its refusals, less those a cap counted only because of what this decision chose (a
    kind's impression cap, or the marketing cap, that was not yet reached before).
    `chosen`: (kind, marketing) of each chosen action."""
    out: set[str] = set()
    for refusal in reservation.refused:
        if refusal.policy == KIND_MAX_IMPRESSIONS:
            here = sum(1 for kind, _ in chosen if kind == refusal.kind)
        elif refusal.policy == GLOBAL_MARKETING_PER_DAY:
            here = sum(1 for _, marketing in chosen if marketing)
        else:
            here = 0
        if here and refusal.observed - here < refusal.limit:
            continue
        out.add(refusal.action_id)
    return out


def slot_probabilities(
    ordered: Ordered, arms: Sequence[str], chosen_ids: Sequence[str], refused: set[str]
) -> list[float]:
    """The probability of each chosen action at its slot: for the first, that it is the
    first allowed action of the sampled order; for later ones, given the ones before."""
    allowed = [a not in refused for a in arms]
    index = {a: i for i, a in enumerate(arms)}
    taken: set[int] = set()
    out: list[float] = []
    for action_id in chosen_ids:
        i = index[action_id]
        tier = [
            j
            for j in range(len(arms))
            if ordered.promoted[j] is ordered.promoted[i] and allowed[j] and j not in taken
        ]
        total = sum(ordered.pmf[j] for j in tier)
        out.append(ordered.pmf[i] / total if total > 0 else 1.0)
        taken.add(i)
    return out


__all__ = [
    "LEARNER_FIELDS",
    "ArmSpec",
    "LearningConfig",
    "LearningConfigError",
    "Model",
    "Ordered",
    "Rewards",
    "TrainingExample",
    "context_features",
    "example_lines",
    "load_learning",
    "model_version",
    "refused_before",
    "sample_order",
    "slot_probabilities",
]
