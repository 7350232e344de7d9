"""The rules and owners files, reloaded when they change (hot reload without restart).

A file that does not load at start stops the process with the loader's message (the rule
or team and the key named). A bad edit later is refused the same way: the process keeps
the version it had, logs the message and counts it (`cx_alerts_config_reloads`) until a
good version loads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import Counter

from services.alerts.domain.owners import Owners, load_owners
from services.alerts.domain.rules import RuleSet, load_rules
from services.common.conditions import RuleConfigError

log = logging.getLogger(__name__)

RELOADS = Counter(
    "cx_alerts_config_reloads",
    "Rules and owners file reloads, by what and result (loaded, refused)",
    ["what", "result"],
)
T = TypeVar("T")


@dataclass(frozen=True)
class DetectionConfig:
    """The rules with the owners they route to (loaded, and checked, together)."""

    rules: RuleSet
    owners: Owners

    @property
    def version(self) -> str:
        return f"{self.rules.version}+{self.owners.version}"


def load_detection_config(rules_path: Path, owners_path: Path) -> DetectionConfig:
    """Both files; a rule's `team` must be a team of the owners file. A team that routes
    a rule the rules file lacks is only logged (a smaller rules file, as in tests, may
    go with the shipped owners)."""
    owners = load_owners(owners_path)
    rules = load_rules(rules_path, teams=owners.team_names())
    names = set(rules.names())
    for team in owners.teams:
        for rule in sorted(team.rules - names):
            log.warning(
                "%s: team %r routes rule %r, which %s lacks",
                owners_path,
                team.name,
                rule,
                rules_path,
            )
    return DetectionConfig(rules, owners)


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class WatchedConfig(Generic[T]):
    """A value loaded from files, loaded again when any of them changes."""

    def __init__(
        self, what: str, paths: Sequence[Path], load: Callable[[], T], version: Callable[[T], str]
    ) -> None:
        self.what = what
        self.paths = tuple(paths)
        self._load = load
        self._version = version
        self._stamp = _stamp(self.paths)
        self.current: T = load()
        self.loaded_at_ms = int(time.time() * 1000)
        # The message of the last refused version; None while the files on disk are live.
        self.error: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> T:
        return self.current

    def refresh(self) -> bool:
        """Loads the files again if they changed; True when a new version went live."""
        with self._lock:
            stamp = _stamp(self.paths)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                loaded = self._load()
            except RuleConfigError as exc:
                self.error = str(exc)
                RELOADS.labels(self.what, "refused").inc()
                log.error(
                    "%s not reloaded, still using %s: %s",
                    self.what,
                    self._version(self.current),
                    exc,
                )
                return False
            self.error = None
            if self._version(loaded) == self._version(self.current):
                return False
            previous, self.current = self._version(self.current), loaded
            self.loaded_at_ms = int(time.time() * 1000)
            RELOADS.labels(self.what, "loaded").inc()
            log.info("%s %s live (was %s)", self.what, self._version(loaded), previous)
            return True

    def healthy(self) -> bool:
        return self.error is None


def watched_detection_config(rules_path: Path, owners_path: Path) -> WatchedConfig[DetectionConfig]:
    return WatchedConfig(
        "detection rules",
        [rules_path, owners_path],
        lambda: load_detection_config(rules_path, owners_path),
        lambda config: config.version,
    )


def watched_owners(owners_path: Path) -> WatchedConfig[Owners]:
    """The owners file alone (the notifier's teams and receivers)."""
    return WatchedConfig(
        "owners", [owners_path], lambda: load_owners(owners_path), lambda o: o.version
    )
