"""Redis at ``maxmemory`` with ``noeviction``: no script leaves a partial write, and a
daemon reports not ready, answers 503 with the reason, loses nothing and recovers.

The fault is ``CONFIG SET maxmemory 1`` on a private valkey-server: from then on every
command that may grow memory is refused with ``OOM``, as on a server that filled up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from daemon import dead_letters, webhook_store
from daemon.plans import PACKAGED_PLANS_FILE
from daemon.scripts import SCRIPT_NAMES
from daemon.settings import Settings
from daemon.store import RateCheck
from daemon.webhook_store import WEBHOOK_GROUP, Outgoing, WebhookStore
from tests.conftest import Harness
from tests.faults import http_json, not_ready
from tests.servers import Daemon, ValkeyProcess, eventually

COMMANDS = "lifecycle:{0}:commands"


async def _after(server_ms: Any, ms: int) -> bool:
    return bool(await server_ms() > ms)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyProcess]:
    # Its own server: the memory limit must not reach the tests sharing the session's.
    valkey = ValkeyProcess(tmp_path_factory.mktemp("valkey-oom")).start()
    yield valkey
    valkey.stop()


@pytest.fixture
async def client(server: ValkeyProcess) -> AsyncIterator[Any]:
    redis = aioredis.Redis.from_url(server.url)
    await redis.config_set("maxmemory", "0")
    await redis.flushall()
    yield redis
    await redis.config_set("maxmemory", "0")
    await redis.aclose()


async def keyspace(redis: Any) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing was written."""
    return {key: await redis.dump(key) async for key in redis.scan_iter(count=1000)}


class OutOfMemoryFirst:
    """A script that is first called with the server out of memory, then as it is.

    Under OOM the call must either succeed (it wrote nothing that needs memory, or it is
    a read) or be refused with the keyspace exactly as before; then, with memory back, the
    same call runs for real so that the workload goes on.
    """

    def __init__(self, name: str, script: Any, redis: Any, outcomes: dict[str, set[str]]):
        self.name, self.script, self.redis, self.outcomes = name, script, redis, outcomes

    async def __call__(
        self, keys: list[Any] | None = None, args: list[Any] | None = None, client: Any = None
    ) -> Any:
        before = await keyspace(self.redis)
        await self.redis.config_set("maxmemory", "1")
        try:
            reply = await self.script(keys=keys, args=args, client=client)
        except OutOfMemoryError:
            await self.redis.config_set("maxmemory", "0")
            assert await keyspace(self.redis) == before, f"{self.name}: partial write on OOM"
            self.outcomes.setdefault(self.name, set()).add("refused")
            return await self.script(keys=keys, args=args, client=client)
        finally:
            await self.redis.config_set("maxmemory", "0")
        self.outcomes.setdefault(self.name, set()).add("ran")
        return reply


async def test_no_script_leaves_a_partial_write_when_out_of_memory(client: Any) -> None:
    h = await Harness(client, Settings(warn_before_seconds=1)).setup()
    outcomes: dict[str, set[str]] = {}
    store = h.store
    for name, script in list(store._scripts.items()):
        store._scripts[name] = OutOfMemoryFirst(name, script, client, outcomes)
    pk = h.pk

    await store.migrate_deadlines(pk)
    await store.register_replica("r1")
    await store.rate_limit(account_id="acme", creates=True)
    await store.auth_failures("192.0.2.1", record=True)
    await store.create_session("s1", "acme", 600, 60, True)
    await store.create_session("s2", "acme", 600, 1, True)
    await store.keepalive("s1", activity=True)
    await store.keepalive("s1", rate=RateCheck())  # the rate limits checked inside
    await store.patch_session("s1", inactivity_timeout_seconds=120)
    await store.pause("s1")
    await store.resume("s1")
    await store.get_session("s1")
    await store.timeline("s1")
    await store.list_sessions("acme")
    await store.set_account("acme", plan="pro")
    await store.get_account("acme")
    await store.top_up("acme", 5_000_000, "inv_1")
    await h.publish(type="activity", session_id="s1", account_id="acme")
    await h.publish(type="created", session_id="s3", account_id="acme")
    await h.consume()

    async def expired() -> int:
        return (await store.expire_due(pk)).terminated

    assert await eventually(expired, what="s2 expired") == 1
    await store.terminate("s3")

    letter = {"type": "created", "session_id": "s4", "account_id": "acme", "error": "test"}
    dead = (await client.xadd(pk.dead, letter)).decode()
    await store._call("dead_letter_list", pk, "", 10)
    assert await dead_letters.replay(store, pk, dead)

    await client.xgroup_create(pk.commands, WEBHOOK_GROUP, id="0")
    [(_, [(entry, _)])] = await client.xreadgroup(WEBHOOK_GROUP, "r1", {pk.commands: ">"}, 1)
    webhooks = WebhookStore(store)
    await webhooks.enqueue(pk, [Outgoing(entry.decode(), "terminate", "{}", ["wh_a"])])
    [claimed] = (await webhooks.claim(pk, 60_000, {"wh_a": 1})).claimed
    assert await webhooks.finish(pk, claimed, "ok", 0, 3) == "delivered"
    await client.xadd(pk.commands, {"type": "terminate", "session_id": "s1"})
    [(_, [(entry, _)])] = await client.xreadgroup(WEBHOOK_GROUP, "r1", {pk.commands: ">"}, 1)
    await webhooks.enqueue(pk, [Outgoing(entry.decode(), "terminate", "{}", ["wh_b"])])
    [claimed] = (await webhooks.claim(pk, 60_000, {"wh_b": 1})).claimed
    assert await webhooks.finish(pk, claimed, "fail", 0, 1, "500") == "dead"
    [dead_delivery] = await webhook_store.list_deliveries(store, "wh_b", "dead", 10)
    assert await webhook_store.replay_delivery(store, pk.partition, dead_delivery.entry_id, "wh_b")
    assert await webhook_store.remove_deliveries(store, "wh_b") == 1

    await client.delete(pk.lease)
    assert await store.take_lease(pk, "r1#1", renew=False)
    assert await store.take_lease(pk, "r1#1", renew=True)
    await store.release_lease(pk, "r1#1")
    await store.unregister_replica("r1")

    assert set(outcomes) == set(SCRIPT_NAMES), "a script the workload did not call"
    refused = {name for name, seen in outcomes.items() if "refused" in seen}
    # What writes first is refused whole; reads are still answered.
    assert {"create_session", "expire_due", "keepalive"} <= refused
    assert not refused & {"get_session", "list_sessions", "get_account", "get_timeline"}


