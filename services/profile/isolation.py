"""Moved to `tests/support/isolation.py` (production does not use it); kept here only
for tests/integration/fsync_cost.py until it imports it from there."""

from tests.support.isolation import IsolatedPipeline as IsolatedPipeline
