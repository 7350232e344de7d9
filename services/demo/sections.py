"""The sections of `make demo`'s summary, in the order they are printed.

Each entry builds one section from settings (the addresses of its service); a section
reads its service through the service's public API only. A new service adds its section
module under `services/demo/` and its factory here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.demo.alerts_section import AlertsSection
from services.demo.kafka_section import KafkaTouchpoints
from services.demo.personalisation_section import PersonalisationSection
from services.demo.profile_section import ProfileSection
from services.demo.summary import SummarySection, UnavailableSection, reason

SectionFactory = Callable[[], SummarySection]

SECTIONS: tuple[tuple[str, SectionFactory], ...] = (
    ("Kafka", KafkaTouchpoints),
    ("Profiles", ProfileSection.from_settings),
    ("Personalisation", PersonalisationSection.from_settings),
    ("Alerts", AlertsSection.from_settings),
)


def build_sections(
    factories: Sequence[tuple[str, SectionFactory]] = SECTIONS,
) -> list[SummarySection]:
    """One section per (title, factory); a factory that fails becomes a section that shows
    why, under its title."""
    out: list[SummarySection] = []
    for title, factory in factories:
        try:
            out.append(factory())
        except Exception as exc:
            out.append(UnavailableSection(title, f"cannot be built: {reason(exc)}"))
    return out
