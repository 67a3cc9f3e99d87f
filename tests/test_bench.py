"""The benchmark runs end to end: ``python -m bench.run --quick`` prints its whole table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_quick_benchmark_prints_every_figure(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    for header in ("date:", "command:  python -m bench.run --quick", "machine:", "load avg:"):
        assert header in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    figures = {row.split("|")[1].strip() for row in rows[1:]}
    for figure in (
        "events applied/s, 1 daemon",
        "events applied/s, 2 daemons",
        "HTTP creates/s",
        "HTTP keepalives/s",
        "Redis memory per live session at 10,000",
        "daemon RSS",
        "expiry lateness, 10,000 live",
        "console page latency, 10,000 live",
        "peer: key TTL + notifications, 10,000 live",
        "webhook delivery latency",
    ):
        assert figure in figures, figures
    lateness = next(r for r in rows if r.startswith("| expiry lateness"))
    assert "p99" in lateness and "never" not in lateness
    webhooks = next(r for r in rows if r.startswith("| webhook delivery latency"))
    assert "p99" in webhooks and "never" not in webhooks
