"""The embedded Valkey's disk fills up: the daemon is not ready, answers 503 with the
reason, loses nothing it acknowledged, and recovers by itself when space returns.

The fault is real: ``data_dir`` is a tmpfs of a few MiB mounted by the test (as root), and
a filler file takes its last byte, so the server's append-only file write fails with
``ENOSPC``; deleting the filler gives the space back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon.embedded import EmbeddedValkey
from tests.faults import http_json, not_ready
from tests.servers import Daemon, eventually

FS_BYTES = 8 * 1024 * 1024
COMMANDS = "lifecycle:{0}:commands"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``FS_BYTES`` mounted on a fresh directory, unmounted afterwards."""
    mount = tmp_path / "data"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        pytest.fail(f"mounting a tmpfs needs root: {result.stderr.strip()}", pytrace=False)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the filesystem has no byte left; returns the size."""
    written = 0
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk if len(chunk) > 1 else b"\0")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]


def _create(api: str, n: int) -> tuple[int, Any]:
    return http_json("POST", f"{api}/v1/sessions", {"account_id": f"acct{n}",
                                                "inactivity_timeout_seconds": 600})  # fmt: skip


async def test_disk_full_is_not_ready_refuses_writes_loses_nothing_and_recovers(
    small_fs: Path, tmp_path: Path
) -> None:
    env = {"LIFECYCLE_DATA_DIR": str(small_fs), "LIFECYCLE_LEASE_TTL_MS": "1500"}
    d = Daemon(env, tmp_path / "daemon.log")
    try:
        d.start()
        acked: list[str] = []
        for n in range(5):
            status, body = await asyncio.to_thread(_create, d.api, n)
            assert status == 201
            acked.append(body["session_id"])
        # Due while the disk is full: its termination waits, with its own deadline.
        status, due = await asyncio.to_thread(
            http_json, "POST", f"{d.api}/v1/sessions",
            {"account_id": "acct-due", "inactivity_timeout_seconds": 1},
        )  # fmt: skip
        assert status == 201
        server = aioredis.Redis.from_url(EmbeddedValkey(small_fs).url)
        [created] = await server.hmget(f"lifecycle:{{0}}:s:{due['session_id']}", "c")
        assert created is not None
        due_ms = int(created) + 1000

        filler = small_fs / "filler"
        started = time.monotonic()
        fill(filler)
        # The write that meets the full disk may still be answered (it is in memory and
        # in the server's AOF buffer, written once space returns); the next are refused.
        for n in range(5, 100):
            status, body = await asyncio.to_thread(_create, d.api, n)
            if status == 201:
                acked.append(body["session_id"])
                continue
            assert status == 503
            assert body == {"error": "unavailable", "message": "Redis refuses writes: it "
                            "cannot persist them to disk (MISCONF); retry shortly."}  # fmt: skip
            break
        else:
            pytest.fail("writes were still accepted on a full disk")
        refused_after = time.monotonic() - started
        ready = await eventually(lambda: asyncio.to_thread(not_ready, d), what="not ready")
        assert "cannot persist them to disk" in ready["reason"], ready
        # Reads are still answered.
        status, body = await asyncio.to_thread(http_json, "GET", f"{d.api}/v1/sessions/{acked[0]}")
        assert status == 200

        async def past_due() -> bool:
            sec, usec = await server.time()  # reads are served on a full disk
            return int(sec) * 1000 + int(usec) // 1000 > due_ms + 300

        await eventually(past_due, what="the deadline passed")
        assert await server.xlen(COMMANDS) == 0  # nothing terminated while writes fail

        filler.unlink()
        freed = time.monotonic()
        await eventually(lambda: asyncio.to_thread(d.ready), timeout=15, what="ready again")
        recovered_after = time.monotonic() - freed
        status, body = await asyncio.to_thread(_create, d.api, 100)
        assert status == 201
        acked.append(body["session_id"])
        [(_, command)] = await eventually(lambda: server.xrange(COMMANDS), what="the terminate")
        assert command[b"session_id"].decode() == due["session_id"]
        assert command[b"reason"] == b"inactivity" and int(command[b"deadline"]) == due_ms
        await server.aclose()
        # Everything acknowledged survives a restart from the append-only file.
        assert d.stop() == 0
        d.start()
        for sid in acked:
            status, body = await asyncio.to_thread(http_json, "GET", f"{d.api}/v1/sessions/{sid}")
            assert status == 200 and body["status"] == "ready", (sid, body)
        status, body = await asyncio.to_thread(
            http_json, "GET", f"{d.api}/v1/sessions/{due['session_id']}"
        )
        assert body["status"] == "terminated" and body["termination_reason"] == "inactivity"
        assert "Traceback" not in d.log()
        print(
            f"disk full: refused {refused_after:.2f} s after filling, "
            f"ready {recovered_after:.2f} s after freeing; {len(acked)} sessions kept"
        )
    finally:
        d.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(small_fs / "filler")
