"""Webhooks end to end: a real daemon delivers signed commands to a real aiohttp receiver."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook

from daemon.webhook_endpoints import Endpoints
from tests.servers import Daemon, eventually, free_port


async def test_a_terminate_command_is_delivered_signed_and_retried_with_the_same_id(
    redis: Any, daemons: Callable[..., Daemon]
) -> None:
    got: list[tuple[dict[str, str], Any]] = []
    answers = [500, 500, 500]
    times: list[float] = []

    async def receive(request: web.Request) -> web.Response:
        data = await request.text()
        times.append(asyncio.get_running_loop().time())
        got.append(
            (
                {k.lower(): v for k, v in request.headers.items()},
                Webhook(secret).verify(data, dict(request.headers)),
            )
        )
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        endpoint = await Endpoints(redis, "lifecycle").add({"url": f"http://127.0.0.1:{port}/hook"})
        secret = endpoint.secret
        d = daemons(webhook_retry_base_seconds=0.2, webhook_timeout_seconds=2)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{d.api}/v1/sessions", json={"account_id": "acme"}) as resp:
                sid = (await resp.json())["session_id"]
            await eventually(lambda: _groups(redis), what="webhooks group")
            async with http.delete(f"{d.api}/v1/sessions/{sid}") as resp:
                assert resp.status == 200

        async def four() -> bool:
            return len(got) >= 4

        await eventually(four, timeout=15, what="four attempts")
        ids = {h["webhook-id"] for h, _ in got}
        assert all(i.startswith("cmd_0_") for i in ids)
        assert len(ids) == 1
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[2] > gaps[0]  # 0.2 s x 4^(n-1), within half either way
        assert got[-1][1]["type"] == "terminate"
        assert got[-1][1]["data"]["session_id"] == sid
        assert got[-1][1]["data"]["reason"] == "requested"
    finally:
        await runner.cleanup()


async def _groups(redis: Any) -> bool:
    try:
        groups = await redis.xinfo_groups("lifecycle:{0}:commands")
    except Exception:
        return False
    return any(g["name"] in (b"webhooks", "webhooks") for g in groups)
