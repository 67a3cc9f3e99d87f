"""Webhook delivery under trouble, with real daemons, real Valkey and real receivers: a
receiver that hangs, ``kill -9`` of the daemon, two replicas sharing the deliveries."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from daemon.client import LifecycleClient
from daemon.webhook_endpoints import Endpoints
from daemon.webhooks import AUTOCLAIM_BATCH
from tests.servers import Daemon, eventually
from tests.webhook_receiver import Receiver

Start = Callable[..., Daemon]
COMMANDS = "lifecycle:{0}:commands"


async def _add(client: LifecycleClient, receiver: Receiver) -> str:
    made = await client.add_webhook(receiver.url)
    assert made.secret is not None
    receiver.secret = made.secret
    return made.webhook_id


async def _terminate_sessions(client: LifecycleClient, count: int) -> None:
    """Create and terminate ``count`` sessions, one account each: ``count`` commands."""
    for i in range(count):
        session = await client.create(f"acct-{i}")
        await client.terminate(session.session_id)


async def _terminate_commands(redis: Any) -> dict[str, dict[str, str]]:
    """The webhook-id each terminate command is delivered with -> its fields."""
    out = {}
    for entry_id, raw in await redis.xrange(COMMANDS):
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if fields["type"] == "terminate":
            out[f"cmd_0_{entry_id.decode()}"] = fields
    return out


async def test_a_hanging_receiver_delays_neither_other_endpoints_nor_expiry(
    redis: Any, daemons: Start
) -> None:
    d = daemons(webhook_timeout_seconds=5)
    hanging = await Receiver(answer=lambda _: None).start()
    healthy = await Receiver().start()
    sessions = 24
    try:
        async with LifecycleClient(d.api) as client:
            await _add(client, hanging)
            await _add(client, healthy)
            # One account each (the free plan runs 2 at once); all expire for inactivity
            # within a second of each other, while the hanging endpoint holds its workers.
            await asyncio.gather(*(
                client.create(f"acct-{i}", inactivity_timeout_seconds=1) for i in range(sessions)
            ))  # fmt: skip

            async def all_delivered() -> bool:
                return len(healthy.ids()) >= sessions

            await eventually(all_delivered, timeout=15, what="every command at the healthy one")
        commands = await _terminate_commands(redis)
        assert len(commands) == sessions and healthy.ids() == set(commands)
        assert len(hanging.attempts) > 0 and hanging.got == []
        lateness = []
        for got in healthy.got:
            fields = commands[got.webhook_id]
            assert fields["reason"] == "inactivity"
            entered = int(got.webhook_id.rpartition("_")[2].partition("-")[0]) / 1000
            assert got.wall - entered < 1.0, (got.webhook_id, got.wall - entered)
            lateness.append(int(fields["emitted_at"]) - int(fields["deadline"]))
        # The expiry SLO (100 ms) for the typical one, and the suite's bound for a loaded
        # machine for every one: a hanging endpoint would make them seconds late.
        assert sorted(lateness)[len(lateness) // 2] <= 100, lateness
        assert max(lateness) < 500, lateness
        # SIGTERM while attempts hang: the daemon leaves them (their claims run out and
        # another replica retries them) and exits at once.
        started = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - started < 3
    finally:
        await hanging.stop()
        await healthy.stop()


async def test_kill_9_with_deliveries_pending_loses_none_and_keeps_their_ids(
    redis: Any, daemons: Start
) -> None:
    settings = {"webhook_timeout_seconds": 1, "webhook_retry_base_seconds": 0.2,
                "lease_ttl_ms": 1000}  # fmt: skip
    first = daemons(**settings)
    # Slow and failing at first: attempts are in flight and retries pending at the kill.
    receiver = await Receiver(answer=lambda _: 500, delay=0.1).start()
    count = 20
    try:
        async with LifecycleClient(first.api) as client:
            await _add(client, receiver)
            await _terminate_sessions(client, count)

            async def attempted() -> bool:
                return len(receiver.attempts) >= count // 2

            await eventually(attempted, what="attempts under way")
        first.stop(signal.SIGKILL)
        expected = set(await _terminate_commands(redis))
        assert len(expected) == count
        receiver.answer = lambda _: 200
        daemons(**settings)

        async def all_delivered() -> bool:
            return receiver.ids() >= expected

        await eventually(all_delivered, timeout=20, what="every command delivered")
        assert receiver.ids() == expected
        assert set(receiver.attempts) == expected  # the failed attempts before the kill too
        assert receiver.refused == 0
    finally:
        await receiver.stop()


async def test_two_replicas_never_make_the_same_attempt_at_once(redis: Any, daemons: Start) -> None:
    settings = {"webhook_timeout_seconds": 2, "webhook_retry_base_seconds": 0.05}
    a = daemons(**settings)
    receiver = await Receiver(delay=0.1).start()
    # Two failures per command, then success: retries are claimed by either replica.
    receiver.answer = lambda msg_id: 500 if receiver.attempts[msg_id] <= 2 else 200
    count = 30
    try:
        async with LifecycleClient(a.api) as client:
            await _add(client, receiver)
            # Started after the endpoint exists, b delivers from its first claim on.
            b = daemons(**settings)
            await _terminate_sessions(client, count)

            async def all_delivered() -> bool:
                return len(receiver.ids()) >= count

            await eventually(all_delivered, timeout=20, what="every command delivered")
        assert receiver.most_in_flight == 1
        assert all(n == 3 for n in receiver.attempts.values()), dict(receiver.attempts)
        assert len(receiver.got) == count  # delivered once each

        async def all_counted() -> bool:
            return _attempts_made(a) + _attempts_made(b) == 3 * count

        await eventually(all_counted, what="every attempt's outcome recorded")
        # Both replicas made attempts: the claims, not luck, kept them apart.
        assert _attempts_made(a) > 0 and _attempts_made(b) > 0
    finally:
        await receiver.stop()


def _attempts_made(daemon: Daemon) -> float:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lifecycle_webhook_deliveries_total{")
    )


async def test_commands_a_dead_reader_left_pending_are_all_delivered(
    redis: Any, daemons: Start
) -> None:
    """More commands than one claim takes, read by a reader that died before it made
    their deliveries: the next holder of the partition delivers every one."""
    count = AUTOCLAIM_BATCH + 200
    await redis.xgroup_create(COMMANDS, "webhooks", id="0", mkstream=True)
    pipe = redis.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(COMMANDS, {"type": "terminate", "session_id": f"s{i}", "account_id": "acme",
                             "reason": "requested"})  # fmt: skip
    await pipe.execute()
    await redis.xreadgroup("webhooks", "a-dead-replica", {COMMANDS: ">"}, count=count)
    receiver = await Receiver().start()
    try:
        endpoint = await Endpoints(redis, "lifecycle").add({"url": receiver.url})
        receiver.secret = endpoint.secret
        daemons()

        async def all_delivered() -> bool:
            return len(receiver.ids()) >= count

        await eventually(all_delivered, timeout=30, what="every pending command delivered")
        assert receiver.ids() == set(await _terminate_commands(redis))
        assert (await redis.xpending(COMMANDS, "webhooks"))["pending"] == 0
    finally:
        await receiver.stop()
