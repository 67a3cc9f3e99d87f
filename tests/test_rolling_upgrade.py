"""Rolling upgrade (SPEC §11): 0.2.0 daemons and the current ones on one Redis at once.

The 0.2.0 daemon is the project's own history: commit ``OLD_COMMIT``'s ``daemon/`` tree,
extracted from the local repository with ``git archive`` (no network) and run by this
interpreter with ``PYTHONPATH`` and its working directory set to that tree (0.2.0 has the
same dependencies). The chaos run's load generator and checker (tests/chaos.py) drive
it: two 0.2 replicas alone, then two current replicas join, then the 0.2 ones stop (one
by SIGTERM, one by ``kill -9``) while sessions keep expiring; every session must end with
exactly one terminate command, never early, and what 0.2 wrote must read back the same
through the current API.

Every change of the Redis layout must keep this test green.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chaos import ACCOUNTS, Chaos, _wait_ready
from tests.servers import Daemon

OLD_COMMIT = "1def7591c8170d1e7316259ec65f6d716738d2cf"  # lifecycled 0.2.0
REPO = Path(__file__).resolve().parents[1]
SECONDS = 12.0


def old_tree(dest: Path) -> Path:
    """0.2.0's source tree, extracted from this repository; fails in one line without it."""
    shallow = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"],
        capture_output=True,
        text=True,
        check=False,
    )
    if shallow.returncode != 0:
        pytest.fail(f"the rolling-upgrade test needs the git history: {REPO} is not a checkout")
    has_commit = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if has_commit.returncode != 0 and shallow.stdout.strip() == "true":
        # A shallow clone of a reachable origin can fetch the history it needs.
        subprocess.run(["git", "-C", str(REPO), "fetch", "--quiet", "--unshallow"],
                       capture_output=True, check=False, timeout=120)  # fmt: skip
        has_commit = subprocess.run(
            ["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
            capture_output=True,
            check=False,
        )
    if has_commit.returncode != 0:
        why = "a shallow clone" if shallow.stdout.strip() == "true" else "a clone without it"
        pytest.fail(
            f"the rolling-upgrade test needs commit {OLD_COMMIT[:7]} (0.2.0), "
            f"missing in {why}: run `git fetch --unshallow`"
        )
    dest.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(REPO), "archive", OLD_COMMIT, "daemon", "config"],
        stdout=subprocess.PIPE,
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    assert archive.wait() == 0, "git archive failed"
    # The old replicas run this tree, not the installed one.
    where = subprocess.run(
        [sys.executable, "-c", "import daemon.store; print(daemon.store.__file__)"],
        env={**os.environ, "PYTHONPATH": str(dest)},
        cwd=dest,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(dest), where.stdout
    return dest


class RollingUpgrade(Chaos):
    """No random faults: 0.2 alone, then 0.2 and current together, then current alone."""

    initial_replicas = 2
    pauses = False  # pausing waits until every replica runs 0.3 (docs/operations.md)
    metered = ()  # top-ups wait until every replica runs 0.3

    def __init__(self, workdir: Path, seconds: float, seed: int, old: Path) -> None:
        super().__init__(workdir, seconds, seed)
        self.old = old
        self.upgrading = False
        self.old_replicas: list[Daemon] = []
        self.new_replicas: list[Daemon] = []
        self.old_exit_code: int | None = None
        # Sessions 0.2 created through its API, as it answered.
        self.written_by_old: dict[str, dict[str, Any]] = {}
        self.read_by_new: dict[str, dict[str, Any]] = {}

    def new_replica(self, index: int) -> Daemon:
        daemon = super().new_replica(index)
        if self.upgrading:
            self.new_replicas.append(daemon)
        else:
            # 0.2 reads its own shipped plans: it refuses the keys 0.3 added to them.
            plans = str(self.old / "config" / "plans.toml")
            daemon.env = {**daemon.env, "PYTHONPATH": str(self.old), "LIFECYCLE_PLANS_FILE": plans}
            daemon.cwd = self.old
            self.old_replicas.append(daemon)
        return daemon

    async def controller(self) -> None:
        third = self.seconds / 3
        await asyncio.sleep(third / 2)
        await self.create_on_old()
        await asyncio.sleep(third / 2)
        self.upgrading = True
        for _ in range(2):
            self.start_replica(len(self.replicas))
        for daemon in self.new_replicas:
            await asyncio.to_thread(_wait_ready, daemon)
        await asyncio.sleep(third)
        first, second = self.old_replicas
        self.replicas.remove(first)
        self.old_exit_code = await asyncio.to_thread(first.stop, signal.SIGTERM)
        await asyncio.sleep(third / 4)
        self.replicas.remove(second)
        await asyncio.to_thread(second.stop, signal.SIGKILL)
        await self.read_on_new()

    async def create_on_old(self) -> None:
        """Sessions made by 0.2's API that outlive 0.2 (they end during the drain)."""
        async with aiohttp.ClientSession() as http:
            for n in range(10):
                sid = f"old-{n}"
                account = self.rng.choice(ACCOUNTS)
                body = {"session_id": sid, "account_id": account,
                        "timeout_seconds": int(self.seconds) + n % 3,
                        "inactivity_timeout_seconds": int(self.seconds) + 2}  # fmt: skip
                async with http.post(self.old_replicas[0].api + "/v1/sessions", json=body) as r:
                    assert r.status == 201, await r.text()
                    self.written_by_old[sid] = await r.json()
                self.accounts[sid] = account

    async def read_on_new(self) -> None:
        async with aiohttp.ClientSession() as http:
            for sid in self.written_by_old:
                async with http.get(self.new_replicas[0].api + f"/v1/sessions/{sid}") as r:
                    assert r.status == 200, await r.text()
                    self.read_by_new[sid] = await r.json()


@pytest.mark.timeout(120)
async def test_rolling_upgrade_from_0_2_loses_doubles_and_hastens_nothing(tmp_path: Path) -> None:
    old = old_tree(tmp_path / "lifecycled-0.2.0")
    seed = 20260
    run = RollingUpgrade(tmp_path / "run", SECONDS, seed, old)
    try:
        report = await run.run()
    finally:
        for daemon in run.old_replicas + run.new_replicas:
            daemon.stop(signal.SIGKILL)
        run.valkey.stop(signal.SIGKILL)
    summary = report.summary()
    print(summary)
    assert report.violations == [], summary
    assert run.old_exit_code == 0, "the 0.2 replica did not stop cleanly on SIGTERM"
    # Both versions did the work: each replica held partitions (and applied their events).
    for daemon in run.old_replicas + run.new_replicas:
        assert "partition_lease_taken" in daemon.log(), daemon.log_path
    assert report.sessions > 100, summary
    assert {"inactivity", "max_lifetime", "requested"} <= set(report.terminations), summary
    # What 0.2 wrote reads back the same through the current API.
    for sid, written in run.written_by_old.items():
        read = run.read_by_new[sid]
        for name in ("account_id", "plan", "created_at", "expires_at", "max_lifetime_seconds"):
            assert read[name] == written[name], (sid, name, written, read)
