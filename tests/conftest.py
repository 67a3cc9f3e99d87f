"""Fixtures: one real valkey-server per test session, flushed for every test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon.events import ParsedEvent, parse_entry
from daemon.keys import GROUP
from daemon.settings import Settings
from daemon.store import ApplyResult, Store
from tests.servers import Daemon, ValkeyProcess

# Settings come from the tests, never from the machine running them.
for _name in list(os.environ):
    if _name.startswith("LIFECYCLE_"):
        del os.environ[_name]


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyProcess]:
    # With config/redis-users.acl: the scripts run as its least-privileged `lifecycled`.
    server = ValkeyProcess(tmp_path_factory.mktemp("valkey"), users=True).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(valkey: ValkeyProcess) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(valkey.url)
    await client.flushall()
    yield client
    await client.aclose()


class Harness:
    """A Store on the test server, with this test's settings, acting as one replica.

    ``redis`` sets up and inspects as the test's administrator; the Store uses
    ``store_redis`` when given (the harness fixture: the ACL file's `lifecycled` user).
    """

    def __init__(self, redis: Any, settings: Settings, store_redis: Any = None) -> None:
        self.redis = redis
        self.settings = settings
        self.store = Store(store_redis or redis, settings, settings.plans())
        self.pk = self.store.partitions[0]
        self.replica = "test-replica"

    async def setup(self) -> Harness:
        for pk in self.store.partitions:
            await self.redis.xgroup_create(pk.events, GROUP, id="0", mkstream=True)
            await self.redis.set(pk.lease, self.replica)
        return self

    async def publish(self, **fields: Any) -> str:
        account = str(fields.get("account_id", ""))
        pk = self.store.partition_for(account) if account else self.pk
        entry_id = await self.redis.xadd(pk.events, {k: v for k, v in fields.items()})
        return str(entry_id.decode())

    async def read(self, consumer: str | None = None) -> list[ParsedEvent]:
        """XREADGROUP ``>`` on partition 0 as ``consumer`` (this replica), checked."""
        reply = await self.redis.xreadgroup(GROUP, consumer or self.replica, {self.pk.events: ">"})
        return [parse_entry(eid, f, self.store.plans) for eid, f in (reply[0][1] if reply else [])]

    async def consume(self, partition: int = 0) -> ApplyResult:
        """Read and apply everything waiting in one partition's stream."""
        pk = self.store.partitions[partition]
        reply = await self.redis.xreadgroup(GROUP, self.replica, {pk.events: ">"}, count=10_000)
        entries = reply[0][1] if reply else []
        events = [parse_entry(eid, f, self.store.plans) for eid, f in entries]
        result = await self.store.apply_events(pk, self.replica, events)
        assert result is not None
        return result

    async def commands(self, partition: int = 0) -> list[dict[str, str]]:
        pk = self.store.partitions[partition]
        return [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in await self.redis.xrange(pk.commands)
        ]

    async def server_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000


@pytest.fixture
async def harness(redis: Any, valkey: ValkeyProcess) -> AsyncIterator[Callable[..., Any]]:
    least_privileged = aioredis.Redis.from_url(valkey.url_as("lifecycled"))

    async def make(**overrides: Any) -> Harness:
        return await Harness(redis, Settings(**overrides), least_privileged).setup()

    yield make
    await least_privileged.aclose()


@pytest.fixture
def daemons(valkey: ValkeyProcess, redis: Any, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``lifecycled run`` subprocesses on the test server; all stopped afterwards."""
    started: list[Daemon] = []

    def start(wait_ready: bool = True, **settings: Any) -> Daemon:
        env = {"LIFECYCLE_REDIS_URL": valkey.url, "LIFECYCLE_LOG_LEVEL": "debug"}
        env.update({f"LIFECYCLE_{k.upper()}": str(v) for k, v in settings.items()})
        daemon = Daemon(env, tmp_path / f"daemon-{len(started)}.log")
        started.append(daemon)
        return daemon.start(wait_ready=wait_ready)

    yield start
    for daemon in started:
        daemon.stop()
