"""The engine: partition leases, one consumer per held partition, one expirer per partition.

Every replica expires every partition (the scripts make each termination exactly-once,
and max-lifetime deadlines keep firing while a dead holder's lease runs out); each
partition's events are consumed by the one replica holding its lease. Replicas take a
fair share of the partitions: ``ceil(partitions / live replicas)`` each.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError

from daemon.consumer import BLOCK_MS, LeaseLost, PartitionConsumer, ensure_group
from daemon.expirer import PartitionExpirer
from daemon.health import Health
from daemon.keys import PartitionKeys, config_key
from daemon.metrics import Metrics
from daemon.redis_client import TRANSIENT_ERRORS
from daemon.store import Store

log = structlog.get_logger("lifecycled.engine")

PING_INTERVAL_SECONDS = 1.0
# The client retries a failed command for seconds; readiness must not wait that long.
PING_TIMEOUT_SECONDS = 2.0
LIVE_COUNT_INTERVAL_SECONDS = 5.0


def new_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Engine:
    def __init__(self, store: Store, metrics: Metrics, health: Health) -> None:
        self.store = store
        self.redis = store.redis
        self.metrics = metrics
        self.health = health
        self.replica_id = new_replica_id()
        self.expirers = {pk.partition: PartitionExpirer(store, pk, metrics)
                         for pk in store.partitions}  # fmt: skip
        self._consumers: dict[int, tuple[PartitionConsumer, asyncio.Task[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._takings = 0  # makes each lease token unique to one taking
        self._stopping = False

    # Wiring for the API: writes made here wake the local expirer.

    def nudge(self, pk: PartitionKeys, deadline_ms: int | None) -> None:
        self.expirers[pk.partition].nudge(deadline_ms)

    @property
    def owned_partitions(self) -> list[int]:
        return sorted(self._consumers)

    async def start(self) -> None:
        initialize = getattr(self.redis, "initialize", None)
        if initialize is not None:
            # Redis Cluster: map the slots once before the loops start together; redis-py
            # can break a connection when many tasks race to map them on first use.
            # Unreachable now is fine: the loops retry and the client maps the slots then.
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await initialize()
        # Ready only once the groups exist and the deployment's settings are recorded.
        self.health.waiting("streams")
        spawn = asyncio.get_running_loop().create_task
        # The ping loop finds out when Redis is back; the others are woken by it.
        self._tasks.append(spawn(self._supervise("redis_ping", self._ping_loop, wake=False)))
        self._tasks.append(spawn(self._supervise("consumer", self._lease_loop)))
        for p, expirer in self.expirers.items():
            self._tasks.append(spawn(self._supervise(f"expirer:{p}", expirer.run)))

    async def _supervise(
        self, name: str, body: Callable[[], Awaitable[None]], wake: bool = True
    ) -> None:
        """Run a loop until stopped; a failure flips readiness and restarts it after a backoff.

        ``wake``: restart as soon as Redis answers again rather than at the backoff's end.
        """
        while not self._stopping:
            self.health.started(name)
            try:
                await body()
                return
            except TRANSIENT_ERRORS as exc:
                delay = self.health.failed(name, exc, connection=True)
            except Exception as exc:
                # A Redis error reply or a bug: restart the loop, keep the daemon up.
                delay = self.health.failed(name, exc, connection=False)
            if wake:
                await self.health.backoff(delay)
            else:
                await asyncio.sleep(delay)

    async def _ping_loop(self) -> None:
        last_count = -math.inf
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), PING_TIMEOUT_SECONDS)
            except TRANSIENT_ERRORS as exc:
                # This loop alone decides whether Redis is reachable (see Health.failed).
                self.health.redis_failed(exc)
                raise
            self.health.redis_ok()
            if loop.time() - last_count >= LIVE_COUNT_INTERVAL_SECONDS:
                # Gauges only: a failure here says nothing the ping did not.
                with contextlib.suppress(RedisError, *TRANSIENT_ERRORS):
                    await self.refresh_live_count()
                last_count = loop.time()
            await asyncio.sleep(PING_INTERVAL_SECONDS)

    async def refresh_live_count(self) -> None:
        """Refresh the gauges of shared state (live sessions, backlogs) from Redis."""
        await self.metrics.refresh_from_redis(self.redis, self.store.partitions)

    async def _lease_loop(self) -> None:
        ttl_s = self.store.settings.lease_ttl_ms / 1000
        for pk in self.store.partitions:
            await ensure_group(self.redis, pk)
            await self.store.migrate_deadlines(pk)
        # Producers read these to route and validate events as this deployment does.
        await self.redis.hset(
            config_key(self.store.settings.key_prefix),
            mapping={
                "partitions": len(self.store.partitions),
                "plans": ",".join(self.store.plans),
            },
        )
        self.health.started("streams")
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            replicas = await self.store.register_replica(self.replica_id)
            fair = math.ceil(len(self.store.partitions) / max(1, replicas))
            order = list(self.store.partitions)
            random.shuffle(order)
            # Leases are renewed all at once, and free ones taken in waves of what the fair
            # share has room for: a round trip per wave, not per partition, so a slow link
            # to Redis does not stretch the rounds of many partitions past the lease's time
            # to live.
            failures: list[BaseException] = []
            await self._tend_leases([pk for pk in order if pk.partition in self._consumers],
                                    fair, failures)  # fmt: skip
            free = [pk for pk in order if pk.partition not in self._consumers]
            while free and len(self._consumers) < fair:
                room = fair - len(self._consumers)
                await self._tend_leases(free[:room], fair, failures)
                free = free[room:]
            self.metrics.partitions_owned.set(len(self._consumers))
            if failures and len(failures) == len(order):
                raise failures[0]
            # Renew every ttl/3 whatever the round trips took (at once if they took longer);
            # the jitter spreads the replicas' renewals and is not a secret.
            pause = ttl_s / 3 * random.uniform(0.8, 1.0) - (loop.time() - started)  # nosec B311
            await asyncio.sleep(max(0.0, pause))

    async def _tend_leases(
        self, pks: list[PartitionKeys], fair: int, failures: list[BaseException]
    ) -> None:
        """``_tend_lease`` of each partition at once; unreachable ones go to ``failures``.

        One unreachable node (a Cluster failover) must not keep the leases of partitions
        on other nodes from being renewed.
        """
        outcomes = await asyncio.gather(
            *(self._tend_lease(pk, fair) for pk in pks), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, TRANSIENT_ERRORS):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _tend_lease(self, pk: PartitionKeys, fair: int) -> None:
        """Renew a held lease (or hand it over above the fair share), or take a free one."""
        held = self._consumers.get(pk.partition)
        if held is not None:
            if not await self.store.take_lease(pk, held[0].lease_token, renew=True):
                log.warning("partition_lease_lost", partition=pk.partition)
                await self._drop(pk, release=False)
            elif len(self._consumers) > fair:
                log.info("partition_handed_over", partition=pk.partition, fair=fair)
                await self._drop(pk, release=True)
        elif len(self._consumers) < fair:
            self._takings += 1
            token = f"{self.replica_id}#{self._takings}"
            if await self.store.take_lease(pk, token, renew=False):
                self._adopt(pk, token)

    def _adopt(self, pk: PartitionKeys, token: str) -> None:
        log.info("partition_lease_taken", partition=pk.partition, replica=self.replica_id)
        consumer = PartitionConsumer(
            self.store,
            pk,
            self.replica_id,
            token,
            self.metrics,
            self.expirers[pk.partition].batch_applied,
        )
        task = asyncio.get_running_loop().create_task(self._consume(consumer))
        self._consumers[pk.partition] = (consumer, task)

    async def _consume(self, consumer: PartitionConsumer) -> None:
        name = f"consumer:{consumer.pk.partition}"
        try:
            while not self._stopping:
                self.health.started(name)
                try:
                    await consumer.run()
                    return
                except LeaseLost:
                    log.warning("partition_lease_lost", partition=consumer.pk.partition)
                    self._consumers.pop(consumer.pk.partition, None)
                    return
                except TRANSIENT_ERRORS as exc:
                    delay = self.health.failed(name, exc, connection=True)
                except Exception as exc:
                    delay = self.health.failed(name, exc, connection=False)
                await self.health.backoff(delay)
        finally:
            # A partition this replica no longer consumes does not hold readiness back.
            self.health.forget(name)

    async def _drop(self, pk: PartitionKeys, release: bool) -> None:
        entry = self._consumers.pop(pk.partition, None)
        if entry is None:
            return
        consumer, task = entry
        await self._finish(consumer, task)
        if release:
            await self.store.release_lease(pk, consumer.lease_token)

    @staticmethod
    async def _finish(consumer: PartitionConsumer, task: asyncio.Task[None]) -> None:
        """Let the batch in flight finish and be acknowledged; cancel a blocked read."""
        consumer.stop()
        if consumer.reading:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=BLOCK_MS / 1000 + 0.5)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop(self) -> None:
        """Stop reading, finish and acknowledge in-flight batches, hand the leases over."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        held = list(self._consumers.items())
        await asyncio.gather(*(self._finish(consumer, task) for _, (consumer, task) in held))
        for partition, (consumer, _) in held:
            with contextlib.suppress(RedisError, *TRANSIENT_ERRORS):
                await self.store.release_lease(
                    self.store.partitions[partition], consumer.lease_token
                )
        with contextlib.suppress(RedisError, *TRANSIENT_ERRORS):
            await self.store.unregister_replica(self.replica_id)
        self._consumers.clear()
