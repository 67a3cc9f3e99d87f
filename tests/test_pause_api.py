"""Pause and resume (SPEC §8) through ``lifecycled run``: real HTTP, real Valkey."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.client import LifecycleClient, RateLimited, SessionStatus, SessionTerminated
from daemon.publisher import EventPublisher
from tests.servers import Daemon, eventually
from tests.test_cli import cli
from tests.test_daemon import commands

Start = Callable[..., Daemon]


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any, Any]:
    kwargs = {} if body is None else {"json": body}
    async with http.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json(), resp.headers


async def of_type(redis: Any, kind: str) -> list[dict[str, str]]:
    return [c for c in await commands(redis) if c["type"] == kind]


async def server_ms(redis: Any) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


def plans(tmp_path: Path, max_paused_seconds: int) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(
        "[plans.free]\nmax_concurrent = 2\nmax_duration_seconds = 3600\n"
        f"max_paused_seconds = {max_paused_seconds}\n"
    )
    return path


async def test_pause_and_resume_over_http(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        body = {"account_id": "acme", "session_id": "s1", "timeout_seconds": 600}
        status, created, _ = await call(http, "POST", "/v1/sessions", body)
        assert status == 201 and created["on_inactivity"] == "terminate"
        assert created["paused_at"] is None and created["activity_count"] == 0
        status, touched, _ = await call(
            http, "POST", "/v1/sessions/s1/keepalive", {"source": "ide"}
        )
        assert status == 200 and touched["last_activity_source"] == "ide"
        assert touched["activity_count"] == 1 and touched["status"] == "ready"

        status, paused, _ = await call(http, "POST", "/v1/sessions/s1/pause")
        assert status == 200 and paused["status"] == "paused"
        assert paused["expires_at"] is None and paused["idle_expires_at"] is None
        assert paused["paused_at"] is not None and paused["pause_expires_at"] is not None
        status, again, _ = await call(http, "POST", "/v1/sessions/s1/pause")
        assert status == 200 and again["paused_at"] == paused["paused_at"]
        # A keepalive or an activity does not resume it.
        status, still, _ = await call(http, "POST", "/v1/sessions/s1/activity")
        assert status == 200 and still["status"] == "paused"
        assert still["last_activity_at"] == paused["last_activity_at"]
        # A PATCH applies to the limits; the lifetime shows on resume.
        patch = {"timeout_seconds": 1200, "inactivity_timeout_seconds": 90}
        status, patched, _ = await call(http, "PATCH", "/v1/sessions/s1", patch)
        assert status == 200 and patched["status"] == "paused"
        assert patched["max_lifetime_seconds"] == 1200 and patched["expires_at"] is None

        status, resumed, _ = await call(http, "POST", "/v1/sessions/s1/resume")
        assert status == 200 and resumed["status"] == "running"
        assert resumed["paused_at"] is None and resumed["pause_expires_at"] is None
        assert resumed["last_activity_at"] > paused["last_activity_at"]  # now, at the resume
        assert resumed["max_lifetime_seconds"] == 1200
        assert resumed["inactivity_timeout_seconds"] == 90
        assert resumed["paused_seconds_total"] > 0
        assert resumed["remaining_seconds"] == pytest.approx(90, abs=0.1)
        status, noop, _ = await call(http, "POST", "/v1/sessions/s1/resume")
        assert status == 200 and noop["status"] == "running"

        status, _, _ = await call(http, "DELETE", "/v1/sessions/s1")
        assert status == 200
        for action in ("pause", "resume"):
            status, error, _ = await call(http, "POST", f"/v1/sessions/s1/{action}")
            assert status == 409 and error["error"] == "session_terminated", error
        status, error, _ = await call(http, "POST", "/v1/sessions/nope/pause")
        assert status == 404 and error["error"] == "session_not_found"
        status, timeline, _ = await call(http, "GET", "/v1/sessions/s1/events")
        kinds = [e["type"] for e in timeline["events"]]
        assert kinds == ["created", "keepalive", "paused", "extended", "resumed", "terminated"]
    assert [c["type"] for c in await commands(redis)] == ["pause", "resume", "terminate"]
    [end] = await of_type(redis, "terminate")
    assert 0 <= int(end["running_ms"]) < int(end["duration_ms"])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{d.metrics_port}/metrics") as resp:
            metrics = await resp.text()
    assert 'lifecycle_pauses_total{reason="requested"} 1.0' in metrics
    assert "lifecycle_resumes_total 1.0" in metrics


async def test_a_bad_source_is_422_naming_it(daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        await call(http, "POST", "/v1/sessions", {"account_id": "acme", "session_id": "s1"})
        for route in ("keepalive", "activity"):
            for source in ("Bad Source", "", "x" * 65, 7):
                status, error, _ = await call(
                    http, "POST", f"/v1/sessions/s1/{route}", {"source": source}
                )
                assert status == 422, error
                assert error["error"] == "invalid_request" and "source" in error["message"]
        status, view, _ = await call(http, "GET", "/v1/sessions/s1")
        assert view["activity_count"] == 0 and view["last_activity_source"] is None
        body = {"account_id": "acme", "on_inactivity": "sleep"}
        status, error, _ = await call(http, "POST", "/v1/sessions", body)
        assert status == 422 and "on_inactivity" in error["message"], error
        for value in (None, "Pause", 1):
            patch = {"on_inactivity": value}
            status, error, _ = await call(http, "PATCH", "/v1/sessions/s1", patch)
            assert status == 422 and "on_inactivity" in error["message"], error
        status, view, _ = await call(http, "GET", "/v1/sessions/s1")
        assert view["on_inactivity"] == "terminate"


async def test_resume_is_refused_402_then_429_with_retry_after(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        await call(http, "POST", "/v1/sessions", {"account_id": "acme", "session_id": "p"})
        await call(http, "POST", "/v1/sessions/p/pause")
        for sid, idle in (("a", 600), ("b", 40)):
            body = {"account_id": "acme", "session_id": sid, "inactivity_timeout_seconds": idle}
            status, _, _ = await call(http, "POST", "/v1/sessions", body)
            assert status == 201  # the paused session does not count
        status, error, headers = await call(http, "POST", "/v1/sessions/p/resume")
        assert status == 429 and error["error"] == "concurrent_session_limit"
        assert 39 <= int(headers["Retry-After"]) <= 40
        body = {"billing_status": "payment_failed"}
        status, _, _ = await call(http, "PUT", "/v1/accounts/acme", body)
        assert status == 200
        status, error, _ = await call(http, "POST", "/v1/sessions/p/resume")
        assert status == 402 and error["error"] == "payment_required"
        status, view, _ = await call(http, "GET", "/v1/sessions/p")
        assert view["status"] == "paused"
    assert await of_type(redis, "resume") == []


async def test_fifty_racing_resumes_admit_exactly_one(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        for i in range(50):
            body = {"account_id": "racer", "session_id": f"p{i}"}
            assert (await call(http, "POST", "/v1/sessions", body))[0] == 201
            assert (await call(http, "POST", f"/v1/sessions/p{i}/pause"))[0] == 200
        body = {"account_id": "racer", "session_id": "running"}
        assert (await call(http, "POST", "/v1/sessions", body))[0] == 201
        results = await asyncio.gather(
            *(call(http, "POST", f"/v1/sessions/p{i}/resume") for i in range(50))
        )
        assert Counter(status for status, _, _ in results) == {200: 1, 429: 49}
        for status, _, headers in results:
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
        status, account, _ = await call(http, "GET", "/v1/accounts/racer")
        assert account["live_sessions"] == 2
    assert len(await of_type(redis, "resume")) == 1


async def test_the_lifetime_counts_running_time_only(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        body = {"account_id": "acme", "session_id": "s1", "timeout_seconds": 2}
        assert (await call(http, "POST", "/v1/sessions", body))[0] == 201
        assert (await call(http, "POST", "/v1/sessions/s1/pause"))[1]["status"] == "paused"
        start = await server_ms(redis)

        async def three_seconds_on() -> bool:
            return await server_ms(redis) >= start + 3000

        await eventually(three_seconds_on, timeout=10, what="3 s past the pause")
        _, view, _ = await call(http, "GET", "/v1/sessions/s1")
        assert view["status"] == "paused"  # 2 s of lifetime, but paused: still alive
        _, resumed, _ = await call(http, "POST", "/v1/sessions/s1/resume")
        assert resumed["status"] == "running"
        assert resumed["running_seconds_total"] < 1

        async def ended() -> Any:
            view = (await call(http, "GET", "/v1/sessions/s1"))[1]
            return view if view["status"] == "terminated" else None

        final = await eventually(ended, timeout=10, what="the end of the lifetime")
    assert final["termination_reason"] == "max_lifetime"
    assert final["running_seconds_total"] == 2.0
    assert final["paused_seconds_total"] >= 3
    [end] = await of_type(redis, "terminate")
    assert int(end["running_ms"]) == 2000
    assert int(end["duration_ms"]) >= 5000
    assert final["terminated_at"] == resumed["expires_at"]


async def test_inactivity_pauses_then_the_pause_times_out(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = daemons(plans_file=plans(tmp_path, 1))
    async with aiohttp.ClientSession(d.api) as http:
        body = {"account_id": "acme", "session_id": "s1", "inactivity_timeout_seconds": 1,
                "on_inactivity": "pause"}  # fmt: skip
        status, created, _ = await call(http, "POST", "/v1/sessions", body)
        assert status == 201 and created["on_inactivity"] == "pause"

        async def in_status(wanted: str) -> Any:
            view = (await call(http, "GET", "/v1/sessions/s1"))[1]
            return view if view["status"] == wanted else None

        paused = await eventually(lambda: in_status("paused"), timeout=10, what="the pause")
        assert paused["paused_at"] == created["idle_expires_at"]
        final = await eventually(lambda: in_status("terminated"), timeout=10, what="the end")
    assert final["termination_reason"] == "paused_timeout"
    assert final["terminated_at"] == paused["pause_expires_at"]
    pause, end = await commands(redis)
    assert pause["type"] == "pause" and pause["reason"] == "inactivity"
    assert end["reason"] == "paused_timeout" and int(end["running_ms"]) == 1000
    status, error, _ = await call_once(d, "POST", "/v1/sessions/s1/resume")
    assert status == 409 and error["error"] == "session_terminated"


async def call_once(d: Daemon, method: str, path: str) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession(d.api) as http:
        return await call(http, method, path)


async def test_sdk_and_cli_pause_and_resume(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with LifecycleClient(d.api) as client:
        async with client.session(
            "acme", session_id="s1", timeout_seconds=600, on_inactivity="pause"
        ) as session:
            assert session.created.on_inactivity == "pause"
            await session.keepalive(source="ide")
            paused = await session.pause()
            assert paused.paused and paused.expires_at is None
            assert paused.pause_expires_at is not None and paused.paused_at is not None
            assert paused.last_activity_source == "ide" and paused.activity_count == 1
            assert paused.on_inactivity == "pause"
            resumed = await session.resume()
            assert resumed.status == "running" and resumed.expires_at is not None
        updated = await client.create("acme", session_id="s2", on_inactivity="pause")
        assert updated.on_inactivity == "pause"
        await client.create("acme", session_id="s3")
        await client.pause("s2")
        await client.create("acme", session_id="s4")
        with pytest.raises(RateLimited) as refused:
            await client.resume("s2")
        assert refused.value.code == "concurrent_session_limit"
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        with pytest.raises(SessionTerminated):
            await client.pause("s1")
    assert [c["type"] for c in await commands(redis)][:3] == ["pause", "resume", "terminate"]

    api = ["--api", d.api]
    shown = await cli("status", "s2", *api)
    assert shown.code == 0, shown.err
    assert re.search(r"^status\s+paused$", shown.out, re.M), shown.out
    assert re.search(r"^paused\s+\S+ \S+ UTC \((now|\ds ago)\)$", shown.out, re.M), shown.out
    assert re.search(r"^pause ends\s+.*\(in (1d|23h 59m)\)$", shown.out, re.M), shown.out
    assert re.search(r"^terminates\s+in (1d|23h 59m) \(pause limit\)$", shown.out, re.M)
    assert re.search(r"^on inactivity\s+pause$", shown.out, re.M), shown.out
    assert re.search(r"^activity\s+0 \(last from -\)$", shown.out, re.M), shown.out
    await cli("terminate", "s4", *api)
    resumed_cli = await cli("resume", "s2", "--json", *api)
    assert resumed_cli.code == 0 and resumed_cli.json()["status"] == "running", resumed_cli.err
    kept = await cli("keepalive", "s2", "--source", "cron", *api)
    assert kept.code == 0, kept.err
    assert re.search(r"^terminates\s+in (5m|4m 5\ds) \(pause on inactivity\)$", kept.out, re.M)
    paused_cli = await cli("pause", "s2", *api)
    assert paused_cli.code == 0 and re.search(r"^status\s+paused$", paused_cli.out, re.M)
    assert re.search(r"^activity\s+1 \(last from cron\)$", paused_cli.out, re.M)
    assert re.search(r"^running time\s+(0s|\ds)$", paused_cli.out, re.M), paused_cli.out
    gone = await cli("resume", "s1", *api)
    assert gone.failed_cleanly(1, "terminated"), gone
    bad = await cli("keepalive", "s2", "--source", "No Way", *api)
    assert bad.failed_cleanly(2, "source"), bad


async def test_stream_pause_and_resume_through_the_publisher(redis: Any, daemons: Start) -> None:
    d = daemons()
    publisher = EventPublisher(redis)
    await publisher.created("s1", "acme", on_inactivity="pause")
    await publisher.created("s2", "acme")
    await publisher.keepalive("s1", "acme", source="ide")
    await publisher.pause("s1", "acme")
    async with LifecycleClient(d.api) as client:
        paused = await eventually(lambda: _in_status(client, "s1", "paused"), what="the pause")
        assert paused.on_inactivity == "pause" and paused.last_activity_source == "ide"
        await client.create("acme", session_id="s3")  # the paused session freed its slot
        await publisher.resume("s1", "acme")

        async def rejected() -> list[dict[str, str]]:
            return await of_type(redis, "rejected")

        [refused] = await eventually(rejected, what="the refused resume")
        assert refused["session_id"] == "s1" and refused["code"] == "429"
        await client.terminate("s3")
        await publisher.resume("s1", "acme")
        await eventually(lambda: _in_status(client, "s1", "running"), what="the resume")
    assert [c["type"] for c in await commands(redis) if c["session_id"] == "s1"] == [
        "pause",
        "rejected",
        "resume",
    ]


async def _in_status(client: LifecycleClient, sid: str, status: str) -> SessionStatus | None:
    found = await client.status(sid)
    return found if found.status == status else None
