"""``daemon.publisher``: events land in their account's partition, checked before sending."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.client import LifecycleClient, SessionNotFound
from daemon.events import InvalidEvent
from daemon.publisher import (
    Activity,
    Billing,
    Created,
    EventPublisher,
    Keepalive,
    PartitionsUnknown,
    Pause,
    Resume,
    Terminate,
    Terminated,
)
from tests.servers import Daemon, eventually

Start = Callable[..., Daemon]
ACCOUNTS = [f"acct{i}" for i in range(12)]


async def _entries(redis: Any, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


async def test_events_land_in_the_partition_of_their_account(redis: Any) -> None:
    publisher = EventPublisher(redis, partitions=4)
    ids = [await publisher.created(f"s-{a}", a, timeout_seconds=60) for a in ACCOUNTS]
    ids += await publisher.publish_many(
        [Activity(session_id=f"s-{a}", account_id=a, ts=1_700_000_000_000) for a in ACCOUNTS]
    )
    assert len(ids) == 2 * len(ACCOUNTS)
    seen: dict[str, int] = {}
    for p in range(4):
        for entry in await _entries(redis, f"lifecycle:{{{p}}}:events"):
            assert zlib.crc32(entry["account_id"].encode()) % 4 == p, entry
            seen[entry["account_id"]] = seen.get(entry["account_id"], 0) + 1
    assert seen == dict.fromkeys(ACCOUNTS, 2)
    assert len({zlib.crc32(a.encode()) % 4 for a in ACCOUNTS}) > 1  # the test spreads out
    assert (await _entries(redis, await publisher.stream_for("acct0")))[0] == {
        "type": "created",
        "session_id": "s-acct0",
        "account_id": "acct0",
        "timeout_seconds": "60",
    }


async def test_the_daemon_applies_every_event_type_from_the_right_partition(
    redis: Any, daemons: Start
) -> None:
    d = daemons(partitions=3)
    # The partition count and plans come from what the daemon recorded in Redis.
    publisher = EventPublisher(redis)
    await publisher.billing("big", "ok", plan="enterprise")
    await publisher.publish_many(
        [
            Created(
                session_id=f"s-{a}", account_id=a, auto_kill=False, inactivity_timeout_seconds=5
            )
            for a in ACCOUNTS
        ]
    )
    await publisher.created("b1", "big")
    now = datetime.now(UTC)  # after the created entry's time: activity may not move backward
    await publisher.activity("b1", "big", ts=now)
    await publisher.keepalive("s-acct1", "acct1")
    await publisher.terminate("s-acct2", "acct2", reason="requested")
    await publisher.terminated("s-acct3", "acct3")
    async with LifecycleClient(d.api) as client:

        async def settled() -> bool:
            try:
                reasons = [
                    (await client.status(s)).termination_reason for s in ("s-acct2", "s-acct3")
                ]
            except SessionNotFound:
                return False  # not applied yet
            return reasons == ["requested", "external"]

        await eventually(settled, what="terminate and terminated applied")
        running = await eventually(lambda: _status_is(client, "b1", "running"))
        assert running.plan == "enterprise"
        assert running.last_activity_at.timestamp() == pytest.approx(now.timestamp(), abs=0.002)
        for a in ACCOUNTS:
            status = await client.status(f"s-{a}")
            assert status.auto_kill is False and status.inactivity_timeout_seconds == 5
    for p in range(3):
        assert await redis.xlen(f"lifecycle:{{{p}}}:dead") == 0
        partition_accounts = {
            e["account_id"] for e in await _entries(redis, f"lifecycle:{{{p}}}:events")
        }
        assert all(zlib.crc32(a.encode()) % 3 == p for a in partition_accounts)


async def _status_is(client: LifecycleClient, session_id: str, status: str) -> Any:
    try:
        found = await client.status(session_id)
    except SessionNotFound:
        return None
    return found if found.status == status else None


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (Created(session_id="x" * 500, account_id="acme"), "session_id"),
        (Created(session_id="s", account_id="bad id"), "account_id"),
        (Created(session_id="s", account_id="acme", timeout_seconds=0), "timeout_seconds"),
        (Created(session_id="s", account_id="a", inactivity_timeout_seconds=86401), "inactivity"),
        (Created(session_id="s", account_id="acme", plan="gold"), "plan"),
        (Activity(session_id="s", account_id="acme", ts=-1), "ts"),
        (Keepalive(session_id="", account_id="acme"), "session_id"),
        (Terminate(session_id="s", account_id="acme", reason="external"), "reason"),
        (Terminated(session_id="s", account_id="é"), "account_id"),
        (Billing(account_id="acme", billing_status="maybe"), "billing_status"),
        (Billing(account_id="acme", billing_status="ok", plan="gold"), "plan"),
        (Created(session_id="s", account_id="acme", on_inactivity="sleep"), "on_inactivity"),
        (Keepalive(session_id="s", account_id="acme", source="Bad Source"), "source"),
        (Pause(session_id="s", account_id="bad id"), "account_id"),
        (Resume(session_id="", account_id="acme"), "session_id"),
    ],
)
async def test_a_malformed_event_raises_at_the_call_and_sends_nothing(
    redis: Any, event: Any, problem: str
) -> None:
    publisher = EventPublisher(redis, partitions=1, plans=["free", "pro"])
    good = Keepalive(session_id="s", account_id="acme")
    with pytest.raises(InvalidEvent, match=problem):
        await publisher.publish_many([good, event])
    with pytest.raises(InvalidEvent, match=problem):
        await publisher.publish(event)
    assert await redis.exists("lifecycle:{0}:events") == 0


async def test_partitions_must_be_known(redis: Any) -> None:
    with pytest.raises(PartitionsUnknown, match="partitions="):
        await EventPublisher(redis).activity("s", "acme")
    await redis.hset("other:config", mapping={"partitions": 2, "plans": "gold"})
    publisher = EventPublisher(redis, key_prefix="other")
    await publisher.created("s", "acme", plan="gold")
    p = zlib.crc32(b"acme") % 2
    assert (await _entries(redis, f"other:{{{p}}}:events"))[0]["plan"] == "gold"
    with pytest.raises(InvalidEvent, match="plan"):
        await publisher.created("s", "acme", plan="free")
    with pytest.raises(ValueError, match="partitions"):
        EventPublisher(redis, partitions=0)
