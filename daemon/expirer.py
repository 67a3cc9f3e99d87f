"""Deadlines out: terminate a partition's due sessions the moment their deadline passes.

The expirer sleeps until the partition's earliest deadline, measured on the Redis
server's clock, and is woken earlier when this process writes a nearer deadline, or,
while a passed inactivity deadline waits for the consumer (lag-safe rule), when this
process's consumer applies a batch. A cap on the sleep picks up deadlines written by
other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from daemon.keys import PartitionKeys
from daemon.metrics import Metrics
from daemon.shield import shielded
from daemon.store import ExpireResult, Store

log = structlog.get_logger("lifecycled.expirer")

MAX_SLEEP_SECONDS = 1.0
# A passed inactivity deadline waiting for the consumer (lag-safe rule) is rechecked this
# often, for a consumer in another replica; a batch of a local consumer wakes it at once.
HELD_RECHECK_SECONDS = 0.02


class PartitionExpirer:
    def __init__(self, store: Store, pk: PartitionKeys, metrics: Metrics) -> None:
        self.store = store
        self.pk = pk
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._wake_at_ms: int | None = None  # server time of the planned next pass
        self._held = False  # the last pass found a deadline waiting for the consumer
        self._applied_in_pass = False  # a batch was applied while a pass ran

    def nudge(self, deadline_ms: int | None) -> None:
        """A deadline was written here; wake early if it is nearer than the plan."""
        if deadline_ms is None:
            return
        if self._wake_at_ms is None or deadline_ms < self._wake_at_ms:
            self._wake.set()

    def batch_applied(self, deadline_ms: int | None) -> None:
        """The partition's consumer applied a batch that wrote ``deadline_ms`` (or none)."""
        if self._held:
            self._wake.set()  # what the held deadline waited for may be applied now
        else:
            if self._wake_at_ms is None:  # a pass is running
                self._applied_in_pass = True
            self.nudge(deadline_ms)

    async def run_once(self) -> ExpireResult:
        result = await shielded(self.store.expire_due(self.pk))
        m = self.metrics
        if result.by_billing:
            m.terminations.labels(reason="billing").inc(result.by_billing)
        if result.depletions:
            m.depletions.inc(result.depletions)
            log.info("credits_depleted", partition=self.pk.partition, accounts=result.depletions,
                     sessions_terminated=result.by_billing)  # fmt: skip
        # Depletions are deadlines like any other: their lateness counts as well.
        for ms in result.lateness_ms:
            m.expiry_lateness.observe(ms / 1000)
        if result.terminated or result.paused:
            m.terminations.labels(reason="inactivity").inc(result.by_inactivity)
            m.terminations.labels(reason="paused_timeout").inc(result.by_paused_timeout)
            m.terminations.labels(reason="max_lifetime").inc(
                result.terminated - result.by_inactivity - result.by_paused_timeout
            )
            m.pauses.labels(reason="inactivity").inc(result.paused)
            log.debug("sessions_expired", partition=self.pk.partition,
                      count=result.terminated, paused=result.paused,
                      max_lateness_ms=max(result.lateness_ms))  # fmt: skip
        return result

    async def run(self) -> None:
        """Expire forever; Redis errors propagate to the supervisor."""
        while True:
            self._wake.clear()
            self._applied_in_pass = False
            result = await self.run_once()
            self._held = result.held
            busy = result.terminated + result.paused + result.by_billing
            if busy >= self.store.settings.expire_batch:
                continue  # more are due right now
            if result.next_due_ms is None:
                delay = MAX_SLEEP_SECONDS
            else:
                # +1 ms: never wake before the deadline's millisecond has passed.
                delay = max(0.0, (result.next_due_ms - result.now_ms + 1) / 1000)
                delay = min(delay, MAX_SLEEP_SECONDS)
            if result.held:
                # A batch applied while the pass ran may be what the deadline waits for.
                delay = 0.0 if self._applied_in_pass else min(delay, HELD_RECHECK_SECONDS)
            self._wake_at_ms = result.now_ms + int(delay * 1000)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake_at_ms = None
