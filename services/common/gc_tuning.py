"""Garbage-collector settings and pause metrics for long-running services.

A full (generation 2) collection of a Faust worker's heap took about 80 ms here, and it
stalls every event in flight: the profile worker's latency tail was those pauses. Once a
service has started, its startup objects (modules, app, clients) live as long as the
process, so they are frozen out of the collector's reach, and young collections run
less often. Pauses are measured (`cx_gc_pause_seconds`) and long ones logged.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger("cx.gc")
GC_PAUSES = Histogram(
    "cx_gc_pause_seconds",
    "Garbage-collector pauses by generation",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
# Generation 0 threshold: allocations between young collections (CPython's default 700).
YOUNG_THRESHOLD = 50_000
LOG_PAUSES_FROM_S = 0.02
_started_at = 0.0


def _measure(phase: str, info: dict[str, Any]) -> None:
    global _started_at
    if phase == "start":
        _started_at = time.perf_counter()
        return
    pause = time.perf_counter() - _started_at
    GC_PAUSES.labels(str(info["generation"])).observe(pause)
    if pause >= LOG_PAUSES_FROM_S:
        log.warning("gc generation %s paused %.0f ms", info["generation"], pause * 1000)


def freeze_startup_heap() -> None:
    """Call once the service is up: later collections only scan what came after."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    if _measure not in gc.callbacks:
        gc.callbacks.append(_measure)
