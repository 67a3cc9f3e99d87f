"""A pure-Python reference model of one partition (SPEC §1–§3), for the property tests.

No Redis and nothing from ``daemon``: the model is written from SPEC alone, so that the
scripts and the model can only agree by both being right. It takes the same inputs as the
scripts — events-stream entries with their ids, API calls — plus the server time each
script call reported (``now``), and says what every session, account, command and
outcome must be afterwards.

Choices where SPEC is silent, taken as the implementation takes them (each one is a
place a reviewer may disagree, so they are named here):
- an integer field is 1-64 ASCII digits (a longer one is dead-lettered);
- ``auto_kill`` is matched case-insensitively;
- when the inactivity and lifetime deadlines coincide the reason is ``max_lifetime``;
- a passed inactivity deadline held by the lag-safe rule whose lifetime deadline has also
  passed ends as ``max_lifetime`` (lifetime deadlines never wait);
- an activity or keepalive entry that entered the stream after the session's deadline
  came too late: applying it ends the session at that deadline (``ended:<reason>``), or
  pauses it there when the deadline pauses it (``paused:inactivity``); so do pause and
  resume entries, and a resume then resumes that pause;
- pause, resume and termination happen at their entry's time, never before the
  session's current run (or pause) began: a stream entry older than an API call that
  came first (a create, pause or resume) takes effect at that call's time;
- a billing hold terminates ready and running sessions (those that count toward
  ``max_concurrent``); a paused one stays paused (its resume is refused with 402);
- a PATCH whose new limits put the deadline in the past ends (or, for an inactivity
  deadline with ``on_inactivity`` = pause, pauses) the session at the PATCH's time;
- keepalives and activities that a paused session ignores do not count in
  ``activity_count``.

Prepaid credits (SPEC §7) follow DESIGN.md's account: a balance settled at ``at`` with a
burn (micro-credits per hour of the running metered sessions), settled at every change
to the time of that change, the depletion moment the first millisecond at which the
burn has used the balance up. Where SPEC is silent, as the implementation chooses:
- a session keeps the rate its plan had when it started running metered;
- a change at a time before the last settle (a lagging entry) charges, or gives back,
  the rate over the time between;
- each session's ``credits_used`` is its own rate over its running time, rounded down;
- the first top-up of an account meters its live sessions from then on;
- the same idempotency key of an account answers the first answer again, unchanged;
- at a depletion a billing status other than ``ok`` stays as it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext

# SPEC §2's plan table: name -> (max_concurrent or None for unlimited, max_duration_seconds).
SPEC_PLANS: dict[str, tuple[int | None, int]] = {
    "free": (2, 3600),
    "pro": (10, 14400),
    "enterprise": (None, 86400),
}
# Plans with credits_per_hour (micro-credits per running hour); every other one is unmetered.
METERED_PLANS: dict[str, tuple[int | None, int, int]] = {"metered": (None, 3600, 7_500_000)}
HOUR_MS = 3_600_000
MICRO = 1_000_000
MAX_BALANCE = 10**15 - 1  # micro-credits
_AMOUNT = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,6})?")
_KEY = re.compile(r"[!-~]{1,255}")
# SPEC §8: name -> max_paused_seconds (None: pauses never end).
SPEC_MAX_PAUSED: dict[str, int | None] = {"free": 86400, "pro": 604800, "enterprise": 2592000}
BILLING_STATUSES = ("ok", "balance_depleted", "payment_failed", "card_expired")
COMMAND_REASONS = ("max_lifetime", "inactivity", "requested", "billing")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_INT = re.compile(r"[0-9]{1,64}")
_BOOL = {"true": True, "1": True, "false": False, "0": False}
_SOURCE = re.compile(r"[a-z0-9._-]{1,64}")
LIVE = ("ready", "running")  # counted toward max_concurrent
DEFAULT_INACTIVITY_SECONDS = 300
MAX_INACTIVITY_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class Event:
    """A well-formed events-stream entry (SPEC §3 table), decoded."""

    type: str
    account_id: str
    session_id: str = ""
    timeout_seconds: int | None = None
    inactivity_timeout_seconds: int | None = None
    auto_kill: bool = True
    plan: str | None = None
    ts: int | None = None
    reason: str = "requested"
    billing_status: str = "ok"
    amount: int = 0  # credits: micro-credits
    idempotency_key: str = ""
    on_inactivity: str = "terminate"
    source: str = "stream"


_REQUIRED = {
    "created": ("session_id", "account_id"),
    "activity": ("session_id", "account_id"),
    "keepalive": ("session_id", "account_id"),
    "terminate": ("session_id", "account_id"),
    "terminated": ("session_id", "account_id"),
    "billing": ("account_id", "billing_status"),
    "pause": ("session_id", "account_id"),
    "resume": ("session_id", "account_id"),
    "credits": ("account_id", "amount", "idempotency_key"),
}


def amount_micro(text: str) -> int | None:
    """A top-up amount (decimal credits, > 0, at most 6 decimals and 10^12) in micro-credits."""
    if not _AMOUNT.fullmatch(text):
        return None
    with localcontext() as ctx:
        ctx.prec = 120
        micro = Decimal(text) * MICRO
        if micro <= 0 or micro > 10**12 * MICRO or micro != int(micro):
            return None
        return int(micro)


def consumed(rate: int, ms: int) -> int:
    """Micro-credits a rate (per hour) uses in ``ms``, rounded down."""
    return rate * ms // HOUR_MS if rate > 0 and ms > 0 else 0


def credits_text(micro: int) -> str:
    whole, frac = divmod(micro, MICRO)
    return str(whole) if frac == 0 else f"{whole}.{frac:06d}".rstrip("0")


def parse(raw: Mapping[bytes, bytes], plans: Mapping[str, object]) -> Event | None:
    """The entry as SPEC §3 reads it, or None when it must be dead-lettered."""
    fields: dict[str, str] = {}
    try:
        for name, value in raw.items():
            fields[name.decode()] = value.decode()
    except UnicodeDecodeError:
        return None
    kind = fields.get("type")
    if kind not in _REQUIRED or any(f not in fields for f in _REQUIRED[kind]):
        return None

    def ident(name: str) -> bool:
        return name not in fields or _ID.fullmatch(fields[name]) is not None

    def integer(name: str, low: int, high: int | None = None) -> int | bool | None:
        """None: absent; False: malformed; else the value."""
        if name not in fields:
            return None
        if not _INT.fullmatch(fields[name]):
            return False
        value = int(fields[name])
        return value if low <= value and (high is None or value <= high) else False

    if not ident("session_id") or not ident("account_id"):
        return None
    if "plan" in fields and kind in ("created", "billing") and fields["plan"] not in plans:
        return None
    plan = fields.get("plan") if kind in ("created", "billing") else None
    account = fields["account_id"]
    if kind == "credits":
        amount = amount_micro(fields["amount"])
        if amount is None or not _KEY.fullmatch(fields["idempotency_key"]):
            return None
        return Event(kind, account, amount=amount, idempotency_key=fields["idempotency_key"])
    if kind == "billing":
        if fields["billing_status"] not in BILLING_STATUSES:
            return None
        return Event(kind, account, billing_status=fields["billing_status"], plan=plan)
    session = fields["session_id"]
    if kind == "created":
        timeout = integer("timeout_seconds", 1)
        inactivity = integer("inactivity_timeout_seconds", 1, MAX_INACTIVITY_SECONDS)
        auto_kill = _BOOL.get(fields.get("auto_kill", "true").lower())
        on_inactivity = fields.get("on_inactivity", "terminate")
        if timeout is False or inactivity is False or auto_kill is None:
            return None
        if on_inactivity not in ("terminate", "pause"):
            return None
        assert not isinstance(timeout, bool) and not isinstance(inactivity, bool)
        return Event(kind, account, session, timeout, inactivity, auto_kill, plan,
                     on_inactivity=on_inactivity)  # fmt: skip
    if kind in ("activity", "keepalive"):
        ts = integer("ts", 0)
        source = fields.get("source", "stream")
        if ts is False or ("source" in fields and not _SOURCE.fullmatch(source)):
            return None
        assert not isinstance(ts, bool)
        return Event(kind, account, session, ts=ts, source=source)
    if kind == "terminate":
        reason = fields.get("reason", "requested")
        if reason not in COMMAND_REASONS:
            return None
        return Event(kind, account, session, reason=reason)
    return Event(kind, account, session)


@dataclass(slots=True)
class Session:
    session_id: str
    account_id: str
    plan: str
    status: str  # ready | running | paused | terminated
    created_at: int
    expires_at: int  # while paused: meaningless (SPEC: null); set again on resume
    last_activity_at: int
    inactivity_timeout_seconds: int
    max_lifetime_seconds: int
    auto_kill: bool
    terminated_at: int | None = None
    termination_reason: str | None = None
    on_inactivity: str = "terminate"
    run_ms: int = 0  # running time before the current run
    run_started_at: int = 0  # start of the current run (created_at, or the resume)
    paused_at: int | None = None
    pause_expires_at: int | None = None
    paused_ms: int = 0  # paused time before the current pause
    activity_count: int = 0
    last_activity_source: str | None = None
    rate: int | None = None  # metered: micro-credits per running hour
    metered_since: int | None = None  # while running metered
    credits_used: int = 0  # micro-credits, of runs before metered_since

    @property
    def live(self) -> bool:
        return self.status != "terminated"

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    @property
    def idle_expires_at(self) -> int | None:
        if not self.live or self.paused or not self.auto_kill:
            return None
        return self.last_activity_at + self.inactivity_timeout_seconds * 1000

    def deadline(self) -> tuple[int | None, str]:
        """The effective deadline (SPEC §1 ``terminates_at``) and the reason it ends with;
        while paused the pause's end (None: never)."""
        if self.paused:
            return self.pause_expires_at, "paused_timeout"
        idle = self.idle_expires_at
        if idle is not None and idle < self.expires_at:
            return idle, "inactivity"
        return self.expires_at, "max_lifetime"

    def pauses_at_inactivity(self) -> bool:
        return self.on_inactivity == "pause"


