"""Network faults (tests/netns.py, tests/faultproxy.py): each scenario ends with the chaos
checker. ``python -m tests.netchaos`` (``make chaos-net``) runs longer variants."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chaos import Report
from tests.faultproxy import FaultProxy
from tests.netchaos import LOST_REPLY_SCRIPTS, run_net_chaos, script_sha
from tests.netns import PREFIX, NetFaultUnavailable, NetLab
from tests.servers import Daemon, ValkeyProcess, eventually

SECONDS = float(os.environ.get("LIFECYCLE_NETCHAOS_SECONDS", "8"))


def _leftovers() -> list[str]:
    """Namespaces and links of labs of this process still present."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    mine = f"{PREFIX}-{os.getpid()}-"
    return [line for line in spaces.splitlines() if mine in line] + [
        line for line in links.splitlines() if f" lc{os.getpid():x}n" in line
    ]


async def _run(scenario: str, tmp_path: Path) -> tuple[Report, object]:
    seed = int.from_bytes(os.urandom(4), "big")
    report, chaos = await run_net_chaos(scenario, SECONDS, seed, tmp_path)
    print(f"{scenario}, seed {seed}\n{report.summary()}")
    assert report.violations == [], f"seed {seed}\n{report.summary()}"
    assert not _leftovers(), "the lab left namespaces or veths behind"
    assert {"inactivity", "max_lifetime"} <= set(report.terminations)
    return report, chaos


# The harness itself


def _failing_body() -> None:
    with NetLab() as lab:
        lab.add_link("x")
        raise RuntimeError("test body failed")


def test_lab_links_faults_and_cleanup() -> None:
    with NetLab() as lab:
        link = lab.add_link("client")
        assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        lab.partition(link, "to_redis")
        lab.loss(link, 5)
        rules = lab.lab("nft", "list", "ruleset")
        assert f'iifname "{link.lab_dev}" drop' in rules
        assert "numgen random mod 100 < 5 drop" in rules
        lab.heal(link)
        lab.loss(link, 0)
        assert "drop" not in lab.lab("nft", "list", "ruleset")
        with pytest.raises(RuntimeError):  # cleanup holds when the body fails
            _failing_body()
    assert not _leftovers()


def test_a_missing_tool_or_kernel_feature_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with NetLab() as lab:
        link = lab.add_link("client")
        if lab.netem_available():
            lab.netem(link, "delay 50ms 10ms")
            assert (
                "netem"
                in subprocess.run(
                    ["tc", "qdisc", "show", "dev", link.host_dev], capture_output=True, text=True
                ).stdout
            )
        else:
            with pytest.raises(NetFaultUnavailable) as info:
                lab.netem(link, "delay 200ms 100ms")
            assert str(info.value).splitlines() == [
                "tc netem: this kernel has no netem qdisc (sch_netem, CONFIG_NET_SCH_NETEM)"
            ]
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NetFaultUnavailable) as info:
        NetLab()
    assert len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith("ip: not installed")


# Scenarios (each about 20-30 s)


@pytest.mark.timeout(SECONDS + 150)
async def test_latency_on_every_redis_link(tmp_path: Path) -> None:
    report, _ = await _run("latency", tmp_path)
    assert report.sessions > 20


@pytest.mark.timeout(SECONDS + 150)
async def test_packet_loss(tmp_path: Path) -> None:
    report, _ = await _run("loss", tmp_path)
    assert report.sessions > 100


@pytest.mark.timeout(SECONDS + 150)
async def test_lease_holder_partitioned_then_healed(tmp_path: Path) -> None:
    report, chaos = await _run("lease_partition", tmp_path)
    taken_over = [f for f in report.faults if f.endswith("took the lease: True")]
    assert taken_over, report.summary()
    # The cut-off holder noticed it lost the lease (renewal or a refused batch).
    logs = "".join(r.log() for r in chaos.replicas)  # type: ignore[attr-defined]
    assert "partition_lease_lost" in logs


@pytest.mark.timeout(SECONDS + 150)
async def test_partition_during_a_burst_of_expiries(tmp_path: Path) -> None:
    report, _ = await _run("burst_partition", tmp_path)
    assert any(f.startswith("burst 1:") for f in report.faults)
    # The burst's deadlines passed while no replica could reach Redis: emitted after.
    assert max(report.lateness_ms) >= 1500


