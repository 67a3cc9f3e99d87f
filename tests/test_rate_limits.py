"""Request rate limits (SPEC §6): the GCRA script against a real Valkey, then the API of
real ``lifecycled run`` daemons with small limits.

The limits come from a test plans file: ``free`` allows 5 requests and 3 creates a
minute; ``fast`` 60 requests a minute (an interval of one second, so that waiting out a
refusal takes a second); ``open`` has no rate limits.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.client import LifecycleClient, RateLimited
from daemon.keys import GROUP
from tests.conftest import Harness
from tests.servers import Daemon, eventually

Make = Callable[..., Any]
Start = Callable[..., Daemon]

PLANS = """\
[plans.free]
max_concurrent = 10
max_duration_seconds = 3600
requests_per_minute = 5
creates_per_minute = 3

[plans.fast]
max_concurrent = 10
max_duration_seconds = 3600
requests_per_minute = 60

[plans.open]
max_duration_seconds = 3600
"""


@pytest.fixture
def plans(tmp_path: Path) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(PLANS)
    return path


# The script


async def test_a_burst_of_r_is_admitted_then_refused_and_a_refusal_changes_nothing(
    harness: Make, plans: Path
) -> None:
    h: Harness = await harness(plans_file=plans)
    store = h.store
    seen = []
    for _ in range(5):
        result = await store.rate_limit(account_id="acme")
        assert result is not None and result.admitted and result.retry_after == 0
        [limit] = result.limits
        seen.append((limit.name, limit.quota, limit.remaining))
        assert 1 <= limit.reset_seconds <= 60
    assert seen == [("requests", 5, r) for r in (4, 3, 2, 1, 0)]
    key = h.pk.rate_limit("acme", "requests")
    tat = await h.redis.get(key)
    ttl = await h.redis.pttl(key)
    assert 59_000 < ttl <= 60_000  # the key lasts until its TAT passes: tau + T here

    refused = await store.rate_limit(account_id="acme")
    assert refused is not None and not refused.admitted
    # The first of the burst is 12 s (T) old when its slot frees: about 12 s from now.
    assert refused.retry_after == 12
    assert [(x.name, x.remaining) for x in refused.exhausted] == [("requests", 0)]
    assert await h.redis.get(key) == tat, "a refused request changes nothing"
    # Another account has its own limit.
    other = await store.rate_limit(account_id="other")
    assert other is not None and other.admitted and other.limits[0].remaining == 4


async def test_the_limit_refills_and_after_retry_after_the_same_request_is_admitted(
    harness: Make, plans: Path
) -> None:
    h: Harness = await harness(plans_file=plans)
    await h.store.set_account("acme", plan="fast")
    for _ in range(60):
        admitted = await h.store.rate_limit(account_id="acme")
        assert admitted is not None and admitted.admitted
    refused = await h.store.rate_limit(account_id="acme")
    assert refused is not None and not refused.admitted
    assert refused.retry_after == 1  # one interval (1 s) after the first of the burst
    await asyncio.sleep(refused.retry_after)
    again = await h.store.rate_limit(account_id="acme")
    assert again is not None and again.admitted, "admitted after Retry-After"
    assert again.limits[0].remaining == 0
    # One interval refilled one request: the next is refused again, for about a second.
    refused = await h.store.rate_limit(account_id="acme")
    assert refused is not None and not refused.admitted and refused.retry_after == 1
    started = time.monotonic()
    await asyncio.sleep(2.05)
    for _ in range(2):  # two intervals: two more
        refill = await h.store.rate_limit(account_id="acme")
        assert refill is not None and refill.admitted, time.monotonic() - started
    refused = await h.store.rate_limit(account_id="acme")
    assert refused is not None and not refused.admitted


async def test_creates_count_against_both_limits_and_a_limited_create_against_neither(
    harness: Make, plans: Path
) -> None:
    h: Harness = await harness(plans_file=plans)
    for expected in (2, 1, 0):
        result = await h.store.rate_limit(account_id="acme", creates=True)
        assert result is not None and result.admitted
        assert [(x.name, x.quota) for x in result.limits] == [("requests", 5), ("creates", 3)]
        assert result.limits[1].remaining == expected
    before = await h.redis.get(h.pk.rate_limit("acme", "requests"))
    refused = await h.store.rate_limit(account_id="acme", creates=True)
    assert refused is not None and not refused.admitted
    assert [x.name for x in refused.exhausted] == ["creates"]
    assert refused.limits[0].remaining == 2  # the requests limit was not charged
    assert await h.redis.get(h.pk.rate_limit("acme", "requests")) == before
    # Other requests of the account go on until the requests limit is spent.
    for expected in (1, 0):
        result = await h.store.rate_limit(account_id="acme")
        assert result is not None and result.admitted
        assert result.limits[0].remaining == expected


async def test_a_session_names_its_account_and_unknown_or_unlimited_name_no_limit(
    harness: Make, plans: Path
) -> None:
    h: Harness = await harness(plans_file=plans)
    await h.store.create_session("s1", "acme", 60, 60, True)
    by_session = await h.store.rate_limit(session_id="s1")
    assert by_session is not None and by_session.account_id == "acme"
    assert by_session.plan == "free" and by_session.limits[0].remaining == 4
    assert await h.store.rate_limit(session_id="nope") is None
    assert await h.store.rate_limit(session_id="s1", scope="other") is None
    assert await h.store.rate_limit(account_id="acme", scope="other") is None
    scoped = await h.store.rate_limit(session_id="s1", scope="acme", creates=True)
    assert scoped is not None and [x.remaining for x in scoped.limits] == [3, 2]
    await h.store.set_account("big", plan="open")
    for _ in range(10):
        unlimited = await h.store.rate_limit(account_id="big", creates=True)
        assert unlimited is not None and unlimited.admitted and unlimited.limits == ()
    assert not await h.redis.exists(h.pk.rate_limit("big", "requests"))


# The API of real daemons


def _headers(resp: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
    return resp.headers.get("RateLimit-Policy"), resp.headers.get("RateLimit")


def _state(resp: aiohttp.ClientResponse) -> dict[str, tuple[int, int]]:
    """``RateLimit: "requests";r=4;t=12, ...`` as ``{"requests": (4, 12), ...}``."""
    state = {}
    for item in resp.headers["RateLimit"].split(", "):
        name, r, t = item.split(";")
        assert name.startswith('"') and r.startswith("r=") and t.startswith("t="), item
        state[name.strip('"')] = (int(r[2:]), int(t[2:]))
    return state


def _near(state: tuple[int, int], remaining: int, reset: int) -> bool:
    """Remaining exactly; the reset seconds as computed, or a second or two less when the
    requests before took that long (a loaded machine)."""
    return state[0] == remaining and reset - 2 <= state[1] <= reset


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json(), resp


async def _metric(d: Daemon, http: aiohttp.ClientSession, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{d.metrics_port}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def test_api_burst_headers_and_429_rate_limited(daemons: Start, plans: Path) -> None:
    d = daemons(plans_file=plans)
    async with aiohttp.ClientSession() as http:
        for n, remaining in enumerate((4, 3, 2, 1, 0), start=1):
            status, body, resp = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
            assert status == 200, body
            assert resp.headers["RateLimit-Policy"] == '"requests";q=5;w=60'
            assert _near(_state(resp)["requests"], remaining, 12 * n)
        status, body, resp = await _call(http, "GET", f"{d.api}/v1/accounts/acme/sessions")
        assert status == 429 and body["error"] == "rate_limited"
        wait = int(resp.headers["Retry-After"])
        assert 10 <= wait <= 12
        assert body["message"] == (
            "Too many requests for account acme: plan free allows 5 requests per minute; "
            f"retry in {wait} s."
        )
        assert resp.headers["RateLimit-Policy"] == '"requests";q=5;w=60'
        assert _near(_state(resp)["requests"], 0, 60)
        labels = 'lifecycle_rate_limited_total{limit="requests"}'
        assert await _metric(d, http, labels) == 1
        assert await _metric(d, http, 'lifecycle_rate_limited_total{limit="creates"}') == 0
        # Requests naming no account are not limited and carry no headers.
        status, body, resp = await _call(http, "GET", f"{d.api}/v1/sessions/no-such-session")
        assert status == 404 and _headers(resp) == (None, None)
        async with http.get(f"{d.api}/v1/openapi.json") as resp:
            assert resp.status == 200 and _headers(resp) == (None, None)
        # Another account is not affected.
        status, _, resp = await _call(http, "GET", f"{d.api}/v1/accounts/other")
        assert status == 200 and resp.headers["RateLimit"] == '"requests";r=4;t=12'


async def test_a_limited_create_changes_nothing(daemons: Start, plans: Path, redis: Any) -> None:
    d = daemons(plans_file=plans)
    url = f"{d.api}/v1/sessions"
    async with aiohttp.ClientSession() as http:
        for i, remaining in enumerate((2, 1, 0)):
            status, body, resp = await _call(
                http, "POST", url, json={"account_id": "acme", "session_id": f"s{i}"}
            )
            assert status == 201, body
            assert resp.headers["RateLimit-Policy"] == '"requests";q=5;w=60, "creates";q=3;w=60'
            assert _near(_state(resp)["creates"], remaining, 20 * (i + 1))
        status, body, resp = await _call(
            http, "POST", url, json={"account_id": "acme", "session_id": "s3"}
        )
        assert status == 429 and body["error"] == "rate_limited", body
        assert "allows 3 session creations per minute" in body["message"]
        assert 18 <= int(resp.headers["Retry-After"]) <= 20
        state = _state(resp)
        assert _near(state["requests"], 2, 36) and _near(state["creates"], 0, 60)
        assert await _metric(d, http, 'lifecycle_rate_limited_total{limit="creates"}') == 1
        # No session, no slot: the refused create's id is unknown, the account holds 3.
        status, _, resp = await _call(http, "GET", f"{url}/s3")
        assert status == 404 and _headers(resp) == (None, None)
        status, account, resp = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
        assert status == 200 and account["live_sessions"] == 3
        assert _near(_state(resp)["requests"], 1, 48)
        # A request naming the session's account counts: a keepalive, then the limit.
        status, _, resp = await _call(http, "POST", f"{url}/s0/keepalive")
        assert status == 200 and _near(_state(resp)["requests"], 0, 60)
        status, body, _ = await _call(http, "DELETE", f"{url}/s0")
        assert status == 429 and body["error"] == "rate_limited"
    # The limited DELETE changed nothing either: s0 is live.
    assert await redis.smembers("lifecycle:{0}:live:acme") == {b"s0", b"s1", b"s2"}
    assert "Traceback" not in d.log()


async def test_a_limited_keepalive_changes_nothing_and_429_comes_before_a_bad_body(
    daemons: Start, plans: Path, redis: Any
) -> None:
    # The keepalive's own script checks the limit first (one script call a request).
    d = daemons(plans_file=plans)
    url = f"{d.api}/v1/sessions/s0"
    async with aiohttp.ClientSession() as http:
        status, _, _ = await _call(
            http, "POST", f"{d.api}/v1/sessions", json={"account_id": "acme", "session_id": "s0"}
        )
        assert status == 201
        for remaining in (3, 2, 1, 0):
            status, body, resp = await _call(http, "POST", f"{url}/keepalive")
            assert status == 200, body
            assert _state(resp)["requests"][0] == remaining
        before = await redis.hgetall("lifecycle:{0}:s:s0")
        status, body, resp = await _call(http, "POST", f"{url}/keepalive")
        assert status == 429 and body["error"] == "rate_limited", body
        assert resp.headers["RateLimit-Policy"] == '"requests";q=5;w=60'
        assert 10 <= int(resp.headers["Retry-After"]) <= 12
        assert await redis.hgetall("lifecycle:{0}:s:s0") == before  # not touched
        # A body the handler refuses before any script: the limit still answers first.
        status, body, _ = await _call(http, "POST", f"{url}/activity", json={"source": 7})
        assert status == 429 and body["error"] == "rate_limited", body
        # An unknown session names no account: 404, no limit, no headers.
        status, _, resp = await _call(http, "POST", f"{d.api}/v1/sessions/nope/keepalive")
        assert status == 404 and _headers(resp) == (None, None)
        assert await _metric(d, http, 'lifecycle_rate_limited_total{limit="requests"}') == 2
    assert "Traceback" not in d.log()


async def test_errors_of_an_account_naming_request_carry_the_headers(
    daemons: Start, plans: Path
) -> None:
    d = daemons(plans_file=plans)
    url = f"{d.api}/v1/sessions"
    account = f"{d.api}/v1/accounts/acme"
    steps = [
        ("PUT", account, {"plan": "fast"}, 200),
        ("POST", url, {"account_id": "acme", "session_id": "s1"}, 201),
        ("PATCH", f"{url}/s1", {"timeout_seconds": "x"}, 422),
        ("POST", url, {"account_id": "acme", "session_id": "s1"}, 409),
        ("DELETE", f"{url}/s1", None, 200),
        ("POST", f"{url}/s1/keepalive", None, 409),
        ("PUT", account, {"billing_status": "card_expired"}, 200),
        ("POST", url, {"account_id": "acme"}, 402),
    ]
    async with aiohttp.ClientSession() as http:
        # The first PUT counted on free (12 s ahead); every request since on fast (1 s):
        # the account's debt carries over a change of plan.
        for ahead, (method, path, body, expected) in enumerate(steps, start=12):
            status, answer, resp = await _call(http, method, path, json=body)
            assert status == expected, (method, path, answer)
            if ahead == 12:
                assert resp.headers["RateLimit-Policy"] == '"requests";q=5;w=60'
                continue  # answered with the plan it had before: free
            # fast limits requests only: creates are unlimited and have no header.
            assert resp.headers["RateLimit-Policy"] == '"requests";q=60;w=60'
            assert _near(_state(resp)["requests"], 60 - ahead, ahead), (method, path)
        # An unlimited plan: no headers at all.
        status, _, _ = await _call(http, "PUT", f"{d.api}/v1/accounts/big", json={"plan": "open"})
        status, _, resp = await _call(http, "GET", f"{d.api}/v1/accounts/big")
        assert status == 200 and _headers(resp) == (None, None)


async def test_two_daemons_share_the_limit(daemons: Start, plans: Path) -> None:
    first, second = daemons(plans_file=plans), daemons(plans_file=plans)
    async with aiohttp.ClientSession() as http:

        async def get(d: Daemon) -> int:
            async with http.get(f"{d.api}/v1/accounts/acme") as resp:
                return resp.status

        statuses = await asyncio.gather(*(get((first, second)[i % 2]) for i in range(12)))
        assert sorted(statuses) == [200] * 5 + [429] * 7
        assert await get(first) == 429 and await get(second) == 429


async def test_stream_events_are_never_limited(daemons: Start, plans: Path, redis: Any) -> None:
    d = daemons(plans_file=plans)
    events = "lifecycle:{0}:events"
    for i in range(8):  # over the create rate and the request rate
        await redis.xadd(events, {"type": "created", "session_id": f"s{i}", "account_id": "acme"})
        for _ in range(2):
            await redis.xadd(events, {"type": "activity", "session_id": f"s{i}",
                                      "account_id": "acme"})  # fmt: skip

    async def applied() -> bool:
        groups = await redis.xinfo_groups(events)
        group = next(g for g in groups if g["name"].decode() == GROUP)
        return bool(group["lag"] == 0 and group["pending"] == 0)

    await eventually(applied, what="every event applied")
    assert await redis.scard("lifecycle:{0}:live:acme") == 8
    async with aiohttp.ClientSession() as http:
        status, account, resp = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
        assert status == 200 and account["live_sessions"] == 8
        assert resp.headers["RateLimit"] == '"requests";r=4;t=12', "events counted nothing"
        status, session, _ = await _call(http, "GET", f"{d.api}/v1/sessions/s7")
        assert session["status"] == "running"


async def test_authentication_comes_first_and_scoped_keys_see_only_their_account(
    daemons: Start, plans: Path
) -> None:
    import hashlib

    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    keys = f"{digest('admin-key')}:admin,{digest('acme-key')}:account:acme"
    d = daemons(plans_file=plans, api_keys=keys)
    admin = {"Authorization": "Bearer admin-key"}
    acme = {"Authorization": "Bearer acme-key"}
    async with aiohttp.ClientSession() as http:
        status, _, _ = await _call(http, "POST", f"{d.api}/v1/sessions", headers=admin,
                                   json={"account_id": "other", "session_id": "o1"})  # fmt: skip
        assert status == 201
        # A wrong key is 401 before any limit and counts against none.
        for _ in range(3):
            status, _, resp = await _call(http, "GET", f"{d.api}/v1/accounts/acme",
                                          headers={"Authorization": "Bearer wrong"})  # fmt: skip
            assert status == 401 and _headers(resp) == (None, None)
        # Another account's session is unknown to acme's key: 404, no headers, no count.
        status, _, resp = await _call(http, "GET", f"{d.api}/v1/sessions/o1", headers=acme)
        assert status == 404 and _headers(resp) == (None, None)
        status, _, resp = await _call(http, "GET", f"{d.api}/v1/accounts/acme", headers=acme)
        assert status == 200 and resp.headers["RateLimit"] == '"requests";r=4;t=12'
        status, _, resp = await _call(http, "GET", f"{d.api}/v1/sessions/o1", headers=admin)
        assert status == 200 and _near(_state(resp)["requests"], 3, 24)


# The SDK and the CLI


async def test_sdk_raises_rate_limited_or_waits_it_out(
    daemons: Start, plans: Path, redis: Any
) -> None:
    d = daemons(plans_file=plans)
    await redis.hset("lifecycle:{0}:a:acme", "plan", "fast")  # as an uncounted PUT would
    async with LifecycleClient(d.api) as client:
        # At once: one request a second refills the limit of 60.
        await asyncio.gather(*(client.account("acme") for _ in range(60)))
        with pytest.raises(RateLimited) as refused:
            await client.account("acme")
        assert refused.value.code == "rate_limited" and refused.value.retry_after == 1
    async with LifecycleClient(d.api, retry_rate_limited=True) as patient:
        started = time.monotonic()
        account = await patient.account("acme")
        assert account.plan == "fast"
        assert time.monotonic() - started >= 0.5  # it waited for its turn
    async with LifecycleClient(d.api, retry_rate_limited=True, max_rate_limit_wait=0.5) as hasty:
        with pytest.raises(RateLimited):
            await hasty.account("acme")


async def test_cli_prints_how_long_to_wait(daemons: Start, plans: Path) -> None:
    d = daemons(plans_file=plans)
    async with LifecycleClient(d.api) as client:
        for _ in range(5):
            await client.account("acme")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "account", "acme", "--api", d.api,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 4
    assert re.fullmatch(
        "lifecycled: Too many requests for account acme: plan free allows 5 requests per "
        r"minute; retry in 1[012] s\.",
        err.decode().strip(),
    ), err
