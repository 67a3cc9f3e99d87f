"""The session timeline (SPEC §9): written by the scripts that make each change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from daemon import errors
from daemon.client import LifecycleClient, SessionNotFound
from daemon.keys import PartitionKeys
from tests.conftest import Harness
from tests.servers import Daemon, eventually
from tests.test_cli import cli

Make = Callable[..., Any]


async def test_timeline_shows_each_step_and_coalesces_keepalives(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    for _ in range(3):
        await h.store.keepalive("s1")
    for _ in range(2):
        await h.publish(type="keepalive", session_id="s1", account_id="acme", source="ide")
    await h.publish(type="keepalive", session_id="s1", account_id="acme", source="Bad!")
    await h.consume()
    await h.store.keepalive("s1")
    await h.store.patch_session("s1", timeout_seconds=900)
    await h.publish(type="activity", session_id="s1", account_id="acme")
    await h.consume()
    await h.store.terminate("s1")
    events = await h.store.timeline("s1")
    assert [(e["type"], e.get("source"), e.get("count")) for e in events] == [
        ("created", None, None),
        ("keepalive", "api", 3),
        ("keepalive", "ide", 2),
        ("keepalive", "api", 1),
        ("extended", None, None),
        ("running", "stream", None),
        ("terminated", None, None),
    ]
    assert events[1]["at"] <= events[1]["last_at"]
    assert events[4]["timeout_seconds"] == 900
    assert events[-1]["reason"] == "requested" and events[-1]["deadline"].endswith("Z")
    ttl = await h.redis.pttl(h.pk.timeline("s1"))
    assert 0 < ttl <= h.settings.terminated_retention_seconds * 1000
    dead = await h.redis.xrange(h.pk.dead)
    assert len(dead) == 1 and b"source" in dead[0][1][b"error"]
    with pytest.raises(errors.SessionNotFound):
        await h.store.timeline("nope")
    with pytest.raises(errors.SessionNotFound):
        await h.store.timeline("s1", account="other")


async def test_timeline_is_capped(harness: Make) -> None:
    h: Harness = await harness(timeline_max_entries=3)
    await h.store.create_session("s1", "acme", 600, 60, True)
    for t in (60, 120, 60, 120):
        await h.store.patch_session("s1", timeout_seconds=t)
    events = await h.store.timeline("s1")
    assert [e["type"] for e in events] == ["extended"] * 3


async def test_daemon_timeline_of_keepalives_extend_and_inactivity(
    daemons: Callable[..., Daemon], redis: Any
) -> None:
    """Through a real daemon: 50 keepalives from two sources, an extend, an inactivity end."""
    # Retention long enough for two CLI runs on a loaded machine, short enough to watch.
    d = daemons(terminated_retention_seconds=6)
    pk = PartitionKeys("lifecycle", 0)
    async with LifecycleClient(d.api) as client:
        created = await client.create("acme", inactivity_timeout_seconds=1, timeout_seconds=60)
        sid = created.session_id
        for i in range(50):
            source = "ide" if i < 25 else "agent"
            await redis.xadd(pk.events, {"type": "keepalive", "session_id": sid,
                                         "account_id": "acme", "source": source})  # fmt: skip

        async def applied() -> bool:
            return sum((e.count or 0) for e in await client.timeline(sid)) == 50

        await eventually(applied, timeout=10, what="the 50 keepalives applied")
        await client.update(sid, timeout_seconds=120)

        async def ended() -> bool:
            return (await client.status(sid)).terminated

        await eventually(ended, timeout=10, what="inactivity termination")
        events = await client.timeline(sid)
        assert [(e.type, e.source, e.count) for e in events] == [
            ("created", None, None),
            ("keepalive", "ide", 25),
            ("keepalive", "agent", 25),
            ("extended", None, None),
            ("terminated", None, None),
        ]
        assert events[-1].reason == "inactivity"
        out = await cli("events", sid, "--api", d.api)
        assert out.code == 0 and "keepalive" in out.out and "x25" in out.out
        as_json = await cli("events", sid, "--api", d.api, "--json")
        assert as_json.json()["events"][1]["count"] == 25
        with pytest.raises(SessionNotFound):
            await client.timeline("nope")

        async def gone() -> bool:
            return not await redis.exists(pk.timeline(sid), pk.session(sid))

        await eventually(gone, timeout=20, what="timeline expired with the session")


async def test_expiring_warning_is_in_the_timeline(harness: Make) -> None:
    h: Harness = await harness(warn_before_seconds=1)
    await h.store.create_session("s1", "acme", 600, 2, True)

    async def warned() -> bool:
        return (await h.store.expire_due(h.pk)).warned == 1

    await eventually(warned, timeout=5, what="the expiring warning")
    events = await h.store.timeline("s1")
    assert [e["type"] for e in events] == ["created", "expiring"]
    assert events[1]["reason"] == "inactivity" and events[1]["terminates_at"].endswith("Z")
