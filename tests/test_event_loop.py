"""The daemon's event loop (setting ``event_loop``): uvloop by default, asyncio on request."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
import pytest

from tests.servers import Daemon, eventually


async def _started_loop(daemon: Daemon) -> str:
    async def logged() -> str | None:
        for line in daemon.log().splitlines():
            if '"daemon_started"' in line:
                return str(json.loads(line)["event_loop"])
        return None

    return str(await eventually(logged, what="daemon_started"))


@pytest.mark.parametrize(("setting", "loop"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_the_daemon_serves_on_the_chosen_loop(
    daemons: Callable[..., Daemon], setting: str, loop: str
) -> None:
    d = daemons(event_loop=setting)
    assert await _started_loop(d) == loop
    async with aiohttp.ClientSession() as http:
        body = {"account_id": "acme", "session_id": "s1"}
        async with http.post(f"{d.api}/v1/sessions", json=body) as resp:
            assert resp.status == 201
        async with http.post(f"{d.api}/v1/sessions/s1/keepalive") as resp:
            assert resp.status == 200
