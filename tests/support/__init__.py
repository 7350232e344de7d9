"""Plain modules (no pytest fixtures) that tests and benchmarks share."""
