"""The demo's closing summary: one section per service, each failing gracefully.

A section has a title, `before()` called before the first event is sent (to take a
snapshot), and `lines(run)` called at the end. Either may raise: the summary then prints
`unavailable: <reason>` under the section's title and carries on. Sections talk to their
service through its public API only; `services/demo/sections.py` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.demo.journeys import Customer
from services.demo.personalisation import DecisionTally


@dataclass(frozen=True)
class DemoRun:
    """What the demo did, for sections to report on."""

    seed: int
    # Every generated customer; anonymous-only visitors (`identifies` false) have a
    # customer id that none of their events carries.
    customers: tuple[Customer, ...]
    # Customer id -> the negative experiences its events show (only customers with some).
    negative: Mapping[str, frozenset[str]]
    sent: int
    accepted: int
    rejected: int
    # When sending started and ended.
    started_at: datetime
    finished_at: datetime
    # What the demo's Decide and ReportOutcome calls got back; None when it asked for no
    # decisions (`--personalise-share 0`).
    personalisation: DecisionTally | None = None
    # Outcome events the personalisation service wrote to the touchpoint topic for the
    # demo (ReportOutcome), on top of the events sent through ingestion.
    outcome_events: int = 0


class SectionUnavailable(Exception):
    """Raised by a section whose service cannot answer; the message is shown as is."""


def reason(exc: BaseException) -> str:
    text, name = str(exc).strip(), type(exc).__name__
    if isinstance(exc, SectionUnavailable) or text.startswith(name):
        return text or name
    return f"{name}: {text}" if text else name


class SummarySection(Protocol):
    @property
    def title(self) -> str: ...

    def before(self) -> None:
        """Called before any event is sent. May raise: the section is then unavailable."""

    def lines(self, run: DemoRun) -> list[str]:
        """The section's lines. May raise: the section is then shown as unavailable."""


@dataclass(frozen=True)
class FunctionSection:
    """A section made of one function of the run (no `before`)."""

    title: str
    render: Callable[[DemoRun], list[str]]

    def before(self) -> None:
        pass

    def lines(self, run: DemoRun) -> list[str]:
        return self.render(run)


@dataclass(frozen=True)
class UnavailableSection:
    """Stands for a section that could not be built; shows why."""

    title: str
    reason: str

    def before(self) -> None:
        pass

    def lines(self, run: DemoRun) -> list[str]:
        raise SectionUnavailable(self.reason)


class Summary:
    """Runs the sections' `before` and renders them, never raising on a section's failure."""

    def __init__(self, sections: Sequence[SummarySection]) -> None:
        self.sections = list(sections)
        self._failed: dict[int, str] = {}

    def before(self) -> None:
        for i, s in enumerate(self.sections):
            try:
                s.before()
            except Exception as exc:
                self._failed[i] = reason(exc)

    def render(self, run: DemoRun) -> list[str]:
        out: list[str] = []
        for i, s in enumerate(self.sections):
            out.append(s.title)
            if i in self._failed:
                body = [f"unavailable: {self._failed[i]}"]
            else:
                try:
                    body = s.lines(run)
                except Exception as exc:
                    body = [f"unavailable: {reason(exc)}"]
            out.extend(f"  {line}" for line in body)
        return out
