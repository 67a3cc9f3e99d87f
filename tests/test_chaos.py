"""A bounded chaos run inside the suite (``make chaos`` runs longer ones)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import run_chaos

SECONDS = float(os.environ.get("LIFECYCLE_CHAOS_SECONDS", "40"))


@pytest.mark.timeout(SECONDS + 240)
async def test_chaos_run_finds_no_violation(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    report = await run_chaos(SECONDS, seed, tmp_path)
    print(f"seed {seed}\n{report.summary()}")
    assert report.violations == [], f"seed {seed}\n{report.summary()}"
    # The run did what it says: faults happened and every kind of ending was seen.
    assert report.kills + report.pauses + report.valkey_restarts >= 3
    assert report.sessions > 500
    assert {"inactivity", "max_lifetime", "requested"} <= set(report.terminations)
    assert {"pause:requested", "pause:inactivity", "resume"} <= set(report.transitions)
