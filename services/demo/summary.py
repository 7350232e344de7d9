"""Plug-in sections of the demo's closing summary, one per service.

A section has a title, an optional `before()` called before the first event is sent (to take
a snapshot), and `lines(run)` called at the end. A section whose service is not reachable
raises; the summary then prints `unavailable: <reason>` under its title and carries on.

Adding a section for a service::

    from services.demo.summary import DemoRun, section

    @section("Profiles")
    def profiles(run: DemoRun) -> list[str]:
        ...  # query the profile service about run.customers

and list the module in `SECTION_MODULES` below so the demo imports it. Sections that need a
`before()` implement `SummarySection` and call `register(...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kafka import KafkaConsumer, TopicPartition

from services.common.settings import kafka_settings
from services.demo.journeys import Customer

# Modules that register sections when imported (services add theirs here).
SECTION_MODULES: tuple[str, ...] = ("services.profile.demo_section",)


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


class SectionUnavailable(Exception):
    """Raised by a section whose service cannot answer; the message is shown as is."""


def _reason(exc: BaseException) -> str:
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


_REGISTRY: list[SummarySection] = []


def register(section: SummarySection) -> SummarySection:
    _REGISTRY.append(section)
    return section


def section(
    title: str,
) -> Callable[[Callable[[DemoRun], list[str]]], Callable[[DemoRun], list[str]]]:
    """Decorator: registers a function of the run as a section called `title`."""

    def decorate(render: Callable[[DemoRun], list[str]]) -> Callable[[DemoRun], list[str]]:
        register(FunctionSection(title, render))
        return render

    return decorate


@dataclass(frozen=True)
class _Unavailable:
    title: str
    reason: str

    def before(self) -> None:
        pass

    def lines(self, run: DemoRun) -> list[str]:
        raise SectionUnavailable(self.reason)


def registered() -> list[SummarySection]:
    """Every registered section, after importing `SECTION_MODULES`; a module that fails to
    import is shown as an unavailable section."""
    broken: list[SummarySection] = []
    for module in SECTION_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:
            broken.append(_Unavailable(module, f"cannot import {module}: {_reason(exc)}"))
    return [*_REGISTRY, *broken]


class Summary:
    """Runs the sections' `before` and renders them, never raising on a section's failure."""

    def __init__(self, sections: Sequence[SummarySection] | None = None) -> None:
        self.sections = list(registered() if sections is None else sections)
        self._failed: dict[int, str] = {}

    def before(self) -> None:
        for i, s in enumerate(self.sections):
            try:
                s.before()
            except Exception as exc:
                self._failed[i] = _reason(exc)

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
                    body = [f"unavailable: {_reason(exc)}"]
            out.extend(f"  {line}" for line in body)
        return out


# --- Kafka: records on the touchpoint topic, before and after -------------------------------


class KafkaTouchpoints:
    """Number of records on the touchpoint topic (sum of end offsets), before and after."""

    title = "Kafka"

    def __init__(self, bootstrap: str | None = None, topic: str | None = None) -> None:
        settings = kafka_settings()
        self.bootstrap = bootstrap or settings.kafka_bootstrap_servers
        self.topic = topic or settings.touchpoints_topic
        self.start: int | None = None
        self.start_error = ""

    def count(self) -> int:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=[s.strip() for s in self.bootstrap.split(",") if s.strip()],
                client_id="cx-demo-summary",
                bootstrap_timeout_ms=3000,
                request_timeout_ms=5000,
            )
        except Exception as exc:
            raise RuntimeError(
                f"Kafka at {self.bootstrap} is not reachable ({_reason(exc)})"
            ) from exc
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise SectionUnavailable(f"topic {self.topic} does not exist on {self.bootstrap}")
            offsets = consumer.end_offsets(
                [TopicPartition(self.topic, p) for p in partitions], timeout_ms=5000
            )
            return sum(int(v) for v in offsets.values())
        finally:
            consumer.close()

    def before(self) -> None:
        # A failure here still lets the section show the count after the run.
        try:
            self.start = self.count()
        except Exception as exc:
            self.start_error = _reason(exc)

    def lines(self, run: DemoRun) -> list[str]:
        end = self.count()
        if self.start is None:
            before = f"unknown before ({self.start_error or 'not measured'})"
            return [f"records on {self.topic}: {end:,} now, {before}"]
        added = end - self.start
        note = "" if added == run.accepted else " (other producers wrote too)"
        return [
            f"records on {self.topic}: {self.start:,} before, {end:,} after (+{added:,})",
            f"ingestion accepted {run.accepted:,}{note}",
        ]


register(KafkaTouchpoints())
