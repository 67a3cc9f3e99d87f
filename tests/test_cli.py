"""The ``lifecycled`` API commands as people and scripts run them, against a real daemon."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.client import LifecycleClient, SessionNotFound
from tests.servers import Daemon, eventually, free_port

Start = Callable[..., Daemon]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def failed_cleanly(self, code: int, message: str) -> bool:
        """Exit ``code``, one stderr line carrying ``message``, no traceback."""
        lines = self.err.splitlines()
        return (
            self.code == code
            and len(lines) == 1
            and lines[0].startswith("lifecycled: ")
            and message in lines[0]
            and "Traceback" not in self.err + self.out
        )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(extra or {})}


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(env),
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_help_lists_every_command_and_the_exit_codes() -> None:
    result = await cli("--help")
    assert result.code == 0
    for command in (
        "run",
        "create",
        "status",
        "keepalive",
        "activity",
        "pause",
        "resume",
        "extend",
        "terminate",
        "sessions",
        "account",
        "webhooks",
        "dead-letters",
        "check-config",
    ):
        assert re.search(rf"^\s+{command}\s", result.out, re.M), command
    assert re.search(r"^\s+6\s+server unreachable", result.out, re.M)


async def test_round_trip_tables_json_and_errors(daemons: Start) -> None:
    d = daemons()
    api = ["--api", d.api]
    created = await cli(
        "create", "--account", "acme", "--inactivity-timeout", "120", "--json", *api
    )
    assert created.code == 0, created.err
    sid = created.json()["session_id"]
    assert created.json()["inactivity_timeout_seconds"] == 120

    # Independent reads run side by side: each command is a fresh Python process.
    shown, alive, listed, as_json, account = await asyncio.gather(
        cli("status", sid, env={"LIFECYCLE_API_URL": d.api}),
        cli("keepalive", sid, "--json", *api),
        cli("sessions", "acme", *api),
        cli("sessions", "acme", "--json", *api),
        cli("account", "acme", *api),
    )
    # The API URL from the environment; a table for people with relative times.
    assert shown.code == 0, shown.err
    assert re.search(rf"^session\s+{sid}$", shown.out, re.M)
    assert re.search(r"^status\s+ready$", shown.out, re.M)
    assert re.search(r"^terminates\s+in (2m|1m 5\ds) \(inactivity\)$", shown.out, re.M), shown.out
    assert re.search(r"^created\s+\S+ \S+ UTC \((now|\ds ago)\)$", shown.out, re.M), shown.out
    assert re.search(r"^expires\s+.*\(in (1h|59m 5\ds)\)$", shown.out, re.M), shown.out

    assert alive.code == 0 and alive.json()["last_activity_at"] >= created.json()["created_at"]

    assert listed.code == 0 and listed.out.splitlines()[0].split() == [
        "SESSION",
        "STATUS",
        "PLAN",
        "CREATED",
        "TERMINATES",
    ]
    assert re.search(rf"^{sid}\s+(ready|running)\s+free\s+", listed.out, re.M), listed.out
    assert [s["session_id"] for s in as_json.json()["sessions"]] == [sid]

    assert re.search(r"^live sessions\s+1 of 2$", account.out, re.M), account.out
    acted = await cli("activity", sid, "--source", "ide", "--json", *api)
    assert acted.code == 0 and acted.json()["status"] == "running", acted.err
    extended = await cli("extend", sid, "--timeout", "1800", "--no-auto-kill", "--json", *api)
    assert extended.code == 0, extended.err
    assert extended.json()["max_lifetime_seconds"] == 1800
    assert extended.json()["auto_kill"] is False
    over_plan = await cli("extend", sid, "--timeout", "7200", *api)
    assert over_plan.failed_cleanly(2, "over the maximum of plan free"), over_plan
    upgraded = await cli("account", "acme", "--plan", "pro", "--json", *api)
    assert upgraded.code == 0 and upgraded.json()["max_concurrent"] == 10

    ended = await cli("terminate", sid, *api)
    assert ended.code == 0 and re.search(r"^status\s+terminated \(requested\)$", ended.out, re.M)
    # A terminated session shows when and why it ended, not deadlines that no longer apply.
    assert re.search(r"^ended\s+\S+ \S+ UTC \((now|\ds ago)\)$", ended.out, re.M), ended.out
    assert re.search(r"^reason\s+requested$", ended.out, re.M)
    assert "expires" not in ended.out and "(in " not in ended.out
    again, missing, too_long, *small = await asyncio.gather(
        cli("keepalive", sid, *api),
        cli("status", "nope", *api),
        cli("create", "--account", "acme", "--timeout", "999999", *api),
        cli("create", "--account", "small", *api),
        cli("create", "--account", "small", *api),
    )
    assert again.failed_cleanly(1, f"Session {sid} is terminated."), again
    assert missing.failed_cleanly(3, "No session nope."), missing
    assert too_long.failed_cleanly(2, "timeout_seconds"), too_long
    assert [r.code for r in small] == [0, 0]
    limited = await cli("create", "--account", "small", *api)
    assert limited.failed_cleanly(4, "limit of concurrent sessions"), limited
    held = await cli("account", "acme", "--billing-status", "card_expired", *api)
    assert held.code == 0 and re.search(r"^billing status\s+card_expired$", held.out, re.M)
    unpaid = await cli("create", "--account", "acme", *api)
    assert unpaid.failed_cleanly(4, "card_expired"), unpaid


async def test_usage_errors_and_an_unreachable_api() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    unreachable, no_id, not_int, not_url = await asyncio.gather(
        cli("status", "s1", "--api", dead),
        cli("status"),
        cli("create", "--account", "acme", "--timeout", "ten"),
        cli("terminate", "s1", "--api", "localhost:8080"),
    )
    assert unreachable.failed_cleanly(6, f"cannot reach {dead}"), unreachable
    assert no_id.code == 2 and "usage:" in no_id.err and "Traceback" not in no_id.err
    assert not_int.code == 2 and "--timeout" in not_int.err and "Traceback" not in not_int.err
    assert not_url.failed_cleanly(2, "http:// or https://"), not_url


async def test_api_keys_from_the_environment_never_echoed(daemons: Start) -> None:
    root, acme = "root-secret-key", "acme-secret-key"
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in (root, acme)]
    d = daemons(api_keys=f"{digests[0]}:admin,{digests[1]}:account:acme")
    env = {"LIFECYCLE_API_URL": d.api}
    created = await cli(
        "create", "--account", "acme", "--json", env={**env, "LIFECYCLE_API_KEY": root}
    )
    assert created.code == 0, created.err
    sid = created.json()["session_id"]
    anonymous, wrong, forbidden, own = await asyncio.gather(
        cli("status", sid, env=env),
        cli("status", sid, "--api-key", "not-" + root, env=env),
        cli("account", "acme", "--plan", "pro", "--api-key", acme, env=env),
        cli("status", sid, "--api-key", acme, env=env),
    )
    assert anonymous.code == 5 and anonymous.failed_cleanly(5, ""), anonymous
    assert wrong.failed_cleanly(5, ""), wrong
    assert forbidden.failed_cleanly(5, ""), forbidden
    assert own.code == 0 and sid in own.out
    for result in (created, anonymous, wrong, forbidden, own):
        assert root not in result.out + result.err and acme not in result.out + result.err


async def _lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
    assert proc.stdout is not None
    return [(await proc.stdout.readline()).decode() for _ in range(count)]


async def test_keepalive_every_holds_a_session_until_stopped(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with LifecycleClient(d.api) as client:
        session = await client.create("acme", inactivity_timeout_seconds=2)
        sid = session.session_id
        args = [sys.executable, "-m", "daemon", "keepalive", sid, "--every", "0.25", "--api", d.api]
        pipes: dict[str, Any] = {
            "stdout": asyncio.subprocess.PIPE,
            "stderr": asyncio.subprocess.PIPE,
        }
        as_json = await asyncio.create_subprocess_exec(*args, "--json", **pipes)
        first = json.loads((await _lines(as_json, 1))[0])
        assert first["session_id"] == sid
        as_json.send_signal(signal.SIGINT)
        assert await as_json.wait() == 0

        keeper = await asyncio.create_subprocess_exec(*args, **pipes)
        # Hold it for two inactivity timeouts (4 s of keepalives every 0.25 s).
        lines = await _lines(keeper, 16)
        assert all(line.startswith(f"{sid} kept alive; terminates in ") for line in lines), lines
        assert (await client.status(sid)).status != "terminated"
        keeper.send_signal(signal.SIGTERM)
        assert await keeper.wait() == 0
        assert keeper.stderr is not None and await keeper.stderr.read() == b""
        # Without the keepalives the inactivity timeout takes it.
        ended = await eventually(lambda: _terminated(client, sid), what="inactivity")
        assert ended.termination_reason == "inactivity"


async def _terminated(client: LifecycleClient, sid: str) -> Any:
    status = await client.status(sid)
    return status if status.terminated else None


def test_a_closed_stdout_ends_the_command_quietly() -> None:
    """``lifecycled … | head -1``: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    read, write = os.pipe()
    os.close(read)  # every write to the pipe fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "daemon", "check-config"],
            stdout=write, stderr=subprocess.PIPE, env=env, timeout=30, check=False,
        )  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == b"", proc.stderr


