"""Liveness and readiness: event-loop responsiveness, Redis reachability, loop status.

Liveness is measured from outside the event loop: a thread posts a callback to the loop
every ``BEAT_INTERVAL_SECONDS`` and times how long the loop takes to run it. A loop
blocked by a long computation or a synchronous call shows up as lag, both while it is
blocked (the beat is still waiting) and for ``lag_window`` seconds after it (the beat
ran late), so ``/healthz``, answered by that same loop, can report it.

Readiness needs Redis answering and every supervised loop (the partition coordinator,
each held partition's consumer, each partition's expirer) running rather than backing
off after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass

import structlog
from redis.backoff import ExponentialWithJitterBackoff

from daemon.metrics import Metrics
from daemon.redis_client import write_refusal

log = structlog.get_logger("lifecycled.health")

# Failed Redis calls are retried after up to 50 ms, doubling up to 5 s, with full jitter.
BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.05)
# A loop that ran this long since its last failure starts its backoff afresh.
BACKOFF_RESET_SECONDS = 30.0
LOOP_LAG_LIMIT_SECONDS = 5.0
LOOP_LAG_WINDOW_SECONDS = 10.0
BEAT_INTERVAL_SECONDS = 0.25


@dataclass
class _Component:
    running: bool = False
    error: str = ""
    failures: int = 0
    since: float = 0.0  # monotonic time it was last (re)started


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Health:
    """Shared by the loops: each reports its state, Redis failures and successes here."""

    def __init__(
        self,
        metrics: Metrics,
        lag_limit: float = LOOP_LAG_LIMIT_SECONDS,
        lag_window: float = LOOP_LAG_WINDOW_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.lag_limit = lag_limit
        self.lag_window = lag_window
        self.redis_up: bool | None = None  # None: not tried yet
        self.last_error = ""
        self.stopping = False
        self.components: dict[str, _Component] = {}
        self._down_since = 0.0
        self._connected_once = False
        self._restored = asyncio.Event()
        self._beats: deque[tuple[float, float]] = deque()  # (ran at, lag), loop thread only
        self._posted: float | None = None  # monotonic time of the beat not yet run
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # Redis

    def redis_ok(self) -> None:
        if self.redis_up is not True:
            if not self._connected_once:
                self._connected_once = True
                log.info("redis_connected")
            else:
                log.info("redis_connection_restored",
                         down_seconds=round(time.monotonic() - self._down_since, 3))  # fmt: skip
            self._restored.set()
        self.redis_up = True
        self.last_error = ""
        self.metrics.redis_up.set(1)

    def redis_failed(self, exc: BaseException) -> None:
        """A Redis call failed for want of a connection: logged once per state change."""
        self.last_error = describe(exc)
        if self.redis_up is not False:
            event = "redis_connection_lost" if self.redis_up else "redis_connection_failed"
            log.warning(event, error=self.last_error)
            self._down_since = time.monotonic()
            self._restored.clear()
        self.redis_up = False
        self.metrics.redis_up.set(0)

    # Supervised loops

    def waiting(self, name: str) -> None:
        """A component that must report :meth:`started` before the daemon is ready."""
        self.components.setdefault(name, _Component()).running = False

    def started(self, name: str) -> None:
        component = self.components.setdefault(name, _Component())
        component.running = True
        component.since = time.monotonic()

    def failed(self, name: str, exc: BaseException, connection: bool) -> float:
        """Record a loop's failure; returns how long it should wait before restarting.

        Whether Redis is reachable is the ping loop's to say (``redis_ok`` and
        ``redis_failed``): one command failing on a connection the server closed is not
        an outage. Redis refusing writes (out of memory, disk full) is logged as a
        warning, without a traceback. Any other failure (a Redis error reply, a bug) is
        logged when the loop starts failing, not on every retry.
        """
        component = self.components.setdefault(name, _Component())
        now = time.monotonic()
        if now - component.since > BACKOFF_RESET_SECONDS:
            component.failures = 0
        component.failures += 1
        component.running = False
        refusal = write_refusal(exc)
        component.error = refusal or describe(exc)
        if connection:
            log.debug("loop_redis_error", loop=name, error=component.error,
                      failures=component.failures)  # fmt: skip
        elif refusal is not None:
            level = log.warning if component.failures == 1 else log.debug
            level("loop_redis_refuses_writes", loop=name, error=refusal, reply=str(exc),
                  failures=component.failures)  # fmt: skip
        elif component.failures == 1:
            log.error("loop_failed", loop=name, error=component.error,
                      exc_info=exc)  # fmt: skip
        else:
            log.debug("loop_failed_again", loop=name, error=component.error,
                      failures=component.failures)  # fmt: skip
        return float(BACKOFF.compute(component.failures))

    def forget(self, name: str) -> None:
        self.components.pop(name, None)

    async def backoff(self, delay: float) -> None:
        """Sleep ``delay``, or less when Redis comes back meanwhile."""
        if self.redis_up is not False:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restored.wait(), delay)

    # Probes

    def not_ready_reason(self) -> str | None:
        reason = self._not_ready_reason()
        self.metrics.ready.set(0 if reason else 1)
        return reason

    def _not_ready_reason(self) -> str | None:
        if self.stopping:
            return "shutting down"
        if not self.redis_up:
            return f"redis unreachable: {self.last_error or 'not connected yet'}"
        if not self.components:
            return "starting"
        for name, component in sorted(self.components.items()):
            if not component.running:
                return f"{name} not running: {component.error or 'starting'}"
        return None

    def loop_lag(self) -> float:
        """The worst event-loop lag seen in the last ``lag_window`` seconds, in seconds."""
        now = time.monotonic()
        worst = max((lag for ran, lag in self._beats if ran >= now - self.lag_window),
                    default=0.0)  # fmt: skip
        posted = self._posted
        if posted is not None:
            worst = max(worst, now - posted)
        return worst

    def live(self) -> bool:
        return self.loop_lag() < self.lag_limit

    # Loop monitor

    def start_loop_monitor(self, loop: asyncio.AbstractEventLoop) -> None:
        self._monitor_stop.clear()
        self._monitor = threading.Thread(
            target=self._monitor_run, args=(loop,), name="lifecycled-loop-monitor", daemon=True
        )
        self._monitor.start()

    def stop_loop_monitor(self) -> None:
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=1)
            self._monitor = None

    def _monitor_run(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._monitor_stop.wait(BEAT_INTERVAL_SECONDS):
            if self._posted is not None:
                continue  # the loop has not run the last beat yet
            posted = time.monotonic()
            self._posted = posted
            try:
                loop.call_soon_threadsafe(self._beat, posted)
            except RuntimeError:  # the loop is closed
                return

    def _beat(self, posted: float) -> None:
        now = time.monotonic()
        lag = now - posted
        self._posted = None
        self._beats.append((now, lag))
        while self._beats and self._beats[0][0] < now - self.lag_window:
            self._beats.popleft()
        self.metrics.loop_lag.set(lag)
