"""lifecycled's benchmark: starts its own Valkey servers and daemons, prints one table.

    python -m bench.run            # the full figures (1M live sessions; several minutes)
    python -m bench.run --quick    # small sizes, under a minute: proves the bench works

Phases, each on a fresh server:
  events   producers XADD activity/keepalive events; applied/s with 1, then 2 daemons
  http     creates/s and keepalives/s through the API, latency p50/p99
  scale    Redis memory per session and daemon RSS at a small and a large session count;
           expiry lateness of sessions falling due one by one while the large count is
           live; a burst of sessions falling due together
  peer     the usual alternative (a key per session with a TTL, keyspace notifications
           ``Ex``) with the same live count and the same due schedule, for comparison
  webhooks terminate commands at a steady rate, each delivered as a signed webhook to one
           local receiver; latency from the command entering its stream to its arrival
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.servers import VALKEY_SERVER, Daemon, Valkey
from daemon.redis_client import connect
from tests.servers import eventually
from tests.webhook_receiver import Receiver

PREFIX = "lifecycle"


@dataclass(frozen=True)
class Sizes:
    events_sessions: int  # sessions the activity events are about
    events_total: int  # events published per daemon count
    producers: int
    http_creates: int
    http_keepalives: int
    http_concurrency: int
    small: int  # live sessions for the first memory/RSS reading
    large: int  # live sessions for the second reading and the lateness figures
    accounts: int
    probe_seconds: float  # sessions fall due one by one during this long
    probe_rate: int  # ... at this many per second
    probe_timeout: int  # inactivity timeout of each probe session (s)
    burst: int  # sessions falling due together
    burst_timeout: int  # their max lifetime (s): time enough to publish and apply them
    peer_grace: float  # how long the peer's notifications are waited for (s)
    console_requests: int  # requests of each console page, at the large size
    webhook_commands: int  # commands delivered as webhooks
    webhook_rate: int  # ... at this many per second


FULL = Sizes(
    events_sessions=10_000, events_total=300_000, producers=8,
    http_creates=5_000, http_keepalives=10_000, http_concurrency=32,
    small=10_000, large=1_000_000, accounts=1_000,
    probe_seconds=20.0, probe_rate=500, probe_timeout=5,
    burst=100_000, burst_timeout=40, peer_grace=30.0, console_requests=100,
    webhook_commands=30_000, webhook_rate=1_000,
)  # fmt: skip
QUICK = Sizes(
    events_sessions=1_000, events_total=20_000, producers=4,
    http_creates=300, http_keepalives=600, http_concurrency=16,
    small=1_000, large=10_000, accounts=100,
    probe_seconds=2.0, probe_rate=200, probe_timeout=2,
    burst=5_000, burst_timeout=4, peer_grace=8.0, console_requests=10,
    webhook_commands=600, webhook_rate=300,
)  # fmt: skip


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, figure: str, value: str, target: str = "", note: str = "") -> None:
        self.rows.append(Row(figure, value, target, note))
        print(f"  {figure}: {value}" + (f"  ({note})" if note else ""), file=sys.stderr)

    def table(self) -> str:
        head = ("figure", "value", "target", "note")
        cells = [head, *((r.figure, r.value, r.target, r.note) for r in self.rows)]
        widths = [max(len(c[i]) for c in cells) for i in range(4)]

        def line(c: Sequence[str]) -> str:
            return "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(head), rule, *(line(c) for c in cells[1:])])


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms_summary(values: Sequence[float]) -> str:
    """p50/p99/max in ms; ``math.inf`` stands for a deadline never seen to pass."""

    def show(v: float) -> str:
        return "never" if v == math.inf else f"{v:,.0f} ms"

    return f"p50 {show(pct(values, 0.5))}, p99 {show(pct(values, 0.99))}, max {show(max(values))}"


def partition(account: str, partitions: int) -> int:
    return zlib.crc32(account.encode()) % partitions


def events_key(p: int) -> str:
    return f"{PREFIX}:{{{p}}}:events"


def commands_key(p: int) -> str:
    return f"{PREFIX}:{{{p}}}:commands"


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{mem} MiB",
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Bench:
    def __init__(
        self, sizes: Sizes, workdir: Path, log_level: str, extra: dict[str, str] | None = None
    ) -> None:
        self.extra = extra or {}
        self.sizes = sizes
        self.workdir = workdir
        self.log_level = log_level
        self.report = Report()
        self._daemons = 0

    def daemon(self, valkey: Valkey, partitions: int) -> Daemon:
        self._daemons += 1
        settings = {
            "redis_url": valkey.url,
            "partitions": str(partitions),
            "log_level": self.log_level,
            "lease_ttl_ms": "2000",
            **self.extra,
        }
        return Daemon(settings, self.workdir / f"daemon-{self._daemons}.log").start()

    # Producing

    async def publish(
        self, redis: Any, partitions: int, entries: Iterable[dict[str, str]], batch: int = 1000
    ) -> None:
        """XADD entries to each one's partition, pipelined in batches."""
        pipe = redis.pipeline(transaction=False)
        for n, fields in enumerate(entries, 1):
            pipe.xadd(events_key(partition(fields["account_id"], partitions)), fields)
            if n % batch == 0:
                await pipe.execute()
        await pipe.execute()

    async def enterprise(self, redis: Any, partitions: int, accounts: list[str]) -> None:
        await self.publish(redis, partitions, (
            {"type": "billing", "account_id": a, "billing_status": "ok", "plan": "enterprise"}
            for a in accounts
        ))  # fmt: skip

    async def live_sessions(self, redis: Any, partitions: int) -> int:
        return sum([await redis.zcard(f"{PREFIX}:{{{p}}}:deadlines") for p in range(partitions)])

    async def wait_live(self, redis: Any, partitions: int, n: int, limit: float) -> None:
        end = time.monotonic() + limit
        while await self.live_sessions(redis, partitions) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"{n} live sessions not reached in {limit} s")
            await asyncio.sleep(0.1)

    async def create_sessions(
        self, redis: Any, partitions: int, ids: range, accounts: list[str], prefix: str,
        inactivity: tuple[int, int], producers: int = 4,
    ) -> None:  # fmt: skip
        """Create sessions through the stream, ``producers`` pipelines at once."""
        lo, hi = inactivity

        def entries(part: int) -> Iterable[dict[str, str]]:
            for i in ids[part::producers]:
                yield {
                    "type": "created",
                    "session_id": f"{prefix}{i}",
                    "account_id": accounts[i % len(accounts)],
                    "timeout_seconds": "86400",
                    "inactivity_timeout_seconds": str(lo + (i * 7919) % (hi - lo + 1)),
                }

        await asyncio.gather(*(self.publish(redis, partitions, entries(k))
                               for k in range(producers)))  # fmt: skip

    async def terminations(self, redis: Any, partitions: int, prefix: str) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for p in range(partitions):
            start = "-"
            while True:
                chunk = await redis.xrange(commands_key(p), start, "+", count=10_000)
                for _, raw in chunk:
                    fields = {k.decode(): v.decode() for k, v in raw.items()}
                    if fields["type"] == "terminate" and fields["session_id"].startswith(prefix):
                        out.append(fields)
                if len(chunk) < 10_000:
                    break
                start = "(" + chunk[-1][0].decode()
        return out

    async def commands_written(self, redis: Any, partitions: int) -> int:
        return sum([await redis.xlen(commands_key(p)) for p in range(partitions)])

    async def wait_terminated(
        self, redis: Any, partitions: int, prefix: str, n: int, limit: float, before: int
    ) -> list[dict[str, str]]:
        """The ``n`` terminate commands of sessions named ``prefix…``, once all are written.

        ``before``: the commands already written when the phase began.
        """
        end = time.monotonic() + limit
        while True:
            # Reading the whole commands stream is costly for the server being measured:
            # wait on its length, and read it only when it can hold all n.
            length = await self.commands_written(redis, partitions) - before
            if length >= n:
                cmds = await self.terminations(redis, partitions, prefix)
                if len(cmds) >= n:
                    return cmds
            if time.monotonic() > end:
                raise TimeoutError(f"fewer than {n} {prefix!r} terminations")
            await asyncio.sleep(0.05 if length < n else 1.0)

    # Phases

    async def events_and_http(self) -> None:
        s = self.sizes
        partitions = 4
        valkey = Valkey(self.workdir / "valkey-events").start()
        redis = connect(valkey.url, cluster=False)
        accounts = [f"acct{i}" for i in range(s.accounts)]
        daemons: list[Daemon] = []
        try:
            daemons = [self.daemon(valkey, partitions)]
            await self.enterprise(redis, partitions, accounts)
            await self.create_sessions(redis, partitions, range(s.events_sessions), accounts,
                                       "ev", (3600, 7200))  # fmt: skip
            await self.wait_live(redis, partitions, s.events_sessions, 120)
            rate, cpu = await self.events_rate(redis, partitions, accounts, daemons)
            self.report.add(
                "events applied/s, 1 daemon", f"{rate:,.0f}/s", "≥ 50,000/s",
                f"{s.events_total:,} activity/keepalive events from {s.producers} producers, "
                f"{partitions} partitions; CPU per event: {cpu}",
            )  # fmt: skip
            await self.http(daemons[0], accounts, redis)
            daemons.append(self.daemon(valkey, partitions))
            await self.wait_shared(daemons)
            rate, cpu = await self.events_rate(redis, partitions, accounts, daemons)
            self.report.add(
                "events applied/s, 2 daemons", f"{rate:,.0f}/s", "",
                f"same load, partitions shared; CPU per event: {cpu}",
            )  # fmt: skip
        finally:
            for d in daemons:
                d.stop()
            await redis.aclose()
            valkey.stop()

    async def wait_shared(self, daemons: list[Daemon]) -> None:
        end = time.monotonic() + 30
        while True:
            owned = []
            for d in daemons:
                for line in d.metrics().splitlines():
                    if line.startswith("lifecycle_partitions_consumed "):
                        owned.append(float(line.split()[1]))
            if len(owned) == len(daemons) and all(o > 0 for o in owned):
                return
            if time.monotonic() > end:
                raise TimeoutError("partitions not shared between the daemons")
            await asyncio.sleep(0.2)

    async def events_rate(
        self, redis: Any, partitions: int, accounts: list[str], daemons: list[Daemon]
    ) -> tuple[float, str]:
        """Events applied per second, and where the CPU time per event went."""
        s = self.sizes
        before = sum(d.events_applied() for d in daemons)
        cpu_before = sum(d.cpu_seconds() for d in daemons)
        valkey_before = await server_cpu(redis)
        producers_before = time.process_time()
        per = s.events_total // s.producers

        def entries(k: int) -> Iterable[dict[str, str]]:
            for j in range(per):
                i = (k * per + j) % s.events_sessions
                yield {
                    "type": "activity" if j % 2 else "keepalive",
                    "session_id": f"ev{i}",
                    "account_id": accounts[i % len(accounts)],
                }

        start = time.monotonic()
        await asyncio.gather(*(self.publish(redis, partitions, entries(k), batch=500)
                               for k in range(s.producers)))  # fmt: skip
        producers_us = (time.process_time() - producers_before) / (per * s.producers) * 1e6
        want = before + per * s.producers
        while sum(d.events_applied() for d in daemons) < want:
            if time.monotonic() - start > 300:
                raise TimeoutError("events not applied within 300 s")
            await asyncio.sleep(0.05)
        n = per * s.producers
        rate = n / (time.monotonic() - start)
        daemon_us = (sum(d.cpu_seconds() for d in daemons) - cpu_before) / n * 1e6
        valkey_us = (await server_cpu(redis) - valkey_before) / n * 1e6
        return rate, (
            f"{'daemons' if len(daemons) > 1 else 'daemon'} {daemon_us:.1f} µs, Valkey "
            f"{valkey_us:.1f} µs (with the XADDs), producers {producers_us:.1f} µs"
        )

    async def http_only(self) -> None:
        """The HTTP figures alone (``--phases http``), against one daemon as in ``events``."""
        partitions = 4
        valkey = Valkey(self.workdir / "valkey-http").start()
        redis = connect(valkey.url, cluster=False)
        accounts = [f"acct{i}" for i in range(self.sizes.accounts)]
        daemon = None
        try:
            daemon = self.daemon(valkey, partitions)
            await self.enterprise(redis, partitions, accounts)
            await eventually(lambda: self.accounts_applied(redis, partitions, accounts), 60)
            await self.http(daemon, accounts, redis)
        finally:
            if daemon is not None:
                daemon.stop()
            await redis.aclose()
            valkey.stop()

    async def accounts_applied(self, redis: Any, partitions: int, accounts: list[str]) -> bool:
        last = accounts[-1]
        key = f"{PREFIX}:{{{partition(last, partitions)}}}:a:{last}"
        return bool(await redis.exists(key))

    async def http(self, daemon: Daemon, accounts: list[str], redis: Any = None) -> None:
        s = self.sizes
        created: list[str] = []
        latencies: list[float] = []
        connector = aiohttp.TCPConnector(limit=s.http_concurrency)
        async with aiohttp.ClientSession(daemon.api, connector=connector) as http:

            async def create(i: int) -> None:
                body = {"account_id": accounts[i % len(accounts)], "session_id": f"http{i}",
                        "inactivity_timeout_seconds": 3600}  # fmt: skip
                t0 = time.perf_counter()
                async with http.post("/v1/sessions", json=body) as resp:
                    await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"create answered {resp.status}")
                latencies.append((time.perf_counter() - t0) * 1000)
                created.append(f"http{i}")

            async def keepalive(i: int) -> None:
                t0 = time.perf_counter()
                async with http.post(f"/v1/sessions/{created[i % len(created)]}/keepalive") as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"keepalive answered {r.status}")
                latencies.append((time.perf_counter() - t0) * 1000)

            for name, call, n in (("creates", create, s.http_creates),
                                  ("keepalives", keepalive, s.http_keepalives)):  # fmt: skip
                latencies.clear()
                cpu_before = daemon.cpu_seconds()
                valkey_before = 0.0 if redis is None else await server_cpu(redis)
                start = time.monotonic()
                await run_concurrently(call, n, s.http_concurrency)
                rate = n / (time.monotonic() - start)
                daemon_us = (daemon.cpu_seconds() - cpu_before) / n * 1e6
                cpu = f"; CPU per request: daemon {daemon_us:.0f} µs"
                if redis is not None:
                    cpu += f", Valkey {(await server_cpu(redis) - valkey_before) / n * 1e6:.0f} µs"
                self.report.add(
                    f"HTTP {name}/s", f"{rate:,.0f}/s",
                    note=f"{s.http_concurrency} concurrent clients; latency p50 "
                    f"{pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms{cpu}",
                )  # fmt: skip

    async def scale(self) -> None:
        s = self.sizes
        valkey = Valkey(self.workdir / "valkey-scale").start()
        redis = connect(valkey.url, cluster=False)
        accounts = [f"acct{i}" for i in range(s.accounts)]
        daemon: Daemon | None = None
        try:
            daemon = self.daemon(valkey, 1)
            await self.enterprise(redis, 1, accounts)
            await self.wait_applied(redis)
            base = await used_memory(redis)
            readings: list[tuple[int, int, int]] = []  # sessions, Redis bytes, daemon RSS
            loaded = 0
            for target in (s.small, s.large):
                start = time.monotonic()
                await self.create_sessions(redis, 1, range(loaded, target), accounts, "bg",
                                           (3600, 7200))  # fmt: skip
                await self.wait_live(redis, 1, target, 600)
                load_s = time.monotonic() - start
                await self.wait_applied(redis)
                loaded = target
                readings.append((target, await used_memory(redis) - base, daemon.rss_bytes()))
                print(f"  loaded {target:,} sessions ({(target - (readings[-2][0] if len(readings) > 1 else 0)) / load_s:,.0f} creates/s through the stream)",  # noqa: E501
                      file=sys.stderr)  # fmt: skip
            for n, mem, _ in readings:
                self.report.add(f"Redis memory per live session at {n:,}", f"{mem / n:,.0f} B",
                                "≤ 400 B", "used_memory delta / sessions")  # fmt: skip
            (n1, _, rss1), (n2, _, rss2) = readings
            self.report.add(
                "daemon RSS", f"{rss1 / 2**20:.1f} MiB at {n1:,}; {rss2 / 2**20:.1f} MiB at {n2:,}",
                "flat", "VmRSS of the one daemon process",
            )  # fmt: skip

            await self.console_pages(daemon, s.large)
            lateness = await self.probes(redis, accounts)
            self.report.add(
                f"expiry lateness, {s.large:,} live", ms_summary(lateness),
                "p99 ≤ 50 ms, max ≤ 250 ms",
                f"{len(lateness):,} sessions falling due one by one over {s.probe_seconds:.0f} s "
                "(emitted_at − deadline)",
            )  # fmt: skip
            await self.burst(redis, accounts)
        finally:
            if daemon is not None:
                daemon.stop()
            await redis.aclose()
            valkey.stop()

    async def console_pages(self, daemon: Daemon, live: int) -> None:
        """Latency of the operator console's main pages with ``live`` sessions, one at a
        time (the console is open: the bench's daemons have no API keys)."""
        pages = {
            "overview": "/ui/",
            "sessions": "/ui/sessions",
            f"sessions at rank {live // 2:,}": f"/ui/sessions?offset={live // 2}",
            "a session": "/ui/sessions/bg0",
            "an account": "/ui/accounts/acct0",
            "accounts": "/ui/accounts",
            "dead letters": "/ui/dead-letters",
        }
        jar = aiohttp.CookieJar(unsafe=True)  # the login cookie of 127.0.0.1
        every: list[float] = []
        worst: list[tuple[float, str]] = []
        async with aiohttp.ClientSession(daemon.api, cookie_jar=jar) as http:
            for name, path in pages.items():
                latencies = []
                async with http.get(path) as resp:  # compiles the page's template
                    await resp.read()
                for _ in range(self.sizes.console_requests):
                    t0 = time.perf_counter()
                    async with http.get(path) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"console page {path} answered {resp.status}")
                    latencies.append((time.perf_counter() - t0) * 1000)
                every += latencies
                worst.append((pct(latencies, 0.99), name))
        slowest = ", ".join(f"{name} {p99:.1f} ms" for p99, name in sorted(worst, reverse=True))
        self.report.add(
            f"console page latency, {live:,} live",
            f"p50 {pct(every, 0.5):.1f} ms, p99 {pct(every, 0.99):.1f} ms", "< 100 ms",
            f"{len(pages)} pages × {self.sizes.console_requests} after one each, one at a time; "
            "p99 by page: "
            + slowest,
        )  # fmt: skip

    async def wait_applied(self, redis: Any) -> None:
        """Until the consumer group has applied every entry of partition 0's stream."""
        while True:
            groups = await redis.xinfo_groups(events_key(0))
            if groups and groups[0]["pending"] == 0 and groups[0]["lag"] == 0:
                return
            await asyncio.sleep(0.1)

    async def probes(self, redis: Any, accounts: list[str]) -> list[float]:
        """Sessions created at a steady rate, each falling due ``probe_timeout`` later."""
        s = self.sizes
        tick = 0.02
        per_tick = max(1, round(s.probe_rate * tick))
        ticks = int(s.probe_seconds / tick)
        before = await self.commands_written(redis, 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for t in range(ticks):
            await self.publish(redis, 1, (
                {"type": "created", "session_id": f"probe{t * per_tick + j}",
                 "account_id": accounts[j % len(accounts)],
                 "inactivity_timeout_seconds": str(s.probe_timeout)}
                for j in range(per_tick)
            ))  # fmt: skip
            await asyncio.sleep(max(0.0, start + (t + 1) * tick - loop.time()))
        total = ticks * per_tick
        cmds = await self.wait_terminated(redis, 1, "probe", total, s.probe_timeout + 120, before)
        return [int(c["emitted_at"]) - int(c["deadline"]) for c in cmds]

    async def burst(self, redis: Any, accounts: list[str]) -> None:
        s = self.sizes
        # Every session's deadline falls in the same second T, however long publishing
        # takes: created_at is the entry's time t, so a lifetime of T - floor(t) seconds
        # ends at T plus t's milliseconds.
        due_second = int(time.time()) + s.burst_timeout

        def entries() -> Iterable[dict[str, str]]:
            for i in range(s.burst):
                yield {
                    "type": "created",
                    "session_id": f"burst{i}",
                    "account_id": accounts[i % len(accounts)],
                    "timeout_seconds": str(due_second - int(time.time())),
                    "inactivity_timeout_seconds": "86400",
                }

        before = await self.commands_written(redis, 1)
        t0 = time.monotonic()
        await self.publish(redis, 1, entries(), batch=200)
        published = time.monotonic() - t0
        cmds = await self.wait_terminated(redis, 1, "burst", s.burst, s.burst_timeout + 120,
                                          before)  # fmt: skip
        deadlines = [int(c["deadline"]) for c in cmds]
        emitted = [int(c["emitted_at"]) for c in cmds]
        lateness = [e - d for e, d in zip(emitted, deadlines, strict=True)]
        spread = max(deadlines) - min(deadlines)
        self.report.add(
            f"burst of {s.burst:,} due together: first deadline → last command",
            f"{max(emitted) - min(deadlines):,} ms", "≤ 2,000 ms",
            f"deadlines spread over {spread} ms (published in {published * 1000:.0f} ms); "
            f"lateness {ms_summary(lateness)}",
        )  # fmt: skip

    async def peer(self, live: int) -> None:
        """A key per session with a TTL; its expiry seen through keyspace notifications."""
        s = self.sizes
        valkey = Valkey(
            self.workdir / f"valkey-peer-{live}", "--notify-keyspace-events", "Ex"
        ).start()
        redis = connect(valkey.url, cluster=False)
        subscriber = connect(valkey.url, cluster=False)
        try:
            now_ms = int(time.time() * 1000)
            pipe = redis.pipeline(transaction=False)
            for i in range(live):
                deadline = now_ms + 3_600_000 + (i * 7919) % 3_600_000
                pipe.set(f"peer:bg{i}", "1", pxat=deadline)
                if i % 5000 == 4999:
                    await pipe.execute()
            await pipe.execute()

            tick = 0.02
            per_tick = max(1, round(s.probe_rate * tick))
            ticks = int(s.probe_seconds / tick)
            seen: dict[str, float] = {}
            all_seen = asyncio.Event()
            pubsub: Any = subscriber.pubsub()
            await pubsub.subscribe("__keyevent@0__:expired")

            async def listen() -> None:
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        seen[message["data"].decode()] = time.time() * 1000
                        if len(seen) >= ticks * per_tick:
                            all_seen.set()

            listener = asyncio.get_running_loop().create_task(listen())
            deadlines: dict[str, int] = {}
            loop = asyncio.get_running_loop()
            start = loop.time()
            for t in range(ticks):
                pipe = redis.pipeline(transaction=False)
                due = int(time.time() * 1000) + s.probe_timeout * 1000
                for j in range(per_tick):
                    key = f"peer:probe{t * per_tick + j}"
                    deadlines[key] = due
                    pipe.set(key, "1", pxat=due)
                await pipe.execute()
                await asyncio.sleep(max(0.0, start + (t + 1) * tick - loop.time()))
            # Only probes expire within the run (the live keys' TTLs are an hour and more).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_seen.wait(), s.probe_timeout + s.peer_grace)
            listener.cancel()
            await pubsub.aclose()
            lateness = [seen[k] - d if k in seen else math.inf for k, d in deadlines.items()]
            missing = sum(1 for v in lateness if v == math.inf)
            note = (f"same schedule, {live:,} keys with TTLs live; hz 10 (default)"
                    + (f"; {missing:,} of {len(deadlines):,} not notified within "
                       f"{s.probe_timeout + s.peer_grace:.0f} s" if missing else ""))  # fmt: skip
            value = ms_summary(lateness)
            self.report.add(f"peer: key TTL + notifications, {live:,} live", value, note=note)
        finally:
            await subscriber.aclose()
            await redis.aclose()
            valkey.stop()

    async def webhooks(self) -> None:
        """Terminate events at ``webhook_rate``/s; each command POSTed to one receiver."""
        s = self.sizes
        n, rate = s.webhook_commands, s.webhook_rate
        valkey = Valkey(self.workdir / "valkey-webhooks").start()
        redis = connect(valkey.url, cluster=False)
        receiver = await Receiver().start()  # verifies every signature, as receivers do
        daemon = self.daemon(valkey, 1)
        try:
            accounts = [f"wh-acct-{i}" for i in range(s.accounts)]
            await self.enterprise(redis, 1, accounts)
            ids = range(n)
            await self.create_sessions(redis, 1, ids, accounts, "wh", (3600, 3600))
            await self.wait_live(redis, 1, n, 120)
            async with aiohttp.ClientSession() as http:
                body = {"url": receiver.url, "types": ["terminate"]}
                async with http.post(f"{daemon.api}/v1/webhooks", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    receiver.secret = (await resp.json())["secret"]
            tick = 0.02
            per_tick = max(1, round(rate * tick))
            loop = asyncio.get_running_loop()
            start = loop.time()
            for t, first in enumerate(range(0, n, per_tick)):
                await self.publish(redis, 1, (
                    {"type": "terminate", "session_id": f"wh{i}",
                     "account_id": accounts[i % len(accounts)]}
                    for i in range(first, min(n, first + per_tick))
                ))  # fmt: skip
                await asyncio.sleep(max(0.0, start + (t + 1) * tick - loop.time()))
            sent_for = loop.time() - start

            async def all_arrived() -> bool:
                return len(receiver.ids()) >= n

            with contextlib.suppress(TimeoutError):
                await eventually(all_arrived, timeout=60, what="every webhook")
            arrived: dict[str, float] = {}
            for got in receiver.got:  # the first arrival of each
                arrived.setdefault(got.webhook_id, got.wall * 1000)
            latency: list[float] = []
            for msg_id, at in arrived.items():
                entry_ms = int(msg_id.rpartition("_")[2].partition("-")[0])
                latency.append(at - entry_ms)
            latency += [math.inf] * (n - len(arrived))
            self.report.add(
                "webhook delivery latency", ms_summary(latency), "",
                f"{n:,} terminate commands at {n / sent_for:,.0f}/s to one local receiver "
                "(aiohttp, same host); from the command entering its stream to its arrival",
            )  # fmt: skip
        finally:
            daemon.stop()
            await receiver.stop()
            await redis.aclose()
            valkey.stop()


async def server_cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def used_memory(redis: Any) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def run_concurrently(call: Any, n: int, concurrency: int) -> None:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await call(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def valkey_version() -> str:
    proc = await asyncio.create_subprocess_exec(
        VALKEY_SERVER, "--version", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode().split(" v=")[1].split()[0] if " v=" in out.decode() else out.decode()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--phases", default="events,scale,peer,webhooks",
                        help="comma-separated subset of events,scale,peer,webhooks; "
                        "http: only the HTTP figures of events")  # fmt: skip
    parser.add_argument("--log-level", default="warning", help="the daemons' log level")
    parser.add_argument("--workdir", type=Path, default=None, help="servers' files and logs")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a daemon setting, e.g. event_loop=asyncio (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifecycled-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in argv)
    started = datetime.now(UTC)
    load_before = loadavg()
    print(f"lifecycled benchmark ({'quick' if args.quick else 'full'}); files in {workdir}",
          file=sys.stderr)  # fmt: skip
    extra = dict(item.split("=", 1) for item in args.setting)
    bench = Bench(sizes, workdir, args.log_level, extra)
    phases = set(args.phases.split(","))
    t0 = time.monotonic()
    if "events" in phases:
        await bench.events_and_http()
    elif "http" in phases:
        await bench.http_only()
    if "scale" in phases:
        await bench.scale()
    if "peer" in phases:
        for live in (sizes.small, sizes.large):
            await bench.peer(live)
    if "webhooks" in phases:
        await bench.webhooks()
    info = machine()
    print()
    print(f"date:     {started.strftime('%Y-%m-%d %H:%M UTC')} ({time.monotonic() - t0:.0f} s)")
    print(f"command:  {command}")
    print(f"machine:  {info['cores']} cores, {info['cpu']}, {info['memory']}, {info['os']}")
    print(f"software: Python {info['python']}, valkey-server {await valkey_version()} "
          f"(bundled), daemons' log level {args.log_level}")  # fmt: skip
    print(f"load avg: {load_before} before, {loadavg()} after (1, 5, 15 min)")
    print()
    print(bench.report.table())
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
