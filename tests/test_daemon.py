"""``lifecycled run`` as users run it: real subprocesses, real HTTP, real Valkey."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.servers import Daemon, eventually

Start = Callable[..., Daemon]
EVENTS = "lifecycle:{0}:events"
COMMANDS = "lifecycle:{0}:commands"


async def commands(redis: Any, partitions: int = 1) -> list[dict[str, str]]:
    out = []
    for p in range(partitions):
        for _, fields in await redis.xrange(f"lifecycle:{{{p}}}:commands"):
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


async def terminations(redis: Any, partitions: int = 1) -> list[dict[str, str]]:
    return [c for c in await commands(redis, partitions) if c["type"] == "terminate"]


async def test_http_round_trip(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        async with http.post("/v1/sessions", json={"account_id": "acme"}) as resp:
            assert resp.status == 201
            created = await resp.json()
        sid = created["session_id"]
        assert sid.startswith("ses_") and len(sid) == 24
        assert created["status"] == "ready" and created["termination_reason"] is None
        async with http.get(f"/v1/sessions/{sid}") as resp:
            assert resp.status == 200
            assert (await resp.json())["session_id"] == sid
        async with http.post(f"/v1/sessions/{sid}/keepalive") as resp:
            assert resp.status == 200
            alive = await resp.json()
            assert alive["last_activity_at"] >= created["last_activity_at"]
        async with http.delete(f"/v1/sessions/{sid}") as resp:
            assert resp.status == 200
            gone = await resp.json()
            assert gone["status"] == "terminated"
            assert gone["termination_reason"] == "requested"
            assert gone["terminates_at"] is None and gone["remaining_seconds"] == 0
        async with http.delete(f"/v1/sessions/{sid}") as resp:
            assert resp.status == 200
        async with http.post(f"/v1/sessions/{sid}/keepalive") as resp:
            assert resp.status == 409
            assert (await resp.json())["error"] == "session_terminated"
        async with http.get("/v1/sessions/missing") as resp:
            assert resp.status == 404
            body = await resp.json()
            assert body["error"] == "session_not_found" and body["message"]
        async with http.post("/v1/sessions", json={"account_id": "acme", "session_id": sid}) as r:
            assert r.status == 409
        async with http.post(
            "/v1/sessions", json={"account_id": "acme", "timeout_seconds": "ten"}
        ) as resp:
            assert resp.status == 422
            assert "timeout_seconds" in (await resp.json())["message"]
        for _ in range(2):
            async with http.post("/v1/sessions", json={"account_id": "acme"}) as resp:
                assert resp.status == 201
        async with http.post("/v1/sessions", json={"account_id": "acme"}) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"] == "concurrent_session_limit"
    assert [c["reason"] for c in await terminations(redis)] == ["requested"]


async def test_deadlines_fire_with_the_right_reason_and_on_time(redis: Any, daemons: Start) -> None:
    d = daemons()
    bodies = {
        "idle": {"inactivity_timeout_seconds": 1, "timeout_seconds": 60},
        "life": {"inactivity_timeout_seconds": 60, "timeout_seconds": 1},
        "nokill": {"inactivity_timeout_seconds": 1, "timeout_seconds": 2, "auto_kill": False},
    }
    async with aiohttp.ClientSession(d.api) as http:
        for sid, body in bodies.items():
            account = {"idle": "a1", "life": "a2", "nokill": "a3"}[sid]
            payload = {"session_id": sid, "account_id": account, **body}
            async with http.post("/v1/sessions", json=payload) as resp:
                assert resp.status == 201
        cmds = await eventually(
            lambda: _when(terminations(redis), lambda c: len(c) == 3), timeout=10,
            what="three terminations",
        )  # fmt: skip
        by_id = {c["session_id"]: c for c in cmds}
        assert by_id["idle"]["reason"] == "inactivity"
        assert by_id["life"]["reason"] == "max_lifetime"
        assert by_id["nokill"]["reason"] == "max_lifetime"
        for cmd in cmds:
            lateness = int(cmd["emitted_at"]) - int(cmd["deadline"])
            assert 0 <= lateness < 500, cmd
        async with http.get("/v1/sessions/nokill") as resp:
            status = await resp.json()
            assert status["terminated_at"] == status["expires_at"]
            assert status["termination_reason"] == "max_lifetime"


async def _when(coro: Any, check: Callable[[Any], bool]) -> Any:
    value = await coro
    return value if check(value) else None


async def _seed_enterprise(redis: Any, accounts: list[str], partitions: int = 1) -> None:
    import zlib

    for account in accounts:
        p = zlib.crc32(account.encode()) % partitions
        await redis.xadd(
            f"lifecycle:{{{p}}}:events",
            {"type": "billing", "account_id": account, "billing_status": "ok",
             "plan": "enterprise"},
        )  # fmt: skip


async def test_kill_9_while_deadlines_fall_due_terminates_each_exactly_once(
    redis: Any, daemons: Start
) -> None:
    first = daemons()
    await _seed_enterprise(redis, ["big"])
    pipe = redis.pipeline(transaction=False)
    total = 400
    for i in range(total):
        pipe.xadd(EVENTS, {"type": "created", "session_id": f"s{i}", "account_id": "big",
                           "timeout_seconds": str(1 + i % 3)})  # fmt: skip
    await pipe.execute()
    # Kill the daemon while the deadlines are falling due.
    await eventually(lambda: _when(terminations(redis), lambda c: len(c) >= 50), timeout=15,
                     what="first terminations")  # fmt: skip
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait()
    daemons()
    cmds = await eventually(
        lambda: _when(terminations(redis), lambda c: len(c) >= total), timeout=20,
        what="all terminations after restart",
    )  # fmt: skip
    counts = Counter(c["session_id"] for c in cmds)
    assert len(counts) == total
    assert max(counts.values()) == 1
    assert all(c["reason"] == "max_lifetime" for c in cmds)
    assert all(int(c["emitted_at"]) >= int(c["deadline"]) for c in cmds)


async def test_three_replicas_terminate_thousands_exactly_once(redis: Any, daemons: Start) -> None:
    replicas = [daemons(partitions=4) for _ in range(3)]
    accounts = [f"acct{i}" for i in range(20)]
    await _seed_enterprise(redis, accounts, partitions=4)
    import zlib

    total = 3000
    pipe = redis.pipeline(transaction=False)
    for i in range(total):
        account = accounts[i % len(accounts)]
        p = zlib.crc32(account.encode()) % 4
        fields = {"type": "created", "session_id": f"s{i}", "account_id": account,
                  "inactivity_timeout_seconds": str(1 + i % 2)}  # fmt: skip
        pipe.xadd(f"lifecycle:{{{p}}}:events", fields)
    await pipe.execute()
    cmds = await eventually(
        lambda: _when(terminations(redis, 4), lambda c: len(c) >= total), timeout=30,
        what="all terminations",
    )  # fmt: skip
    counts = Counter(c["session_id"] for c in cmds)
    assert len(counts) == total and max(counts.values()) == 1
    assert {c["reason"] for c in cmds} == {"inactivity"}
    # The partitions were shared out: every replica consumed at least one.
    owners = {(await redis.get(f"lifecycle:{{{p}}}:lease")) for p in range(4)}
    assert len(owners) >= 2, owners
    assert all(d.proc is not None and d.proc.poll() is None for d in replicas)


async def test_events_apply_in_stream_order_across_replicas(redis: Any, daemons: Start) -> None:
    for _ in range(2):
        daemons()
    await _seed_enterprise(redis, ["big"])
    total = 300
    pipe = redis.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(EVENTS, {"type": "created", "session_id": f"s{i}", "account_id": "big"})
        pipe.xadd(EVENTS, {"type": "terminate", "session_id": f"s{i}", "account_id": "big"})
    await pipe.execute()
    cmds = await eventually(
        lambda: _when(terminations(redis), lambda c: len(c) >= total), timeout=20,
        what="every session terminated on request",
    )  # fmt: skip
    assert Counter(c["reason"] for c in cmds) == {"requested": total}
    assert await redis.zcard("lifecycle:{0}:deadlines") == 0


async def test_activity_that_arrived_in_time_counts_under_a_flooded_stream(
    redis: Any, daemons: Start
) -> None:
    d = daemons(lease_ttl_ms=20_000)
    async with aiohttp.ClientSession(d.api) as http:
        body = {"account_id": "acme", "session_id": "busy", "inactivity_timeout_seconds": 3}
        async with http.post("/v1/sessions", json=body) as resp:
            created = await resp.json()
    deadline = _ms(created["idle_expires_at"])
    assert d.proc is not None
    # The consumer stops; 150k events pile up, the session's activity last, before its deadline.
    d.proc.send_signal(signal.SIGSTOP)
    try:
        # Published by the server itself, so that the flood takes milliseconds, not seconds.
        await redis.eval(
            "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'type', "
            "'activity', 'session_id', 'nobody', 'account_id', 'acme') end",
            1, EVENTS, 150_000,
        )  # fmt: skip
        entry = await redis.xadd(EVENTS, {"type": "activity", "session_id": "busy",
                                          "account_id": "acme"})  # fmt: skip
        entry_ms = int(entry.decode().split("-")[0])
        assert entry_ms < deadline, "the flood took too long to publish"
        await eventually(lambda: _past(redis, deadline + 300), timeout=15, what="deadline")
    finally:
        d.proc.send_signal(signal.SIGCONT)
    # The daemon resumes past the deadline with 150k entries to apply before the activity.
    cmds = await eventually(
        lambda: _when(terminations(redis), lambda c: len(c) == 1), timeout=30,
        what="the session's termination",
    )  # fmt: skip
    [cmd] = cmds
    assert cmd["reason"] == "inactivity"
    assert int(cmd["deadline"]) == entry_ms + 3000, "killed at the deadline it had before"


async def _past(redis: Any, ms: int) -> bool:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000 >= ms


def _ms(rfc3339: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


async def test_sigterm_exits_zero_and_hands_the_partition_over(redis: Any, daemons: Start) -> None:
    d = daemons()
    await eventually(lambda: redis.get("lifecycle:{0}:lease"), what="lease taken")
    assert d.stop(signal.SIGTERM, timeout=10) == 0
    assert await redis.get("lifecycle:{0}:lease") is None


async def test_readyz_and_healthz(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{d.metrics_port}") as http:
        async with http.get("/healthz") as resp:
            assert resp.status == 200
        async with http.get("/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"
