"""``redis_cluster = true`` against a real Valkey Cluster: three masters, each with a replica.

Every partition's keys carry its hash tag ``{p}``, so each script runs on the one node
owning that slot. The tests run two daemons over 16 partitions, move partitions' slots
between masters while events flow (MOVED/ASK), and kill a master (failover): the daemons
keep running and every session ends with exactly one terminate command.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from tests.servers import VALKEY_SERVER, Daemon, eventually, free_port, wait_for

VALKEY_CLI = str(Path(VALKEY_SERVER).with_name("valkey-cli"))
PARTITIONS = 16


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class ValkeyNode:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _cluster_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                VALKEY_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                # A dead master is replaced by its replica after about a second.
                "--cluster-node-timeout", "1000",
                "--appendonly", "yes",
                "--save", "",
                "--logfile", "valkey.log",
            ],
            cwd=self.dir,
        )  # fmt: skip

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [VALKEY_CLI, "-p", str(self.port), *args], capture_output=True, check=True, timeout=30
        )
        return out.stdout.decode()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None


class ValkeyCluster:
    """Six valkey-server processes joined by ``valkey-cli --cluster create``."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes = [ValkeyNode(directory / f"node{i}") for i in range(2 * masters)]
        self.masters = masters

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    def start(self) -> ValkeyCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_for(lambda n=node: _pings(n), what=f"valkey node {node.port}")  # type: ignore[misc]
        subprocess.run(
            [VALKEY_CLI, "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        for node in self.nodes:
            wait_for(lambda n=node: "cluster_state:ok" in n.cli("CLUSTER", "INFO"),  # type: ignore[misc]
                     timeout=20, what=f"cluster state ok on {node.port}")  # fmt: skip
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_of(self, port: int) -> ValkeyNode:
        return next(n for n in self.nodes if n.port == port)


def _pings(node: ValkeyNode) -> bool:
    try:
        return node.cli("PING").strip() == "PONG"
    except subprocess.CalledProcessError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    if not Path(VALKEY_CLI).exists() or shutil.which(VALKEY_CLI) is None:
        pytest.fail(f"valkey-cli not found next to valkey-server: {VALKEY_CLI}")
    c = ValkeyCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
async def rc(cluster: ValkeyCluster) -> AsyncIterator[Any]:
    client = RedisCluster.from_url(cluster.url)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


@pytest.fixture
def cluster_daemons(cluster: ValkeyCluster, tmp_path: Path) -> Iterator[list[Daemon]]:
    env = {
        "LIFECYCLE_REDIS_URL": cluster.url,
        "LIFECYCLE_REDIS_CLUSTER": "true",
        "LIFECYCLE_PARTITIONS": str(PARTITIONS),
        "LIFECYCLE_LEASE_TTL_MS": "2000",
        "LIFECYCLE_LOG_LEVEL": "debug",
    }
    started = [Daemon(env, tmp_path / f"daemon-{i}.log").start() for i in range(2)]
    yield started
    for d in started:
        d.stop()


def _partition(account: str) -> int:
    return zlib.crc32(account.encode()) % PARTITIONS


def _key(p: int, name: str) -> str:
    return f"lifecycle:{{{p}}}:{name}"


async def _terminations(rc: Any) -> list[dict[str, str]]:
    out = []
    for p in range(PARTITIONS):
        for _, fields in await rc.xrange(_key(p, "commands")):
            cmd = {k.decode(): v.decode() for k, v in fields.items()}
            if cmd["type"] == "terminate":
                out.append(cmd)
    return out


async def _at_least(rc: Any, n: int) -> list[dict[str, str]] | None:
    cmds = await _terminations(rc)
    return cmds if len(cmds) >= n else None


def _accounts() -> list[str]:
    """One account per partition, so that every partition has work."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < PARTITIONS:
        found.setdefault(_partition(f"acct{i}"), f"acct{i}")
        i += 1
    return [found[p] for p in range(PARTITIONS)]


async def _enterprise(rc: Any, accounts: list[str]) -> None:
    for account in accounts:
        fields = {"type": "billing", "account_id": account, "billing_status": "ok",
                  "plan": "enterprise"}  # fmt: skip
        await rc.xadd(_key(_partition(account), "events"), fields)


def _consumed(d: Daemon) -> int:
    """Partitions the daemon consumes now, from its ``lifecycle_partitions_consumed``."""
    url = f"http://127.0.0.1:{d.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("lifecycle_partitions_consumed "):
                return int(float(line.split()[1]))
    return 0


async def _shared_out(rc: Any, daemons: list[Daemon]) -> bool:
    """Both daemons consume, and together every partition has a lease holder."""
    counts = [_consumed(d) for d in daemons]
    leases = [await rc.get(_key(p, "lease")) for p in range(PARTITIONS)]
    return all(counts) and sum(counts) == PARTITIONS and None not in leases


async def _move_slot(cluster: ValkeyCluster, rc: Any, slot: int) -> tuple[int, int]:
    """Migrate one slot, with its keys, to another master, as resharding does."""
    shards = await rc.cluster_slots(target_nodes=RedisCluster.RANDOM)
    source_port = next(v["primary"][1] for (lo, hi), v in shards.items() if lo <= slot <= hi)
    target_port = next(v["primary"][1] for v in shards.values() if v["primary"][1] != source_port)
    source: Any = Redis(port=source_port)
    target: Any = Redis(port=target_port)
    try:
        source_id = (await source.execute_command("CLUSTER", "MYID")).decode()
        target_id = (await target.execute_command("CLUSTER", "MYID")).decode()
        await target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := await source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            await source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000,
                                         "KEYS", *keys)  # fmt: skip
        for node in (target, source):
            await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    finally:
        await source.aclose()
        await target.aclose()
    return source_port, target_port


async def test_two_daemons_serve_sixteen_partitions_on_three_masters(
    cluster: ValkeyCluster, rc: Any, cluster_daemons: list[Daemon]
) -> None:
    a, b = cluster_daemons
    accounts = _accounts()
    await _enterprise(rc, accounts)
    # The partitions' slots are spread over all three masters.
    shards = await rc.cluster_slots(target_nodes=RedisCluster.RANDOM)
    masters = {
        v["primary"][1]
        for (lo, hi), v in shards.items()
        for p in range(PARTITIONS)
        if lo <= key_slot(_key(p, "events").encode()) <= hi
    }
    assert len(masters) == 3
    await eventually(lambda: _shared_out(rc, cluster_daemons), timeout=20,
                     what="partitions shared by both daemons")  # fmt: skip

    # Through the API of one daemon, read through the other: routing by session id works
    # whichever node holds the session's partition.
    async with aiohttp.ClientSession() as http:
        for account in accounts:
            body = {"account_id": account, "session_id": f"api-{account}",
                    "inactivity_timeout_seconds": 2}  # fmt: skip
            async with http.post(f"{a.api}/v1/sessions", json=body) as resp:
                assert resp.status == 201, await resp.text()
        for account in accounts:
            async with http.get(f"{b.api}/v1/sessions/api-{account}") as resp:
                assert resp.status == 200
                assert (await resp.json())["account_id"] == account
        async with http.delete(f"{b.api}/v1/sessions/api-{accounts[0]}") as resp:
            assert (await resp.json())["termination_reason"] == "requested"

    # Through the streams: per partition, sessions that idle out, sessions ended on
    # request right after their creation (order within the partition), and one session
    # kept busy past its inactivity timeout.
    per_account = 20
    pipe = rc.pipeline()
    for account in accounts:
        events = _key(_partition(account), "events")
        for i in range(per_account):
            sid = f"{account}-s{i}"
            pipe.xadd(events, {"type": "created", "session_id": sid, "account_id": account,
                               "inactivity_timeout_seconds": "2"})  # fmt: skip
            if i % 4 == 0:
                pipe.xadd(events, {"type": "terminate", "session_id": sid, "account_id": account})
        pipe.xadd(events, {"type": "created", "session_id": f"{account}-busy",
                           "account_id": account, "inactivity_timeout_seconds": "2",
                           "timeout_seconds": "6"})  # fmt: skip
    await pipe.execute()

    # Reshard while the events are applied and deadlines fall due: the slots of four
    # partitions move to another master; their keys are in flight (ASK), then MOVED.
    moved = []
    for p in (0, 1, 2, 3):
        moved.append(await _move_slot(cluster, rc, key_slot(_key(p, "events").encode())))
    assert all(src != dst for src, dst in moved)

    # Keep the busy sessions alive for three seconds: activity every half second.
    loop = asyncio.get_running_loop()
    until = loop.time() + 3
    while loop.time() < until:
        for account in accounts:
            await rc.xadd(_key(_partition(account), "events"),
                          {"type": "activity", "session_id": f"{account}-busy",
                           "account_id": account})  # fmt: skip
        await asyncio.sleep(0.5)

    total = PARTITIONS * (1 + per_account + 1)  # API sessions, stream sessions, busy ones
    cmds = await eventually(lambda: _at_least(rc, total), timeout=30, what="every termination")
    counts = Counter(c["session_id"] for c in cmds)
    assert len(counts) == total and max(counts.values()) == 1, counts.most_common(3)
    reasons = {c["session_id"]: c["reason"] for c in cmds}
    for account in accounts:
        for i in range(per_account):
            want = "requested" if i % 4 == 0 else "inactivity"
            assert reasons[f"{account}-s{i}"] == want
        # Activity kept it alive past 2 s of creation: it idled out only after the last one.
        busy = next(c for c in cmds if c["session_id"] == f"{account}-busy")
        assert int(busy["deadline"]) - int(busy["created_at"]) >= 4000, busy
        assert all(int(c["emitted_at"]) >= int(c["deadline"]) for c in cmds)
    assert reasons[f"api-{accounts[0]}"] == "requested"
    assert all(d.ready() for d in cluster_daemons)
    assert all(c["reason"] for c in cmds)


async def test_a_master_failover_loses_no_termination(
    cluster: ValkeyCluster, rc: Any, cluster_daemons: list[Daemon]
) -> None:
    accounts = _accounts()
    await _enterprise(rc, accounts)
    await eventually(lambda: _shared_out(rc, cluster_daemons), timeout=20,
                     what="partitions shared by both daemons")  # fmt: skip
    per_account = 10
    pipe = rc.pipeline()
    for account in accounts:
        for i in range(per_account):
            pipe.xadd(_key(_partition(account), "events"),
                      {"type": "created", "session_id": f"{account}-f{i}", "account_id": account,
                       "timeout_seconds": str(3 + i % 3)})  # fmt: skip
    await pipe.execute()
    created = PARTITIONS * per_account

    async def all_live() -> bool:
        counts = [await rc.zcard(_key(p, "deadlines")) for p in range(PARTITIONS)]
        return bool(sum(counts) == created)

    await eventually(all_live, timeout=10, what="every session created")

    # Kill the master serving the most partitions once its replica has every write.
    shards = await rc.cluster_slots(target_nodes=RedisCluster.RANDOM)
    served = Counter(
        v["primary"][1]
        for (lo, hi), v in shards.items()
        for p in range(PARTITIONS)
        if lo <= key_slot(_key(p, "events").encode()) <= hi
    )
    port = served.most_common(1)[0][0]
    victim = cluster.node_of(port)
    replica_port = next(v["replicas"][0][1] for v in shards.values() if v["primary"][1] == port)
    replica = cluster.node_of(replica_port)
    wait_for(lambda: victim.cli("DBSIZE") == replica.cli("DBSIZE"), what="replica in sync")
    started = time.monotonic()
    victim.stop(signal.SIGKILL)
    wait_for(lambda: "role:master" in replica.cli("INFO", "replication"), timeout=20,
             what="replica promoted")  # fmt: skip

    cmds = await eventually(lambda: _at_least(rc, created), timeout=40, what="every termination")
    counts = Counter(c["session_id"] for c in cmds)
    assert len(counts) == created and max(counts.values()) == 1
    assert {c["reason"] for c in cmds} == {"max_lifetime"}
    assert all(int(c["emitted_at"]) >= int(c["deadline"]) for c in cmds)
    # The daemons rode the failover out: still running, ready again.
    for d in cluster_daemons:
        wait_for(d.ready, timeout=20, what="daemon ready after the failover")
    assert time.monotonic() - started < 60
