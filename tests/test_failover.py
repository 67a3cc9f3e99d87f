"""Redis failover with Sentinel: a primary, a replica, a Sentinel, and load during the failover."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.servers import VALKEY_SERVER, Daemon, ValkeyProcess, eventually, free_port, wait_for

SERVICE = "lifecycle-primary"


class Sentinel:
    def __init__(self, directory: Path, primary_port: int) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            f"bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self.proc = subprocess.Popen(
            [VALKEY_SERVER, str(self.conf), "--sentinel", "--logfile", str(directory / "log")]
        )

    async def primary_port(self) -> int | None:
        client = aioredis.Redis(port=self.port, socket_timeout=1)
        try:
            addr = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", SERVICE
            )
        except (RedisError, OSError):
            return None
        finally:
            await client.aclose()
        return int(addr[1]) if addr else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def replica_in_sync(port: int) -> bool:
    client = aioredis.Redis(port=port, socket_timeout=1)
    try:
        info = await client.info("replication")
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()
    return bool(info.get("master_link_status") == "up")


async def test_failover_keeps_every_acknowledged_session_and_terminates_each_once(
    tmp_path: Path,
) -> None:
    primary = ValkeyProcess(tmp_path / "primary", "--appendfsync", "always")
    (tmp_path / "primary").mkdir()
    primary.start()
    (tmp_path / "replica").mkdir()
    replica = ValkeyProcess(
        tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port),
        "--appendfsync", "always",
    )  # fmt: skip
    replica.start()
    sentinel = Sentinel(tmp_path / "sentinel", primary.port)
    daemon = Daemon(
        {
            "LIFECYCLE_REDIS_URL": f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}",
            "LIFECYCLE_REDIS_WAIT_REPLICAS": "1",
            "LIFECYCLE_REDIS_WAIT_TIMEOUT_MS": "300",
            "LIFECYCLE_LEASE_TTL_MS": "1500",
        },
        tmp_path / "daemon.log",
    )
    try:
        await eventually(lambda: replica_in_sync(replica.port), timeout=15, what="replica sync")
        await eventually(sentinel.primary_port, timeout=15, what="sentinel monitoring")
        daemon.start()
        acknowledged: list[str] = []

        async def create(http: aiohttp.ClientSession, sid: str) -> None:
            body = {"session_id": sid, "account_id": f"acct-{sid}",
                    "inactivity_timeout_seconds": 2, "timeout_seconds": 30}  # fmt: skip
            try:
                async with http.post("/v1/sessions", json=body) as resp:
                    if resp.status == 201:
                        acknowledged.append(sid)
            except (aiohttp.ClientError, TimeoutError):
                pass

        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(daemon.api, timeout=timeout) as http:
            for i in range(40):
                await create(http, f"before{i}")
            # The primary dies under load; Sentinel promotes the replica.
            primary.stop(signal.SIGKILL)
            for i in range(40):
                await create(http, f"during{i}")
            await eventually(
                lambda: _is(sentinel.primary_port(), replica.port), timeout=30,
                what="failover to the replica",
            )  # fmt: skip
            wait_for(daemon.ready, timeout=30, what="daemon ready after failover")
            for i in range(20):
                await create(http, f"after{i}")
        assert len(acknowledged) >= 60

        survivor: Any = aioredis.Redis(port=replica.port)

        async def all_terminated() -> bool:
            for sid in acknowledged:
                status = await survivor.hget(f"lifecycle:{{0}}:s:{sid}", "s")
                if status != b"t":
                    return False
            return True

        # Every session acknowledged with 201 is on the promoted replica and ends.
        await eventually(all_terminated, timeout=30, what="every acknowledged session ended")
        commands = [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in await survivor.xrange("lifecycle:{0}:commands")
        ]
        counts = Counter(c["session_id"] for c in commands if c["type"] == "terminate")
        assert all(counts[sid] == 1 for sid in acknowledged), counts
        assert max(counts.values()) == 1
        await survivor.aclose()
    finally:
        daemon.stop()
        sentinel.stop()
        replica.stop()
        primary.stop()


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)
