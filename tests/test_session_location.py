"""With several partitions a replica remembers which one holds a session (one round trip
fewer a request) and still finds a session whose id was purged and used again elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from daemon.keys import partition_of
from tests.servers import Daemon


async def test_a_purged_id_used_again_in_another_partition_is_found(
    daemons: Callable[..., Daemon], redis: Any
) -> None:
    d, replica = daemons(partitions=4), daemons(partitions=4)
    first = "acct0"
    other = next(f"acct{i}" for i in range(1, 100) if partition_of(f"acct{i}", 4)
                 != partition_of(first, 4))  # fmt: skip
    url = f"{d.api}/v1/sessions"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"account_id": first, "session_id": "s1"}) as resp:
            assert resp.status == 201
        async with http.post(f"{url}/s1/keepalive") as resp:
            assert resp.status == 200 and (await resp.json())["account_id"] == first
        # The record goes, as the retention purge removes it, and the id comes back, through
        # another replica, in another account, so another partition.
        p = partition_of(first, 4)
        assert await redis.delete(f"lifecycle:{{{p}}}:s:s1") == 1
        body = {"account_id": other, "session_id": "s1"}
        async with http.post(f"{replica.api}/v1/sessions", json=body) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(f"{url}/s1/keepalive") as resp:
            assert resp.status == 200 and (await resp.json())["account_id"] == other
        async with http.get(f"{url}/s1") as resp:
            assert resp.status == 200 and (await resp.json())["account_id"] == other
