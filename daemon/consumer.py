"""Events in: read a partition's stream in batches and apply each batch in one script call.

Only the replica holding a partition's lease consumes it, so the partition's events
take effect in stream order however many replicas run. A new holder first claims the
entries its predecessor left pending and applies them, then reads new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from redis.exceptions import ResponseError

from daemon.events import ParsedEvent, parse_entry
from daemon.keys import GROUP, PartitionKeys
from daemon.metrics import Metrics
from daemon.shield import shielded
from daemon.store import OlderEntriesPending, Store

log = structlog.get_logger("lifecycled.consumer")

BLOCK_MS = 1000


class LeaseLost(Exception):
    """The partition's lease moved to another replica; stop consuming it."""


async def ensure_group(redis: Any, pk: PartitionKeys) -> None:
    """Create the consumer group reading from the stream's start, if it is missing."""
    try:
        await redis.xgroup_create(pk.events, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class PartitionConsumer:
    def __init__(
        self,
        store: Store,
        pk: PartitionKeys,
        replica_id: str,
        lease_token: str,
        metrics: Metrics,
        on_applied: Callable[[int | None], None],
    ) -> None:
        self.store = store
        self.redis = store.redis
        self.pk = pk
        self.replica_id = replica_id  # the consumer name in the group
        self.lease_token = lease_token
        self.metrics = metrics
        self.on_applied = on_applied  # called with the earliest deadline a batch wrote
        self.settings = store.settings
        self._stopping = False
        self._last_claim = 0.0
        self.reading = False  # blocked in XREADGROUP: safe to cancel

    def stop(self) -> None:
        """Finish the batch in flight, then return."""
        self._stopping = True

    async def run(self) -> None:
        """Consume while holding the lease; raises LeaseLost or Redis errors.

        The next batch is read and checked while the previous one's script runs on the
        server; scripts are still sent one at a time, in stream order.
        """
        await ensure_group(self.redis, self.pk)
        await self._claim(min_idle_ms=0)
        loop = asyncio.get_running_loop()
        self._last_claim = loop.time()
        in_flight: asyncio.Task[None] | None = None
        try:
            while not self._stopping:
                if loop.time() - self._last_claim > self.settings.claim_idle_ms / 1000:
                    await self._settle(in_flight)
                    in_flight = None
                    await self._claim(min_idle_ms=self.settings.claim_idle_ms)
                    self._last_claim = loop.time()
                # Cancelling the read is safe: entries it delivered stay pending and are
                # claimed by the partition's next holder.
                self.reading = True
                try:
                    reply = await self.redis.xreadgroup(
                        GROUP,
                        self.replica_id,
                        {self.pk.events: ">"},
                        count=self.settings.read_batch,
                        block=BLOCK_MS,
                    )
                finally:
                    self.reading = False
                if not reply:
                    continue
                events = self._parse(reply[0][1])
                await self._settle(in_flight)
                in_flight = loop.create_task(self._apply_parsed(events))
        finally:
            if in_flight is not None:
                with contextlib.suppress(Exception):
                    await self._settle(in_flight)

    async def _settle(self, in_flight: asyncio.Task[None] | None) -> None:
        """Wait for the batch in flight; older entries pending: claim and apply them."""
        if in_flight is None:
            return
        try:
            await in_flight
        except OlderEntriesPending:
            # Claiming from the start applies the older entries, then this batch.
            await self._claim(min_idle_ms=0)

    async def _claim(self, min_idle_ms: int) -> None:
        """Take over entries other consumers read but never applied, oldest first.

        Called with 0 when the lease is taken (the previous holder is fenced off, so its
        pending entries can be taken at once) and with ``claim_idle_ms`` periodically.
        """
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.pk.events,
                GROUP,
                self.replica_id,
                min_idle_time=min_idle_ms,
                start_id=start,
                count=self.settings.read_batch,
            )
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            entries = [(eid, fields) for eid, fields in reply[1] if fields is not None]
            deleted = list(reply[2]) if len(reply) > 2 else []
            if deleted:
                # Trimmed or deleted before anyone applied them: nothing left to apply.
                await self.redis.xack(self.pk.events, GROUP, *deleted)
            if entries:
                log.info("pending_events_claimed", partition=self.pk.partition,
                         count=len(entries))  # fmt: skip
                try:
                    await self._apply(entries)
                except OlderEntriesPending:
                    if not min_idle_ms:
                        raise
                    # Younger-than-idle entries are older than these: take everything.
                    await self._claim(min_idle_ms=0)
                    return
            if start == "0-0":
                break
        await self._forget_idle_consumers()

    async def _forget_idle_consumers(self) -> None:
        for info in await self.redis.xinfo_consumers(self.pk.events, GROUP):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if (
                name != self.replica_id
                and int(info["pending"]) == 0
                and int(info["idle"]) > self.settings.claim_idle_ms
            ):
                await self.redis.xgroup_delconsumer(self.pk.events, GROUP, name)

    def _parse(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[ParsedEvent]:
        plans = self.store.plans
        return [parse_entry(eid, fields, plans) for eid, fields in entries]

    async def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        await self._apply_parsed(self._parse(entries))

    async def _apply_parsed(self, events: list[ParsedEvent]) -> None:
        # Shielded: once sent, the script's outcome must be read and counted even if the
        # daemon is shutting down; the script itself is atomic either way.
        result = await shielded(self.store.apply_events(self.pk, self.lease_token, events))
        if result is None:
            raise LeaseLost(self.pk.partition)
        self._account(events, result.outcomes, result.now_ms)
        self.on_applied(result.earliest_new_deadline)

    def _account(self, events: list[ParsedEvent], outcomes: list[str], now_ms: int) -> None:
        self.metrics.count_outcomes([e.type for e in events], outcomes)
        observe = self.metrics.event_lag.observe
        for event, outcome in zip(events, outcomes, strict=True):
            if outcome == "skipped":
                continue
            observe(max(0, now_ms - event.entry_ms) / 1000)
            if outcome == "applied":
                continue
            if outcome == "dead":
                log.warning("event_dead_lettered", partition=self.pk.partition,
                            entry_id=event.entry_id, error=event.error)  # fmt: skip
            elif outcome.startswith("rejected"):
                log.info("session_rejected", partition=self.pk.partition,
                         entry_id=event.entry_id, code=outcome.partition(":")[2])  # fmt: skip