async def test_daemon_out_of_memory_is_not_ready_refuses_writes_and_recovers(
    client: Any, server: ValkeyProcess, tmp_path: Path
) -> None:
    # The shipped plans: their request rates are counted by a script that OOM refuses.
    env = {"LIFECYCLE_REDIS_URL": server.url, "LIFECYCLE_LEASE_TTL_MS": "1500",
           "LIFECYCLE_PLANS_FILE": str(PACKAGED_PLANS_FILE)}  # fmt: skip
    d = Daemon(env, tmp_path / "daemon.log").start()
    try:
        api = f"{d.api}/v1/sessions"
        acked = []
        for n in range(5):
            status, body = await asyncio.to_thread(
                http_json,
                "POST",
                api,
                {"account_id": f"acme{n}", "inactivity_timeout_seconds": 600},
            )
            assert status == 201
            acked.append(body["session_id"])
        # Due while memory is short: its termination waits, with its own deadline.
        status, due = await asyncio.to_thread(
            http_json, "POST", api, {"account_id": "acme9", "inactivity_timeout_seconds": 1}
        )
        assert status == 201

        await client.config_set("maxmemory", "1")
        status, body = await asyncio.to_thread(http_json, "POST", api, {"account_id": "acme"})
        assert status == 503
        assert body == {"error": "unavailable", "message": "Redis refuses writes: it is out of "
                        "memory (maxmemory reached); retry shortly."}  # fmt: skip
        # Reads are still answered (their request is not counted); readiness says why not.
        assert (await asyncio.to_thread(http_json, "GET", f"{api}/{acked[0]}"))[0] == 200
        ready = await eventually(lambda: asyncio.to_thread(not_ready, d), what="not ready")
        assert "out of memory" in ready["reason"], ready
        assert "Traceback" not in d.log()

        async def server_ms() -> int:
            sec, usec = await client.time()
            return int(sec) * 1000 + int(usec) // 1000

        record = await client.hmget(f"lifecycle:{{0}}:s:{due['session_id']}", "c")
        due_ms = int(record[0]) + 1000
        await eventually(lambda: _after(server_ms, due_ms + 300), what="the deadline passed")
        assert await client.xlen(COMMANDS) == 0  # nothing terminated while writes are refused

        lifted_ms = await server_ms()
        await client.config_set("maxmemory", "0")
        await eventually(lambda: asyncio.to_thread(d.ready), what="ready again")
        status, body = await asyncio.to_thread(
            http_json, "POST", api, {"account_id": "acme", "inactivity_timeout_seconds": 1}
        )
        assert status == 201
        for sid in acked:
            status, session = await asyncio.to_thread(http_json, "GET", f"{api}/{sid}")
            assert status == 200 and session["status"] == "ready"

        # Expiry works again: the overdue session and the new one are terminated once each,
        # the overdue one with its own deadline.
        async def two_commands() -> Any:
            commands = await client.xrange(COMMANDS)
            return commands if len(commands) >= 2 else None

        commands = [c for _, c in await eventually(two_commands, what="two terminate commands")]
        assert [c[b"session_id"].decode() for c in commands] == [due["session_id"],
                                                                 body["session_id"]]  # fmt: skip
        first = commands[0]
        assert first[b"reason"] == b"inactivity" and int(first[b"deadline"]) == due_ms
        assert int(first[b"emitted_at"]) >= lifted_ms
        assert len(await client.xrange(COMMANDS)) == 2
    finally:
        d.stop()
