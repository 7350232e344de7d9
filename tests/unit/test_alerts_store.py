"""The incident store's contract (tests/support/alerts.py) on the in-memory store, which
runs the same plans as the Redis store (tests/integration/test_alerts_store.py)."""

from __future__ import annotations

import pytest

from services.alerts.adapters.incidents import MemoryIncidentStore
from tests.support.alerts import SequentialIds, StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryIncidentStore:
        return MemoryIncidentStore(SequentialIds(), SequentialIds("sil"))
