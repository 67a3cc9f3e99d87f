"""Typed calls of the Lua scripts: the only code that changes lifecycled's state in Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from daemon import errors
from daemon.events import ParsedEvent
from daemon.keys import GROUP, PartitionKeys, partition_of
from daemon.model import SessionRecord, credits, rfc3339
from daemon.plans import Plan, encode_plans
from daemon.redis_client import TRANSIENT_ERRORS
from daemon.scripts import AsyncScript, register_all
from daemon.settings import Settings


@dataclass(frozen=True, slots=True)
class SessionView:
    record: SessionRecord
    now_ms: int
    changed: bool = False  # terminate, pause, resume: this call made the change
    wake_ms: int | None = None  # create: the earliest time the expirer must look

    def status_object(self) -> dict[str, Any]:
        return self.record.status_object(self.now_ms)


@dataclass(frozen=True, slots=True)
class AccountView:
    account_id: str
    plan: str
    billing_status: str
    live_sessions: int
    max_concurrent: int | None  # None: unlimited
    max_duration_seconds: int
    # Credits (SPEC §7), amounts in micro-credits
    credits_per_hour_micro: int | None  # None: the plan is not metered
    metered: bool = False
    balance_micro: int | None = None  # None: never topped up
    burn_micro_per_hour: int = 0
    depletes_at: int | None = None
    session_ms: int = 0  # metered session time in all
    consumed_micro: int = 0
    now_ms: int | None = None  # a top-up: the server time it ran at

    def account_object(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "plan": self.plan,
            "billing_status": self.billing_status,
            "live_sessions": self.live_sessions,
            "max_concurrent": self.max_concurrent,
            "max_duration_seconds": self.max_duration_seconds,
            "metered": self.metered,
            "balance": credits(self.balance_micro),
            "credits_per_hour": credits(self.credits_per_hour_micro),
            "burn_per_hour": credits(self.burn_micro_per_hour),
            "depletes_at": None if self.depletes_at is None else rfc3339(self.depletes_at),
            "usage": {
                "session_seconds": self.session_ms / 1000,
                "credits": credits(self.consumed_micro),
            },
        }


@dataclass(frozen=True, slots=True)
class AuthFailures:
    blocked: bool
    retry_after_ms: int  # until the block ends; 0 when not blocked
    count: int  # failures of the address within the window


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limit's state after a request: its quota per minute, what remains of it now,
    and the seconds until all of it is available again."""

    name: str  # "requests" or "creates"
    quota: int
    remaining: int
    reset_seconds: int


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """The rate limits a request of an account counted against (SPEC §6)."""

    account_id: str
    plan: str
    admitted: bool
    retry_after: int  # whole seconds (>= 1) when refused, else 0
    limits: tuple[RateLimit, ...]  # the plan's limits that apply; unlimited ones left out

    @property
    def exhausted(self) -> list[RateLimit]:
        """The limits with nothing left now: when refused, those that refused it."""
        return [limit for limit in self.limits if limit.remaining == 0]


@dataclass(slots=True)
class RateCheck:
    """A request's rate limits, checked inside its operation's own script (one script
    call per request); see includes/rate_limit.lua.

    ``creates``: the request also counts against creates_per_minute. ``scope``: the
    caller's account ('' = any). The store sets ``done`` once the limits were checked
    (or, for an unknown session, need not be) and ``result`` (None: no account named).
    """

    creates: bool = False
    scope: str = ""
    done: bool = False
    result: RateLimitResult | None = None

    def args(self) -> tuple[str, str]:
        return ("2" if self.creates else "1"), self.scope


class RateRefused(Exception):
    """The operation's script refused the request over a rate limit and changed nothing."""

    def __init__(self, result: RateLimitResult) -> None:
        super().__init__(result.account_id)
        self.result = result


def _rate_result(reply: Any) -> RateLimitResult | None:
    """The reply of lua/rate_limit.lua (or rate_limit_check in an operation's script)."""
    if int(reply[0]) == 0:
        return None
    groups = reply[4:]
    limits = tuple(
        RateLimit(_text(groups[i]), *(int(v) for v in groups[i + 1 : i + 4]))
        for i in range(0, len(groups), 4)
    )
    return RateLimitResult(
        _text(reply[1]), _text(reply[2]), int(reply[0]) == 1, int(reply[3]), limits
    )


