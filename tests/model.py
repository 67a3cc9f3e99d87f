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
  came too late: applying it ends the session at that deadline (``ended:<reason>``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# SPEC §2's plan table: name -> (max_concurrent or None for unlimited, max_duration_seconds).
SPEC_PLANS: dict[str, tuple[int | None, int]] = {
    "free": (2, 3600),
    "pro": (10, 14400),
    "enterprise": (None, 86400),
}
BILLING_STATUSES = ("ok", "balance_depleted", "payment_failed", "card_expired")
COMMAND_REASONS = ("max_lifetime", "inactivity", "requested", "billing")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_INT = re.compile(r"[0-9]{1,64}")
_BOOL = {"true": True, "1": True, "false": False, "0": False}
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


_REQUIRED = {
    "created": ("session_id", "account_id"),
    "activity": ("session_id", "account_id"),
    "keepalive": ("session_id", "account_id"),
    "terminate": ("session_id", "account_id"),
    "terminated": ("session_id", "account_id"),
    "billing": ("account_id", "billing_status"),
}


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
    if kind == "billing":
        if fields["billing_status"] not in BILLING_STATUSES:
            return None
        return Event(kind, account, billing_status=fields["billing_status"], plan=plan)
    session = fields["session_id"]
    if kind == "created":
        timeout = integer("timeout_seconds", 1)
        inactivity = integer("inactivity_timeout_seconds", 1, MAX_INACTIVITY_SECONDS)
        auto_kill = _BOOL.get(fields.get("auto_kill", "true").lower())
        if timeout is False or inactivity is False or auto_kill is None:
            return None
        assert not isinstance(timeout, bool) and not isinstance(inactivity, bool)
        return Event(kind, account, session, timeout, inactivity, auto_kill, plan)
    if kind in ("activity", "keepalive"):
        ts = integer("ts", 0)
        if ts is False:
            return None
        assert not isinstance(ts, bool)
        return Event(kind, account, session, ts=ts)
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
    status: str  # ready | running | terminated
    created_at: int
    expires_at: int
    last_activity_at: int
    inactivity_timeout_seconds: int
    max_lifetime_seconds: int
    auto_kill: bool
    terminated_at: int | None = None
    termination_reason: str | None = None

    @property
    def live(self) -> bool:
        return self.status != "terminated"

    @property
    def idle_expires_at(self) -> int | None:
        if not self.live or not self.auto_kill:
            return None
        return self.last_activity_at + self.inactivity_timeout_seconds * 1000

    def deadline(self) -> tuple[int, str]:
        """The effective deadline (SPEC §1 ``terminates_at``) and the reason it ends with."""
        idle = self.idle_expires_at
        if idle is not None and idle < self.expires_at:
            return idle, "inactivity"
        return self.expires_at, "max_lifetime"


@dataclass(slots=True)
class Account:
    plan: str | None = None  # None: never set, the default plan applies
    billing_status: str = "ok"


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
    next_due_ms: int | None
    held: bool
    lateness_ms: list[int]


@dataclass(slots=True)
class PartitionModel:
    plans: dict[str, tuple[int | None, int]] = field(default_factory=lambda: dict(SPEC_PLANS))
    default_plan: str = "free"
    max_clock_skew_ms: int = 5000
    billing_hold_terminates: bool = True
    sessions: dict[str, Session] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    # Commands written so far: every field but a rejection's free-text ``error``.
    commands: list[dict[str, str]] = field(default_factory=list)
    dead: list[dict[bytes, bytes]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    # Accounts and admission (SPEC §2)

    def account(self, account_id: str) -> Account:
        return self.accounts.setdefault(account_id, Account())

    def plan_of(self, account_id: str) -> str:
        plan = self.account(account_id).plan
        return plan if plan in self.plans else self.default_plan

    def live_count(self, account_id: str) -> int:
        return sum(1 for s in self.sessions.values() if s.live and s.account_id == account_id)

    def admission(self, session_id: str, account_id: str, timeout: int | None) -> int:
        """SPEC §2's checks in their order: 201 or the refusal's status code."""
        if self.account(account_id).billing_status != "ok":
            return 402
        concurrent, duration = self.plans[self.plan_of(account_id)]
        if concurrent is not None and self.live_count(account_id) >= concurrent:
            return 429
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
        )
        self.sessions[session_id] = session
        return session

    # Termination: the one place a command is written

    def _terminate(self, session: Session, reason: str, deadline: int, now: int) -> bool:
        if not session.live:
            return False
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
                    "credits_used": "0",
                }
            )
        return True

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
                if session.account_id == account_id and self._terminate(
                    session, "billing", at, now
                ):
                    ended += 1
        return ended

    def _touch(self, session_id: str, account_id: str, ts: int, is_activity: bool) -> str:
        session = self.sessions.get(session_id)
        if session is None or session.account_id != account_id:
            return "ignored:unknown_session"
        if not session.live:
            return "ignored:terminated"
        if ts < session.last_activity_at:
            return "ignored:stale"
        if is_activity and session.status == "ready":
            session.status = "running"
        session.last_activity_at = ts
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
                deadline, reason = session.deadline()
                if deadline < at:
                    self._terminate(session, reason, deadline, now)
                    return f"ended:{reason}", None
            return self._touch(
                event.session_id, event.account_id, ts, event.type == "activity"
            ), None
        if event.type == "created":
            if event.plan is not None and self.account(event.account_id).plan is None:
                self.account(event.account_id).plan = event.plan
            code = self.admission(event.session_id, event.account_id, event.timeout_seconds)
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
            )
            return "applied", created.deadline()[0]
        if event.type in ("terminate", "terminated"):
            session = self.sessions.get(event.session_id)
            if session is None or session.account_id != event.account_id:
                return "ignored:unknown_session", None
            reason = event.reason if event.type == "terminate" else "external"
            if self._terminate(session, reason, at, now):
                return f"ended:{reason}", None
            return "ignored:terminated", None
        ended = self._set_billing(event.account_id, event.billing_status, event.plan, at, now)
        return f"ended:{ended}", None

    # Deadlines

    def expire(self, now: int) -> Expiry:
        """expire_due at server time ``now``, with the lag-safe rule (SPEC §3 guarantees)."""
        first = self.first_unapplied_ms()
        # An inactivity deadline D may fire only when no entry with time <= D is unapplied.
        idle_limit = now if first is None else min(now, first - 1)
        terminated = by_inactivity = 0
        lateness: list[int] = []
        for session in list(self.sessions.values()):
            if not session.live:
                continue
            idle = session.idle_expires_at
            if idle is not None and idle < session.expires_at and idle <= idle_limit:
                deadline, reason = idle, "inactivity"
            elif session.expires_at <= now:
                deadline, reason = session.expires_at, "max_lifetime"
            else:
                continue
            self._terminate(session, reason, deadline, now)
            terminated += 1
            by_inactivity += reason == "inactivity"
            lateness.append(now - deadline)
        # Next due: each live session's deadline, or its maximum lifetime while its passed
        # inactivity deadline is held (that one waits for the consumer, not the clock).
        candidates: list[int] = []
        held = False
        for session in self.sessions.values():
            if not session.live:
                continue
            deadline, reason = session.deadline()
            if reason == "inactivity" and idle_limit < deadline <= now:
                held = True
                deadline = session.expires_at
            candidates.append(deadline)
        return Expiry(
            terminated=terminated,
            by_inactivity=by_inactivity,
            next_due_ms=min(candidates, default=None),
            held=held,
            lateness_ms=sorted(lateness),
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
    ) -> int:
        code = self.admission(session_id, account_id, timeout)
        if code == 201:
            self._create(session_id, account_id, timeout, inactivity, auto_kill, now)
        return code

    def api_keepalive(self, session_id: str, now: int) -> int:
        session = self.sessions.get(session_id)
        if session is None:
            return 404
        # SPEC §2: the billing check comes first for keepalives too.
        if self.account(session.account_id).billing_status != "ok":
            return 402
        if not session.live:
            return 409
        # After its deadline a keepalive comes too late, as the expirer sees it: an
        # inactivity deadline held by an unapplied entry from before it has not passed.
        deadline, reason = session.deadline()
        first = self.first_unapplied_ms()
        idle_limit = now if first is None else min(now, first - 1)
        if deadline <= now and reason == "inactivity" and deadline > idle_limit:
            deadline, reason = session.expires_at, "max_lifetime"
        if deadline <= now:
            self._terminate(session, reason, deadline, now)
            return 409
        self._touch(session_id, session.account_id, now, is_activity=False)
        return 200

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
            if session.created_at + timeout * 1000 < now:
                return 422
        return 200

    def api_patch(
        self,
        session_id: str,
        timeout: int | None,
        inactivity: int | None,
        auto_kill: bool | None,
        now: int,
    ) -> int:
        code = self.patch_code(session_id, timeout, now)
        if code != 200:
            return code
        session = self.sessions[session_id]
        if timeout is not None:
            session.max_lifetime_seconds = timeout
            session.expires_at = session.created_at + timeout * 1000
        if inactivity is not None:
            session.inactivity_timeout_seconds = inactivity
        if auto_kill is not None:
            session.auto_kill = auto_kill
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
    deadlines = [s.deadline()[0] for s in model.sessions.values()
                 if s.live and s.account_id == account_id]  # fmt: skip
    if not deadlines:
        return 1
    return max(1, math.ceil((min(deadlines) - low_now) / 1000))
