"""Dead letters through the API of a real daemon: list with paging, replay, drop, gauge."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.servers import Daemon, eventually

Start = Callable[..., Daemon]
DEAD = "lifecycle:{0}:dead"


async def _call(http: aiohttp.ClientSession, method: str, url: str) -> tuple[int, Any]:
    async with http.request(method, url) as resp:
        return resp.status, await resp.json()


async def test_list_page_replay_and_drop(redis: Any, daemons: Start) -> None:
    d = daemons()
    # A valid create that was dead-lettered (say, for a plan added since), and a malformed one.
    fields = {"type": "created", "session_id": "ses_dl_1", "account_id": "acme"}
    good = await redis.xadd(DEAD, {**fields, "error": "unknown plan 'team'"})
    await redis.xadd("lifecycle:{0}:events", {"type": "activity", "session_id": "x" * 300,
                                              "account_id": "acme"})  # fmt: skip
    await eventually(lambda: redis.xlen(DEAD), what="the malformed entry dead-lettered")
    async with aiohttp.ClientSession() as http:
        status, body = await _call(http, "GET", f"{d.api}/v1/dead-letters?limit=1")
        assert status == 200
        [first] = body["dead_letters"]
        assert first == {"partition": 0, "id": good.decode(), "error": "unknown plan 'team'",
                         "fields": {"type": "created", "session_id": "ses_dl_1",
                                    "account_id": "acme"}}  # fmt: skip
        assert body["next"] == f"0:{good.decode()}"
        status, body = await _call(http, "GET", f"{d.api}/v1/dead-letters?after={body['next']}")
        [second] = body["dead_letters"]
        assert body["next"] is None and second["fields"]["type"] == "activity"
        assert "session_id" in second["error"]

        url = f"{d.api}/v1/dead-letters/0/{good.decode()}"
        # Two replays at once: one replays, the other finds the entry gone.
        answers = await asyncio.gather(*(_call(http, "POST", url + "/replay") for _ in range(2)))
        assert sorted(s for s, _ in answers) == [200, 404]
        status, session = await eventually(
            lambda: _ok(http, f"{d.api}/v1/sessions/ses_dl_1"), what="the replayed session"
        )
        assert session["account_id"] == "acme" and session["status"] == "ready"

        drop = f"{d.api}/v1/dead-letters/0/{second['id']}"
        assert (await _call(http, "DELETE", drop))[0] == 200
        status, body = await _call(http, "DELETE", drop)
        assert status == 404 and body["error"] == "dead_letter_not_found"
        assert (await _call(http, "GET", f"{d.api}/v1/dead-letters"))[1] == {
            "dead_letters": [], "next": None}  # fmt: skip
        assert (await _call(http, "GET", f"{d.api}/v1/dead-letters?limit=0"))[0] == 422
        assert (await _call(http, "POST", f"{d.api}/v1/dead-letters/7/1-0/replay"))[0] == 404
        assert (await _call(http, "POST", f"{d.api}/v1/dead-letters/0/nope/replay"))[0] == 422
        # Each part of an id is a 64-bit number: a larger one is malformed, not a Redis error.
        too_big = f"{d.api}/v1/dead-letters?after=0:1-{2**64}"
        assert (await _call(http, "GET", too_big))[0] == 422
    await redis.xadd(DEAD, {"type": "bogus", "error": "unknown type 'bogus'"})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{d.metrics_port}/metrics") as resp:
            text = await resp.text()
    assert 'lifecycle_dead_letters{partition="0"} 1.0' in text


async def _ok(http: aiohttp.ClientSession, url: str) -> tuple[int, Any] | None:
    status, body = await _call(http, "GET", url)
    return (status, body) if status == 200 else None
