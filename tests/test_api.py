"""The HTTP API (SPEC §4) on a real listener and a real Valkey: routes, codes, error bodies.

Most tests serve ``make_api`` in-process on a loopback port, with a Store on the test
server; the races and deadline-driven behaviour run against ``lifecycled run``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from daemon.api import MAX_BODY_BYTES, make_api
from daemon.engine import Engine
from daemon.health import Health
from daemon.metrics import Metrics
from daemon.settings import Settings
from tests.conftest import Harness
from tests.servers import Daemon, eventually, plans_without_rate_limits

Start = Callable[..., Daemon]
JSON = {"Content-Type": "application/json"}


@dataclass
class Api:
    http: aiohttp.ClientSession
    harness: Harness
    metrics: Metrics

    async def call(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, path, **kwargs) as resp:
            text = await resp.text()
            data = json.loads(text) if text else None
            return resp.status, data, resp.headers

    async def create(self, account: str = "acme", **fields: Any) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/v1/sessions", {"account_id": account, **fields})
        assert status == 201, body
        result: dict[str, Any] = body
        return result


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def api(redis: Any) -> AsyncIterator[MakeApi]:
    """Serve the API in-process on a free loopback port, with these settings.

    Several APIs of one test share the test server, like replicas of one deployment.
    """
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(**settings: Any) -> Api:
        settings.setdefault("plans_file", plans_without_rate_limits())
        h = Harness(redis, Settings(**settings))
        if not servers:
            await h.setup()
        metrics = Metrics()
        engine = Engine(h.store, metrics, Health(metrics))
        server = TestServer(make_api(h.store, engine, metrics), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        http = aiohttp.ClientSession(str(server.make_url("")))
        sessions.append(http)
        return Api(http, h, metrics)

    yield make
    for http in sessions:
        await http.close()
    for server in servers:
        await server.close()


def assert_error(status: int, body: Any, expected_status: int, code: str) -> str:
    assert status == expected_status, body
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    message: str = body["message"]
    return message


# Routing, methods and bodies


async def test_unknown_routes_and_wrong_methods(api: MakeApi) -> None:
    a = await api()
    for path in ("/", "/v1/nothing", "/v1/sessions/x/y/z"):
        status, body, _ = await a.call("GET", path)
        assert_error(status, body, 404, "not_found")
    status, body, headers = await a.call("PUT", "/v1/sessions/x")
    assert_error(status, body, 405, "method_not_allowed")
    assert set(headers["Allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}
    status, body, headers = await a.call("DELETE", "/v1/sessions")
    assert_error(status, body, 405, "method_not_allowed")
    assert set(headers["Allow"].split(", ")) >= {"GET", "POST"}
    status, body, _ = await a.call("DELETE", "/v1/accounts/acme")
    assert_error(status, body, 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/sessions"), ("PATCH", "/v1/sessions/s1"), ("PUT", "/v1/accounts/acme")],
)
async def test_bodies_must_be_json_objects_of_bounded_size(
    api: MakeApi, method: str, path: str
) -> None:
    a = await api()
    await a.create(session_id="s1")
    status, body, _ = await a.call(method, path, data=b'{"account_id": "acme"}')
    assert_error(status, body, 415, "unsupported_media_type")
    status, body, _ = await a.call(
        method, path, data=b"account_id=acme", headers={"Content-Type": "text/plain"}
    )
    assert_error(status, body, 415, "unsupported_media_type")
    for raw in (b"", b"{", b"[1, 2]", b'"acme"', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000):
        status, body, _ = await a.call(method, path, data=raw, headers=JSON)
        assert_error(status, body, 400, "bad_request")
    big = json.dumps({"account_id": "acme", "pad": "x" * MAX_BODY_BYTES}).encode()
    status, body, _ = await a.call(method, path, data=big, headers=JSON)
    assert_error(status, body, 413, "payload_too_large")


# Validation: 422 naming the field

CREATE_PROBLEMS = [
    ({}, "account_id"),
    ({"account_id": ""}, "account_id"),
    ({"account_id": "-acme"}, "account_id"),
    ({"account_id": "ac me"}, "account_id"),
    ({"account_id": "a" * 129}, "account_id"),
    ({"account_id": 7}, "account_id"),
    ({"account_id": "acme", "session_id": "s/1"}, "session_id"),
    ({"account_id": "acme", "session_id": "\ud800"}, "session_id"),
    ({"account_id": "acme", "session_id": None}, "session_id"),
    ({"account_id": "acme", "timeout_seconds": "ten"}, "timeout_seconds"),
    ({"account_id": "acme", "timeout_seconds": 0}, "timeout_seconds"),
    ({"account_id": "acme", "timeout_seconds": 1.5}, "timeout_seconds"),
    ({"account_id": "acme", "timeout_seconds": True}, "timeout_seconds"),
    ({"account_id": "acme", "timeout_seconds": 3601}, "timeout_seconds"),
    ({"account_id": "acme", "timeout_seconds": 10**30}, "timeout_seconds"),
    ({"account_id": "acme", "inactivity_timeout_seconds": 86401}, "inactivity_timeout_seconds"),
    ({"account_id": "acme", "inactivity_timeout_seconds": -1}, "inactivity_timeout_seconds"),
    ({"account_id": "acme", "auto_kill": "yes"}, "auto_kill"),
    ({"account_id": "acme", "auto_kill": 1}, "auto_kill"),
    ({"account_id": "acme", "colour": "red"}, "colour"),
    ({"account_id": "acme", "\ud800": 1}, "\\ud800"),
]


@pytest.mark.parametrize(("body", "field"), CREATE_PROBLEMS)
async def test_create_validation_names_the_field(
    api: MakeApi, body: dict[str, Any], field: str
) -> None:
    a = await api()
    status, reply, _ = await a.call("POST", "/v1/sessions", body)
    assert field in assert_error(status, reply, 422, "invalid_request")
    assert await a.harness.redis.keys("*:s:*") == []


async def test_create_accepts_integral_floats_and_applies_defaults(api: MakeApi) -> None:
    a = await api()
    created = await a.create(timeout_seconds=600.0)
    assert created["max_lifetime_seconds"] == 600
    assert created["inactivity_timeout_seconds"] == 300 and created["auto_kill"] is True


PATCH_PROBLEMS = [
    ({"timeout_seconds": "ten"}, "timeout_seconds"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"inactivity_timeout_seconds": 86401}, "inactivity_timeout_seconds"),
    ({"auto_kill": None}, "auto_kill"),
    ({"status": "running"}, "status"),
    ({"last_activity_at": "2030-01-01T00:00:00.000Z"}, "last_activity_at"),
]


@pytest.mark.parametrize(("body", "field"), PATCH_PROBLEMS)
async def test_patch_validation_names_the_field(
    api: MakeApi, body: dict[str, Any], field: str
) -> None:
    a = await api()
    before = await a.create(session_id="s1")
    status, reply, _ = await a.call("PATCH", "/v1/sessions/s1", body)
    assert field in assert_error(status, reply, 422, "invalid_request")
    _, after, _ = await a.call("GET", "/v1/sessions/s1")
    clocks = {"remaining_seconds", "running_seconds_total"}  # these move with time
    assert {k: v for k, v in after.items() if k not in clocks} == {
        k: v for k, v in before.items() if k not in clocks
    }


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/v1/sessions/-x", "session_id"),
        ("POST", "/v1/sessions/a%20b/keepalive", "session_id"),
        ("DELETE", "/v1/sessions/" + "s" * 129, "session_id"),
        ("GET", "/v1/accounts/-acme", "account_id"),
        ("GET", "/v1/accounts/a%20b/sessions", "account_id"),
    ],
)
async def test_path_ids_follow_the_id_rule(
    api: MakeApi, method: str, path: str, field: str
) -> None:
    a = await api()
    status, body, _ = await a.call(method, path)
    assert field in assert_error(status, body, 422, "invalid_request")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": "platinum"}, "plan"),
        ({"plan": 3}, "plan"),
        ({"billing_status": "broke"}, "billing_status"),
        ({"billing_status": None}, "billing_status"),
        ({"live_sessions": 0}, "live_sessions"),
    ],
)
async def test_account_update_validation(api: MakeApi, body: dict[str, Any], field: str) -> None:
    a = await api()
    status, reply, _ = await a.call("PUT", "/v1/accounts/acme", body)
    assert field in assert_error(status, reply, 422, "invalid_request")
    _, account, _ = await a.call("GET", "/v1/accounts/acme")
    assert (account["plan"], account["billing_status"]) == ("free", "ok")


# Sessions: 404, 409, idempotent DELETE


async def test_unknown_and_terminated_sessions(api: MakeApi) -> None:
    a = await api()
    for method, path in [
        ("GET", "/v1/sessions/nope"),
        ("POST", "/v1/sessions/nope/keepalive"),
        ("DELETE", "/v1/sessions/nope"),
    ]:
        status, body, _ = await a.call(method, path)
        assert_error(status, body, 404, "session_not_found")
    status, body, _ = await a.call("PATCH", "/v1/sessions/nope", {"auto_kill": False})
    assert_error(status, body, 404, "session_not_found")

    await a.create(session_id="s1")
    status, first, _ = await a.call("DELETE", "/v1/sessions/s1")
    assert status == 200 and first["termination_reason"] == "requested"
    status, again, _ = await a.call("DELETE", "/v1/sessions/s1")
    assert status == 200 and again["terminated_at"] == first["terminated_at"]
    status, body, _ = await a.call("POST", "/v1/sessions/s1/keepalive")
    assert_error(status, body, 409, "session_terminated")
    status, body, _ = await a.call("PATCH", "/v1/sessions/s1", {"timeout_seconds": 60})
    assert_error(status, body, 409, "session_terminated")
    status, body, _ = await a.call(
        "POST", "/v1/sessions", {"account_id": "acme", "session_id": "s1"}
    )
    assert_error(status, body, 409, "session_exists")
    commands = await a.harness.commands()
    assert [c["reason"] for c in commands if c["type"] == "terminate"] == ["requested"]
    assert a.metrics.terminations.labels(reason="requested")._value.get() == 1


# PATCH


async def _created_seconds_ago(a: Api, session_id: str, seconds: int, **fields: str) -> None:
    """A session created through the stream ``seconds`` ago (its created_at is the entry time)."""
    h = a.harness
    entry = f"{await h.server_ms() - seconds * 1000}-0"
    fields = {"type": "created", "session_id": session_id, "account_id": "acme", **fields}
    await h.redis.xadd(h.pk.events, fields, id=entry)
    result = await h.consume()
    assert result.outcomes == ["applied"]


async def test_patch_changes_limits_within_the_plan_and_the_time_used(api: MakeApi) -> None:
    a = await api()
    await _created_seconds_ago(
        a, "s1", 100, timeout_seconds="600", inactivity_timeout_seconds="600"
    )
    _, before, _ = await a.call("GET", "/v1/sessions/s1")

    status, body, _ = await a.call("PATCH", "/v1/sessions/s1", {"timeout_seconds": 3601})
    message = assert_error(status, body, 422, "invalid_request")
    assert "timeout_seconds" in message and "plan free" in message
    status, body, _ = await a.call("PATCH", "/v1/sessions/s1", {"timeout_seconds": 99})
    message = assert_error(status, body, 422, "invalid_request")
    assert "timeout_seconds" in message and "already run" in message

    status, raised, _ = await a.call("PATCH", "/v1/sessions/s1", {"timeout_seconds": 3600})
    assert status == 200
    assert raised["max_lifetime_seconds"] == 3600
    assert _ms(raised["expires_at"]) == _ms(raised["created_at"]) + 3_600_000
    assert raised["last_activity_at"] == before["last_activity_at"]  # not an activity
    assert raised["status"] == "ready"

    status, lowered, _ = await a.call(
        "PATCH", "/v1/sessions/s1", {"timeout_seconds": 120, "inactivity_timeout_seconds": 110}
    )
    assert status == 200
    assert _ms(lowered["expires_at"]) == _ms(lowered["created_at"]) + 120_000
    assert _ms(lowered["idle_expires_at"]) == _ms(lowered["last_activity_at"]) + 110_000
    assert lowered["terminates_at"] == lowered["idle_expires_at"]
    status, unkilled, _ = await a.call("PATCH", "/v1/sessions/s1", {"auto_kill": False})
    assert status == 200 and unkilled["auto_kill"] is False
    assert unkilled["idle_expires_at"] is None
    assert unkilled["terminates_at"] == unkilled["expires_at"]
    status, same, _ = await a.call("PATCH", "/v1/sessions/s1", {})
    assert status == 200 and same["expires_at"] == unkilled["expires_at"]

    # The deadlines the expirer reads moved with the record.
    h = a.harness
    assert await h.redis.zscore(h.pk.deadlines, "s1") == _ms(unkilled["expires_at"])


async def test_patch_into_the_past_ends_the_session_at_the_patch_not_before(
    api: MakeApi,
) -> None:
    a = await api()
    h = a.harness
    await _created_seconds_ago(a, "s1", 228, inactivity_timeout_seconds="600")
    before = await h.server_ms()
    status, ended, _ = await a.call("PATCH", "/v1/sessions/s1", {"inactivity_timeout_seconds": 1})
    after = await h.server_ms()
    assert status == 200, ended
    assert ended["status"] == "terminated" and ended["termination_reason"] == "inactivity"
    assert before <= _ms(ended["terminated_at"]) <= after
    [(_, command)] = await h.redis.xrange(h.pk.commands)
    assert command[b"reason"] == b"inactivity"
    assert int(command[b"deadline"]) == _ms(ended["terminated_at"])
    assert int(command[b"duration_ms"]) >= 228_000
    assert await h.redis.zscore(h.pk.deadlines, "s1") is None
    # Ended by the PATCH, not by the expirer: no expiry lateness is observed.
    assert a.metrics.expiry_lateness._sum.get() == 0
    status, body, _ = await a.call("PATCH", "/v1/sessions/s1", {"inactivity_timeout_seconds": 5})
    assert_error(status, body, 409, "session_terminated")


async def test_huge_numbers_and_duplicate_keys_are_refused_naming_the_field(
    api: MakeApi,
) -> None:
    a = await api()
    await a.create(session_id="s1")
    huge = "9" * 5000
    for method, path, raw, field in [
        ("POST", "/v1/sessions", f'{{"account_id": "a", "timeout_seconds": {huge}}}',
         "timeout_seconds"),
        ("POST", "/v1/sessions", '{"account_id": "a", "timeout_seconds": 9223372036854775808}',
         "timeout_seconds"),
        ("PATCH", "/v1/sessions/s1", f'{{"inactivity_timeout_seconds": -{huge}}}',
         "inactivity_timeout_seconds"),
        ("PATCH", "/v1/sessions/s1", '{"timeout_seconds": 1e+35}', "timeout_seconds"),
        ("PUT", "/v1/accounts/acme", f'{{"plan": {huge}}}', "plan"),
        ("POST", "/v1/sessions", '{"account_id": "a", "account_id": "b"}', "account_id"),
    ]:  # fmt: skip
        status, body, _ = await a.call(
            method, path, data=raw, headers={"Content-Type": "application/json"}
        )
        message = assert_error(status, body, 422, "invalid_request")
        assert field in message and "e+" not in message, message
    assert await a.harness.redis.keys("*:s:*") == [b"lifecycle:{0}:s:s1"]
    # A number under 2⁶³ but over the plan's maximum is said as sent, not as a float.
    status, body, _ = await a.call(
        "POST", "/v1/sessions", data='{"account_id": "a", "timeout_seconds": 9223372036854775807}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert "9223372036854775807 is over the maximum" in assert_error(
        status, body, 422, "invalid_request"
    )


async def test_patch_allows_the_plan_maximum_of_the_account_now(api: MakeApi) -> None:
    a = await api()
    await a.create(session_id="s1", timeout_seconds=3600)
    status, body, _ = await a.call("PATCH", "/v1/sessions/s1", {"timeout_seconds": 14400})
    assert_error(status, body, 422, "invalid_request")
    status, _, _ = await a.call("PUT", "/v1/accounts/acme", {"plan": "pro"})
    assert status == 200
    status, body, _ = await a.call("PATCH", "/v1/sessions/s1", {"timeout_seconds": 14400})
    assert status == 200 and body["max_lifetime_seconds"] == 14400


async def test_patch_shortening_the_lifetime_terminates_on_the_new_deadline(
    redis: Any, daemons: Start
) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        body = {"account_id": "acme", "session_id": "s1", "timeout_seconds": 600}
        async with http.post("/v1/sessions", json=body) as resp:
            assert resp.status == 201
        async with http.patch("/v1/sessions/s1", json={"timeout_seconds": 2}) as resp:
            assert resp.status == 200, await resp.text()
            patched = await resp.json()

        async def terminated() -> Any:
            async with http.get("/v1/sessions/s1") as resp:
                status = await resp.json()
                return status if status["status"] == "terminated" else None

        final = await eventually(terminated, timeout=10, what="termination at the new deadline")
    assert final["termination_reason"] == "max_lifetime"
    assert final["terminated_at"] == patched["expires_at"]


# Accounts


async def test_accounts_default_then_set(api: MakeApi) -> None:
    a = await api()
    status, account, _ = await a.call("GET", "/v1/accounts/new-account")
    assert status == 200
    assert account == {
        "account_id": "new-account",
        "plan": "free",
        "billing_status": "ok",
        "live_sessions": 0,
        "max_concurrent": 2,
        "max_duration_seconds": 3600,
        "metered": False,
        "balance": None,
        "credits_per_hour": None,
        "burn_per_hour": 0,
        "depletes_at": None,
        "usage": {"session_seconds": 0, "credits": 0},
    }
    await a.create("acme", session_id="s1")
    await a.create("acme", session_id="s2")
    await a.call("DELETE", "/v1/sessions/s2")
    status, account, _ = await a.call("PUT", "/v1/accounts/acme", {"plan": "enterprise"})
    assert status == 200
    assert account["plan"] == "enterprise" and account["max_concurrent"] is None
    assert account["max_duration_seconds"] == 86400 and account["live_sessions"] == 1
    _, again, _ = await a.call("GET", "/v1/accounts/acme")
    assert again == account
    status, pro, _ = await a.call(
        "PUT", "/v1/accounts/acme", {"plan": "pro", "billing_status": "ok"}
    )
    assert status == 200 and (pro["plan"], pro["max_concurrent"]) == ("pro", 10)


async def test_default_plan_setting(api: MakeApi) -> None:
    a = await api(default_plan="pro")
    _, account, _ = await a.call("GET", "/v1/accounts/acme")
    assert account["plan"] == "pro" and account["max_concurrent"] == 10
    created = await a.create(timeout_seconds=14400)
    assert created["plan"] == "pro"


async def test_list_sessions_shows_live_sessions_only(api: MakeApi) -> None:
    a = await api()
    await a.call("PUT", "/v1/accounts/acme", {"plan": "pro"})
    for sid in ("s1", "s2", "s3"):
        await a.create("acme", session_id=sid)
    await a.create("other", session_id="o1")
    await a.call("DELETE", "/v1/sessions/s2")
    status, body, _ = await a.call("GET", "/v1/accounts/acme/sessions")
    assert status == 200
    assert [s["session_id"] for s in body["sessions"]] == ["s1", "s3"]
    assert all(s["status"] == "ready" and s["remaining_seconds"] > 0 for s in body["sessions"])
    status, body, _ = await a.call("GET", "/v1/accounts/nobody/sessions")
    assert status == 200 and body == {"sessions": []}


# Admission: the concurrency limit and its Retry-After


async def test_limit_retry_after_is_honest_and_termination_frees_the_slot(api: MakeApi) -> None:
    a = await api()
    await a.create(session_id="s1", inactivity_timeout_seconds=200)
    await a.create(session_id="s2", inactivity_timeout_seconds=100)
    status, body, headers = await a.call("POST", "/v1/sessions", {"account_id": "acme"})
    assert_error(status, body, 429, "concurrent_session_limit")
    assert 99 <= int(headers["Retry-After"]) <= 100  # s2's deadline, the earliest
    # Field errors come after the limit (SPEC §2 order).
    status, body, _ = await a.call("POST", "/v1/sessions", {"account_id": "acme", "x": 1})
    assert_error(status, body, 429, "concurrent_session_limit")
    await a.call("DELETE", "/v1/sessions/s2")
    status, body, _ = await a.call("POST", "/v1/sessions", {"account_id": "acme"})
    assert status == 201, body
    assert a.metrics.admissions.labels(result="concurrent_session_limit")._value.get() == 2


async def test_fifty_racing_creates_over_http_admit_exactly_two(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:

        async def create(i: int) -> tuple[int, str | None, Any]:
            body = {"account_id": "racer", "session_id": f"r{i}", "inactivity_timeout_seconds": 60}
            async with http.post("/v1/sessions", json=body) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.json()

        results = await asyncio.gather(*(create(i) for i in range(50)))
        statuses = Counter(status for status, _, _ in results)
        assert statuses == {201: 2, 429: 48}
        for status, retry_after, body in results:
            if status == 429:
                assert body["error"] == "concurrent_session_limit"
                assert retry_after is not None and 59 <= int(retry_after) <= 60
        async with http.get("/v1/accounts/racer") as resp:
            assert (await resp.json())["live_sessions"] == 2


async def test_a_timed_out_session_frees_its_slot(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        for sid, idle in (("long", 600), ("short", 1)):
            body = {"account_id": "acme", "session_id": sid, "inactivity_timeout_seconds": idle}
            async with http.post("/v1/sessions", json=body) as resp:
                assert resp.status == 201
        async with http.post("/v1/sessions", json={"account_id": "acme"}) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"

        async def admitted() -> bool:
            async with http.post("/v1/sessions", json={"account_id": "acme"}) as resp:
                return resp.status == 201

        await eventually(admitted, timeout=10, what="the slot freed by the timeout")
        async with http.get("/v1/sessions/short") as resp:
            assert (await resp.json())["termination_reason"] == "inactivity"


# Billing holds


async def test_billing_hold_terminates_live_sessions_and_refuses_with_402(api: MakeApi) -> None:
    a = await api()
    await a.create("acme", session_id="s1")
    await a.create("acme", session_id="s2")
    await a.create("other", session_id="o1")
    status, account, _ = await a.call(
        "PUT", "/v1/accounts/acme", {"billing_status": "payment_failed"}
    )
    assert status == 200
    assert account["billing_status"] == "payment_failed" and account["live_sessions"] == 0
    for sid in ("s1", "s2"):
        _, session, _ = await a.call("GET", f"/v1/sessions/{sid}")
        assert session["status"] == "terminated" and session["termination_reason"] == "billing"
    _, other, _ = await a.call("GET", "/v1/sessions/o1")
    assert other["status"] == "ready"
    commands = [c for c in await a.harness.commands() if c["type"] == "terminate"]
    assert sorted((c["session_id"], c["reason"]) for c in commands) == [
        ("s1", "billing"),
        ("s2", "billing"),
    ]
    assert a.metrics.terminations.labels(reason="billing")._value.get() == 2

    status, body, _ = await a.call("POST", "/v1/sessions", {"account_id": "acme"})
    assert "payment_failed" in assert_error(status, body, 402, "payment_required")
    # Billing comes first: even an invalid create is 402.
    status, body, _ = await a.call("POST", "/v1/sessions", {"account_id": "acme", "x": 1})
    assert_error(status, body, 402, "payment_required")
    # A second hold has nothing left to terminate.
    await a.call("PUT", "/v1/accounts/acme", {"billing_status": "card_expired"})
    assert len([c for c in await a.harness.commands() if c["type"] == "terminate"]) == 2

    status, _, _ = await a.call("PUT", "/v1/accounts/acme", {"billing_status": "ok"})
    assert status == 200
    await a.create("acme", session_id="s3")


async def test_billing_hold_without_terminations(api: MakeApi) -> None:
    a = await api(billing_hold_terminates=False)
    await a.create("acme", session_id="s1")
    await a.call("PUT", "/v1/accounts/acme", {"billing_status": "balance_depleted"})
    _, session, _ = await a.call("GET", "/v1/sessions/s1")
    assert session["status"] == "ready"
    status, body, _ = await a.call("POST", "/v1/sessions/s1/keepalive")
    assert "balance_depleted" in assert_error(status, body, 402, "payment_required")
    status, body, _ = await a.call("POST", "/v1/sessions", {"account_id": "acme"})
    assert_error(status, body, 402, "payment_required")


async def test_billing_event_terminates_within_a_second(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with aiohttp.ClientSession(d.api) as http:
        for sid in ("s1", "s2"):
            body = {"account_id": "acme", "session_id": sid}
            async with http.post("/v1/sessions", json=body) as resp:
                assert resp.status == 201
        await redis.xadd(
            "lifecycle:{0}:events",
            {"type": "billing", "account_id": "acme", "billing_status": "card_expired"},
        )

        async def both_terminated() -> bool:
            reasons = []
            for sid in ("s1", "s2"):
                async with http.get(f"/v1/sessions/{sid}") as resp:
                    reasons.append((await resp.json())["termination_reason"])
            return reasons == ["billing", "billing"]

        await eventually(both_terminated, timeout=1.0, what="billing terminations")
        async with http.post("/v1/sessions/s1/keepalive") as resp:
            assert resp.status == 402
            assert "card_expired" in (await resp.json())["message"]
        async with http.post("/v1/sessions", json={"account_id": "acme"}) as resp:
            assert resp.status == 402
    commands = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange("lifecycle:{0}:commands")
    ]
    terminate = [c for c in commands if c["type"] == "terminate"]
    assert Counter(c["session_id"] for c in terminate) == {"s1": 1, "s2": 1}


async def test_every_route_finds_sessions_across_partitions(api: MakeApi) -> None:
    a = await api(partitions=4)
    accounts = [f"acct{i}" for i in range(8)]
    assert len({a.harness.store.partition_for(x).partition for x in accounts}) > 1
    for account in accounts:
        await a.create(account, session_id=f"s-{account}")
    for account in accounts:
        sid = f"s-{account}"
        status, body, _ = await a.call("GET", f"/v1/sessions/{sid}")
        assert status == 200 and body["account_id"] == account
        status, _, _ = await a.call("POST", f"/v1/sessions/{sid}/keepalive")
        assert status == 200
        status, body, _ = await a.call("PATCH", f"/v1/sessions/{sid}", {"auto_kill": False})
        assert status == 200 and body["auto_kill"] is False
        _, listed, _ = await a.call("GET", f"/v1/accounts/{account}/sessions")
        assert [s["session_id"] for s in listed["sessions"]] == [sid]
    status, body, _ = await a.call(
        "POST", "/v1/sessions", {"account_id": "acct1", "session_id": "s-acct0"}
    )
    assert_error(status, body, 409, "session_exists")
    await a.call("PUT", "/v1/accounts/acct3", {"billing_status": "card_expired"})
    _, held, _ = await a.call("GET", "/v1/sessions/s-acct3")
    assert held["termination_reason"] == "billing"
    status, body, _ = await a.call("DELETE", "/v1/sessions/s-acct5")
    assert status == 200 and body["termination_reason"] == "requested"
    _, account, _ = await a.call("GET", "/v1/accounts/acct5")
    assert account["live_sessions"] == 0


# The OpenAPI document


async def test_openapi_document_is_served_as_kept_in_the_repo(api: MakeApi) -> None:
    a = await api()
    status, served, headers = await a.call("GET", "/v1/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    kept = json.loads((Path(__file__).parent.parent / "daemon" / "openapi.json").read_text())
    assert served == kept
    assert served["openapi"].startswith("3.1")
    routes = {
        ("post", "/v1/sessions"),
        ("get", "/v1/sessions/{session_id}"),
        ("patch", "/v1/sessions/{session_id}"),
        ("delete", "/v1/sessions/{session_id}"),
        ("post", "/v1/sessions/{session_id}/keepalive"),
        ("post", "/v1/sessions/{session_id}/activity"),
        ("get", "/v1/sessions/{session_id}/events"),
        ("get", "/v1/sessions"),
        ("get", "/v1/accounts/{account_id}"),
        ("put", "/v1/accounts/{account_id}"),
        ("get", "/v1/accounts/{account_id}/sessions"),
    }
    documented = {
        (method, path)
        for path, item in served["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert routes <= documented


def _ms(rfc3339: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


async def test_activity_over_http_records_an_action(api: MakeApi) -> None:
    a = await api()
    created = await a.create(session_id="s1", inactivity_timeout_seconds=60)
    assert created["status"] == "ready"
    status, kept, _ = await a.call("POST", "/v1/sessions/s1/keepalive")
    assert status == 200 and kept["status"] == "ready"  # a keepalive is not an action
    status, acted, _ = await a.call("POST", "/v1/sessions/s1/activity", {"source": "ide"})
    assert status == 200 and acted["status"] == "running"
    assert _ms(acted["last_activity_at"]) >= _ms(kept["last_activity_at"])
    assert _ms(acted["idle_expires_at"]) == _ms(acted["last_activity_at"]) + 60_000
    status, again, _ = await a.call("POST", "/v1/sessions/s1/activity")  # no body at all
    assert status == 200 and again["status"] == "running"

    for body, field in [({"source": "IDE!"}, "source"), ({"source": "x" * 65}, "source"),
                        ({"source": 3}, "source"), ({"colour": "red"}, "colour")]:  # fmt: skip
        status, reply, _ = await a.call("POST", "/v1/sessions/s1/activity", body)
        assert field in assert_error(status, reply, 422, "invalid_request")
    status, reply, _ = await a.call("POST", "/v1/sessions/nope/activity")
    assert_error(status, reply, 404, "session_not_found")
    status, _, _ = await a.call("PUT", "/v1/accounts/acme", {"billing_status": "card_expired"})
    assert status == 200
    status, reply, _ = await a.call("POST", "/v1/sessions/s1/activity")
    assert "card_expired" in assert_error(status, reply, 402, "payment_required")
    status, _, _ = await a.call("PUT", "/v1/accounts/acme", {"billing_status": "ok"})
    status, reply, _ = await a.call("POST", "/v1/sessions/s1/activity")
    assert_error(status, reply, 409, "session_terminated")