@pytest.mark.timeout(SECONDS + 150)
async def test_lost_replies_of_scripts(tmp_path: Path) -> None:
    _, chaos = await _run("lost_replies", tmp_path)
    lost = {name for proxy in chaos.proxies for name in proxy.lost}  # type: ignore[attr-defined]
    assert lost == set(LOST_REPLY_SCRIPTS)


# A create whose reply from Redis was lost


async def test_create_whose_redis_reply_was_lost_answers_with_the_session(
    redis: Any, valkey: ValkeyProcess, daemons: Callable[..., Daemon]
) -> None:
    host, port = valkey.url.removeprefix("redis://").removesuffix("/0").split(":")
    proxy = FaultProxy(host, int(port)).start()
    try:
        daemon = daemons(redis_url=proxy.url)
        async with aiohttp.ClientSession() as http:
            proxy.lose_replies("create", script_sha("create_session"), every=1, limit=1)
            body = {"account_id": "acme", "session_id": "lost-reply-1", "timeout_seconds": 60}
            async with http.post(daemon.api + "/v1/sessions", json=body) as resp:
                first = (resp.status, await resp.json())
            # A session id chosen by the daemon is kept across its own retry too.
            proxy.lose_replies("create2", script_sha("create_session"), every=1, limit=1)
            async with http.post(daemon.api + "/v1/sessions", json={"account_id": "acme2"}) as resp:
                second = (resp.status, await resp.json())
            # Both scripts ran, both replies were lost.
            assert proxy.lost == {"create": 1, "create2": 1}
            proxy.stop_losing()
            # The client retries the same id after an answer it did not trust: the id is
            # taken (SPEC §1), by the session it created.
            async with http.post(daemon.api + "/v1/sessions", json=body) as resp:
                retried = (resp.status, await resp.json())
            listed = {}
            for account in ("acme", "acme2"):
                async with http.get(daemon.api + f"/v1/accounts/{account}/sessions") as resp:
                    listed[account] = [s["session_id"] for s in (await resp.json())["sessions"]]
    finally:
        proxy.close()
    assert first[0] == 201, first
    assert first[1]["session_id"] == "lost-reply-1" and first[1]["status"] == "ready"
    assert second[0] == 201, second
    assert retried[0] == 409 and retried[1]["error"] == "session_exists", retried
    # One session each: neither the daemon's retry nor the client's made a second one.
    assert listed == {"acme": ["lost-reply-1"], "acme2": [second[1]["session_id"]]}


async def test_create_sent_again_with_its_token_answers_created(harness: Any) -> None:
    h = await harness()

    async def create(token: str) -> list[Any]:
        reply: list[Any] = await h.store._call(
            "create_session", h.pk, "s1", "acme", "60", "30", "1", "", "", token, 60_000
        )
        return reply

    first, again = await create("t1"), await create("t1")
    assert int(first[0]) == 1 and int(again[0]) == 1
    assert first[3:] == again[3:]  # the same record, not a second session
    assert [int(x) if i == 0 else x for i, x in enumerate(await create("t2"))] == [-409, b""]
    assert await h.redis.pttl(h.pk.create_token("s1")) > 50_000


async def test_leases_of_many_partitions_hold_over_a_slow_link(
    redis: Any, valkey: ValkeyProcess, daemons: Callable[..., Daemon]
) -> None:
    """8 partitions over a 150 ms ± 30 ms link (each way): renewed one after the other,
    a round took 9 round trips (about 2.7 s) and the pause after it another 0.8-1 s,
    longer than a 3 s lease, so the replica kept losing and taking its own leases;
    renewed at once (2 round trips a round) they hold."""
    host, port = valkey.url.removeprefix("redis://").removesuffix("/0").split(":")
    proxy = FaultProxy(host, int(port)).start()
    try:
        proxy.delay(150, 30)
        daemon = daemons(redis_url=proxy.url, partitions=8, lease_ttl_ms=3000)
        await eventually(
            lambda: _logged(daemon, "partition_lease_taken", 8), timeout=30, what="8 leases"
        )
        # The first rounds open the pool's connections (a few round trips each); from
        # then on, over three lease lifetimes, no lease may be lost.
        start = time.monotonic()
        while time.monotonic() - start < 9:
            if time.monotonic() - start < 3:
                lost_before = daemon.log().count('"partition_lease_lost"')
            await asyncio.sleep(0.2)
        lost = daemon.log().count('"partition_lease_lost"') - lost_before
        assert lost == 0, daemon.log()[-3000:]
    finally:
        proxy.close()


async def _logged(daemon: Daemon, event: str, times: int) -> bool:
    return daemon.log().count(f'"{event}"') >= times
