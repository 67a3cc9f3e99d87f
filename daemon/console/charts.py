"""The console's charts: samples of the daemon's own Prometheus registry, the last hour.

Every ``SAMPLE_SECONDS`` the sampler reads the counters and histogram buckets of
``daemon.metrics`` and keeps them in a ring of ``RING_SIZE`` samples (in memory, per
replica). A chart point is the difference of two successive samples: terminations per
reason in that interval, and the p50/p99 of expiry lateness and event lag observed in it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from daemon.model import TERMINATION_REASONS

SAMPLE_SECONDS = 10.0
RING_SIZE = 360  # one hour
HISTOGRAMS = {
    "lateness": "lifecycle_expiry_lateness_seconds",
    "lag": "lifecycle_event_lag_seconds",
}


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the epoch
    terminations: dict[str, float]
    # histogram name -> cumulative bucket counts by upper bound (ascending, +Inf last)
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def read_sample(registry: CollectorRegistry, at: float | None = None) -> Sample:
    terminations = dict.fromkeys(TERMINATION_REASONS, 0.0)
    buckets: dict[str, list[tuple[float, float]]] = {name: [] for name in HISTOGRAMS}
    wanted = {metric: name for name, metric in HISTOGRAMS.items()}
    for metric in registry.collect():
        if metric.name == "lifecycle_terminations":
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("reason") in terminations:
                    terminations[s.labels["reason"]] = s.value
        elif metric.name in wanted:
            name = wanted[metric.name]
            for s in metric.samples:
                if s.name.endswith("_bucket"):
                    buckets[name].append((float(s.labels["le"]), s.value))
    for rows in buckets.values():
        rows.sort()
    return Sample(time.time() if at is None else at, terminations, buckets)


def quantile(bounds: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of bucket counts (not cumulative), interpolated within its bucket
    as Prometheus' ``histogram_quantile`` does; None without observations."""
    total = sum(count for _, count in bounds)
    if total <= 0:
        return None
    rank = q * total
    seen, lower = 0.0, 0.0
    for upper, count in bounds:
        if count > 0 and seen + count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        if not math.isinf(upper):
            lower = upper
    return lower


def _interval_buckets(
    old: list[tuple[float, float]], new: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    before = dict(old)
    out, previous = [], 0.0
    for upper, cumulative in new:
        delta = max(0.0, cumulative - before.get(upper, 0.0))
        out.append((upper, max(0.0, delta - previous)))
        previous = delta
    return out


def series(samples: list[Sample]) -> dict[str, Any]:
    """Chart data from successive samples: one point per interval between two."""
    out: dict[str, Any] = {
        "t": [],
        "terminations": {reason: [] for reason in TERMINATION_REASONS},
        "lateness_p50": [],
        "lateness_p99": [],
        "lag_p50": [],
        "lag_p99": [],
    }
    for old, new in itertools.pairwise(samples):
        out["t"].append(round(new.at, 3))
        for reason in TERMINATION_REASONS:
            delta = new.terminations[reason] - old.terminations[reason]
            out["terminations"][reason].append(max(0.0, delta))
        for name in HISTOGRAMS:
            counts = _interval_buckets(old.buckets[name], new.buckets[name])
            for q in (50, 99):
                value = quantile(counts, q / 100)
                out[f"{name}_p{q}"].append(None if value is None else round(value * 1000, 3))
    return out


class Sampler:
    """Samples the registry now and every ``interval`` seconds, keeping the last hour."""

    def __init__(self, registry: CollectorRegistry, interval: float = SAMPLE_SECONDS) -> None:
        self.registry = registry
        self.interval = interval
        self.ring: collections.deque[Sample] = collections.deque(maxlen=RING_SIZE + 1)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.ring.append(read_sample(self.registry))

    def series(self) -> dict[str, Any]:
        """The chart data, with a point up to now (the ring plus a fresh reading)."""
        return series([*self.ring, read_sample(self.registry)])

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
