"""Webhook delivery state: enqueue with the acknowledgement, claim, retry, dead."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from daemon.webhook_store import (
    WEBHOOK_GROUP,
    Outgoing,
    WebhookStore,
    list_deliveries,
    remove_deliveries,
    retry_delay_ms,
)


async def _setup(harness: Callable[..., Any], redis: Any) -> tuple[Any, WebhookStore, str]:
    h = await harness()
    await redis.xgroup_create(h.pk.commands, WEBHOOK_GROUP, id="0", mkstream=True)
    entry = (await redis.xadd(h.pk.commands, {"type": "terminate", "session_id": "s1"})).decode()
    await redis.xreadgroup(WEBHOOK_GROUP, "r1", {h.pk.commands: ">"})
    return h, WebhookStore(h.store), entry


async def test_enqueue_acknowledges_once_and_claims_hold_an_attempt(
    harness: Callable[..., Any], redis: Any
) -> None:
    h, ws, entry = await _setup(harness, redis)
    out = Outgoing(entry, "terminate", '{"session_id": "s1"}', ["wh_a", "wh_b"])
    assert await ws.enqueue(h.pk, [out]) == 2
    assert await ws.enqueue(h.pk, [out]) == 0  # acknowledged already: no second delivery
    assert (await redis.xpending(h.pk.commands, WEBHOOK_GROUP))["pending"] == 0
    first = await ws.claim(h.pk, 60_000, {"wh_a": 5, "wh_b": 0})
    assert [(c.member, c.attempt, c.type) for c in first.claimed] == [
        (f"{entry}.wh_a", 1, "terminate")
    ]
    assert (first.backlog, first.dead) == (2, 0)  # both endpoints' deliveries count
    # In flight: another replica's claim finds nothing due.
    assert (await ws.claim(h.pk, 60_000, {"wh_a": 5})).claimed == []
    assert await ws.finish(h.pk, first.claimed[0], "ok", 0, 3) == "delivered"
    assert not await redis.exists(h.pk.delivery(f"{entry}.wh_a"))


async def test_failures_retry_then_die_and_stale_outcomes_change_nothing(
    harness: Callable[..., Any], redis: Any
) -> None:
    h, ws, entry = await _setup(harness, redis)
    await ws.enqueue(h.pk, [Outgoing(entry, "terminate", "{}", ["wh_a"])])
    claimed = (await ws.claim(h.pk, 0, {"wh_a": 1})).claimed[0]
    assert await ws.finish(h.pk, claimed, "fail", 0, 2, "HTTP 500") == "retry"
    again = (await ws.claim(h.pk, 0, {"wh_a": 1})).claimed[0]
    assert again.attempt == 2
    assert await ws.finish(h.pk, claimed, "fail", 0, 2, "late") == "stale"
    assert await ws.finish(h.pk, again, "fail", 0, 2, "HTTP 500") == "dead"
    assert await redis.zcard(h.pk.webhook_due("wh_a")) == 0
    assert await redis.zcard(h.pk.webhook_dead("wh_a")) == 1
    counted = await ws.claim(h.pk, 0, {"wh_a": 1})
    assert (counted.claimed, counted.backlog, counted.dead) == ([], 0, 1)


async def test_a_removed_endpoint_gets_no_delivery_from_a_reader_that_still_listed_it(
    harness: Callable[..., Any], redis: Any
) -> None:
    h, ws, entry = await _setup(harness, redis)
    await ws.enqueue(h.pk, [Outgoing(entry, "terminate", "{}", ["wh_a", "wh_b"])])
    assert await remove_deliveries(h.store, "wh_a") == 1
    later = (await redis.xadd(h.pk.commands, {"type": "terminate"})).decode()
    await redis.xreadgroup(WEBHOOK_GROUP, "r1", {h.pk.commands: ">"})
    # A reader that read the endpoints just before the removal still names wh_a.
    assert await ws.enqueue(h.pk, [Outgoing(later, "terminate", "{}", ["wh_a", "wh_b"])]) == 1
    assert await redis.zrange(h.pk.webhook_due("wh_a"), 0, -1) == []
    assert await redis.zcard(h.pk.webhook_due("wh_b")) == 2


def test_retry_delays_grow_fourfold_within_half_either_way() -> None:
    rng = random.Random(1)
    for attempt in range(1, 6):
        delay = retry_delay_ms(5.0, attempt, rng)
        assert 2500 * 4 ** (attempt - 1) <= delay <= 7500 * 4 ** (attempt - 1)


async def test_listing_and_removal_cover_every_partition(
    harness: Callable[..., Any], redis: Any
) -> None:
    h = await harness(partitions=2)
    ws = WebhookStore(h.store)
    for pk in h.store.partitions:
        await redis.xgroup_create(pk.commands, WEBHOOK_GROUP, id="0", mkstream=True)
        entry = (await redis.xadd(pk.commands, {"type": "terminate"})).decode()
        await redis.xreadgroup(WEBHOOK_GROUP, "r1", {pk.commands: ">"})
        await ws.enqueue(pk, [Outgoing(entry, "terminate", '{"session_id": "s"}', ["wh_a"])])
    pending = await list_deliveries(h.store, "wh_a", "pending", 10)
    assert [d.partition for d in pending] == [0, 1]
    assert all(d.attempts == 0 and d.type == "terminate" for d in pending)
    assert len(await list_deliveries(h.store, "wh_a", "pending", 1)) == 1
    assert await list_deliveries(h.store, "wh_a", "dead", 10) == []
    assert await remove_deliveries(h.store, "wh_a") == 2
    assert await list_deliveries(h.store, "wh_a", "pending", 10) == []
