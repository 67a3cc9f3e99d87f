"""API keys, account scoping and failed-authentication blocking (SPEC §4)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.store import AUTH_FAILURE_LIMIT
from tests.servers import Daemon
from tests.test_api import Api, MakeApi, api, assert_error

__all__ = ["api"]  # the fixture, shared with test_api

Start = Callable[..., Daemon]

ADMIN_KEY = "admin-secret-key"
ACME_KEY = "acme-secret-key"
OTHER_KEY = "other-secret-key"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


API_KEYS = ",".join(
    [
        f"{digest(ADMIN_KEY)}:admin",
        f"{digest(ACME_KEY)}:account:acme",
        f"{digest(OTHER_KEY)}:account:other",
    ]
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def keyed(api: MakeApi, **settings: Any) -> Api:
    return await api(api_keys=API_KEYS, **settings)


# Missing and wrong keys


async def test_missing_or_wrong_key_is_401(api: MakeApi) -> None:
    a = await keyed(api)
    for headers in (
        {},
        bearer("not-a-key"),
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {digest(ADMIN_KEY)}"},  # the digest is not the key
    ):
        status, body, resp_headers = await a.call("GET", "/v1/accounts/acme", headers=headers)
        assert_error(status, body, 401, "unauthorized")
        assert resp_headers["WWW-Authenticate"] == "Bearer"
    # Unknown routes do not tell an unauthenticated caller what exists.
    status, body, _ = await a.call("GET", "/v1/nothing")
    assert_error(status, body, 401, "unauthorized")
    status, body, _ = await a.call("GET", "/v1/nothing", headers=bearer(ADMIN_KEY))
    assert_error(status, body, 404, "not_found")
    # The API's description is public.
    status, body, _ = await a.call("GET", "/v1/openapi.json")
    assert status == 200 and body["openapi"].startswith("3.1")
    status, body, _ = await a.call("GET", "/v1/accounts/acme", headers=bearer(ADMIN_KEY))
    assert status == 200


async def test_no_keys_means_an_open_api(api: MakeApi) -> None:
    a = await api()
    status, _, _ = await a.call("PUT", "/v1/accounts/acme", {"plan": "pro"})
    assert status == 200
    status, _, _ = await a.call("GET", "/v1/accounts/acme", headers=bearer("anything"))
    assert status == 200


async def test_keys_load_from_a_file(api: MakeApi, tmp_path: Path) -> None:
    keys_file = tmp_path / "api_keys"
    keys_file.write_text(f"# operators\n{digest(ADMIN_KEY)}:admin\n\n")
    a = await api(api_keys_file=keys_file)
    status, _, _ = await a.call("GET", "/v1/accounts/acme", headers=bearer(ADMIN_KEY))
    assert status == 200
    status, _, _ = await a.call("GET", "/v1/accounts/acme")
    assert status == 401


# Account keys see and change only their own account


async def test_account_key_cannot_touch_another_accounts_sessions(api: MakeApi) -> None:
    a = await keyed(api)
    acme, other = bearer(ACME_KEY), bearer(OTHER_KEY)
    status, _, _ = await a.call(
        "POST", "/v1/sessions", {"account_id": "other", "session_id": "o1"}, headers=other
    )
    assert status == 201
    status, _, _ = await a.call(
        "POST", "/v1/sessions", {"account_id": "acme", "session_id": "a1"}, headers=acme
    )
    assert status == 201

    for method, path, body in [
        ("GET", "/v1/sessions/o1", None),
        ("POST", "/v1/sessions/o1/keepalive", None),
        ("PATCH", "/v1/sessions/o1", {"auto_kill": False}),
        ("DELETE", "/v1/sessions/o1", None),
    ]:
        status, reply, _ = await a.call(method, path, body, headers=acme)
        # The same answer as for a session that does not exist: ids do not leak.
        assert_error(status, reply, 404, "session_not_found")
        assert "o1" in reply["message"]
    for path in ("/v1/accounts/other", "/v1/accounts/other/sessions"):
        status, reply, _ = await a.call("GET", path, headers=acme)
        assert_error(status, reply, 404, "account_not_found")
    status, reply, _ = await a.call("POST", "/v1/sessions", {"account_id": "other"}, headers=acme)
    assert_error(status, reply, 403, "forbidden")

    # The other account's session is untouched.
    status, o1, _ = await a.call("GET", "/v1/sessions/o1", headers=other)
    assert status == 200
    assert o1["status"] == "ready" and o1["auto_kill"] is True
    assert o1["last_activity_at"] == o1["created_at"]
    assert [c for c in await a.harness.commands() if c["type"] == "terminate"] == []

    # Its own session: everything works.
    for method, path, body in [
        ("GET", "/v1/sessions/a1", None),
        ("POST", "/v1/sessions/a1/keepalive", None),
        ("PATCH", "/v1/sessions/a1", {"auto_kill": False}),
        ("GET", "/v1/accounts/acme", None),
        ("GET", "/v1/accounts/acme/sessions", None),
        ("DELETE", "/v1/sessions/a1", None),
    ]:
        status, reply, _ = await a.call(method, path, body, headers=acme)
        assert status == 200, (method, path, reply)
    # The admin sees everything.
    status, _, _ = await a.call("GET", "/v1/sessions/o1", headers=bearer(ADMIN_KEY))
    assert status == 200


async def test_only_admin_keys_change_accounts(api: MakeApi) -> None:
    a = await keyed(api)
    for account in ("acme", "other"):
        status, body, _ = await a.call(
            "PUT", f"/v1/accounts/{account}", {"plan": "enterprise"}, headers=bearer(ACME_KEY)
        )
        assert_error(status, body, 403, "forbidden")
    _, account, _ = await a.call("GET", "/v1/accounts/acme", headers=bearer(ACME_KEY))
    assert account["plan"] == "free"
    status, account, _ = await a.call(
        "PUT", "/v1/accounts/acme", {"plan": "enterprise"}, headers=bearer(ADMIN_KEY)
    )
    assert status == 200 and account["plan"] == "enterprise"


# Failed-authentication blocking


async def _age_failures(a: Api, address: str, seconds: float, count: int | None = None) -> None:
    """Move the oldest ``count`` recorded failures of ``address`` back in time."""
    key = a.harness.store.auth_failures_key(address)
    members = await a.harness.redis.zrange(key, 0, -1 if count is None else count - 1)
    for member in members:
        await a.harness.redis.zincrby(key, -seconds * 1000, member)


async def test_ten_failures_block_every_request_until_the_oldest_is_600_s_old(
    api: MakeApi,
) -> None:
    a = await keyed(api)
    for _ in range(AUTH_FAILURE_LIMIT):
        status, _, _ = await a.call("GET", "/v1/accounts/acme", headers=bearer("guess"))
        assert status == 401
    for headers in (bearer("guess"), {}, bearer(ADMIN_KEY)):
        status, body, resp_headers = await a.call("GET", "/v1/accounts/acme", headers=headers)
        assert_error(status, body, 429, "too_many_auth_failures")
        assert 599 <= int(resp_headers["Retry-After"]) <= 600
    # Blocked requests are not failures: the block does not extend itself.
    key = a.harness.store.auth_failures_key("127.0.0.1")
    assert await a.harness.redis.zcard(key) == AUTH_FAILURE_LIMIT

    # Retry-After follows the oldest failure.
    await _age_failures(a, "127.0.0.1", 300)
    _, _, resp_headers = await a.call("GET", "/v1/accounts/acme", headers=bearer(ADMIN_KEY))
    assert 299 <= int(resp_headers["Retry-After"]) <= 300

    # The oldest failure turns 600 s old: nine remain, the address is let through...
    await _age_failures(a, "127.0.0.1", 300, count=1)
    status, _, _ = await a.call("GET", "/v1/accounts/acme", headers=bearer(ADMIN_KEY))
    assert status == 200
    # ...until a tenth failure within the window blocks it again.
    status, _, _ = await a.call("GET", "/v1/accounts/acme", headers=bearer("guess"))
    assert status == 401
    status, body, resp_headers = await a.call("GET", "/v1/accounts/acme", headers=bearer(ADMIN_KEY))
    assert_error(status, body, 429, "too_many_auth_failures")
    assert 299 <= int(resp_headers["Retry-After"]) <= 300


async def test_forwarded_for_counts_only_when_trusted(api: MakeApi) -> None:
    trusting = await keyed(api, trust_forwarded_for=True)
    for i in range(AUTH_FAILURE_LIMIT):
        headers = {**bearer("guess"), "X-Forwarded-For": f"203.0.113.{i}, 198.51.100.7"}
        status, _, _ = await trusting.call("GET", "/v1/accounts/acme", headers=headers)
        assert status == 401
    # The proxy-appended (last) entry is the client; the first is the client's to forge.
    blocked = {**bearer(ADMIN_KEY), "X-Forwarded-For": "198.51.100.7"}
    status, _, _ = await trusting.call("GET", "/v1/accounts/acme", headers=blocked)
    assert status == 429
    elsewhere = {**bearer(ADMIN_KEY), "X-Forwarded-For": "198.51.100.8"}
    status, _, _ = await trusting.call("GET", "/v1/accounts/acme", headers=elsewhere)
    assert status == 200

    # Not trusted (the default): the header is ignored, the socket's address counts.
    plain = await keyed(api)
    headers = {**bearer(ADMIN_KEY), "X-Forwarded-For": "198.51.100.8"}
    status, _, _ = await plain.call("GET", "/v1/accounts/acme", headers=headers)
    assert status == 200
    for i in range(AUTH_FAILURE_LIMIT):
        spoofed = {**bearer("guess"), "X-Forwarded-For": f"192.0.2.{i}"}
        status, _, _ = await plain.call("GET", "/v1/accounts/acme", headers=spoofed)
        assert status == 401
    status, _, _ = await plain.call("GET", "/v1/accounts/acme", headers=headers)
    assert status == 429


async def test_two_replicas_share_the_failure_count(redis: Any, daemons: Start) -> None:
    first, second = daemons(api_keys=API_KEYS), daemons(api_keys=API_KEYS)
    async with aiohttp.ClientSession() as http:

        async def get(d: Daemon, key: str) -> tuple[int, str | None]:
            async with http.get(f"{d.api}/v1/accounts/acme", headers=bearer(key)) as resp:
                return resp.status, resp.headers.get("Retry-After")

        for i in range(AUTH_FAILURE_LIMIT):
            status, _ = await get(first if i % 2 else second, f"guess-{i}")
            assert status == 401
        for d in (first, second):
            status, retry_after = await get(d, ADMIN_KEY)
            assert status == 429
            assert retry_after is not None and 599 <= int(retry_after) <= 600
    # Keys are never logged in clear.
    for d in (first, second):
        log = d.log()
        assert "auth_failed" in log
        assert ADMIN_KEY not in log and "guess-" not in log


# Start-up refusal


@pytest.mark.parametrize("keys", [None, "", " , # none"])
async def test_non_loopback_without_keys_refuses_to_start(keys: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    env["LIFECYCLE_HTTP_HOST"] = "0.0.0.0"
    if keys is not None:
        env["LIFECYCLE_API_KEYS"] = keys
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run",
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "http_host" in lines[0] and "api_keys" in lines[0]
