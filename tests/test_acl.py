"""config/redis-users.acl: least privilege for the daemon and for the platform.

The session's valkey-server loads the file (tests/servers.py ``users_acl_file``), and the
``harness`` fixture's Store runs every script as ``lifecycled``, so tests/test_scripts.py
and the other Store tests fail if the file lacks anything a script calls; the chaos run
runs its replicas as ``lifecycled`` and produces as ``platform``. These tests check what
the users may not do, and one daemon end to end with no refusal in ``ACL LOG``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from daemon.publisher import EventPublisher
from tests.servers import Daemon, ValkeyProcess, eventually

EVENTS = "lifecycle:{0}:events"
COMMANDS = "lifecycle:{0}:commands"


@pytest.fixture
async def users(redis: Any, valkey: ValkeyProcess) -> AsyncIterator[dict[str, Any]]:
    clients = {name: aioredis.Redis.from_url(valkey.url_as(name)) for name in
               ("lifecycled", "platform")}  # fmt: skip
    await redis.acl_log_reset()
    yield clients
    for client in clients.values():
        await client.aclose()


async def refused(call: Any) -> bool:
    try:
        await call
    except NoPermissionError:
        return True
    return False


async def test_lifecycled_may_not_administer_nor_leave_its_keys(users: dict[str, Any]) -> None:
    daemon = users["lifecycled"]
    assert await daemon.ping()
    await daemon.hset("lifecycle:{0}:s:x", "s", "r")  # its own keys: allowed
    assert await refused(daemon.set("other-app:key", "1"))
    assert await refused(daemon.get("other-app:key"))
    assert await refused(daemon.flushall())
    assert await refused(daemon.config_get("maxmemory"))
    assert await refused(daemon.keys("*"))
    assert await refused(daemon.eval("return 1", 0))  # only the loaded scripts, by SHA
    assert await refused(daemon.execute_command("SUBSCRIBE", "lifecycle:x"))
    assert await refused(daemon.execute_command("ACL", "LIST"))
    assert await refused(daemon.execute_command("SHUTDOWN"))
    # A script's commands are checked too: a script outside the list is refused inside.
    sha = await daemon.script_load("return redis.call('FLUSHALL')")
    with pytest.raises(ResponseError, match="ACL failure in script"):
        await daemon.evalsha(sha, 0)


async def test_platform_may_only_add_events_and_read(redis: Any, users: dict[str, Any]) -> None:
    platform = users["platform"]
    await redis.xgroup_create(EVENTS, "lifecycled", id="0", mkstream=True)
    await redis.xadd(COMMANDS, {"type": "terminate", "session_id": "s1"})
    await redis.hset("lifecycle:{0}:s:s1", "s", "u")
    assert await platform.xadd(EVENTS, {"type": "activity", "session_id": "s1"})
    assert await platform.xrange(COMMANDS)
    assert await platform.hgetall("lifecycle:{0}:s:s1") == {b"s": b"u"}
    # The commands stream may be consumed with the platform's own group.
    await platform.xgroup_create(COMMANDS, "platform", id="0")
    [(_, [(entry, _)])] = await platform.xreadgroup("platform", "w1", {COMMANDS: ">"})
    assert await platform.xack(COMMANDS, "platform", entry) == 1
    # Nothing else is written: no forged command, no state, no acknowledgement of events.
    assert await refused(platform.xadd(COMMANDS, {"type": "terminate", "session_id": "s2"}))
    assert await refused(platform.hset("lifecycle:{0}:s:s1", "s", "t"))
    assert await refused(platform.delete(EVENTS))
    assert await refused(platform.xack(EVENTS, "lifecycled", "0-1"))
    assert await refused(platform.xtrim(EVENTS, maxlen=0))
    assert await refused(platform.xadd("other-app:events", {"a": "b"}))
    assert await refused(platform.keys("*"))
    assert await refused(platform.flushall())
    assert await refused(platform.script_load("return 1"))


async def test_a_daemon_runs_as_lifecycled_with_events_from_platform(
    redis: Any, valkey: ValkeyProcess, users: dict[str, Any], daemons: Callable[..., Daemon]
) -> None:
    daemons(redis_url=valkey.url_as("lifecycled"))
    async with EventPublisher(users["platform"]) as publisher:
        await publisher.billing("acme", "ok", plan="pro")
        await publisher.created("s1", "acme", inactivity_timeout_seconds=1)
        await publisher.activity("s1", "acme")
    commands = await eventually(lambda: redis.xrange(COMMANDS), what="the terminate command")
    assert [(c[b"type"], c[b"session_id"]) for _, c in commands] == [(b"terminate", b"s1")]
    assert await redis.acl_log() == []
