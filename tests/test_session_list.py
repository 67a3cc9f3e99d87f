"""Every live session, paged: ``GET /v1/sessions``, the SDK and ``lifecycled sessions``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import aiohttp

from daemon.client import LifecycleClient
from daemon.keys import partition_of
from tests.servers import Daemon
from tests.test_cli import cli

Start = Callable[..., Daemon]


async def _get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_pages_walk_every_partition_and_list_each_live_session_once(
    daemons: Start,
) -> None:
    d = daemons(partitions=4)
    async with LifecycleClient(d.api) as client:
        # One large partition (ZSCAN then walks it in steps) and small ones.
        await client.set_account("big", plan="enterprise")
        gate = asyncio.Semaphore(16)

        async def create(account: str, sid: str) -> None:
            async with gate:
                await client.create(account, session_id=sid)

        small = [f"acct-{n}" for n in range(8)]
        assert len({partition_of(a, 4) for a in small}) > 1
        await asyncio.gather(
            *(create("big", f"big-{n}") for n in range(300)),
            *(create(a, f"{a}-s{j}") for a in small for j in range(2)),
        )
        for sid in ("big-7", "acct-3-s0"):
            await client.terminate(sid)
        live = {f"big-{n}" for n in range(300)} | {f"{a}-s{j}" for a in small for j in range(2)}
        live -= {"big-7", "acct-3-s0"}

        pages: list[list[str]] = []
        after: str | None = None
        while True:
            page, after = await client.sessions_page(after=after, limit=40)
            pages.append([s.session_id for s in page])
            assert all(s.status != "terminated" for s in page)
            if after is None:
                break
        listed = [sid for page_ids in pages for sid in page_ids]
        assert sorted(listed) == sorted(live)  # each once, the terminated ones not at all
        # Paged: no request read the large partition whole.
        assert len(pages) > 4 and max(len(p) for p in pages) < 300, [len(p) for p in pages]
        everything = [s.session_id async for s in client.all_sessions(page_size=1000)]
        assert sorted(everything) == sorted(live)

    async with aiohttp.ClientSession() as http:
        status, body = await _get(http, f"{d.api}/v1/sessions?limit=5")
        assert status == 200 and set(body) == {"sessions", "next"} and body["next"]
        for bad in (
            "limit=0",
            "limit=1001",
            "limit=ten",
            "after=nope",
            "after=0:-1",
            "after=3:" + "9" * 20,
        ):
            status, body = await _get(http, f"{d.api}/v1/sessions?{bad}")
            assert (status, body["error"]) == (422, "invalid_request"), (bad, body)
        # A well-formed cursor past the end: an empty last page.
        for past in ("4:0",):
            status, body = await _get(http, f"{d.api}/v1/sessions?after={past}")
            assert (status, body) == (200, {"sessions": [], "next": None}), (past, body)


async def test_only_an_admin_lists_every_account(daemons: Start) -> None:
    admin, acme = "admin-secret", "acme-secret"
    digest = [hashlib.sha256(k.encode()).hexdigest() for k in (admin, acme)]
    d = daemons(api_keys=f"{digest[0]}:admin,{digest[1]}:account:acme")
    async with aiohttp.ClientSession() as http:
        status, body = await _get(http, f"{d.api}/v1/sessions", Authorization=f"Bearer {acme}")
        assert (status, body["error"]) == (403, "forbidden"), body
        status, body = await _get(http, f"{d.api}/v1/sessions")
        assert status == 401, body


async def test_cli_sessions_without_an_account_lists_all_of_them(daemons: Start) -> None:
    d = daemons(partitions=3)
    env = {"LIFECYCLE_API_URL": d.api}
    assert (await cli("sessions", env=env)).out == "no live sessions\n"
    async with LifecycleClient(d.api) as client:
        for account in ("acme", "globex", "initech"):
            await client.create(account, session_id=f"{account}-1")
    as_json, table = await asyncio.gather(
        cli("sessions", "--json", "--page-size", "1", env=env), cli("sessions", env=env)
    )
    assert as_json.code == 0, as_json.err
    listed = {(s["account_id"], s["session_id"]) for s in as_json.json()["sessions"]}
    assert listed == {("acme", "acme-1"), ("globex", "globex-1"), ("initech", "initech-1")}
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split()[:3] == ["ACCOUNT", "SESSION", "STATUS"]
    assert sorted(row.split()[:3] for row in rows) == [
        ["acme", "acme-1", "ready"], ["globex", "globex-1", "ready"],
        ["initech", "initech-1", "ready"],
    ]  # fmt: skip