def test_the_sdk_prints_nothing_and_logs_through_the_logging_module() -> None:
    import subprocess

    program = (
        "import logging, sys\n"
        "from daemon import client\n"
        "client.log.warning('keepalive_stopped', session_id='s1')\n"
        "logging.basicConfig(stream=sys.stderr, format='%(name)s %(levelname)s %(message)s')\n"
        "client.log.warning('keepalive_stopped', session_id='s2')\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    assert proc.stdout == ""
    assert "lifecycled.client WARNING keepalive_stopped" in proc.stderr


async def test_dead_letters_list_replay_and_drop(redis: Any, daemons: Start) -> None:
    root = "dead-letter-admin-key"
    d = daemons(api_keys=hashlib.sha256(root.encode()).hexdigest() + ":admin")
    env = {"LIFECYCLE_API_URL": d.api, "LIFECYCLE_API_KEY": root}
    dead = "lifecycle:{0}:dead"
    fields = {"type": "created", "session_id": "ses_cli_dl", "account_id": "acme"}
    first = (await redis.xadd(dead, {**fields, "error": "unknown plan 'team'"})).decode()
    second = (await redis.xadd(dead, {"type": "bogus", "error": "unknown type"})).decode()

    listed, paged, as_json, anonymous = await asyncio.gather(
        cli("dead-letters", "list", env=env),
        cli("dead-letters", "list", "--limit", "1", env=env),
        cli("dead-letters", "list", "--json", env=env),
        cli("dead-letters", "list", env={"LIFECYCLE_API_URL": d.api}),
    )
    assert listed.code == 0, listed.err
    assert listed.out.splitlines() == [
        f"0:{first}  unknown plan 'team'  type=created session_id=ses_cli_dl account_id=acme",
        f"0:{second}  unknown type  type=bogus",
    ]
    assert paged.out.splitlines() == listed.out.splitlines()[:1]
    assert paged.err.strip() == f"more: lifecycled dead-letters list --after 0:{first}"
    assert [e["id"] for e in as_json.json()["dead_letters"]] == [first, second]
    assert anonymous.failed_cleanly(5, "API key"), anonymous

    replayed = await cli("dead-letters", "replay", f"0:{first}", env=env)
    assert replayed.code == 0 and replayed.out.startswith(f"replayed 0:{first} as events entry ")
    again = await cli("dead-letters", "replay", f"0:{first}", env=env)
    assert again.failed_cleanly(3, f"No dead letter {first} in partition 0."), again
    async with LifecycleClient(d.api, root) as client:
        created = await eventually(
            lambda: _exists(client, "ses_cli_dl"), what="the replayed session"
        )
        assert created.account_id == "acme"
    dropped = await cli("dead-letters", "drop", second, "--json", env=env)
    assert dropped.code == 0 and dropped.json() == {"partition": 0, "id": second, "dropped": True}
    empty, bad = await asyncio.gather(
        cli("dead-letters", "list", env=env),
        cli("dead-letters", "drop", "0:nope", env=env),
    )
    assert empty.out == "no dead letters\n" and await redis.xlen(dead) == 0
    assert bad.failed_cleanly(2, "entry_id must be a stream entry id"), bad


async def _exists(client: LifecycleClient, session_id: str) -> Any:
    try:
        return await client.status(session_id)
    except SessionNotFound:
        return None


async def test_two_replicas_replaying_one_dead_letter_replay_it_once(
    redis: Any, daemons: Start
) -> None:
    a, b = daemons(), daemons()
    fields = {"type": "created", "session_id": "ses_once", "account_id": "acme", "error": "x"}
    entry = (await redis.xadd("lifecycle:{0}:dead", fields)).decode()
    results = await asyncio.gather(*(
        cli("dead-letters", "replay", f"0:{entry}", "--api", d.api) for d in (a, b, a, b)
    ))  # fmt: skip
    assert sorted(r.code for r in results) == [0, 3, 3, 3], results
    async with LifecycleClient(a.api) as client:
        status = await eventually(lambda: _exists(client, "ses_once"), what="the session")
    assert status.account_id == "acme" and await redis.xlen("lifecycle:{0}:dead") == 0
    # Replayed twice, the second create would be reported as rejected (409).
    await eventually(lambda: _applied(redis), what="the events applied")
    commands = await redis.xrange("lifecycle:{0}:commands")
    assert [c for _, c in commands if c.get(b"type") == b"rejected"] == []


async def _applied(redis: Any) -> bool:
    [group] = await redis.xinfo_groups("lifecycle:{0}:events")
    return bool(group["pending"] == 0 and group["lag"] == 0)