def _rated(rate: RateCheck | None, reply: Any) -> Any:
    """The operation's reply out of with_rate_limit's; RateRefused when refused."""
    if rate is None:
        return reply
    rate.done = True
    rate.result = result = _rate_result(reply[0])
    if len(reply) == 1:
        if result is None:  # a refusal always carries its limit
            raise RuntimeError("rate limit refusal without a result")
        raise RateRefused(result)
    return reply[1]


# Sessions whose partition a replica remembers (with several partitions): about 10 MB.
LOCATIONS_REMEMBERED = 65_536

# A create whose reply was lost is sent again after these pauses (seconds) with the same
# creation token, which create_session.lua keeps this long (ms).
CREATE_RETRY_DELAYS = (0.1,)
CREATE_TOKEN_TTL_MS = 60_000

# Failed-authentication blocking (SPEC §4): this many failures within the window.
AUTH_FAILURE_LIMIT = 10
AUTH_FAILURE_WINDOW_MS = 600_000


@dataclass(frozen=True, slots=True)
class ApplyResult:
    now_ms: int
    earliest_new_deadline: int | None
    outcomes: list[str]


@dataclass(frozen=True, slots=True)
class ExpireResult:
    terminated: int
    next_due_ms: int | None
    now_ms: int
    held: bool
    warned: int
    by_inactivity: int
    by_paused_timeout: int
    paused: int  # paused at their inactivity deadline (on_inactivity = pause)
    by_billing: int  # sessions ended at depletions
    depletions: int
    low_balance_warned: int
    lateness_ms: list[int]


# Scripts that change nothing need no replica acknowledgement.
_READ_ONLY = frozenset(
    {"get_session", "list_sessions", "get_account", "dead_letter_list", "get_timeline"}
)


log = structlog.get_logger("lifecycled.store")


class OlderEntriesPending(Exception):
    """Entries older than the batch are pending; they must be claimed and applied first."""


