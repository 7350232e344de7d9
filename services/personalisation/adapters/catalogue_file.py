"""The catalogue file, reloaded when it changes (hot reload without restart).

A file that does not load at start stops the process with the loader's message (the
action and the field named). A bad edit later is refused the same way: the service keeps
serving the version it had, logs the message, counts it and reports the catalogue
NOT_SERVING in health until a good version loads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter

from services.common.conditions import RuleConfigError
from services.personalisation.domain.catalogue import Catalogue, load_catalogue

log = logging.getLogger(__name__)

RELOADS = Counter(
    "cx_personalisation_catalogue_reloads",
    "Catalogue file reloads, by result (loaded, refused)",
    ["result"],
)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class CatalogueFile:
    def __init__(self, path: Path, load: Callable[[Path], Catalogue] = load_catalogue) -> None:
        self.path = path
        self._load = load
        self._stamp = _stamp(path)
        self.current: Catalogue = load(path)
        self.loaded_at_ms = int(time.time() * 1000)
        # The message of the last refused version; None while the file on disk is live.
        self.error: str | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Loads the file again if it changed; True when a new version went live."""
        with self._lock:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                catalogue = self._load(self.path)
            except RuleConfigError as exc:
                self.error = str(exc)
                RELOADS.labels("refused").inc()
                log.error("catalogue not reloaded, still serving %s: %s", self.current.version, exc)
                return False
            self.error = None
            if catalogue.version == self.current.version:
                return False
            previous, self.current = self.current.version, catalogue
            self.loaded_at_ms = int(time.time() * 1000)
            RELOADS.labels("loaded").inc()
            log.info("catalogue %s live (was %s)", catalogue.version, previous)
            return True

    def healthy(self) -> bool:
        return self.error is None
