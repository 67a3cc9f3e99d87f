"""Network faults (tests/netns.py, tests/faultproxy.py): each scenario ends with the chaos
checker. ``python -m tests.netchaos`` (``make chaos-net``) runs longer variants."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.chaos import Report
from tests.netchaos import LOST_REPLY_SCRIPTS, run_net_chaos
from tests.netns import PREFIX, NetFaultUnavailable, NetLab

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
