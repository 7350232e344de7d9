"""`make demo`'s generator end to end: through ingestion into the stack's profile service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_sends_journeys_and_summarises_profiles(ingest_address: str) -> None:
    # No --seed: every run makes new customers, so a second run is not all duplicates.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.demo.journeys",
            "--customers",
            "40",
            "--target",
            ingest_address,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "customers   40" in out
    assert "0 rejected" in out
    assert "Profiles" in out
    assert "unavailable" not in out, out
    assert "example profiles:" in out
