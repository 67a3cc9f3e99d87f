"""Prometheus metrics (SPEC §5), all in one registry owned by the daemon.

Label values come from closed sets and are created up front so every series reads 0
before its first event.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from daemon import __version__
from daemon.events import EVENT_TYPES
from daemon.keys import GROUP, PartitionKeys
from daemon.model import MICRO, PAUSE_REASONS, TERMINATION_REASONS

# The `_created` series would double every counter and histogram and nobody reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

IGNORED_REASONS = ("unknown_session", "terminated", "stale", "paused", "not_paused")
ADMISSION_RESULTS = (
    "admitted",
    "payment_required",
    "concurrent_session_limit",
    "invalid",
    "conflict",
)
RATE_LIMITS = ("requests", "creates")
ADMISSION_BY_CODE = {
    "402": "payment_required",
    "429": "concurrent_session_limit",
    "422": "invalid",
    "409": "conflict",
}

_LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._consumed_micro = 0  # the deployment's consumption as last read from Redis
        r = self.registry
        self.events = Counter(
            "lifecycle_events", "Events acknowledged, by type.", ["type"], registry=r
        )
        self.events_invalid = Counter(
            "lifecycle_events_invalid", "Events dead-lettered as malformed.", registry=r
        )
        self.events_ignored = Counter(
            "lifecycle_events_ignored",
            "Events that changed nothing (unknown or terminated session, older ts).",
            ["reason"],
            registry=r,
        )
        self.terminations = Counter(
            "lifecycle_terminations", "Sessions terminated, by reason.", ["reason"], registry=r
        )
        self.pauses = Counter(
            "lifecycle_pauses", "Sessions paused, by reason.", ["reason"], registry=r
        )
        self.resumes = Counter("lifecycle_resumes", "Paused sessions resumed.", registry=r)
        self.admissions = Counter(
            "lifecycle_admissions", "Session creations, by admission result.", ["result"],
            registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "lifecycle_rate_limited",
            "API requests refused by an account's plan's rate limit (SPEC §6), by limit.",
            ["limit"],
            registry=r,
        )
        self.credits_consumed = Counter(
            "lifecycle_credits_consumed",
            "Prepaid credits consumed by metered sessions (SPEC §7) in the whole deployment, "
            "read from Redis.",
            registry=r,
        )
        self.depletions = Counter(
            "lifecycle_depletions",
            "Metered accounts whose balance ran out (their sessions ended for billing).",
            registry=r,
        )
        self.sessions_live = Gauge(
            "lifecycle_sessions_live", "Sessions not terminated (paused included), from Redis.",
            registry=r,
        )  # fmt: skip
        self.expiry_lateness = Histogram(
            "lifecycle_expiry_lateness_seconds",
            "Time from a timeout deadline to its terminate command (emitted_at - deadline).",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.event_lag = Histogram(
            "lifecycle_event_lag_seconds",
            "Time from an event entering the stream to its application.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.redis_up = Gauge("lifecycle_redis_up", "1 when Redis answers, else 0.", registry=r)
        self.ready = Gauge(
            "lifecycle_ready", "1 when the daemon is ready (see /readyz), else 0.", registry=r
        )
        self.partitions_owned = Gauge(
            "lifecycle_partitions_consumed",
            "Partitions whose events this replica consumes (holds the lease of).",
            registry=r,
        )
        self.events_backlog = Gauge(
            "lifecycle_events_backlog",
            "Entries of a partition's events stream not yet applied, read from Redis.",
            ["partition"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "lifecycle_dead_letters",
            "Entries of a partition's dead-letter stream, read from Redis.",
            ["partition"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "lifecycle_event_loop_lag_seconds",
            "How late the event loop last ran a scheduled callback (see /healthz).",
            registry=r,
        )
        self.build_info = Gauge(
            "lifecycle_build_info", "Build information; the value is 1.", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        for kind in EVENT_TYPES:
            self.events.labels(type=kind)
        for reason in IGNORED_REASONS:
            self.events_ignored.labels(reason=reason)
        for reason in TERMINATION_REASONS:
            self.terminations.labels(reason=reason)
        for result in ADMISSION_RESULTS:
            self.admissions.labels(result=result)
        for reason in PAUSE_REASONS:
            self.pauses.labels(reason=reason)
        for limit in RATE_LIMITS:
            self.rate_limited.labels(limit=limit)

    async def refresh_from_redis(self, redis: Any, partitions: Sequence[PartitionKeys]) -> None:
        """Read the gauges describing shared state from Redis, so every replica agrees."""
        pipe = redis.pipeline(transaction=False)
        for pk in partitions:
            pipe.zcard(pk.deadlines)
            pipe.xlen(pk.events)
            pipe.xinfo_groups(pk.events)
            pipe.xlen(pk.dead)
            pipe.get(pk.consumed)
        replies = await pipe.execute(raise_on_error=False)
        live = consumed = 0
        for i, pk in enumerate(partitions):
            count, length, groups, dead, used = replies[5 * i : 5 * i + 5]
            if isinstance(count, int):
                live += count
            if isinstance(used, bytes | str | int):
                consumed += int(used)
            self.events_backlog.labels(partition=str(pk.partition)).set(_backlog(length, groups))
            if isinstance(dead, int):
                self.dead_letters.labels(partition=str(pk.partition)).set(dead)
        self.sessions_live.set(live)
        # A counter that follows the deployment's total (micro-credits, kept per partition).
        if consumed > self._consumed_micro:
            self.credits_consumed.inc((consumed - self._consumed_micro) / MICRO)
            self._consumed_micro = consumed

    def count_outcomes(self, types: list[str], outcomes: list[str]) -> None:
        """Count one batch's outcomes from ``apply_events.lua``."""
        # One increment per distinct (type, outcome): a batch is hundreds of events.
        for (kind, outcome), n in collections.Counter(zip(types, outcomes, strict=True)).items():
            if outcome == "skipped":
                continue
            if outcome == "dead":
                self.events_invalid.inc(n)
                continue
            self.events.labels(type=kind).inc(n)
            head, _, detail = outcome.partition(":")
            if head == "ignored":
                self.events_ignored.labels(reason=detail).inc(n)
            elif head == "rejected" and kind == "resume":
                continue  # a refused resume: not a session creation
            elif head == "rejected":
                self.admissions.labels(result=ADMISSION_BY_CODE[detail]).inc(n)
            elif head == "paused":
                self.pauses.labels(reason=detail).inc(n)
            elif head == "resumed":
                self.resumes.inc(n)
            elif kind == "created":
                self.admissions.labels(result="admitted").inc(n)
            elif head == "ended" and kind == "billing":
                self.terminations.labels(reason="billing").inc(int(detail) * n)
            elif head == "ended":
                self.terminations.labels(reason=detail).inc(n)


def _backlog(length: Any, groups: Any) -> int:
    """Entries the daemon's group has not applied: not yet delivered plus pending.

    ``lag`` is unknown to the server after some deletions; the stream's length, which
    trimming keeps to the unapplied entries, stands in for it then.
    """
    if not isinstance(groups, list):
        return length if isinstance(length, int) else 0
    for group in groups:
        name = group.get("name")
        if (name.decode() if isinstance(name, bytes) else name) != GROUP:
            continue
        lag = group.get("lag")
        if lag is None:
            return length if isinstance(length, int) else 0
        return int(lag) + int(group.get("pending") or 0)
    return length if isinstance(length, int) else 0
