"""The operator console over HTTP against a real daemon: login, CSRF, pages, actions.

The browser drives the same pages in tests/test_console_browser.py; these check what a
browser does not show (cookies' attributes, status codes, what reaches the log).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from daemon.console.charts import quantile, read_sample, series
from daemon.metrics import Metrics
from daemon.webhook_endpoints import Endpoints
from tests.servers import Daemon, ValkeyProcess, eventually
from tests.test_credits import _metered_daemon, _top_up
from tests.webhook_receiver import Receiver

Start = Callable[..., Daemon]
ROOT, ACME = "console-root-key", "console-acme-key"


def _keys() -> str:
    root, acme = (hashlib.sha256(k.encode()).hexdigest() for k in (ROOT, ACME))
    return f"{root}:admin,{acme}:account:acme"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def _http() -> aiohttp.ClientSession:
    # The daemon listens on 127.0.0.1: the cookie jar must accept cookies of an IP address.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(http: aiohttp.ClientSession, api: str, key: str) -> aiohttp.ClientResponse:
    async with http.get(f"{api}/ui/login") as resp:
        token = _csrf(await resp.text())
    return await http.post(
        f"{api}/ui/login", data={"csrf": token, "key": key}, allow_redirects=False
    )


async def test_login_csrf_terminate_and_extend(
    redis: Any, valkey: ValkeyProcess, daemons: Start
) -> None:
    # As config/redis-users.acl's least-privileged user: the console needs nothing more.
    await redis.acl_log_reset()
    d = daemons(api_keys=_keys(), redis_url=valkey.url_as("lifecycled"))
    bearer = {"Authorization": f"Bearer {ROOT}"}
    async with _http() as http:
        async with http.get(f"{d.api}/ui", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/ui/"
        async with http.get(f"{d.api}/ui/", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ui/login"

        wrong = await _login(http, d.api, "not-" + ROOT)
        assert wrong.status == 401 and "That key is not valid." in await wrong.text()
        scoped = await _login(http, d.api, ACME)
        assert scoped.status == 401 and "not an admin key" in await scoped.text()
        # A login without the form's token is refused.
        async with http.post(
            f"{d.api}/ui/login", data={"key": ROOT}, allow_redirects=False
        ) as resp:
            assert resp.status == 403
        ok = await _login(http, d.api, ROOT)
        assert ok.status == 303 and ok.headers["Location"] == "/ui/"
        cookie = next(
            h for h in ok.headers.getall("Set-Cookie") if h.startswith("lifecycled_console=")
        )
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
        assert ROOT not in cookie
        # Redis holds the digest of the cookie's token, never the token (nor the key).
        token = next(c.value for c in http.cookie_jar if c.key == "lifecycled_console")
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert await redis.keys("lifecycle:console:*") == [f"lifecycle:console:{digest}".encode()]

        async with http.post(
            f"{d.api}/v1/sessions",
            json={"account_id": "acme", "timeout_seconds": 600},
            headers=bearer,
        ) as resp:
            sid = (await resp.json())["session_id"]
        async with http.get(f"{d.api}/ui/sessions", params={"q": sid}) as resp:
            assert resp.status == 200 and str(resp.url).endswith(f"/ui/sessions/{sid}")
            page = await resp.text()
        for field in ("session_id", "account_id", "terminates_at", "remaining_seconds"):
            assert f'data-field="{field}"' in page
        assert 'class="countdown" data-remaining="' in page
        assert "<td>created</td>" in page  # the timeline

        action = f"{d.api}/ui/sessions/{sid}"
        async with http.post(f"{action}/terminate", data={}, allow_redirects=False) as resp:
            assert resp.status == 403 and "CSRF" in await resp.text()
        async with http.post(
            f"{action}/terminate", data={"csrf": "0" * 64}, allow_redirects=False
        ) as resp:
            assert resp.status == 403
        async with http.get(f"{d.api}/v1/sessions/{sid}", headers=bearer) as resp:
            assert (await resp.json())["status"] == "ready"

        token = _csrf(page)
        # Pause and resume (SPEC §8), as buttons of a live session.
        assert 'id="pause"' in page and 'id="resume"' not in page
        async with http.post(f"{action}/pause", data={"csrf": token}) as resp:
            text = await resp.text()
            assert resp.status == 200 and "Paused." in text and 'id="resume"' in text
        assert 'id="pause"' not in text and "s-paused" in text
        async with http.get(f"{d.api}/v1/sessions/{sid}", headers=bearer) as resp:
            body = await resp.json()
            assert body["status"] == "paused" and body["paused_at"] is not None
        async with http.post(f"{action}/pause", data={"csrf": token}) as resp:
            assert "already paused" in await resp.text()
        async with http.post(f"{action}/resume", data={"csrf": token}) as resp:
            text = await resp.text()
            assert resp.status == 200 and "Resumed." in text and 'id="pause"' in text
        async with http.get(f"{d.api}/v1/sessions/{sid}", headers=bearer) as resp:
            body = await resp.json()
            assert body["status"] != "paused" and body["paused_at"] is None
        async with http.get(f"http://127.0.0.1:{d.metrics_port}/metrics") as resp:
            exposition = await resp.text()
        assert 'lifecycle_pauses_total{reason="requested"} 1.0' in exposition
        assert "lifecycle_resumes_total 1.0" in exposition
        async with http.post(f"{action}/extend", data={"csrf": token, "seconds": "900"}) as resp:
            assert resp.status == 200 and "Maximum lifetime now" in await resp.text()
        async with http.get(f"{d.api}/v1/sessions/{sid}", headers=bearer) as resp:
            assert (await resp.json())["max_lifetime_seconds"] == 600 + 900
        async with http.post(f"{action}/extend", data={"csrf": token, "seconds": "3600"}) as resp:
            assert "over the maximum" in await resp.text()
        async with http.post(f"{action}/terminate", data={"csrf": token}) as resp:
            assert resp.status == 200 and "Terminated." in await resp.text()
        async with http.get(f"{d.api}/v1/sessions/{sid}", headers=bearer) as resp:
            body = await resp.json()
            assert body["status"] == "terminated" and body["termination_reason"] == "requested"

        # Outcomes shown after a form are signed for the login: a crafted link shows none.
        async with http.get(f"{action}?msg=Call+support+now&error=Session+broken") as resp:
            page = await resp.text()
        assert "Call support now" not in page and "Session broken" not in page
        async with http.get(f"{d.api}/ui/sessions/nope") as resp:
            assert resp.status == 404 and "No session nope." in await resp.text()
        async with http.post(f"{d.api}/ui/logout", data={"csrf": token}) as resp:
            assert str(resp.url).endswith("/ui/login")
        async with http.get(f"{d.api}/ui/sessions", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ui/login"
        assert await redis.keys("lifecycle:console:*") == []
    # The key never reaches the log; the console's address is there.
    assert ROOT not in d.log() and ACME not in d.log()
    assert f"http://127.0.0.1:{d.http_port}/ui/" in d.log()
    assert await redis.acl_log() == []


async def test_open_console_pages_and_dead_letters(
    redis: Any, valkey: ValkeyProcess, daemons: Start
) -> None:
    await redis.acl_log_reset()
    d = daemons(redis_url=valkey.url_as("lifecycled"))
    async with _http() as http:
        sids = []
        for account in ("acme", "acme", "globex"):
            async with http.post(f"{d.api}/v1/sessions", json={"account_id": account}) as resp:
                sids.append((await resp.json())["session_id"])
        # No keys: the API is open and so is the console, with a login cookie all the same.
        async with http.get(f"{d.api}/ui/sessions") as resp:
            assert resp.status == 200
            page = await resp.text()
        assert all(sid in page for sid in sids) and "3 in all" in page
        # An account id opens the account with its live sessions.
        async with http.get(f"{d.api}/ui/sessions", params={"q": "acme"}) as resp:
            assert str(resp.url).endswith("/ui/accounts/acme")
            page = await resp.text()
        assert sids[0] in page and sids[1] in page and sids[2] not in page
        async with http.get(f"{d.api}/ui/sessions", params={"q": "nobody"}) as resp:
            assert "No session has the id <strong>nobody</strong>" in await resp.text()
        async with http.get(f"{d.api}/ui/sessions", params={"q": "no/such id"}) as resp:
            page = await resp.text()
        assert "Ids are 1-128 characters" in page and "No session has" not in page
        async with http.get(f"{d.api}/ui/accounts") as resp:
            page = await resp.text()
        assert "/ui/accounts/acme" in page and "/ui/accounts/globex" in page
        async with http.get(f"{d.api}/ui/accounts/acme") as resp:
            page = await resp.text()
        assert 'data-field="live_sessions">2<' in page and sids[0] in page
        async with http.get(f"{d.api}/ui/") as resp:
            page = await resp.text()
        assert re.search(r'id="live">3<', page), page
        async with http.get(f"{d.api}/ui/metrics.json") as resp:
            data = await resp.json()
        assert set(data) >= {"t", "terminations", "lateness_p99", "lag_p50"}
        async with http.get(f"{d.api}/ui/webhooks") as resp:
            assert resp.status == 200 and "No webhook endpoints." in await resp.text()
        endpoint = await Endpoints(redis, "lifecycle").add({"url": "https://hooks.example/x"})
        wid = endpoint.webhook_id
        member = f"1764000000000-0.{wid}"
        await redis.hset(
            f"lifecycle:{{0}}:wh:d:{member}",
            mapping={"w": wid, "y": "terminate", "n": "8", "r": "HTTP 500"},
        )
        await redis.zadd(f"lifecycle:{{0}}:wh:dead:{wid}", {member: 1764000000000})
        async with http.get(f"{d.api}/ui/webhooks") as resp:
            page = await resp.text()
        assert "https://hooks.example/x" in page and "HTTP 500" in page
        assert "1764000000000-0" in page and "2025-11-24 16:00:00 UTC" in page
        async with http.get(f"{d.api}/ui/static/htmx.min.js") as resp:
            assert resp.status == 200 and "htmx" in await resp.text()

        dead = "lifecycle:{0}:dead"
        fields = {"type": "created", "session_id": "ses_console_dl", "account_id": "initech"}
        first = (await redis.xadd(dead, {**fields, "error": "unknown plan 'team'"})).decode()
        second = (await redis.xadd(dead, {"type": "bogus", "error": "unknown type"})).decode()
        async with http.get(f"{d.api}/ui/dead-letters") as resp:
            page = await resp.text()
        assert first in page and second in page and "unknown plan" in page
        token = _csrf(page)
        replay = f"{d.api}/ui/dead-letters/0/{first}/replay"
        async with http.post(replay, data={"csrf": token, "session_id": "ses_console_dl"}) as resp:
            page = await resp.text()
        assert f"Replayed {first}" in page and "/ui/sessions/ses_console_dl" in page
        assert first not in page.split("</p>", 3)[-1]  # gone from the list
        async with http.post(replay, data={"csrf": token}) as resp:
            assert "No dead letter" in await resp.text()

        async def replayed() -> bool:
            async with http.get(f"{d.api}/v1/sessions/ses_console_dl") as resp:
                return resp.status == 200

        await eventually(replayed, what="the replayed session")
        drop = f"{d.api}/ui/dead-letters/0/{second}/drop"
        async with http.post(drop, data={"csrf": token}) as resp:
            assert f"Dropped {second}" in await resp.text()
        assert await redis.xlen(dead) == 0
    # The open console keeps no logins in Redis.
    assert await redis.keys("lifecycle:console:*") == []
    assert await redis.acl_log() == []


def test_chart_series_from_the_registry() -> None:
    metrics = Metrics(CollectorRegistry())
    before = read_sample(metrics.registry, at=1000.0)
    for _ in range(98):
        metrics.expiry_lateness.observe(0.003)
    metrics.expiry_lateness.observe(0.7)
    metrics.expiry_lateness.observe(0.7)
    metrics.terminations.labels(reason="inactivity").inc(3)
    after = read_sample(metrics.registry, at=1010.0)
    idle = read_sample(metrics.registry, at=1020.0)
    data = series([before, after, idle])
    assert data["t"] == [1010.0, 1020.0]
    assert data["terminations"]["inactivity"] == [3.0, 0.0]
    # p50 inside the 1-5 ms bucket, p99 inside 500 ms-1 s; nothing observed later.
    assert 1 < data["lateness_p50"][0] < 5 and 500 < data["lateness_p99"][0] <= 1000
    assert data["lateness_p50"][1] is None and data["lag_p50"] == [None, None]
    assert quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None


async def test_a_login_holds_on_every_replica_and_wrong_keys_block(daemons: Start) -> None:
    a, b = daemons(api_keys=_keys()), daemons(api_keys=_keys())
    async with _http() as http:
        # Cookies do not tell ports apart: the one jar logs in to both replicas.
        assert (await _login(http, a.api, ROOT)).status == 303
        async with http.get(f"{b.api}/ui/sessions", allow_redirects=False) as resp:
            assert resp.status == 200
            token = _csrf(await resp.text())
        async with http.get(f"{b.api}/ui/nope") as resp:
            assert resp.status == 404 and "text/html" in resp.headers["Content-Type"]
        async with http.post(f"{b.api}/ui/logout", data={"csrf": token}) as resp:
            assert str(resp.url).endswith("/ui/login")
        async with http.get(f"{a.api}/ui/", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ui/login"

        # Failed logins count with the API's failed authentications of the address.
        statuses = [(await _login(http, a.api, f"guess-{i}")).status for i in range(10)]
        assert statuses == [401] * 10
        blocked = await _login(http, b.api, ROOT)
        assert blocked.status == 429 and "Too many failed logins" in await blocked.text()
        bearer = {"Authorization": f"Bearer {ROOT}"}
        async with http.get(f"{a.api}/v1/accounts/acme", headers=bearer) as resp:
            assert resp.status == 429


async def test_sessions_pages_of_each_partition(daemons: Start) -> None:
    d = daemons(partitions=2)
    async with _http() as http:
        # acme and wayne live in different partitions of two.
        for account in ("acme", "wayne"):
            async with http.post(f"{d.api}/v1/sessions", json={"account_id": account}) as resp:
                assert resp.status == 201
        pages = []
        for partition in (0, 1):
            async with http.get(f"{d.api}/ui/sessions?partition={partition}") as resp:
                pages.append(await resp.text())
        assert all('href="?partition=1"' in page and "1 in all" in page for page in pages)
        assert sorted(("/ui/accounts/acme" in p, "/ui/accounts/wayne" in p) for p in pages) == [
            (False, True), (True, False)]  # fmt: skip
        async with http.get(f"{d.api}/ui/sessions?partition=2") as resp:
            assert resp.status == 422 and "No partition 2." in await resp.text()
        async with http.get(f"{d.api}/ui/sessions?offset=-1") as resp:
            assert resp.status == 422


async def test_pages_of_fifty(daemons: Start) -> None:
    d = daemons()
    async with _http() as http:
        async with http.put(f"{d.api}/v1/accounts/big", json={"plan": "enterprise"}) as resp:
            assert resp.status == 200
        for i in range(60):
            body = {"account_id": "big", "session_id": f"s{i:02d}",
                    "inactivity_timeout_seconds": 100 + i}  # fmt: skip
            async with http.post(f"{d.api}/v1/sessions", json=body) as resp:
                assert resp.status == 201
        async with http.get(f"{d.api}/ui/sessions") as resp:
            first = await resp.text()
        async with http.get(f"{d.api}/ui/sessions?partition=0&offset=50") as resp:
            second = await resp.text()
        rows = [re.findall(r'<tr data-session="(s\d\d)">', page) for page in (first, second)]
        # Soonest deadline first: the sessions in the order of their inactivity timeouts.
        assert rows == [[f"s{i:02d}" for i in range(50)], [f"s{i:02d}" for i in range(50, 60)]]
        assert "offset=50" in first and "later" in first and "later" not in second
        async with http.get(f"{d.api}/ui/accounts/big") as resp:
            page = await resp.text()
        assert "Live sessions (60)" in page and len(re.findall(r"<tr data-session=", page)) == 60


async def test_metered_account_shows_its_credits(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = _metered_daemon(daemons, tmp_path)
    async with _http() as http:
        await _top_up(http, d.api, "acme", 10, "inv_console")
        async with http.post(f"{d.api}/v1/sessions", json={"account_id": "acme"}) as resp:
            assert resp.status == 201
            sid = (await resp.json())["session_id"]
        async with http.get(f"{d.api}/ui/accounts/acme") as resp:
            page = await resp.text()
        # A resume is admitted like a create: not once the account's credits are used up.
        action = f"{d.api}/ui/sessions/{sid}"
        async with http.get(action) as resp:
            token = _csrf(await resp.text())
        async with http.post(f"{action}/pause", data={"csrf": token}) as resp:
            assert "Paused." in await resp.text()
        await redis.hset("lifecycle:{0}:a:acme", "mb", "0")  # used up while paused
        async with http.post(f"{action}/resume", data={"csrf": token}) as resp:
            text = await resp.text()
        assert "Resumed." not in text and 'id="resume"' in text
        assert re.search(r'role="alert">[^<]*balance_depleted', text), text
        async with http.get(f"{d.api}/v1/sessions/{sid}") as resp:
            assert (await resp.json())["status"] == "paused"
    assert 'data-field="metered">true<' in page
    assert re.search(r'data-field="balance">\d', page), page
    assert 'data-field="credits_per_hour">3600<' in page
    assert 'data-field="burn_per_hour">3600<' in page
    assert 'data-field="depletes_at">20' in page  # an RFC 3339 time
    assert "<dt>session_seconds</dt>" in page and "<dt>credits</dt>" in page


async def test_replay_a_dead_webhook_delivery(redis: Any, daemons: Start) -> None:
    receiver = await Receiver(answer=lambda _: 500).start()
    try:
        endpoint = await Endpoints(redis, "lifecycle").add({"url": receiver.url})
        receiver.secret, wid = endpoint.secret, endpoint.webhook_id
        d = daemons(api_keys=_keys(), webhook_max_attempts=1, webhook_timeout_seconds=2)
        bearer = {"Authorization": f"Bearer {ROOT}"}
        async with _http() as http:
            assert (await _login(http, d.api, ROOT)).status == 303
            async with http.post(
                f"{d.api}/v1/sessions", json={"account_id": "acme"}, headers=bearer
            ) as resp:
                sid = (await resp.json())["session_id"]
            async with http.delete(f"{d.api}/v1/sessions/{sid}", headers=bearer) as resp:
                assert resp.status == 200
            dead = f"lifecycle:{{0}}:wh:dead:{wid}"

            async def is_dead() -> bool:
                return int(await redis.zcard(dead)) == 1

            await eventually(is_dead, timeout=15, what="the delivery given up on")
            async with http.get(f"{d.api}/ui/webhooks") as resp:
                page = await resp.text()
            (msg_id,) = receiver.attempts
            entry = msg_id.removeprefix("cmd_0_")
            form = f"/ui/webhooks/{wid}/0/{entry}/replay"
            assert f'action="{form}"' in page and "HTTP 500" in page
            token = _csrf(page)
            async with http.post(f"{d.api}{form}", data={}) as resp:
                assert resp.status == 403 and await redis.zcard(dead) == 1
            receiver.answer = lambda _: 200
            async with http.post(f"{d.api}{form}", data={"csrf": token}) as resp:
                page = await resp.text()
            assert resp.status == 200 and f"Replayed the delivery of {entry}" in page

            async def delivered() -> bool:
                return receiver.ids() == {msg_id}

            await eventually(delivered, timeout=15, what="the replayed delivery")
            assert receiver.attempts == {msg_id: 2} and await redis.zcard(dead) == 0
            async with http.get(f"{d.api}/ui/webhooks") as resp:
                assert form not in await resp.text()
            async with http.post(f"{d.api}{form}", data={"csrf": token}) as resp:
                assert f"No dead delivery of {entry}" in await resp.text()
            async with http.post(
                f"{d.api}/ui/webhooks/{wid}/7/{entry}/replay", data={"csrf": token}
            ) as resp:
                assert "No partition 7." in await resp.text()
    finally:
        await receiver.stop()
