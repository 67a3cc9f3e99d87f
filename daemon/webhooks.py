"""Webhook delivery: commands out of each partition's stream to the endpoints (SPEC §9).

Two loops per partition. The reader (only on the replica holding the partition's lease)
reads the commands stream with the ``webhooks`` group and turns each batch into
deliveries with one script that also acknowledges it. The pump (on every replica)
claims due deliveries for the endpoints with free workers and runs one attempt each;
each endpoint has its own HTTP session and at most ``CONCURRENCY`` attempts in flight,
so a slow endpoint holds only its own workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError, ResponseError

from daemon.engine import Engine
from daemon.keys import PartitionKeys
from daemon.redis_client import TRANSIENT_ERRORS
from daemon.shield import shielded
from daemon.store import Store
from daemon.webhook_endpoints import Endpoint, Endpoints
from daemon.webhook_message import body, message_id, signed_headers
from daemon.webhook_store import WEBHOOK_GROUP, Claimed, Outgoing, WebhookStore, retry_delay_ms

log = structlog.get_logger("lifecycled.webhooks")

CONCURRENCY = 8
IDLE_POLL_SECONDS = 1.0
CLAIM_GRACE_MS = 1000
AUTOCLAIM_BATCH = 1000
_REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, *TRANSIENT_ERRORS)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "lifecycle_webhook_deliveries",
            "Webhook attempts by result.",
            ["result"],
            registry=registry,
        )
        for result in ("delivered", "retry", "dead"):
            self.deliveries.labels(result=result)
        self.latency = Histogram(
            "lifecycle_webhook_latency_seconds",
            "Time from a command entering its stream to its successful delivery.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.backlog = Gauge(
            "lifecycle_webhook_backlog",
            "Webhook deliveries not yet delivered nor dead (every partition, every endpoint).",
            registry=registry,
        )
        self.dead = Gauge(
            "lifecycle_webhook_dead_deliveries",
            "Dead webhook deliveries waiting to be replayed (or dropped with their endpoint).",
            registry=registry,
        )


class WebhookDispatcher:
    def __init__(self, store: Store, engine: Engine, registry: CollectorRegistry) -> None:
        self.store = store
        self.engine = engine
        self.settings = store.settings
        self.deliveries = WebhookStore(store)
        self.endpoints = Endpoints(store.redis, self.settings.key_prefix)
        self.metrics = WebhookMetrics(registry)
        self._known: dict[str, Endpoint] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._in_flight: dict[str, int] = {}
        self._wake = {pk.partition: asyncio.Event() for pk in store.partitions}
        self._tasks: list[asyncio.Task[None]] = []
        self._attempts: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._backlog: dict[int, int] = {}
        self._dead: dict[int, int] = {}

    def start(self) -> None:
        spawn = asyncio.get_running_loop().create_task
        for pk in self.store.partitions:
            self._tasks.append(spawn(self._forever(self._read, pk)))
            self._tasks.append(spawn(self._forever(self._pump, pk)))

    async def stop(self) -> None:
        # The loops also end by this flag: a cancellation that a library swallows (one that
        # lands as a Redis reply or the wake-up event arrives) must not keep them running.
        self._stopping = True
        tasks = [*self._tasks, *self._attempts]
        for task in tasks:
            task.cancel()
        self.wake()
        # Their cancellations are results here; a cancellation of stop() itself is not.
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in self._sessions.values():
            await session.close()

    async def _forever(self, body: Any, pk: PartitionKeys) -> None:
        delay = 0.05
        while not self._stopping:
            try:
                await body(pk)
            except asyncio.CancelledError:
                raise
            except _REDIS_ERRORS as exc:
                log.warning("webhook_loop_failed", partition=pk.partition, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    async def _refresh(self) -> dict[str, Endpoint]:
        self._known = await self.endpoints.all()
        # A removed endpoint's connections go with it (an attempt still using one fails,
        # and its outcome changes nothing: the delivery is gone).
        for webhook_id in [w for w in self._sessions if w not in self._known]:
            session = self._sessions.pop(webhook_id, None)  # another loop may have taken it
            if session is not None:
                await session.close()
        return self._known

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    # Commands into deliveries, on the partition's lease holder

    async def _read(self, pk: PartitionKeys) -> None:
        redis = self.store.redis
        await ensure_group(redis, pk)
        owned = False
        while not self._stopping:
            if pk.partition not in self.engine.owned_partitions:
                owned = False
                await asyncio.sleep(0.2)
                continue
            if not owned:
                owned = True
                await self._take_over_pending(pk)
            reply = await redis.xreadgroup(
                WEBHOOK_GROUP, self.engine.replica_id, {pk.commands: ">"}, count=500, block=1000
            )
            if reply:
                await self._enqueue(pk, reply[0][1])

    async def _take_over_pending(self, pk: PartitionKeys) -> None:
        """Claim and enqueue every entry an earlier reader of the partition left pending
        (it was killed, or lost the lease), a batch at a time."""
        cursor: Any = "0-0"
        while True:
            reply = await self.store.redis.xautoclaim(
                pk.commands, WEBHOOK_GROUP, self.engine.replica_id,
                min_idle_time=0, start_id=cursor, count=AUTOCLAIM_BATCH,
            )  # fmt: skip
            await self._enqueue(pk, [(e, f) for e, f in reply[1] if f is not None])
            cursor = reply[0]
            if _text(cursor) == "0-0":
                return

    async def _enqueue(self, pk: PartitionKeys, entries: list[Any]) -> None:
        if not entries:
            return
        endpoints = await self._refresh()
        batch = []
        for entry_id, raw in entries:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            kind = fields.get("type", "")
            wanted = [
                e.webhook_id for e in endpoints.values() if e.wants(kind, fields.get("account_id"))
            ]
            batch.append(Outgoing(_text(entry_id), kind, json.dumps(fields), wanted))
        if await shielded(self.deliveries.enqueue(pk, batch)):
            self._wake[pk.partition].set()

    # Attempts, on every replica

    async def _pump(self, pk: PartitionKeys) -> None:
        loop = asyncio.get_running_loop()
        last_refresh = -1e9
        s = self.settings
        claim_ms = round(s.webhook_timeout_seconds * 1000) + CLAIM_GRACE_MS
        while not self._stopping:
            self._wake[pk.partition].clear()
            if loop.time() - last_refresh > IDLE_POLL_SECONDS:
                await self._refresh()
                last_refresh = loop.time()
            rooms = {w: CONCURRENCY - self._in_flight.get(w, 0) for w in self._known}
            for w, room in rooms.items():
                self._in_flight[w] = self._in_flight.get(w, 0) + room
            try:
                result = await self.deliveries.claim(pk, claim_ms, rooms)
            finally:
                for w, room in rooms.items():
                    self._in_flight[w] -= room
            self._count(pk.partition, result.backlog, result.dead)
            for claimed in result.claimed:
                self._in_flight[claimed.webhook_id] = self._in_flight.get(claimed.webhook_id, 0) + 1
                task = loop.create_task(self._attempt(pk, claimed, result.now_ms))
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            wait = IDLE_POLL_SECONDS
            if result.next_due_ms is not None:
                wait = min(wait, max(0.0, (result.next_due_ms - result.now_ms) / 1000))
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # comes as the event is set (each attempt sets it as it ends, at shutdown too).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake[pk.partition].wait()

    def _count(self, partition: int, backlog: int, dead: int) -> None:
        """The gauges sum the partitions' counts, each as its pump saw it last."""
        self._backlog[partition], self._dead[partition] = backlog, dead
        self.metrics.backlog.set(sum(self._backlog.values()))
        self.metrics.dead.set(sum(self._dead.values()))

    def _session(self, endpoint: Endpoint) -> aiohttp.ClientSession:
        session = self._sessions.get(endpoint.webhook_id)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_seconds),
            )
            self._sessions[endpoint.webhook_id] = session
        return session

    async def _attempt(self, pk: PartitionKeys, claimed: Claimed, claimed_at_ms: int) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            endpoint = self._known.get(claimed.webhook_id)
            outcome, error = "gone", ""
            if endpoint is not None:
                outcome, error = await self._post(pk, endpoint, claimed)
            delay = retry_delay_ms(s.webhook_retry_base_seconds, claimed.attempt)
            result = await shielded(
                self.deliveries.finish(pk, claimed, outcome, delay, s.webhook_max_attempts, error)
            )
            if result in ("delivered", "retry", "dead"):
                self.metrics.deliveries.labels(result=result).inc()
            if result == "delivered":
                entry_ms = int(claimed.entry_id.partition("-")[0])
                self.metrics.latency.observe(
                    max(0.0, (claimed_at_ms - entry_ms) / 1000 + loop.time() - started)
                )
            elif result in ("retry", "dead"):
                log.info(
                    "webhook_attempt_failed",
                    webhook_id=claimed.webhook_id,
                    attempt=claimed.attempt,
                    result=result,
                    error=error,
                )
        except _REDIS_ERRORS as exc:
            # The claim runs out and the attempt is made again: at least once.
            log.warning("webhook_outcome_not_recorded", error=str(exc))
        finally:
            self._in_flight[claimed.webhook_id] -= 1
            self.wake()

    async def _post(
        self, pk: PartitionKeys, endpoint: Endpoint, claimed: Claimed
    ) -> tuple[str, str]:
        payload = body(claimed.type, claimed.entry_id, json.loads(claimed.data_json))
        msg_id = message_id(pk.partition, claimed.entry_id)
        within = self.settings.webhook_timeout_seconds
        sent = await send(self._session(endpoint), endpoint, msg_id, payload, within)
        return ("ok" if sent.ok else "fail"), sent.error


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of one signed POST: the answer's status (None: no answer) and, unless
    it was a 2xx, why it failed."""

    status: int | None
    error: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def send(
    session: aiohttp.ClientSession, endpoint: Endpoint, msg_id: str, payload: str, within: float
) -> Sent:
    """POST one signed message to an endpoint (the session carries the ``within`` seconds
    timeout)."""
    headers = signed_headers(endpoint.secret, msg_id, payload)
    try:
        # A redirect is an answer, not a delivery: following it could hand the signed
        # body to another host, or turn the POST into a GET that carries none.
        async with session.post(
            endpoint.url, data=payload, headers=headers, allow_redirects=False
        ) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return Sent(resp.status, "")
            return Sent(resp.status, f"HTTP {resp.status}")
    except TimeoutError:
        return Sent(None, f"no answer within {within:g} s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Sent(None, str(exc) or type(exc).__name__)


async def ensure_group(redis: Any, pk: PartitionKeys) -> None:
    """Create the ``webhooks`` consumer group on the partition's commands stream, at its
    end, if it is missing: an endpoint receives every command emitted after the group
    exists. The dispatcher creates it when it starts, and the API before it stores an
    endpoint, so an endpoint receives every command emitted after its creation returned."""
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
        await redis.xgroup_create(pk.commands, WEBHOOK_GROUP, id="$", mkstream=True)