def timeline_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored timeline entry for the API: times (``at``, ``deadline``, ``*_at``) in RFC 3339."""
    return {
        name: rfc3339(int(value)) if name in ("at", "deadline") or name.endswith("_at") else value
        for name, value in entry.items()
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _session_views(now: int, entries: Sequence[Any]) -> list[SessionView]:
    """Records as scripts return them (``{session id, field, value, ...}``), oldest first."""
    views = []
    for entry in entries:
        flat = [_text(v) for v in entry]
        fields = dict(zip(flat[1::2], flat[2::2], strict=True))
        views.append(SessionView(SessionRecord.from_fields(flat[0], fields), now))
    views.sort(key=lambda v: (v.record.created_at, v.record.session_id))
    return views


def _view(session_id: str, reply: list[Any]) -> SessionView:
    flat = [_text(v) for v in reply[2:]]
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return SessionView(
        SessionRecord.from_fields(session_id, fields), int(reply[1]), int(reply[0]) == 1
    )


class Store:
    """Calls the scripts for one deployment (key prefix, partitions, plans)."""

    def __init__(self, redis: Any, settings: Settings, plans: dict[str, Plan]) -> None:
        self.redis = redis
        self.settings = settings
        self.partitions = [
            PartitionKeys(settings.key_prefix, p) for p in range(settings.partitions)
        ]
        self._replicas_key = f"{settings.key_prefix}:replicas"
        self._acks_missing = False
        self._where: dict[str, PartitionKeys] = {}  # session id -> partition (_remember)
        self._scripts: dict[str, AsyncScript] = register_all(redis)
        self.set_plans(plans)
        self._options_arg = ",".join(f"{k}={v}" for k, v in self.options.items())

    @property
    def options(self) -> dict[str, int | str]:
        """Settings the scripts read as ``OPT.<name>`` (ARGV[9] in includes/common.lua)."""
        return {
            "timeline_max_entries": self.settings.timeline_max_entries,
            "low_balance_warn_ms": self.settings.low_balance_warn_seconds * 1000,
        }

    def set_plans(self, plans: dict[str, Plan]) -> None:
        self.plans = dict(plans)
        self._plans_arg = encode_plans(self.plans)

    def partition_for(self, account_id: str) -> PartitionKeys:
        return self.partitions[partition_of(account_id, len(self.partitions))]

    async def _call(self, name: str, pk: PartitionKeys, *args: Any) -> Any:
        s = self.settings
        keys = [pk.events, pk.commands, pk.dead, pk.deadlines, pk.held, pk.warn, pk.lease]
        context = [
            pk.base,
            self._plans_arg,
            s.default_plan,
            s.warn_before_seconds * 1000,
            s.terminated_retention_seconds * 1000,
            s.commands_maxlen,
            1 if s.billing_hold_terminates else 0,
            s.max_clock_skew_ms,
            self._options_arg,
        ]
        script = self._scripts[name]
        if not self.settings.redis_wait_replicas or name in _READ_ONLY:
            return await script(keys=keys, args=[*context, *args])
        # WAIT covers the writes of its own connection: send both on one pipeline.
        pipe = self.redis.pipeline(transaction=False)
        await script(keys=keys, args=[*context, *args], client=pipe)
        pipe.wait(self.settings.redis_wait_replicas, self.settings.redis_wait_timeout_ms)
        reply, acked = await pipe.execute()
        missing = int(acked) < self.settings.redis_wait_replicas
        if missing != self._acks_missing:
            self._acks_missing = missing
            if missing:
                log.warning("redis_replica_ack_missing", script=name, acked=int(acked),
                            wanted=self.settings.redis_wait_replicas)  # fmt: skip
            else:
                log.info("redis_replica_ack_restored")
        return reply

    # Sessions through the API

    async def create_session(
        self,
        session_id: str,
        account_id: str,
        timeout_seconds: int | None,
        inactivity_timeout_seconds: int | None,
        auto_kill: bool,
        deferred_error: str = "",
        on_inactivity: str = "terminate",
        rate: RateCheck | None = None,
    ) -> SessionView:
        """Admit and create a session; raises the SPEC §2 refusals in their order.

        ``rate``: check the request's rate limits first, in the same script call
        (RateRefused when refused: nothing created)."""
        if len(self.partitions) > 1 and await self._locate(session_id) is not None:
            raise errors.SessionExists(f"Session {session_id} already exists.")
        args = (
            session_id,
            account_id,
            "" if timeout_seconds is None else timeout_seconds,
            "" if inactivity_timeout_seconds is None else inactivity_timeout_seconds,
            "1" if auto_kill else "0",
            deferred_error,
            "p" if on_inactivity == "pause" else "",
            secrets.token_hex(8),  # this request's creation token
            CREATE_TOKEN_TTL_MS,
            *(rate.args() if rate is not None else ("", "")),
        )
        for delay in (*CREATE_RETRY_DELAYS, None):
            try:
                reply = await self._call("create_session", self.partition_for(account_id), *args)
                reply = _rated(rate, reply)
                break
            except TRANSIENT_ERRORS as exc:
                # The call may have run and only its reply been lost: the same token makes
                # the next attempt answer with the session it created, not 409.
                if delay is None:
                    raise
                log.info("create_session_retried", session_id=session_id, error=str(exc))
                await asyncio.sleep(delay)
        code = int(reply[0])
        if code == -402:
            raise errors.PaymentRequired(_text(reply[1]))
        if code == -429:
            raise errors.ConcurrentSessionLimit(int(reply[1]))
        if code == -422:
            raise errors.InvalidRequest(_text(reply[1]) + ".")
        if code == -409:
            raise errors.SessionExists(f"Session {session_id} already exists.")
        self._remember(session_id, self.partition_for(account_id))
        view = _view(session_id, [reply[0], reply[1], *reply[3:]])
        return SessionView(view.record, view.now_ms, wake_ms=int(reply[2]))

    def _remember(self, session_id: str, pk: PartitionKeys) -> None:
        """Where a session is, so that the next request about it skips ``_locate``'s round
        trip (with several partitions). A session's account, so its partition, never
        changes; a purged id used again elsewhere is found by looking again."""
        if len(self.partitions) == 1:
            return
        if session_id not in self._where and len(self._where) >= LOCATIONS_REMEMBERED:
            del self._where[next(iter(self._where))]  # the oldest
        self._where[session_id] = pk

    async def _locate(self, session_id: str) -> PartitionKeys | None:
        """The partition holding the session, for routes that know only its id."""
        if len(self.partitions) == 1:
            return self.partitions[0]
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.partitions:
            pipe.exists(pk.session(session_id))
        found = await pipe.execute()
        for pk, exists in zip(self.partitions, found, strict=True):
            if exists:
                return pk
        return None

    async def _by_id(
        self,
        script: str,
        session_id: str,
        *args: Any,
        account: str | None = None,
        rate: RateCheck | None = None,
    ) -> SessionView:
        """``rate``: only for scripts that take the with_rate_limit arguments last."""
        pk = self._where.get(session_id)
        cached = pk is not None
        while True:
            if pk is None:
                pk = await self._locate(session_id)
            if pk is not None and account is not None:
                # An account key's caller learns nothing of other accounts' sessions. A
                # session's account never changes and its id is not reused while readable,
                # so checking ahead of the script is as good as checking inside it.
                owner = await self.redis.hget(pk.session(session_id), "a")
                if owner is None or _text(owner) != account:
                    pk = None
            call_args = args
            if rate is not None:
                rate.done = pk is None  # an unknown session names no account: no limit
                call_args = (*args, *rate.args())
            reply = None
            if pk is not None:
                reply = _rated(rate, await self._call(script, pk, session_id, *call_args))
            if not cached or (reply is not None and int(reply[0]) != -404):
                break
            # Not where it was remembered (purged, and its id used again elsewhere): look.
            self._where.pop(session_id, None)
            pk, cached = None, False
        if reply is None or pk is None or int(reply[0]) == -404:
            raise errors.SessionNotFound(f"No session {session_id}.")
        self._remember(session_id, pk)
        code = int(reply[0])
        if code == -402:
            raise errors.PaymentRequired(_text(reply[1]))
        if code == -429:
            raise errors.ConcurrentSessionLimit(int(reply[1]))
        if code == -409:
            raise errors.SessionTerminated(f"Session {session_id} is terminated.")
        return _view(session_id, reply)

    async def get_session(self, session_id: str, account: str | None = None) -> SessionView:
        """``account``: the caller sees only that account's sessions (others are unknown)."""
        return await self._by_id("get_session", session_id, account=account)

    async def keepalive(
        self,
        session_id: str,
        account: str | None = None,
        activity: bool = False,
        source: str | None = None,
        rate: RateCheck | None = None,
    ) -> SessionView:
        """A keepalive, or with ``activity`` an action (``ready`` → ``running``).

        ``source``: what acted, as the status and the timeline show it (default ``api``).
        ``rate``: the request's rate limits, checked first in the same script call.
        """
        return await self._by_id(
            "keepalive", session_id, GROUP, "1" if activity else "0", source or "",
            account=account, rate=rate,
        )  # fmt: skip

    async def pause(self, session_id: str, account: str | None = None) -> SessionView:
        """Pause; ``changed`` is false when it was paused already."""
        return await self._by_id("pause_session", session_id, GROUP, account=account)

    async def resume(self, session_id: str, account: str | None = None) -> SessionView:
        """Resume, admitted like a create; ``changed`` is false when it was not paused."""
        return await self._by_id("resume_session", session_id, GROUP, account=account)

    async def terminate(
        self, session_id: str, reason: str = "requested", account: str | None = None
    ) -> SessionView:
        return await self._by_id("terminate_session", session_id, reason, GROUP, account=account)

    async def patch_session(
        self,
        session_id: str,
        timeout_seconds: int | None = None,
        inactivity_timeout_seconds: int | None = None,
        auto_kill: bool | None = None,
        account: str | None = None,
        on_inactivity: str | None = None,
    ) -> SessionView:
        """Change a live session's limits; ``None`` leaves a field as it is."""
        pk = await self._locate(session_id)
        reply = None
        if pk is not None:
            reply = await self._call(
                "patch_session",
                pk,
                session_id,
                "" if timeout_seconds is None else timeout_seconds,
                "" if inactivity_timeout_seconds is None else inactivity_timeout_seconds,
                "" if auto_kill is None else ("1" if auto_kill else "0"),
                account or "",
                "" if on_inactivity is None else on_inactivity[0],
            )
        if reply is None or int(reply[0]) == -404:
            raise errors.SessionNotFound(f"No session {session_id}.")
        code = int(reply[0])
        if code == -409:
            raise errors.SessionTerminated(f"Session {session_id} is terminated.")
        if code == -422:
            raise errors.InvalidRequest(_text(reply[1]) + ".")
        return _view(session_id, reply)

    async def timeline(self, session_id: str, account: str | None = None) -> list[dict[str, Any]]:
        """The session's timeline entries, oldest first, times in RFC 3339."""
        pk = await self._locate(session_id)
        reply = None if pk is None else await self._call("get_timeline", pk, session_id)
        if (
            reply is None
            or int(reply[0]) == -404
            or (account is not None and _text(reply[1]) != account)
        ):
            raise errors.SessionNotFound(f"No session {session_id}.")
        return [timeline_entry(json.loads(_text(raw))) for raw in reply[2:]]

    async def list_sessions(self, account_id: str) -> list[SessionView]:
        """The account's live sessions, oldest first."""
        reply = await self._call("list_sessions", self.partition_for(account_id), account_id)
        return _session_views(int(reply[0]), reply[1:])

    async def live_sessions_step(
        self, partition: int, cursor: str, count: int
    ) -> tuple[list[SessionView], str]:
        """One ZSCAN step over a partition's live sessions (about ``count`` of them, oldest
        first) and the cursor of the next step (``"0"``: the partition is done)."""
        reply = await self._call("list_sessions", self.partitions[partition], "", cursor, count)
        views = [v for v in _session_views(int(reply[0]), reply[2:]) if not v.record.terminated]
        return views, _text(reply[1])

    # Accounts

    def _account_view(self, account_id: str, reply: Sequence[Any]) -> AccountView:
        """An ``account_reply`` of credits.lua as the account object."""
        plan, billing, live, metered, bal, burn, dep, ms, mc = (_text(v) for v in reply)
        # A plan removed from the plans file since it was set: the scripts apply the default.
        limits = self.plans.get(plan) or self.plans[self.settings.default_plan]
        return AccountView(
            account_id=account_id,
            plan=plan,
            billing_status=billing,
            live_sessions=int(live),
            max_concurrent=limits.max_concurrent,
            max_duration_seconds=limits.max_duration_seconds,
            credits_per_hour_micro=limits.credits_per_hour_micro,
            metered=metered == "1",
            balance_micro=int(bal) if bal else None,
            burn_micro_per_hour=int(burn),
            depletes_at=int(dep) if dep else None,
            session_ms=int(ms),
            consumed_micro=int(mc),
        )

    async def get_account(self, account_id: str) -> AccountView:
        """The account's state; one never written has the defaults."""
        reply = await self._call("get_account", self.partition_for(account_id), account_id)
        return self._account_view(account_id, reply)

    async def set_account(
        self, account_id: str, plan: str | None = None, billing_status: str | None = None
    ) -> tuple[AccountView, int]:
        """Set plan and/or billing status; returns the account and the sessions a hold ended.

        The caller checks that the plan and the billing status are known ones.
        """
        reply = await self._call(
            "set_account",
            self.partition_for(account_id),
            account_id,
            plan or "",
            billing_status or "",
        )
        return self._account_view(account_id, reply[1:]), int(reply[0])

    async def top_up(self, account_id: str, amount_micro: int, idempotency_key: str) -> AccountView:
        """Credit the account once per idempotency key (SPEC §7); the key's first answer."""
        reply = await self._call(
            "top_up", self.partition_for(account_id), account_id, amount_micro, idempotency_key
        )
        if int(reply[0]) == -422:
            raise errors.InvalidRequest(f"amount: {_text(reply[1])}.")
        view = self._account_view(account_id, reply[2:])
        return dataclasses.replace(view, now_ms=int(reply[1]))

    # Failed-authentication blocking, shared by all replicas through Redis

    def auth_failures_key(self, address: str) -> str:
        return f"{self.settings.key_prefix}:authfail:{address}"

    async def auth_failures(self, address: str, record: bool) -> AuthFailures:
        """Whether ``address`` is blocked; ``record`` adds a failure unless it is."""
        reply = await self._scripts["auth_failure"](
            keys=[self.auth_failures_key(address)],
            args=[
                AUTH_FAILURE_WINDOW_MS,
                AUTH_FAILURE_LIMIT,
                "1" if record else "0",
                secrets.token_hex(8),
            ],
        )
        return AuthFailures(int(reply[0]) == 1, int(reply[1]), int(reply[2]))

    # Request rate limits (SPEC §6), shared by all replicas through Redis

    async def rate_limit(
        self,
        *,
        session_id: str | None = None,
        account_id: str | None = None,
        creates: bool = False,
        scope: str | None = None,
    ) -> RateLimitResult | None:
        """Count a request naming ``account_id`` (or the account of ``session_id``) against
        the account's request rate and, with ``creates``, its create rate; one script call.

        ``None``: no account is named (the session is unknown, or its account is outside
        ``scope``), so no limit applies. A refused request changes no limit.
        """
        if session_id is not None:
            pk = await self._locate(session_id)
            if pk is None:
                return None
        elif account_id is not None:
            pk = self.partition_for(account_id)
        else:
            return None
        reply = await self._call(
            "rate_limit", pk, session_id or "", account_id or "", "1" if creates else "0",
            scope or "",
        )  # fmt: skip
        return _rate_result(reply)

    # The engine

    async def apply_events(
        self, pk: PartitionKeys, lease_token: str, events: Sequence[ParsedEvent]
    ) -> ApplyResult | None:
        """Apply and acknowledge a batch; ``None`` when the lease is no longer held."""
        args: list[Any] = [lease_token, GROUP]
        for event in events:
            args.append(event.entry_id)
            args.extend(event.args)
        reply = await self._call("apply_events", pk, *args)
        if int(reply[0]) == -1:
            return None
        if int(reply[0]) == -2:
            raise OlderEntriesPending(pk.partition)
        wake = int(reply[1])
        return ApplyResult(
            int(reply[0]), wake if wake >= 0 else None, [_text(o) for o in reply[2:]]
        )

    async def take_lease(self, pk: PartitionKeys, token: str, renew: bool) -> bool:
        """Renew the lease held under ``token``, or take the partition's lease if free."""
        reply = await self._scripts["lease"](
            keys=[pk.lease],
            args=[token, self.settings.lease_ttl_ms, "renew" if renew else "take"],
        )
        return int(reply) == 1

    async def release_lease(self, pk: PartitionKeys, token: str) -> None:
        await self._scripts["lease_release"](keys=[pk.lease], args=[token])

    async def register_replica(self, replica_id: str) -> int:
        """Announce this replica for three lease periods; returns the live replica count."""
        reply = await self._scripts["replicas"](
            keys=[self._replicas_key], args=[replica_id, 3 * self.settings.lease_ttl_ms]
        )
        return int(reply)

    async def unregister_replica(self, replica_id: str) -> None:
        await self._scripts["replicas"](keys=[self._replicas_key], args=[replica_id, 0])

    async def migrate_deadlines(self, pk: PartitionKeys) -> None:
        """Move sessions of the 0.1 layout (``life`` and ``idle`` sets) to ``deadlines``."""
        moved, left = 0, 1
        while left:
            reply = await self._call("migrate_deadlines", pk, 1000)
            moved, left = moved + int(reply[0]), int(reply[1])
        if moved:
            log.info("deadlines_migrated", partition=pk.partition, entries=moved)

    async def expire_due(self, pk: PartitionKeys) -> ExpireResult:
        reply = await self._call("expire_due", pk, GROUP, self.settings.expire_batch)
        next_due = int(reply[1])
        return ExpireResult(
            terminated=int(reply[0]),
            next_due_ms=next_due if next_due >= 0 else None,
            now_ms=int(reply[2]),
            held=int(reply[3]) == 1,
            warned=int(reply[4]),
            by_inactivity=int(reply[5]),
            by_paused_timeout=int(reply[6]),
            paused=int(reply[7]),
            by_billing=int(reply[8]),
            depletions=int(reply[9]),
            low_balance_warned=int(reply[10]),
            lateness_ms=[int(v) for v in reply[11:]],
        )
