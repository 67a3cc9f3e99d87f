"""Operating ``lifecycled run``: metrics, probes, Redis outages, signals, systemd.

Everything runs for real: ``lifecycled run`` subprocesses, a valkey-server stopped and
restarted, systemd's notification protocol on a real datagram socket, ``promtool``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from daemon.app import make_metrics_app
from daemon.health import Health
from daemon.metrics import Metrics
from daemon.notify import Notifier
from tests.servers import Daemon, ValkeyProcess, eventually, free_port, wait_for
from tests.tools import find_promtool

Start = Callable[..., Daemon]
EVENTS = "lifecycle:{0}:events"
COMMANDS = "lifecycle:{0}:commands"
DEADLINES = "lifecycle:{0}:deadlines"


# --------------------------------------------------------------------------- helpers


def scrape(d: Daemon) -> str:
    url = f"http://127.0.0.1:{d.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text: str = resp.read().decode()
        return text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def probe(d: Daemon, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:  # not listening yet
        return 0, {}


def log_events(d: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]


def named(d: Daemon, event: str) -> list[dict[str, Any]]:
    return [e for e in log_events(d) if e["event"] == event]


async def terminations(redis: Any) -> list[dict[str, str]]:
    out = []
    for _, fields in await redis.xrange(COMMANDS):
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        if entry["type"] == "terminate":
            out.append(entry)
    return out


def ms(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


async def create(d: Daemon, **body: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(d.api) as http,
        http.post("/v1/sessions", json=body) as resp,
    ):
        return resp.status, await resp.json()


async def seed_enterprise(redis: Any, account: str) -> None:
    await redis.xadd(EVENTS, {"type": "billing", "account_id": account, "billing_status": "ok",
                              "plan": "enterprise"})  # fmt: skip


@pytest.fixture
def own_daemons(valkey: ValkeyProcess, redis: Any, tmp_path: Path) -> Iterator[Start]:
    """``lifecycled run`` with exactly the environment given (``daemons`` adds settings)."""
    started: list[Daemon] = []

    def start(env: dict[str, str], wait_ready: bool = True) -> Daemon:
        d = Daemon(env, tmp_path / f"own-{len(started)}.log")
        started.append(d)
        return d.start(wait_ready=wait_ready)

    yield start
    for d in started:
        d.stop()


class DatagramListener:
    """A bound AF_UNIX datagram socket, as systemd's ``NOTIFY_SOCKET``, read by a thread."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def with_line(self, line: str) -> list[str]:
        return [m for m in list(self.messages) if line in m.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# --------------------------------------------------------------------------- metrics


async def test_metric_values_after_a_known_sequence(redis: Any, daemons: Start) -> None:
    d = daemons()
    # Two sessions from the stream time out for inactivity; one from the API stays.
    for sid in ("idle1", "idle2"):
        await redis.xadd(EVENTS, {"type": "created", "session_id": sid, "account_id": f"a-{sid}",
                                  "inactivity_timeout_seconds": "1"})  # fmt: skip
    await redis.xadd(EVENTS, {"type": "activity", "session_id": "nobody", "account_id": "x"})
    await redis.xadd(EVENTS, {"type": "teleport", "session_id": "s", "account_id": "x"})
    status, _ = await create(d, account_id="keeper", session_id="stays")
    assert status == 201
    await eventually(
        lambda: _count(terminations(redis), 2), timeout=10, what="two inactivity terminations"
    )

    def settled() -> str | None:
        text = scrape(d)
        return text if value(text, "lifecycle_sessions_live") == 1 else None

    text = wait_for(settled, what="lifecycle_sessions_live to read 1")
    assert value(text, "lifecycle_terminations_total", reason="inactivity") == 2
    assert value(text, "lifecycle_terminations_total", reason="max_lifetime") == 0
    assert value(text, "lifecycle_expiry_lateness_seconds_count") == 2
    lateness = value(text, "lifecycle_expiry_lateness_seconds_sum")
    assert 0 <= lateness < 1, "sub-second lateness"
    # The histogram resolves sub-second lateness: both fall in a bucket of 0.5 s or less.
    assert value(text, "lifecycle_expiry_lateness_seconds_bucket", le="0.5") == 2
    assert value(text, "lifecycle_events_total", type="created") == 2
    assert value(text, "lifecycle_events_total", type="activity") == 1
    assert value(text, "lifecycle_events_ignored_total", reason="unknown_session") == 1
    assert value(text, "lifecycle_events_invalid_total") == 1
    assert value(text, "lifecycle_admissions_total", result="admitted") == 3
    assert value(text, "lifecycle_event_lag_seconds_count") == 4
    assert value(text, "lifecycle_redis_up") == 1
    assert value(text, "lifecycle_ready") == 1
    assert value(text, "lifecycle_partitions_consumed") == 1
    assert value(text, "lifecycle_events_backlog", partition="0") == 0
    builds = [s for s in samples(text) if s[0] == "lifecycle_build_info"]
    assert len(builds) == 1 and samples(text)[builds[0]] == 1
    assert dict(builds[0][1])["version"]

    # Shared state is read from Redis: a replica that saw none of it reports the same.
    other = daemons()
    assert value(scrape(other), "lifecycle_sessions_live") == 1
    assert value(scrape(other), "lifecycle_terminations_total", reason="inactivity") == 0


async def _count(coro: Any, n: int) -> Any:
    found = await coro
    return found if len(found) >= n else None


@pytest.fixture(scope="module")
def promtool() -> str:
    path = find_promtool()
    if path is None:
        pytest.skip("promtool unavailable: not on PATH and Debian's prometheus package unreachable")
    return path


@pytest.mark.timeout(900)  # fetching promtool the first time may take minutes
async def test_live_exposition_passes_promtool(
    redis: Any, daemons: Start, promtool: str, tmp_path: Path
) -> None:
    d = daemons()
    status, _ = await create(d, account_id="acme", inactivity_timeout_seconds=1)
    assert status == 201
    await eventually(lambda: _count(terminations(redis), 1), what="a termination")
    text = scrape(d)
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["lifecycle_terminations"] == "counter"
    assert types["lifecycle_expiry_lateness_seconds"] == "histogram"
    assert types["lifecycle_event_lag_seconds"] == "histogram"
    assert types["lifecycle_sessions_live"] == "gauge"


# --------------------------------------------------------------------------- probes


async def test_healthz_fails_while_the_event_loop_is_blocked(tmp_path: Path) -> None:
    health = Health(Metrics(), lag_limit=0.3, lag_window=1.0)
    health.start_loop_monitor(asyncio.get_running_loop())
    runner = web.AppRunner(make_metrics_app(health.metrics, health))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def get() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        assert (await asyncio.to_thread(get))[0] == 200
        # The request arrives while the loop is blocked; it is answered once it is free.
        request = asyncio.ensure_future(asyncio.to_thread(get))
        await asyncio.sleep(0)
        time.sleep(0.8)  # noqa: ASYNC251 - blocks the event loop, as runaway code would
        code, body = await request
        assert code == 503, body
        assert body["status"] == "unhealthy" and "event loop" in body["reason"]
        assert body["loop_lag_seconds"] >= 0.3
        # Healthy again once the loop has kept up for the window.
        await eventually(lambda: _is(asyncio.to_thread(get), 200), timeout=5, what="healthy")
    finally:
        health.stop_loop_monitor()
        await runner.cleanup()


async def _is(coro: Any, code: int) -> bool:
    return bool((await coro)[0] == code)


# --------------------------------------------------------------------------- Redis outages


async def test_redis_outage_then_restart_with_its_append_only_file(
    daemons: Start, tmp_path: Path
) -> None:
    import redis.asyncio as aioredis

    server = ValkeyProcess(_mkdir(tmp_path / "valkey")).start()
    client = aioredis.Redis.from_url(server.url)
    try:
        d = daemons(redis_url=server.url)
        created = []
        for i in range(3):
            status, body = await create(d, account_id=f"acct{i}", session_id=f"s{i}",
                                        inactivity_timeout_seconds=2)  # fmt: skip
            assert status == 201
            created.append(body)
        deadlines = {b["session_id"]: ms(b["idle_expires_at"]) for b in created}

        server.stop()  # SIGTERM: the append-only file is complete
        await client.aclose()
        await eventually(lambda: _unready_for(d, "redis unreachable"), timeout=20,
                         what="readyz 503 during the outage, naming Redis")  # fmt: skip
        assert value(scrape(d), "lifecycle_redis_up") == 0
        assert value(scrape(d), "lifecycle_ready") == 0
        assert probe(d, "/healthz")[0] == 200, "the daemon stays up and live"
        # The deadlines pass while Redis is down.
        await eventually(lambda: _after(max(deadlines.values()) + 1500), timeout=15,
                         what="deadlines well past")  # fmt: skip
        assert probe(d, "/readyz")[0] == 503

        server.start()  # same port, same directory: the append-only file is loaded
        client = aioredis.Redis.from_url(server.url)
        cmds = await eventually(lambda: _count(terminations(client), 3), timeout=20,
                                what="overdue terminations")  # fmt: skip
        await eventually(lambda: _probe_is(d, "/readyz", 200), what="ready again")
        assert Counter(c["session_id"] for c in cmds) == dict.fromkeys(deadlines, 1)
        for cmd in cmds:
            assert cmd["reason"] == "inactivity"
            assert int(cmd["deadline"]) == deadlines[cmd["session_id"]], "original deadline"
            assert int(cmd["emitted_at"]) > int(cmd["deadline"]) + 1000
        assert value(scrape(d), "lifecycle_redis_up") == 1
        assert d.proc is not None and d.proc.poll() is None
        # Logged once per state change, however many times it retried meanwhile.
        assert len(named(d, "redis_connection_lost")) == 1
        assert len(named(d, "redis_connection_restored")) == 1
        # Nothing more is emitted later: exactly once.
        await eventually(lambda: _probe_is(d, "/readyz", 200))
        assert len(await terminations(client)) == 3
    finally:
        await client.aclose()
        server.stop()


async def test_starts_without_redis_and_becomes_ready_when_it_answers(
    daemons: Start, tmp_path: Path
) -> None:
    server = ValkeyProcess(_mkdir(tmp_path / "valkey"))  # not started yet
    d = daemons(redis_url=server.url, wait_ready=False)
    await eventually(lambda: _unready_for(d, "redis unreachable"), timeout=20, what="not ready")
    await eventually(lambda: _logged(d, "redis_connection_failed"), what="failure logged")
    server.start()
    try:
        await eventually(lambda: _probe_is(d, "/readyz", 200), timeout=20, what="ready")
        assert len(named(d, "redis_connected")) == 1
        assert len(named(d, "redis_connection_failed")) == 1
    finally:
        server.stop()


async def _probe_is(d: Daemon, path: str, code: int) -> tuple[int, dict[str, Any]] | None:
    got = await asyncio.to_thread(probe, d, path)
    return got if got[0] == code else None


async def _unready_for(d: Daemon, reason: str) -> bool:
    code, body = await asyncio.to_thread(probe, d, "/readyz")
    return code == 503 and reason in body["reason"]


async def _after(epoch_ms: int) -> bool:
    return time.time() * 1000 >= epoch_ms


async def _logged(d: Daemon, event: str) -> bool:
    return bool(named(d, event))


# --------------------------------------------------------------------------- signals


async def test_sigterm_drains_the_batch_in_flight_and_loses_nothing(
    redis: Any, daemons: Start
) -> None:
    d = daemons(read_batch=100, shutdown_timeout_seconds=5)
    await seed_enterprise(redis, "big")
    total = 20_000
    pipe = redis.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(EVENTS, {"type": "created", "session_id": f"s{i}", "account_id": "big"})
    ids = [eid.decode() for eid in (await pipe.execute())]
    await eventually(lambda: _at_least(redis.zcard(DEADLINES), 1), what="consumption started")
    started = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 5, "exits within shutdown_timeout_seconds"

    # Every acknowledged entry is applied; every delivered but unacknowledged one is not.
    pending = {
        p["message_id"].decode()
        for p in await redis.xpending_range(EVENTS, "lifecycled", "-", "+", total)
    }
    [group] = await redis.xinfo_groups(EVENTS)
    last = _id(group["last-delivered-id"].decode())
    live = {m.decode() for m in await redis.zrange(DEADLINES, 0, -1)}
    for i, eid in enumerate(ids):
        applied = f"s{i}" in live
        acknowledged = _id(eid) <= last and eid not in pending
        assert applied == acknowledged, (eid, applied, acknowledged)

    # The next daemon takes over and applies the rest: nothing is lost.
    daemons()
    await eventually(
        lambda: _at_least(redis.zcard(DEADLINES), total), timeout=30, what="all applied"
    )


def _id(entry_id: str) -> tuple[int, int]:
    ms_part, seq = entry_id.split("-")
    return int(ms_part), int(seq)


async def _at_least(coro: Any, n: int) -> bool:
    return bool(await coro >= n)


def _config(path: Path, plans: Path, log_level: str) -> None:
    path.write_text(f'plans_file = "{plans}"\nlog_level = "{log_level}"\n')


def _plans(path: Path, free_concurrent: int) -> None:
    path.write_text(
        f"[plans.free]\nmax_concurrent = {free_concurrent}\nmax_duration_seconds = 3600\n"
        "[plans.enterprise]\nmax_duration_seconds = 86400\n"
    )


async def test_sighup_reloads_plans_and_log_level_and_keeps_them_on_error(
    valkey: ValkeyProcess, own_daemons: Start, tmp_path: Path
) -> None:
    plans, config = tmp_path / "plans.toml", tmp_path / "lifecycled.toml"
    _plans(plans, free_concurrent=1)
    _config(config, plans, log_level="info")
    d = own_daemons({"LIFECYCLE_REDIS_URL": valkey.url, "LIFECYCLE_CONFIG_FILE": str(config)})
    assert (await create(d, account_id="acme"))[0] == 201
    assert (await create(d, account_id="acme"))[0] == 429

    assert not [e for e in log_events(d) if e["level"] == "debug"], "log_level info"
    _plans(plans, free_concurrent=3)
    _config(config, plans, log_level="debug")
    d.send(signal.SIGHUP)
    [reloaded] = await eventually(lambda: _found(d, "reloaded"), what="reload logged")
    assert reloaded["log_level"] == "debug"
    assert (await create(d, account_id="acme"))[0] == 201
    # Debug lines appear from now on: the expiry of a short session is one.
    status, _ = await create(d, account_id="acme", inactivity_timeout_seconds=1)
    assert status == 201
    await eventually(lambda: _logged(d, "sessions_expired"), what="a debug line")

    plans.write_text("[plans.free]\nmax_concurrent = 'many'\n")
    d.send(signal.SIGHUP)
    [failed] = await eventually(lambda: _found(d, "reload_failed"), what="failure logged")
    assert "plans" in failed["error"]
    # The old plans stay: three live sessions allowed, not one and not unlimited.
    assert (await create(d, account_id="acme"))[0] == 201
    assert (await create(d, account_id="acme"))[0] == 429
    assert d.proc is not None and d.proc.poll() is None


async def _found(d: Daemon, event: str) -> list[dict[str, Any]] | None:
    return named(d, event) or None


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _valkey_pid(d: Daemon) -> int:
    [started] = named(d, "embedded_valkey_started")
    return int(started["pid"])


def _alive(pid: int) -> bool:
    try:
        return b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def test_embedded_server_stops_on_sigterm_and_on_a_failed_start(
    own_daemons: Start, tmp_path: Path
) -> None:
    data = tmp_path / "state"
    d = own_daemons({"LIFECYCLE_DATA_DIR": str(data)})
    pid = _valkey_pid(d)
    assert _alive(pid)
    assert d.stop(signal.SIGTERM) == 0
    assert not _alive(pid)

    # The API port is taken: the daemon exits 1 with the reason, and stops its server.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = own_daemons(
            {"LIFECYCLE_DATA_DIR": str(data), "LIFECYCLE_HTTP_PORT": str(port)}, wait_ready=False
        )
        assert d.proc is not None
        assert d.proc.wait(timeout=20) == 1
    [failed] = named(d, "daemon_start_failed")
    assert "address already in use" in failed["error"].lower()
    assert failed["error"].startswith(f"http_port: cannot listen on 127.0.0.1:{port}")
    assert "LIFECYCLE_HTTP_PORT" in failed["error"]
    assert not _alive(_valkey_pid(d))


