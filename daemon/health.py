"""Liveness and readiness: Redis reachability, event-loop responsiveness, loop status."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog
from redis.backoff import ExponentialWithJitterBackoff

from daemon.metrics import Metrics

log = structlog.get_logger("lifecycled.health")

# Redis errors are retried after 50 ms, doubling up to 5 s, with full jitter.
BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.05)
LOOP_LAG_LIMIT_SECONDS = 5.0


@dataclass
class Health:
    """Shared by the loops: each reports Redis failures and successes here."""

    metrics: Metrics
    redis_up: bool = False
    last_error: str = ""
    running: dict[str, bool] = field(default_factory=dict)
    loop_lag_seconds: float = 0.0
    _failures: int = 0

    def redis_ok(self) -> None:
        if not self.redis_up:
            log.info("redis_connection_restored" if self._failures else "redis_connected")
        self.redis_up = True
        self._failures = 0
        self.metrics.redis_up.set(1)

    def redis_failed(self, exc: BaseException) -> float:
        """Record a failed Redis call; returns how long to wait before the next try."""
        self._failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.redis_up or self._failures == 1:
            log.warning("redis_connection_lost", error=self.last_error)
        self.redis_up = False
        self.metrics.redis_up.set(0)
        return BACKOFF.compute(self._failures)

    def not_ready_reason(self) -> str | None:
        if not self.redis_up:
            return f"redis unreachable: {self.last_error or 'not connected yet'}"
        for name, running in self.running.items():
            if not running:
                return f"{name} is not running"
        if not self.running:
            return "starting"
        return None

    def live(self) -> bool:
        return self.loop_lag_seconds < LOOP_LAG_LIMIT_SECONDS


async def watch_loop_lag(health: Health, interval: float = 0.5) -> None:
    """Measure how late the event loop runs a timer; a blocked loop fails liveness.

    A separate thread would be needed to notice a loop blocked *now*; here the lag of
    the last tick is kept, and /healthz also fails when no tick happened recently.
    """
    while True:
        start = time.monotonic()
        await asyncio.sleep(interval)
        health.loop_lag_seconds = max(0.0, time.monotonic() - start - interval)
