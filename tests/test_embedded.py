"""The embedded default: a private valkey-server that keeps data and leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import aiohttp

from tests.servers import VALKEY_SERVER, Daemon, wait_for


def valkey_pids(data_dir: Path) -> list[int]:
    """valkey-server processes serving ``data_dir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"valkey-server" in cmdline and str(data_dir).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def embedded_daemon(tmp_path: Path, name: str) -> Daemon:
    return Daemon({"LIFECYCLE_DATA_DIR": str(tmp_path / "data")}, tmp_path / f"{name}.log")


async def test_sessions_survive_restart_and_nothing_is_left_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = embedded_daemon(tmp_path, "first").start()
    async with aiohttp.ClientSession(first.api) as http:
        body = {"account_id": "acme", "session_id": "keep", "timeout_seconds": 600}
        async with http.post("/v1/sessions", json=body) as resp:
            assert resp.status == 201
    assert len(valkey_pids(data)) == 1
    assert first.stop(signal.SIGTERM) == 0
    assert valkey_pids(data) == []
    assert (data / "appendonlydir").is_dir()

    second = embedded_daemon(tmp_path, "second").start()
    try:
        async with aiohttp.ClientSession(second.api) as http:
            async with http.get("/v1/sessions/keep") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "ready"
    finally:
        assert second.stop(signal.SIGINT) == 0
    assert valkey_pids(data) == []


async def test_kill_9_leaves_no_orphan_that_blocks_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = embedded_daemon(tmp_path, "first").start()
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait()
    # The kernel tells the server its parent died; it shuts down on its own.
    wait_for(lambda: valkey_pids(data) == [], timeout=10, what="embedded server gone")
    second = embedded_daemon(tmp_path, "second").start()
    try:
        assert len(valkey_pids(data)) == 1
    finally:
        second.stop()
    assert valkey_pids(data) == []


def test_a_leftover_server_is_stopped_before_the_next_start(tmp_path: Path) -> None:
    # A server that outlived its daemon (started here by hand, so no parent-death signal
    # will stop it), holding the data directory's pid file and socket.
    data = tmp_path / "data"
    data.mkdir()
    leftover = subprocess.Popen(
        [VALKEY_SERVER, "--port", "0", "--unixsocket", str(data / "valkey.sock"),
         "--dir", str(data), "--pidfile", str(data / "valkey.pid"), "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: (data / "valkey.pid").exists(), what="leftover pid file")
        daemon = embedded_daemon(tmp_path, "daemon").start()
        try:
            assert leftover.wait(timeout=10) == 0
            assert "embedded_valkey_leftover_stopped" in daemon.log()
            assert len(valkey_pids(data)) == 1
        finally:
            daemon.stop()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_a_second_daemon_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = embedded_daemon(tmp_path, "first").start()
    try:
        second = embedded_daemon(tmp_path, "second")
        second.start(wait_ready=False)
        assert second.proc is not None
        assert second.proc.wait(timeout=20) == 1
        assert "in use by another lifecycled" in second.log()
    finally:
        first.stop()
