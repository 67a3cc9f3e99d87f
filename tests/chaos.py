"""Chaos run: load on three replicas while they are killed, paused and Valkey restarts.

    python -m tests.chaos --seconds 60 [--seed N]

A load generator creates sessions with short timeouts (through the events stream and the
HTTP API; some pause on inactivity) and sends activity, keepalive, pause, resume,
terminate and terminated events, while a controller ``kill -9``s, SIGSTOPs (longer than
``claim_idle_ms``) and restarts three
``lifecycled run`` replicas at random instants and kills and restarts Valkey (append-only,
``appendfsync always``). A few accounts are metered (SPEC §7: 1 credit per running
second) and topped up through the API and the stream, keys sent again at random. When
every session has ended, a checker reads Redis and the commands streams and verifies each
guarantee of SPEC §3 for every session, and of §8: one command per pause and resume,
alternating, and a lifetime that counts running time only; and for every metered account
that each key credited once, that its sessions used no more than it was credited and that
its balance never went below 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.servers import Daemon, ValkeyProcess

PARTITIONS = 4
METERED = tuple(f"meter{i}" for i in range(3))  # on plan metered: 1 credit per running second
ACCOUNTS = [f"acct{i}" for i in range(12)]
SETTINGS = {
    "LIFECYCLE_PARTITIONS": str(PARTITIONS),
    "LIFECYCLE_LEASE_TTL_MS": "1500",
    "LIFECYCLE_CLAIM_IDLE_MS": "2000",
    "LIFECYCLE_LOG_LEVEL": "info",
}
PAUSE_SECONDS = 3.0  # longer than claim_idle_ms and the lease
MAX_PAUSED_SECONDS = 2  # the plans' pause limit: paused sessions end within the run
PLANS = f"""[plans.free]
max_concurrent = 2
max_duration_seconds = 3600
max_paused_seconds = {MAX_PAUSED_SECONDS}
[plans.enterprise]
max_duration_seconds = 86400
max_paused_seconds = {MAX_PAUSED_SECONDS}
"""
LOAD_WORKERS = 6


def partition(account: str) -> int:
    return zlib.crc32(account.encode()) % PARTITIONS


def events_key(account: str) -> str:
    return f"lifecycle:{{{partition(account)}}}:events"


@dataclass
class SentEvent:
    kind: str
    entry_ms: int


@dataclass
class Report:
    kills: int = 0
    pauses: int = 0
    valkey_restarts: int = 0
    sessions: int = 0
    events: int = 0
    api_calls: int = 0
    api_failures: int = 0
    invalid_sent: int = 0
    top_ups: int = 0
    depletions: int = 0
    terminations: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)  # pause:<reason>, resume
    violations: list[str] = field(default_factory=list)
    lateness_ms: list[int] = field(default_factory=list)  # emitted_at - deadline, per command
    faults: list[str] = field(default_factory=list)  # what a fault controller did, in words

    def summary(self) -> str:
        lines = [
            f"replica kills (-9): {self.kills}",
            f"replica pauses (SIGSTOP {PAUSE_SECONDS:.0f}s): {self.pauses}",
            f"valkey restarts (kill -9): {self.valkey_restarts}",
            f"sessions attempted: {self.sessions}",
            f"events published: {self.events} ({self.invalid_sent} malformed)",
            f"API calls: {self.api_calls} ({self.api_failures} failed during faults)",
            f"top-ups sent: {self.top_ups}; depletions: {self.depletions}",
            "terminations: " + ", ".join(f"{k}={v}" for k, v in sorted(self.terminations.items())),
            "pauses and resumes: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.transitions.items())),
            *self.faults,
        ]
        if self.lateness_ms:
            late = sorted(self.lateness_ms)
            p50, p99 = late[len(late) // 2], late[min(len(late) - 1, len(late) * 99 // 100)]
            lines.append(f"lateness of terminate commands (ms): p50 {p50}, p99 {p99}, "
                         f"max {late[-1]}")  # fmt: skip
        lines.append(f"violations: {len(self.violations)}")
        return "\n".join(lines + [f"  {v}" for v in self.violations[:50]])


class Chaos:
    initial_replicas = 3
    pauses = True  # the load pauses and resumes sessions (SPEC §8)
    metered: tuple[str, ...] = METERED  # none while 0.2 replicas run (docs/operations.md)

    def __init__(self, workdir: Path, seconds: float, seed: int) -> None:
        self.workdir = workdir
        self.seconds = seconds
        self.rng = random.Random(seed)
        # Replicas and the producer log in as config/redis-users.acl's least-privileged
        # users; the checker reads as the unrestricted default user.
        self.valkey = ValkeyProcess(workdir / "valkey", "--appendfsync", "always", users=True)
        (workdir / "valkey").mkdir(parents=True, exist_ok=True)
        self.replicas: list[Daemon] = []
        self.report = Report()
        self.redis: Any = None
        self.platform: Any = None  # publishes events, as the `platform` user
        # What the generator did, per session id.
        self.accounts: dict[str, str] = {}
        self.timeouts: dict[str, int] = {}  # max lifetime, s
        self.activity: dict[str, list[int]] = defaultdict(list)  # entry times (ms)
        self.requested: set[str] = set()  # terminate sent (stream or DELETE)
        self.external: set[str] = set()
        self.live: list[str] = []
        self.paused_recently: list[str] = []  # pause sent (it may not have applied)
        # A publish that failed may still have reached the stream (the reply was lost).
        self.malformed_attempted: set[str] = set()
        self.malformed_sent: set[str] = set()
        # Top-ups per metered account: key -> amount (micro-credits), sent (maybe applied:
        # a call without an answer may have reached Redis) and confirmed (answered).
        self.credit_sent: dict[str, dict[str, int]] = defaultdict(dict)
        self.credit_confirmed: dict[str, dict[str, int]] = defaultdict(dict)
        self.plans_file = workdir / "plans.toml"
        self.plans_file.write_text(
            PLANS + "[plans.metered]\nmax_duration_seconds = 86400\ncredits_per_hour = 3600\n"
            f"max_paused_seconds = {MAX_PAUSED_SECONDS}\n"
        )
        self.all_accounts = ACCOUNTS + list(self.metered)
        self._stop = asyncio.Event()

    # Processes

    def new_replica(self, index: int) -> Daemon:
        """The daemon process for replica ``index``, not started yet."""
        env = {**SETTINGS, "LIFECYCLE_REDIS_URL": self.valkey.url_as("lifecycled"),
               "LIFECYCLE_PLANS_FILE": str(self.plans_file)}  # fmt: skip
        return Daemon(env, self.workdir / f"replica-{index}.log")

    def start_replica(self, index: int) -> None:
        daemon = self.new_replica(index)
        if index < len(self.replicas):
            daemon.http_port = self.replicas[index].http_port
            daemon.metrics_port = self.replicas[index].metrics_port
            daemon.env = {**daemon.env, "LIFECYCLE_HTTP_PORT": str(daemon.http_port),
                          "LIFECYCLE_METRICS_PORT": str(daemon.metrics_port)}  # fmt: skip
            self.replicas[index] = daemon
        else:
            self.replicas.append(daemon)
        daemon.start(wait_ready=False)

    async def controller(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            if self._stop.is_set():
                break
            action = self.rng.choices(["kill", "pause", "valkey"], weights=[5, 3, 2])[0]
            index = self.rng.randrange(len(self.replicas))
            target = self.replicas[index]
            if action == "kill" and target.proc is not None:
                target.proc.kill()
                target.proc.wait()
                self.report.kills += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                self.start_replica(index)
            elif action == "pause" and target.proc is not None:
                target.proc.send_signal(signal.SIGSTOP)
                self.report.pauses += 1
                await asyncio.sleep(PAUSE_SECONDS)
                target.proc.send_signal(signal.SIGCONT)
            elif action == "valkey":
                self.valkey.stop(signal.SIGKILL)
                self.report.valkey_restarts += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                self.valkey.start()

    # Load

    async def publish(self, account: str, fields: dict[str, str]) -> int | None:
        try:
            entry = await self.platform.xadd(events_key(account), fields)
        except (RedisError, OSError):
            return None  # Valkey is down right now: the event was not sent
        self.report.events += 1
        return int(entry.decode().split("-")[0])

    async def load(self, worker: int) -> None:
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        counter = 0
        try:
            while not self._stop.is_set():
                counter += 1
                roll = self.rng.random()
                if roll < 0.25 or len(self.live) < 20:
                    await self.create(http, f"w{worker}-{counter}")
                elif roll < 0.7 or (roll < 0.8 and not self.pauses):
                    await self.touch(http)
                elif roll < 0.8:
                    await self.pause_or_resume(http)
                elif roll < 0.9:
                    await self.end(http)
                elif roll < 0.93:
                    await self.external_end()
                elif roll < 0.96 and self.metered:
                    await self.top_up(http)
                else:
                    await self.malformed()
                await asyncio.sleep(0.003)
        finally:
            await http.close()

    async def create(self, http: aiohttp.ClientSession, sid: str) -> None:
        account = self.rng.choice(self.all_accounts)
        inactivity = self.rng.randint(1, 3)
        timeout = self.rng.randint(2, 6)
        on_inactivity = self.rng.choice(["terminate", "terminate", "pause"])
        if not self.pauses:
            on_inactivity = "terminate"
        self.accounts[sid] = account
        self.timeouts[sid] = timeout
        self.report.sessions += 1
        if self.rng.random() < 0.5:
            fields = {"type": "created", "session_id": sid, "account_id": account,
                      "timeout_seconds": str(timeout),
                      "inactivity_timeout_seconds": str(inactivity),
                      "on_inactivity": on_inactivity}  # fmt: skip
            if await self.publish(account, fields) is None:
                return
        else:
            body = {"session_id": sid, "account_id": account, "timeout_seconds": timeout,
                    "inactivity_timeout_seconds": inactivity,
                    "on_inactivity": on_inactivity}  # fmt: skip
            await self.api(http, "POST", "/v1/sessions", body)
        self.live.append(sid)

    async def touch(self, http: aiohttp.ClientSession) -> None:
        sid = self.rng.choice(self.live[-200:])
        account = self.accounts[sid]
        if self.rng.random() < 0.85:
            kind = self.rng.choice(["activity", "keepalive"])
            entry_ms = await self.publish(
                account, {"type": kind, "session_id": sid, "account_id": account}
            )
            if entry_ms is not None:
                self.activity[sid].append(entry_ms)
        else:
            before = await self.server_ms()
            status, body = await self.api(http, "POST", f"/v1/sessions/{sid}/keepalive")
            # A paused session ignores it (and may have paused after ``before``).
            if status == 200 and before and body.get("status") != "paused":
                # The keepalive's time lies between these two readings of the clock.
                self.activity[sid].append(before)

    async def pause_or_resume(self, http: aiohttp.ClientSession) -> None:
        kind = self.rng.choice(["pause", "resume"])
        # Resumes go mostly to sessions paused a moment ago, pauses to any recent one.
        recent = self.paused_recently[-50:] if kind == "resume" else []
        sid = self.rng.choice(recent if recent and self.rng.random() < 0.8 else self.live[-200:])
        if kind == "pause":
            self.paused_recently.append(sid)
        if self.rng.random() < 0.5:
            account = self.accounts[sid]
            await self.publish(account, {"type": kind, "session_id": sid, "account_id": account})
        else:
            await self.api(http, "POST", f"/v1/sessions/{sid}/{kind}")

    async def end(self, http: aiohttp.ClientSession) -> None:
        sid = self.rng.choice(self.live[-200:])
        self.requested.add(sid)
        if self.rng.random() < 0.5:
            account = self.accounts[sid]
            await self.publish(account, {"type": "terminate", "session_id": sid,
                                         "account_id": account})  # fmt: skip
        else:
            await self.api(http, "DELETE", f"/v1/sessions/{sid}")

    async def external_end(self) -> None:
        sid = self.rng.choice(self.live[-200:])
        account = self.accounts[sid]
        if await self.publish(account, {"type": "terminated", "session_id": sid,
                                        "account_id": account}) is not None:  # fmt: skip
            self.external.add(sid)

    async def top_up(self, http: aiohttp.ClientSession) -> None:
        """Credits for a metered account: a new key, or one sent before (same amount)."""
        account = self.rng.choice(self.metered)
        sent = self.credit_sent[account]
        if sent and self.rng.random() < 0.3:
            key = self.rng.choice(sorted(sent))
        else:
            key = f"inv{len(sent)}"
        micro = sent.setdefault(key, self.rng.choice([300_000, 1_000_000, 2_500_000, 4_000_000]))
        amount = str(Decimal(micro) / 1_000_000)
        self.report.top_ups += 1
        if self.rng.random() < 0.5:
            fields = {"type": "credits", "account_id": account, "amount": amount,
                      "idempotency_key": key}  # fmt: skip
            ok = await self.publish(account, fields) is not None
        else:
            body = {"amount": float(amount), "idempotency_key": key}
            status, _ = await self.api(http, "POST", f"/v1/accounts/{account}/credits", body)
            ok = status == 200
        if ok:
            self.credit_confirmed[account][key] = micro

    async def malformed(self) -> None:
        account = self.rng.choice(self.all_accounts)
        tag = f"m{len(self.malformed_attempted)}"
        self.malformed_attempted.add(tag)
        fields = {"type": "activity", "account_id": account, "session_id": "-bad id-", "tag": tag}
        if await self.publish(account, fields) is not None:
            self.malformed_sent.add(tag)
            self.report.invalid_sent += 1

    async def api(
        self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> tuple[int | None, dict[str, Any]]:
        """The response status and JSON body, or None when no answer came (replica or
        Valkey down)."""
        daemon = self.rng.choice(self.replicas)
        self.report.api_calls += 1
        try:
            async with http.request(method, daemon.api + path, json=body) as resp:
                answer = await resp.json(content_type=None)
                if resp.status < 500:
                    return resp.status, answer if isinstance(answer, dict) else {}
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            pass
        self.report.api_failures += 1
        return None, {}

    async def server_ms(self) -> int | None:
        try:
            sec, usec = await self.redis.time()
        except (RedisError, OSError):
            return None
        return int(sec) * 1000 + int(usec) // 1000

    # Run and check

    async def run(self) -> Report:
        self.valkey.start()
        self.redis = aioredis.Redis.from_url(self.valkey.url, socket_timeout=5)
        self.platform = aioredis.Redis.from_url(self.valkey.url_as("platform"), socket_timeout=5)
        pipe = self.platform.pipeline(transaction=False)
        for account in self.all_accounts:
            fields = {"type": "billing", "account_id": account, "billing_status": "ok",
                      "plan": "metered" if account in self.metered else "enterprise"}  # fmt: skip
            pipe.xadd(events_key(account), fields)
        await pipe.execute()
        for index in range(self.initial_replicas):
            self.start_replica(index)
        for daemon in self.replicas:
            await asyncio.to_thread(_wait_ready, daemon)
        for account in self.all_accounts:
            key = f"lifecycle:{{{partition(account)}}}:a:{account}"
            plan = b"metered" if account in self.metered else b"enterprise"
            while await self.redis.hget(key, "plan") != plan:
                await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(self.load(worker)) for worker in range(LOAD_WORKERS)]
        tasks.append(asyncio.create_task(self.controller()))
        await asyncio.sleep(self.seconds)
        self._stop.set()
        await asyncio.gather(*tasks)
        # Faults are over: every replica runs; let every session reach its end.
        if self.valkey.proc is None:
            self.valkey.start()
        for index, daemon in enumerate(self.replicas):
            if daemon.proc is None or daemon.proc.poll() is not None:
                self.start_replica(index)
        await self.drain()
        await self.check()
        for daemon in self.replicas:
            if daemon.stop(signal.SIGTERM) != 0:
                self.report.violations.append(f"replica {daemon.log_path.name} exited non-zero")
        await self.redis.aclose()
        await self.platform.aclose()
        self.valkey.stop()
        return self.report

    async def drain(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = 0
            pending = 0
            for p in range(PARTITIONS):
                live += await self.redis.zcard(f"lifecycle:{{{p}}}:deadlines")
                pending += (await self.redis.xpending(f"lifecycle:{{{p}}}:events",
                                                      "lifecycled"))["pending"]  # fmt: skip
                pending += await self._undelivered(p)
            if live == 0 and pending == 0:
                return
            await asyncio.sleep(0.2)
        self.report.violations.append(f"sessions or events left after {timeout:.0f} s of drain")

    async def _undelivered(self, p: int) -> int:
        for group in await self.redis.xinfo_groups(f"lifecycle:{{{p}}}:events"):
            lag = group.get("lag")
            return int(lag) if lag is not None else 0
        return 0

    async def check(self) -> None:
        # Least privilege: nothing the replicas or the producer did was refused.
        for entry in await self.redis.acl_log(count=10):
            self.report.violations.append(f"ACL refused {entry}")
        commands: dict[str, list[dict[str, str]]] = defaultdict(list)
        for p in range(PARTITIONS):
            for _, raw in await self.redis.xrange(f"lifecycle:{{{p}}}:commands"):
                cmd = {k.decode(): v.decode() for k, v in raw.items()}
                if cmd["type"] in ("terminate", "pause", "resume"):
                    # A session's commands are in one partition's stream, in order.
                    commands[cmd["session_id"]].append(cmd)
                if cmd["type"] == "terminate":
                    self.report.terminations[cmd["reason"]] += 1
                elif cmd["type"] == "pause":
                    self.report.transitions["pause:" + cmd["reason"]] += 1
                elif cmd["type"] == "resume":
                    self.report.transitions["resume"] += 1
        dead: Counter[str] = Counter()
        for p in range(PARTITIONS):
            for _, raw in await self.redis.xrange(f"lifecycle:{{{p}}}:dead"):
                dead[raw.get(b"tag", b"?").decode()] += 1
        v = self.report.violations
        if set(dead) - self.malformed_attempted:
            v.append(f"dead letters for entries never sent: {set(dead) - self.malformed_attempted}")
        if self.malformed_sent - set(dead):
            v.append(f"malformed entries not dead-lettered: {self.malformed_sent - set(dead)}")
        if dead and max(dead.values()) > 1:
            v.append(f"dead-lettered more than once: {[t for t, n in dead.items() if n > 1]}")
        for sid, account in self.accounts.items():
            record = await self.redis.hgetall(f"lifecycle:{{{partition(account)}}}:s:{sid}")
            fields = {k.decode(): v.decode() for k, v in record.items()}
            self.check_session(sid, fields, commands.get(sid, []))
        unknown = set(commands) - set(self.accounts)
        if unknown:
            self.report.violations.append(f"commands for sessions never created: {unknown}")
        for account in self.metered:
            await self.check_credits(account, commands)

    async def check_credits(self, account: str, commands: dict[str, list[dict[str, str]]]) -> None:
        """Each key credited once; the sessions used at most what was credited (to the
        micro-credit each); the balance never below 0; a depletion ends every session
        running at it, at its moment."""
        v = self.report.violations
        key = f"lifecycle:{{{partition(account)}}}:a:{account}"
        raw = await self.redis.hmget(key, "mb", "mc", "billing")
        balance, consumed = int(raw[0] or 0), int(raw[1] or 0)
        credited = balance + consumed  # every micro-credit is either left or consumed
        low = sum(self.credit_confirmed[account].values())
        high = sum(self.credit_sent[account].values())
        if balance < 0:
            v.append(f"{account}: negative balance {balance}")
        if not low <= credited <= high:
            v.append(f"{account}: credited {credited}, confirmed {low}, sent at most {high}")
        cmds = [
            c
            for sid, cs in commands.items()
            if self.accounts.get(sid) == account
            for c in cs
            if c["type"] == "terminate"
        ]
        used = sum(int(Decimal(c["credits_used"]) * 1_000_000) for c in cmds)
        # A depletion moment is the millisecond the balance is used up: each session
        # ended at it may have used up to 1 ms of its rate (1000 micro-credits) beyond.
        moments = Counter(int(c["deadline"]) for c in cmds if c["reason"] == "billing")
        if used > credited + 1000 * sum(moments.values()):
            v.append(f"{account}: sessions used {used} micro-credits of {credited} credited")
        self.report.depletions += len(moments)
        if raw[2] == b"balance_depleted" and balance != 0:
            v.append(f"{account}: balance_depleted with a balance of {balance}")

    def check_session(
        self, sid: str, record: dict[str, str], all_cmds: list[dict[str, str]]
    ) -> None:
        v = self.report.violations
        history = f"{sid}: record={record} commands={all_cmds} activity={self.activity.get(sid)}"
        if not record:
            if all_cmds:
                v.append(f"command for a session that does not exist: {history}")
            return
        if record["s"] != "t":
            v.append(f"session never terminated: {history}")
            return
        cmds = [c for c in all_cmds if c["type"] == "terminate"]
        transitions = [c for c in all_cmds if c["type"] != "terminate"]
        if not self.check_pauses(sid, record, transitions, all_cmds, history):
            return
        reason = record["x"]
        if reason == "external":
            if cmds:
                v.append(f"terminate command for an external termination: {history}")
            return
        if len(cmds) != 1:
            v.append(f"{len(cmds)} terminate commands: {history}")
            return
        cmd = cmds[0]
        self.check_running_time(sid, record, cmd, history)
        deadline = int(cmd["deadline"])
        if cmd["reason"] != reason or int(record["t"]) != deadline:
            v.append(f"command disagrees with the session record: {history}")
        self.report.lateness_ms.append(int(cmd["emitted_at"]) - deadline)
        if int(cmd["emitted_at"]) < deadline:
            v.append(f"emitted before its deadline: {history}")
        if reason == "requested" and sid not in self.requested:
            v.append(f"terminated on request that was never made: {history}")
        if reason == "max_lifetime" and deadline != int(record["e"]):
            v.append(f"max_lifetime deadline is not expires_at: {history}")
        if reason == "inactivity":
            inactivity_ms = int(record["i"]) * 1000
            if deadline != int(record["l"]) + inactivity_ms:
                v.append(f"inactivity deadline is not last_activity_at + timeout: {history}")
            for at in self.activity.get(sid, []):
                if int(record["c"]) <= at <= deadline and at + inactivity_ms > deadline:
                    v.append(f"killed for inactivity despite activity at {at}: {history}")

    def check_pauses(
        self,
        sid: str,
        record: dict[str, str],
        transitions: list[dict[str, str]],
        all_cmds: list[dict[str, str]],
        history: str,
    ) -> bool:
        """One command per transition: pause, resume, pause, ... and none after the end;
        an inactivity pause never despite activity in time; a pause ends at its limit."""
        v = self.report.violations
        kinds = [c["type"] for c in transitions]
        if kinds != ["pause", "resume"] * (len(kinds) // 2) + ["pause"] * (len(kinds) % 2):
            v.append(f"pause and resume commands do not alternate: {history}")
            return False
        ends = [i for i, c in enumerate(all_cmds) if c["type"] == "terminate"]
        if ends and ends[0] != len(all_cmds) - 1:
            v.append(f"a command after the terminate command: {history}")
            return False
        ended_paused = bool(kinds) and kinds[-1] == "pause"
        if ended_paused != ("qa" in record):
            v.append(f"the record and the commands disagree on the end's pause: {history}")
            return False
        inactivity_ms = int(record["i"]) * 1000
        for pause in transitions:
            if pause["type"] != "pause" or pause["reason"] != "inactivity":
                continue
            deadline = int(pause["deadline"])
            if int(pause["emitted_at"]) < deadline:
                v.append(f"paused before its deadline: {history}")
            for at in self.activity.get(sid, []):
                if at <= deadline < at + inactivity_ms:
                    v.append(f"paused for inactivity despite activity at {at}: {history}")
        if record["x"] == "paused_timeout":
            limit = int(transitions[-1]["deadline"]) + MAX_PAUSED_SECONDS * 1000
            if not ended_paused or int(record["t"]) != limit:
                v.append(f"paused_timeout is not the pause's start + its limit: {history}")
        return True

    def check_running_time(
        self, sid: str, record: dict[str, str], cmd: dict[str, str], history: str
    ) -> None:
        """Paused time never counts toward the lifetime."""
        v = self.report.violations
        if "running_ms" not in cmd:
            return  # written by a 0.2 replica during a rolling upgrade: it never pauses
        running, duration = int(cmd["running_ms"]), int(cmd["duration_ms"])
        lifetime_ms = self.timeouts.get(sid, 86400) * 1000
        if running != int(record.get("n", -1)) or running > min(duration, lifetime_ms):
            v.append(f"running_ms is not the running time: {history}")
        # Every moment not running was paused (less when the end's stream entry is older
        # than a resume through the API: it ends no earlier than the run began).
        if duration - running > int(record.get("qt", "0")):
            v.append(f"duration_ms is more than running_ms + the time paused: {history}")
        if cmd["reason"] == "max_lifetime" and sid in self.timeouts and running != lifetime_ms:
            v.append(f"ended at max_lifetime after {running} ms of running time: {history}")


def _wait_ready(daemon: Daemon) -> None:
    from tests.servers import wait_for

    wait_for(daemon.ready, timeout=30, what="replica ready")


async def run_chaos(seconds: float, seed: int, workdir: Path | None = None) -> Report:
    directory = workdir or Path(tempfile.mkdtemp(prefix="lifecycled-chaos-"))
    chaos = Chaos(directory, seconds, seed)
    try:
        return await chaos.run()
    finally:
        for daemon in chaos.replicas:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGCONT)
                daemon.stop(signal.SIGKILL)
        chaos.valkey.stop(signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    args = parser.parse_args()
    print(f"chaos run: {args.seconds:.0f} s, seed {args.seed}")
    report = asyncio.run(run_chaos(args.seconds, args.seed))
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