# --------------------------------------------------------------------------- systemd


async def test_sd_notify_ready_watchdog_status_reloading_stopping(
    valkey: ValkeyProcess, own_daemons: Start, tmp_path: Path
) -> None:
    listener = DatagramListener(str(tmp_path / "notify.sock"))
    try:
        d = own_daemons(
            {"LIFECYCLE_REDIS_URL": valkey.url, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
             "WATCHDOG_USEC": "400000"},
            wait_ready=False,
        )  # fmt: skip
        [ready] = await eventually(lambda: _lines(listener, "READY=1"), timeout=20, what="READY")
        assert probe(d, "/readyz")[0] == 200, "READY=1 only once ready"
        assert any(line.startswith("STATUS=ready: ") for line in ready.split("\n"))
        before_ready = listener.messages[: listener.messages.index(ready)]
        assert any(m.startswith("STATUS=") for m in before_ready), "says what it is doing"
        # WATCHDOG=1 every 0.2 s (half of WATCHDOG_USEC).
        await eventually(lambda: _lines(listener, "WATCHDOG=1", at_least=5), what="watchdog")

        d.send(signal.SIGHUP)
        await eventually(lambda: _lines(listener, "RELOADING=1"), what="RELOADING")
        await eventually(lambda: _lines(listener, "READY=1", at_least=2), what="READY again")
        [reloading] = listener.with_line("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))

        assert d.stop(signal.SIGTERM) == 0
        [stopping] = listener.with_line("STOPPING=1")
        assert any(line.startswith("STATUS=stopping") for line in stopping.split("\n"))
        assert listener.messages.index(stopping) > listener.messages.index(ready)
    finally:
        listener.close()


async def _lines(listener: DatagramListener, line: str, at_least: int = 1) -> list[str] | None:
    found = listener.with_line(line)
    return found if len(found) >= at_least else None


def test_notifier_speaks_to_abstract_sockets_and_respects_watchdog_pid() -> None:
    name = f"lifecycled-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = DatagramListener(b"\0" + name.encode())
    try:
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_interval == 15.0
        notifier.ready("serving")
        notifier.status("serving")  # unchanged: not sent again
        notifier.status("draining")
        notifier.close()
        wait_for(lambda: len(listener.messages) >= 2, what="two datagrams")
        assert listener.messages == ["READY=1\nSTATUS=serving", "STATUS=draining"]
    finally:
        listener.close()
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None, "the watchdog belongs to another process"
    assert not Notifier({}).send("READY=1"), "outside systemd nothing is sent"