@dataclass(slots=True)
class Account:
    plan: str | None = None  # None: never set, the default plan applies
    billing_status: str = "ok"
    balance: int | None = None  # micro-credits at ``at``; None before the first top-up
    at: int = 0
    burn: int = 0  # micro-credits per hour
    running: int = 0  # metered sessions running
    session_ms: int = 0
    consumed: int = 0
    depletes_at: int | None = None
    answers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # idempotency key ->

    def credits(self) -> tuple[int | None, int, int, int, int, int, int | None]:
        """What the scripts store: balance, at, burn, running, session ms, consumed,
        depletion moment."""
        return (self.balance, self.at, self.burn, self.running, self.session_ms,
                self.consumed, self.depletes_at)  # fmt: skip


@dataclass(slots=True)
class Entry:
    entry_id: str
    ms: int
    fields: dict[bytes, bytes]
    state: str = "new"  # new -> pending (delivered) -> acked (applied)


@dataclass(frozen=True, slots=True)
class Expiry:
    """What one expire_due call must report."""

    terminated: int
    by_inactivity: int
    by_paused_timeout: int
    paused: int
    next_due_ms: int | None
    held: bool
    lateness_ms: list[int]
    by_billing: int = 0
    depletions: int = 0


@dataclass(slots=True)
class PartitionModel:
    plans: dict[str, tuple[int | None, int]] = field(
        default_factory=lambda: {**SPEC_PLANS, **{n: p[:2] for n, p in METERED_PLANS.items()}}
    )
    rates: dict[str, int] = field(
        default_factory=lambda: {n: p[2] for n, p in METERED_PLANS.items()}
    )
    max_paused: dict[str, int | None] = field(
        default_factory=lambda: {**SPEC_MAX_PAUSED, **dict.fromkeys(METERED_PLANS)}
    )
    default_plan: str = "free"
    max_clock_skew_ms: int = 5000
    billing_hold_terminates: bool = True
    sessions: dict[str, Session] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    # Commands written so far: every field but a rejection's free-text ``error``.
    commands: list[dict[str, str]] = field(default_factory=list)
    dead: list[dict[bytes, bytes]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    resume_wake: int | None = None  # the metering wake of the last resume

    # Accounts and admission (SPEC §2)

    def account(self, account_id: str) -> Account:
        return self.accounts.setdefault(account_id, Account())

    def plan_of(self, account_id: str) -> str:
        plan = self.account(account_id).plan
        return plan if plan in self.plans else self.default_plan

    def live_count(self, account_id: str) -> int:
        return sum(1 for s in self.sessions.values()
                   if s.status in LIVE and s.account_id == account_id)  # fmt: skip

    def admitted(self, account_id: str, at: int) -> int:
        """SPEC §2's billing and concurrency checks: 201 or 402 / 429 (creates, resumes)."""
        account = self.account(account_id)
        if account.billing_status != "ok":
            return 402
        if self.plan_of(account_id) in self.rates and account.balance is not None:
            dt = max(0, at - account.at)
            if account.balance - min(account.balance, consumed(account.burn, dt)) <= 0:
                return 402  # balance_depleted, before the expirer has seen it
        concurrent, _ = self.plans[self.plan_of(account_id)]
        if concurrent is not None and self.live_count(account_id) >= concurrent:
            return 429
        return 201

    def admission(self, session_id: str, account_id: str, timeout: int | None, at: int = 0) -> int:
        """SPEC §2's checks in their order: 201 or the refusal's status code."""
        code = self.admitted(account_id, at)
        if code != 201:
            return code
        _, duration = self.plans[self.plan_of(account_id)]
        if timeout is not None and timeout > duration:
            return 422
        if session_id in self.sessions:
            return 409
        return 201

    def _create(
        self,
        session_id: str,
        account_id: str,
        timeout: int | None,
        inactivity: int | None,
        auto_kill: bool,
        at: int,
        on_inactivity: str = "terminate",
    ) -> Session:
        plan = self.plan_of(account_id)
        m = timeout if timeout is not None else min(3600, self.plans[plan][1])
        session = Session(
            session_id=session_id,
            account_id=account_id,
            plan=plan,
            status="ready",
            created_at=at,
            expires_at=at + m * 1000,
            last_activity_at=at,
            inactivity_timeout_seconds=(
                inactivity if inactivity is not None else DEFAULT_INACTIVITY_SECONDS
            ),
            max_lifetime_seconds=m,
            auto_kill=auto_kill,
            on_inactivity=on_inactivity,
            run_started_at=at,
        )
        self.sessions[session_id] = session
        return session

    # Credits (SPEC §7)

    def _settle_credits(self, account: Account, t: int) -> bool:
        """Bring the balance to ``t``; False for an account without one."""
        if account.balance is None:
            return False
        if t > account.at:
            used = min(account.balance, consumed(account.burn, t - account.at))
            account.balance -= used
            account.consumed += used
            account.session_ms += account.running * (t - account.at)
            account.at = t
        return True

    def _reschedule(self, account: Account) -> int | None:
        if account.burn <= 0:
            account.depletes_at = None
        else:
            assert account.balance is not None
            if account.balance <= 0:
                old = account.depletes_at
                account.depletes_at = old if old is not None and old <= account.at else account.at
            else:
                account.depletes_at = account.at + self._depletes_after(
                    account.balance, account.burn
                )
        return account.depletes_at

    @staticmethod
    def _depletes_after(balance: int, burn: int) -> int:
        """The first ms at which ``burn`` has used ``balance`` up: rate·ms/hour >= balance."""
        return -(-balance * HOUR_MS // burn)

    def _backdate(self, account: Account, rate: int, t: int, sign: int) -> None:
        """A start (1) or stop (-1) at ``t`` before the last settle charges or gives back."""
        if t >= account.at:
            return
        assert account.balance is not None
        amount = consumed(rate, account.at - t)
        if sign > 0:
            amount = min(amount, account.balance)
        account.balance -= sign * amount
        account.consumed += sign * amount
        account.session_ms += sign * (account.at - t)

    def _meter_start(self, session: Session, t: int) -> int | None:
        account = self.account(session.account_id)
        rate = session.rate
        if rate is None:
            rate = self.rates.get(self.plan_of(session.account_id))
        if rate is None or not self._settle_credits(account, t):
            return None
        assert account.balance is not None
        if t < account.at and 0 < account.balance <= consumed(rate, account.at - t):
            # A lagging start with too little left: the balance ran out in the past.
            left_at_t = account.balance + consumed(account.burn, account.at - t)
            past = t + self._depletes_after(left_at_t, account.burn + rate)
            if account.depletes_at is None or past < account.depletes_at:
                account.depletes_at = past
        self._backdate(account, rate, t, 1)
        session.rate, session.metered_since = rate, t
        account.running += 1
        account.burn += rate
        return self._reschedule(account)

    def _meter_stop(self, session: Session, t: int) -> int:
        if session.rate is None or session.metered_since is None:
            return session.credits_used
        session.credits_used += consumed(session.rate, max(0, t - session.metered_since))
        session.metered_since = None
        account = self.account(session.account_id)
        if self._settle_credits(account, t):
            assert account.balance is not None
            rest = max(0, account.burn - session.rate)
            dep = account.depletes_at
            if t < account.at and account.balance <= 0 and dep is not None and dep <= account.at:
                # The balance ran out at dep, after t: only the run until dep was charged;
                # given back at dep, the sessions still running use it from then on.
                back = consumed(session.rate, max(0, dep - t))
                again = min(back, consumed(rest, account.at - dep))
                account.balance = back - again
                account.consumed += again - back
                account.session_ms -= account.at - t
                if account.balance <= 0 and back > 0 and rest > 0:
                    account.depletes_at = dep + self._depletes_after(back, rest)
            else:
                self._backdate(account, session.rate, t, -1)
            account.running -= 1
            account.burn = rest
            self._reschedule(account)
        return session.credits_used

    def _answer(self, account_id: str, now: int) -> tuple[str, ...]:
        """The top-up's answer: the account's credits projected to ``now``."""
        account = self.account(account_id)
        assert account.balance is not None
        dt = max(0, now - account.at)
        used = min(account.balance, consumed(account.burn, dt))
        dep = "" if account.depletes_at is None else str(account.depletes_at)
        metered = "1" if self.plan_of(account_id) in self.rates else "0"
        ms = account.session_ms + account.running * dt
        return (metered, str(account.balance - used), str(account.burn), dep, str(ms),
                str(account.consumed + used))  # fmt: skip

    def top_up(self, account_id: str, amount: int, key: str, now: int) -> tuple[str, ...] | None:
        """The first answer of ``key``; None when the balance would go over its maximum."""
        account = self.account(account_id)
        if key in account.answers:
            return account.answers[key]
        if account.depletes_at is not None and account.depletes_at <= now:
            # It came too late for the sessions running at the depletion moment; those
            # whose maximum lifetime came first end at it, as the expirer would have.
            for session in list(self.sessions.values()):
                if (
                    session.status in LIVE
                    and session.account_id == account_id
                    and session.expires_at < account.depletes_at
                ):
                    self._terminate(session, "max_lifetime", session.expires_at, now)
            if account.depletes_at is not None and account.depletes_at <= now:
                self._deplete(account_id, account.depletes_at, now)
        first = not self._settle_credits(account, now)
        balance = 0 if first else account.balance
        assert balance is not None
        if balance + amount > MAX_BALANCE:
            return None
        if first:
            account.at = now
        account.balance = balance + amount
        if account.billing_status == "balance_depleted":
            account.billing_status = "ok"
        if first:
            for session in self.sessions.values():
                if session.status in LIVE and session.account_id == account_id:
                    self._meter_start(session, now)
        self._reschedule(account)
        account.answers[key] = self._answer(account_id, now)
        return account.answers[key]

    def _deplete(self, name: str, dep: int, now: int) -> int | None:
        """The balance ran out at ``dep``: the sessions ended, or None for a stale moment."""
        account = self.accounts[name]
        account.depletes_at = None
        self._settle_credits(account, dep)
        assert account.balance is not None
        if account.balance > 0:
            self._reschedule(account)
            return None
        if account.billing_status == "ok":
            account.billing_status = "balance_depleted"
        ended = 0
        for session in list(self.sessions.values()):
            if (
                session.status in LIVE
                and session.account_id == name
                and self._terminate(session, "billing", dep, now)
            ):
                ended += 1
        account.consumed += account.balance
        account.balance = 0
        account.depletes_at = None
        return ended

    def deplete(self, now: int) -> tuple[int, int, list[int]]:
        """Accounts whose depletion moment has passed: (depletions, sessions ended, lateness)."""
        depletions = ended = 0
        lateness: list[int] = []
        due = sorted((a.depletes_at, name) for name, a in self.accounts.items()
                     if a.depletes_at is not None and a.depletes_at <= now)  # fmt: skip
        for dep, name in due:
            count = self._deplete(name, dep, now)
            if count is not None:
                depletions += 1
                ended += count
                lateness += [now - dep] * count
        return depletions, ended, lateness

    # Termination: the one place a command is written

    def _terminate(self, session: Session, reason: str, deadline: int, now: int) -> bool:
        if not session.live:
            return False
        # Never before the current run or pause began (an older stream entry ends it then).
        if session.paused:
            assert session.paused_at is not None
            deadline = max(deadline, session.paused_at)
            session.paused_ms += deadline - session.paused_at
            session.paused_at = session.pause_expires_at = None  # null unless paused
        else:
            deadline = max(deadline, session.run_started_at)
            session.run_ms += deadline - session.run_started_at
        used = self._meter_stop(session, deadline)
        session.status = "terminated"
        session.terminated_at = deadline
        session.termination_reason = reason
        if reason != "external":
            self.commands.append(
                {
                    "type": "terminate",
                    "session_id": session.session_id,
                    "account_id": session.account_id,
                    "reason": reason,
                    "deadline": str(deadline),
                    "emitted_at": str(now),
                    "created_at": str(session.created_at),
                    "duration_ms": str(max(0, deadline - session.created_at)),
                    "running_ms": str(session.run_ms),
                    "credits_used": credits_text(used),
                }
            )
        return True

    # Pause and resume (SPEC §8): one command per transition

    def _pause(self, session: Session, reason: str, at: int, now: int) -> bool:
        if session.status not in LIVE:
            return False
        at = max(at, session.run_started_at)
        session.run_ms += at - session.run_started_at
        self._meter_stop(session, at)
        session.status = "paused"
        session.paused_at = at
        limit = self.max_paused[self.plan_of(session.account_id)]
        session.pause_expires_at = None if limit is None else at + limit * 1000
        self.commands.append({"type": "pause", "session_id": session.session_id,
                              "account_id": session.account_id, "reason": reason,
                              "deadline": str(at), "emitted_at": str(now)})  # fmt: skip
        return True

    def _resume(self, session: Session, at: int, now: int) -> int:
        """200 resumed, 0 not paused, or the refusal (402, 429)."""
        if not session.paused:
            return 0
        code = self.admitted(session.account_id, now)
        if code != 201:
            return code
        assert session.paused_at is not None
        at = max(at, session.paused_at)
        session.paused_ms += at - session.paused_at
        session.status = "running"
        session.paused_at = session.pause_expires_at = None
        session.run_started_at = session.last_activity_at = at
        session.expires_at = at + session.max_lifetime_seconds * 1000 - session.run_ms
        self.resume_wake = self._meter_start(session, at)
        self.commands.append({"type": "resume", "session_id": session.session_id,
                              "account_id": session.account_id,
                              "emitted_at": str(now)})  # fmt: skip
        return 200

    def _fire(self, session: Session, deadline: int, reason: str, now: int) -> str:
        """What a passed deadline does, at that deadline: pause or terminate."""
        if reason == "inactivity" and session.pauses_at_inactivity():
            self._pause(session, "inactivity", deadline, now)
            return "paused:inactivity"
        self._terminate(session, reason, deadline, now)
        return f"ended:{reason}"

    def _overdue(self, session: Session, arrived: int, now: int) -> str | None:
        """An entry that arrived after the session's deadline: the deadline's outcome."""
        deadline, reason = session.deadline()
        if deadline is None or deadline >= arrived:
            return None
        return self._fire(session, deadline, reason, now)

    def _set_billing(
        self, account_id: str, status: str, plan: str | None, at: int, now: int
    ) -> int:
        account = self.account(account_id)
        if plan is not None:
            account.plan = plan
        account.billing_status = status
        ended = 0
        if status != "ok" and self.billing_hold_terminates:
            for session in list(self.sessions.values()):
                if session.account_id != account_id or session.status not in LIVE:
                    continue
                # A deadline that passed before the hold acts first, at its own time.
                if self._overdue(session, at, now) is None and self._terminate(
                    session, "billing", at, now
                ):
                    ended += 1
        return ended

    def _touch(
        self, session_id: str, account_id: str, ts: int, is_activity: bool, source: str
    ) -> str:
        session = self.sessions.get(session_id)
        if session is None or session.account_id != account_id:
            return "ignored:unknown_session"
        if not session.live:
            return "ignored:terminated"
        if session.paused:
            return "ignored:paused"
        if ts < session.last_activity_at:
            return "ignored:stale"
        if is_activity and session.status == "ready":
            session.status = "running"
        session.last_activity_at = ts
        session.activity_count += 1
        session.last_activity_source = source
        return "applied"

    # The events stream (SPEC §3)

    def publish(self, ms: int, fields: dict[bytes, bytes]) -> str:
        """Append an entry at time ``ms`` (not before the last one); returns its id."""
        seq = 0
        if self.entries:
            last = self.entries[-1]
            assert ms >= last.ms, "stream ids only grow"
            if ms == last.ms:
                seq = int(last.entry_id.split("-")[1]) + 1
        entry = Entry(f"{ms}-{seq}", ms, fields)
        self.entries.append(entry)
        return entry.entry_id

    def deliver(self, count: int) -> list[str]:
        """XREADGROUP ``>``: the next ``count`` entries no consumer has read yet."""
        fresh = [e for e in self.entries if e.state == "new"][:count]
        for entry in fresh:
            entry.state = "pending"
        return [e.entry_id for e in fresh]

    def pending(self) -> list[str]:
        return [e.entry_id for e in self.entries if e.state == "pending"]

    def first_unapplied_ms(self) -> int | None:
        for entry in self.entries:
            if entry.state != "acked":
                return entry.ms
        return None

    def apply(self, entry_ids: list[str], now: int) -> tuple[list[str], int | None]:
        """Apply delivered entries in order at server time ``now``.

        Returns each entry's outcome and the earliest deadline of the sessions created.
        """
        by_id = {e.entry_id: e for e in self.entries}
        outcomes: list[str] = []
        wake: int | None = None
        for entry_id in entry_ids:
            entry = by_id[entry_id]
            if entry.state != "pending":
                outcomes.append("skipped")
                continue
            entry.state = "acked"
            outcome, deadline = self._apply_one(entry, now)
            outcomes.append(outcome)
            if deadline is not None and (wake is None or deadline < wake):
                wake = deadline
        return outcomes, wake

    def _apply_one(self, entry: Entry, now: int) -> tuple[str, int | None]:
        event = parse(entry.fields, self.plans)
        if event is None:
            self.dead.append(entry.fields)
            return "dead", None
        at = entry.ms
        if event.type in ("activity", "keepalive"):
            ts = at if event.ts is None else event.ts
            if ts > now + self.max_clock_skew_ms:
                ts = now
            session = self.sessions.get(event.session_id)
            if session is not None and session.account_id == event.account_id and session.live:
                outcome = self._overdue(session, at, now)
                if outcome is not None:
                    return outcome, None
            return self._touch(
                event.session_id, event.account_id, ts, event.type == "activity", event.source
            ), None
        if event.type in ("pause", "resume"):
            return self._pause_or_resume(event, at, now)
        if event.type == "created":
            if event.plan is not None and self.account(event.account_id).plan is None:
                self.account(event.account_id).plan = event.plan
            code = self.admission(event.session_id, event.account_id, event.timeout_seconds, at)
            if code != 201:
                self.commands.append(
                    {
                        "type": "rejected",
                        "session_id": event.session_id,
                        "account_id": event.account_id,
                        "code": str(code),
                    }
                )
                return f"rejected:{code}", None
            created = self._create(
                event.session_id,
                event.account_id,
                event.timeout_seconds,
                event.inactivity_timeout_seconds,
                event.auto_kill,
                at,
                event.on_inactivity,
            )
            wake = self._meter_start(created, at)
            deadline = created.deadline()[0]
            return "applied", min(t for t in (deadline, wake) if t is not None)
        if event.type in ("terminate", "terminated"):
            session = self.sessions.get(event.session_id)
            if session is None or session.account_id != event.account_id:
                return "ignored:unknown_session", None
            reason = event.reason if event.type == "terminate" else "external"
            if self._terminate(session, reason, at, now):
                return f"ended:{reason}", None
            return "ignored:terminated", None
        if event.type == "credits":
            answer = self.top_up(event.account_id, event.amount, event.idempotency_key, now)
            if answer is None:
                self.dead.append(entry.fields)
                return "dead", None
            return "applied", int(answer[3]) if answer[3] else None
        ended = self._set_billing(event.account_id, event.billing_status, event.plan, at, now)
        return f"ended:{ended}", None

    def _pause_or_resume(self, event: Event, at: int, now: int) -> tuple[str, int | None]:
        session = self.sessions.get(event.session_id)
        if session is None or session.account_id != event.account_id:
            return "ignored:unknown_session", None
        if not session.live:
            return "ignored:terminated", None
        outcome = self._overdue(session, at, now)
        if outcome is not None and not (event.type == "resume" and outcome.startswith("paused")):
            return outcome, None
        if event.type == "pause":
            if self._pause(session, "requested", at, now):
                return "paused:requested", None
            return "ignored:paused", None
        code = self._resume(session, at, now)
        if code == 200:
            deadline = session.deadline()[0]
            wake = self.resume_wake
            return "resumed", min(t for t in (deadline, wake) if t is not None)
        if code == 0:
            return "ignored:not_paused", None
        self.commands.append({"type": "rejected", "session_id": event.session_id,
                              "account_id": event.account_id, "code": str(code)})  # fmt: skip
        return f"rejected:{code}", None

    # Deadlines

    def expire(self, now: int) -> Expiry:
        """expire_due at server time ``now``, with the lag-safe rule (SPEC §3 guarantees)."""
        first = self.first_unapplied_ms()
        # An inactivity deadline D may fire only when no entry with time <= D is unapplied.
        idle_limit = now if first is None else min(now, first - 1)
        terminated = by_inactivity = by_paused_timeout = paused = 0
        lateness: list[int] = []
        # Depletion moments passed as the call starts: a metered session whose balance ran
        # out at or before its own deadline ends at the depletion instead.
        passed = {name: a.depletes_at for name, a in self.accounts.items()
                  if a.depletes_at is not None and a.depletes_at <= now}  # fmt: skip
        for session in list(self.sessions.values()):
            if not session.live:
                continue
            idle = session.idle_expires_at
            if session.paused:
                if session.pause_expires_at is None or session.pause_expires_at > now:
                    continue
                deadline, reason = session.pause_expires_at, "paused_timeout"
            elif idle is not None and idle < session.expires_at and idle <= idle_limit:
                deadline, reason = idle, "inactivity"
            elif session.expires_at <= now:
                deadline, reason = session.expires_at, "max_lifetime"
            else:
                continue
            dep = passed.get(session.account_id)
            if session.metered_since is not None and dep is not None and dep <= deadline:
                continue  # its balance ran out first: it ends at the depletion
            if self._fire(session, deadline, reason, now).startswith("paused"):
                paused += 1
            else:
                terminated += 1
                by_inactivity += reason == "inactivity"
                by_paused_timeout += reason == "paused_timeout"
            lateness.append(now - deadline)
        depletions, by_billing, late = self.deplete(now)
        lateness += late
        # Next due: each live session's deadline, or its maximum lifetime while its passed
        # inactivity deadline is held (that one waits for the consumer, not the clock).
        candidates: list[int] = []
        held = False
        for session in self.sessions.values():
            if not session.live:
                continue
            due, reason = session.deadline()
            if due is None:
                continue
            if reason == "inactivity" and idle_limit < due <= now:
                held = True
                due = session.expires_at
            candidates.append(due)
        candidates += [a.depletes_at for a in self.accounts.values() if a.depletes_at is not None]
        return Expiry(
            terminated=terminated,
            by_inactivity=by_inactivity,
            by_paused_timeout=by_paused_timeout,
            paused=paused,
            next_due_ms=min(candidates, default=None),
            held=held,
            lateness_ms=sorted(lateness),
            by_billing=by_billing,
            depletions=depletions,
        )

    # The API (SPEC §4), at the server time ``now`` of the script call

    def api_create(
        self,
        session_id: str,
        account_id: str,
        timeout: int | None,
        inactivity: int | None,
        auto_kill: bool,
        now: int,
        on_inactivity: str = "terminate",
    ) -> int:
        code = self.admission(session_id, account_id, timeout, now)
        if code == 201:
            session = self._create(session_id, account_id, timeout, inactivity, auto_kill, now,
                                   on_inactivity)  # fmt: skip
            self._meter_start(session, now)
        return code

    def _settle(self, session_id: str, now: int, billing: bool) -> Session | int:
        """An API call on a session: what its passed deadline does first, as the expirer
        sees it (an inactivity deadline held by an unapplied entry from before it has not
        passed); the session, or the refusal's status code."""
        session = self.sessions.get(session_id)
        if session is None:
            return 404
        # SPEC §2: the billing check comes first for keepalives (and resumes) too.
        if billing and self.account(session.account_id).billing_status != "ok":
            return 402
        if not session.live:
            return 409
        deadline, reason = session.deadline()
        first = self.first_unapplied_ms()
        idle_limit = now if first is None else min(now, first - 1)
        if (
            deadline is not None
            and deadline <= now
            and reason == "inactivity"
            and deadline > idle_limit
        ):
            deadline, reason = session.expires_at, "max_lifetime"
        passed = deadline is not None and deadline <= now
        if passed and self._fire(session, deadline or 0, reason, now).startswith("ended"):
            return 409
        return session

    def api_keepalive(self, session_id: str, now: int, source: str = "api") -> int:
        session = self._settle(session_id, now, billing=True)
        if isinstance(session, int):
            return session
        self._touch(session_id, session.account_id, now, False, source)
        return 200

    def api_pause(self, session_id: str, now: int) -> tuple[int, bool]:
        """Status code and whether this call paused the session."""
        session = self._settle(session_id, now, billing=False)
        if isinstance(session, int):
            return session, False
        return 200, self._pause(session, "requested", now, now)

    def api_resume(self, session_id: str, now: int) -> tuple[int, bool]:
        """Status code and whether this call resumed the session."""
        session = self._settle(session_id, now, billing=True)
        if isinstance(session, int):
            return session, False
        code = self._resume(session, now, now)
        return (200, False) if code == 0 else (code, code == 200)

    def api_terminate(self, session_id: str, now: int) -> tuple[int, bool]:
        """Status code and whether this call ended the session (DELETE is idempotent)."""
        session = self.sessions.get(session_id)
        if session is None:
            return 404, False
        return 200, self._terminate(session, "requested", now, now)

    def patch_code(self, session_id: str, timeout: int | None, now: int) -> int:
        session = self.sessions.get(session_id)
        if session is None:
            return 404
        if not session.live:
            return 409
        if timeout is not None:
            if timeout > self.plans[self.plan_of(session.account_id)][1]:
                return 422
            # A lifetime that would already have ended is refused, not an instant kill.
            ran = session.run_ms
            if not session.paused:
                ran += now - session.run_started_at
            if timeout * 1000 < ran:
                return 422
        return 200

    def api_patch(
        self,
        session_id: str,
        timeout: int | None,
        inactivity: int | None,
        auto_kill: bool | None,
        now: int,
        on_inactivity: str | None = None,
    ) -> int:
        code = self.patch_code(session_id, timeout, now)
        if code != 200:
            return code
        session = self.sessions[session_id]
        if timeout is not None:
            session.max_lifetime_seconds = timeout
            session.expires_at = session.run_started_at + timeout * 1000 - session.run_ms
        if inactivity is not None:
            session.inactivity_timeout_seconds = inactivity
        if auto_kill is not None:
            session.auto_kill = auto_kill
        if on_inactivity is not None:
            session.on_inactivity = on_inactivity
        deadline, reason = session.deadline()
        if not session.paused and deadline is not None and deadline <= now:
            # SPEC 0.3: at the PATCH's own time, never back-dated.
            self._fire(session, now, reason, now)
        return 200

    def api_set_account(
        self, account_id: str, plan: str | None, billing_status: str | None, now: int
    ) -> int:
        """PUT /v1/accounts: returns how many sessions a billing hold ended."""
        if billing_status is not None:
            return self._set_billing(account_id, billing_status, plan, now, now)
        if plan is not None:
            self.account(account_id).plan = plan
        return 0


def retry_after_bounds(model: PartitionModel, account_id: str, low_now: int) -> int:
    """Largest Retry-After (s) a 429 may carry when the call ran at or after ``low_now``."""
    deadlines = [d for s in model.sessions.values() if s.status in LIVE
                 and s.account_id == account_id for d in [s.deadline()[0]]
                 if d is not None]  # fmt: skip
    if not deadlines:
        return 1
    return max(1, math.ceil((min(deadlines) - low_now) / 1000))
