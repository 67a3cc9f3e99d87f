"""The session record as stored in Redis and the status object users see (SPEC §1)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# What acted (an activity or keepalive's optional ``source``, SPEC §8).
SOURCE_PATTERN = re.compile(r"[a-z0-9._-]{1,64}")
SOURCE_RULE = "1-64 characters of [a-z0-9._-]"

TERMINATION_REASONS = (
    "max_lifetime",
    "inactivity",
    "requested",
    "billing",
    "external",
    "paused_timeout",
)
COMMAND_REASONS = ("max_lifetime", "inactivity", "requested", "billing")
BILLING_STATUSES = ("ok", "balance_depleted", "payment_failed", "card_expired")

ON_INACTIVITY = ("terminate", "pause")
PAUSE_REASONS = ("inactivity", "requested")

MAX_INACTIVITY_SECONDS = 86400
DEFAULT_INACTIVITY_SECONDS = 300

# Credits (SPEC §7) are kept as integer micro-credits.
MICRO = 1_000_000
HOUR_MS = 3_600_000
MAX_TOP_UP_CREDITS = 10**12
# An idempotency key: 1-255 printable ASCII characters, no space.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[!-~]{1,255}")
_NUMBER = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,6})?")

# Short field names keep each session hash a compact listpack.
STATUS_CODES = {"r": "ready", "u": "running", "p": "paused", "t": "terminated"}


def new_session_id() -> str:
    return "ses_" + secrets.token_urlsafe(15)[:20]


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as ``2026-11-24T13:45:00.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def credits(micro: int | None) -> int | float | None:
    """Micro-credits as a JSON number of credits; exact (also as a float's shortest
    text) while below 10^15 micro-credits, the balance cap."""
    if micro is None:
        return None
    whole, frac = divmod(micro, MICRO)
    return whole if frac == 0 else micro / MICRO


def top_up_micro(amount: str) -> int:
    """A top-up amount written as a decimal number of credits, as micro-credits; a
    ValueError says what is wrong with it."""
    if not _NUMBER.fullmatch(amount):
        raise ValueError("amount must be a positive number of credits")
    with localcontext() as ctx:
        ctx.prec = 100
        try:
            micro = Decimal(amount) * MICRO
        except InvalidOperation:
            raise ValueError("amount must be a positive number of credits") from None
        if micro <= 0:
            raise ValueError("amount must be more than 0")
        if micro > MAX_TOP_UP_CREDITS * MICRO:
            raise ValueError(f"amount must be at most {MAX_TOP_UP_CREDITS} credits")
        if micro != micro.to_integral_value():
            raise ValueError("amount must have at most 6 decimals")
    return int(micro)


def _rfc3339_or_none(ms: int | None) -> str | None:
    return None if ms is None else rfc3339(ms)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session hash, decoded."""

    session_id: str
    account_id: str
    plan: str
    status: str
    created_at: int
    expires_at: int  # while paused: as at the pause (see ``paused_at``)
    last_activity_at: int
    inactivity_timeout_seconds: int
    max_lifetime_seconds: int
    auto_kill: bool
    terminated_at: int | None
    termination_reason: str | None
    on_inactivity: str = "terminate"
    run_ms: int = 0  # running time before ``resumed_at``; the total once terminated
    resumed_at: int | None = None  # start of the current run (None: created_at)
    paused_at: int | None = None  # set while paused
    pause_expires_at: int | None = None  # while paused; None: the pause never times out
    paused_ms: int = 0  # paused time before the current pause
    last_activity_source: str | None = None
    activity_count: int = 0
    # Credits: the session's rate (micro-credits per running hour; None: not metered),
    # since when it runs metered (None: not running), micro-credits used by earlier runs.
    credits_rate: int | None = None
    metered_since: int | None = None
    credits_used_before: int = 0

    @classmethod
    def from_fields(cls, session_id: str, fields: dict[str, str]) -> SessionRecord:
        terminated_at = fields.get("t")
        status = STATUS_CODES[fields["s"]]
        expires_at, created_at = int(fields["e"]), int(fields["c"])
        run_ms = int(fields.get("n") or 0)
        resumed_at = int(fields["y"]) if fields.get("y") else None
        paused_at = int(fields["qa"]) if status == "paused" else None
        # While running, e = start of the run + (max lifetime - n); while paused (and once
        # terminated while paused: qa stays) the run ended at qa; once terminated while
        # running, n includes the run up to terminated_at (see includes/common.lua).
        if fields.get("qa"):
            lifetime_ms = expires_at - int(fields["qa"]) + run_ms
        elif status != "terminated":
            lifetime_ms = expires_at - (resumed_at or created_at) + run_ms
        elif "n" in fields:
            # n holds the run up to terminated_at (never before the run began).
            lifetime_ms = expires_at - int(terminated_at or created_at) + run_ms
        else:
            # Ended before 0.3 kept running time: it ran from creation to its end.
            lifetime_ms = expires_at - created_at
            run_ms = max(0, int(terminated_at or created_at) - created_at)
        pause_expires = fields.get("qe") if status == "paused" else None
        return cls(
            session_id=session_id,
            account_id=fields["a"],
            plan=fields["p"],
            status=status,
            created_at=created_at,
            expires_at=expires_at,
            last_activity_at=int(fields["l"]),
            inactivity_timeout_seconds=int(fields["i"]),
            max_lifetime_seconds=lifetime_ms // 1000,
            auto_kill=fields["k"] == "1",
            terminated_at=int(terminated_at) if terminated_at else None,
            termination_reason=fields.get("x") or None,
            on_inactivity="pause" if fields.get("o") == "p" else "terminate",
            run_ms=run_ms,
            resumed_at=resumed_at,
            paused_at=paused_at,
            pause_expires_at=int(pause_expires) if pause_expires else None,
            paused_ms=int(fields.get("qt") or 0),
            last_activity_source=fields.get("qs") or None,
            activity_count=int(fields.get("qc") or 0),
            credits_rate=int(fields["mr"]) if "mr" in fields else None,
            metered_since=int(fields["ma"]) if "ma" in fields else None,
            credits_used_before=int(fields.get("mu", "0")),
        )

    def credits_used_micro(self, now_ms: int) -> int:
        used = self.credits_used_before
        if self.credits_rate is not None and self.metered_since is not None:
            used += self.credits_rate * max(0, now_ms - self.metered_since) // HOUR_MS
        return used

    @property
    def terminated(self) -> bool:
        return self.status == "terminated"

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    @property
    def idle_expires_at(self) -> int | None:
        if self.terminated or self.paused or not self.auto_kill:
            return None
        return self.last_activity_at + self.inactivity_timeout_seconds * 1000

    @property
    def terminates_at(self) -> int | None:
        """The next deadline: the pause's end while paused (the idle deadline pauses a
        session with ``on_inactivity`` = pause; it still counts here)."""
        if self.terminated:
            return None
        if self.paused:
            return self.pause_expires_at
        idle = self.idle_expires_at
        return self.expires_at if idle is None else min(self.expires_at, idle)

    def running_ms(self, now_ms: int) -> int:
        """Running time so far; paused time never counts."""
        if self.terminated or self.paused:
            return self.run_ms
        return self.run_ms + max(0, now_ms - (self.resumed_at or self.created_at))

    def paused_total_ms(self, now_ms: int) -> int:
        if self.paused and self.paused_at is not None:
            return self.paused_ms + max(0, now_ms - self.paused_at)
        return self.paused_ms

    def status_object(self, now_ms: int) -> dict[str, Any]:
        terminates_at = self.terminates_at
        remaining: float | None
        if terminates_at is None:
            remaining = None if self.paused else 0.0
        else:
            remaining = round(max(0.0, (terminates_at - now_ms) / 1000), 3)
        return {
            "session_id": self.session_id,
            "account_id": self.account_id,
            "plan": self.plan,
            "status": self.status,
            "created_at": rfc3339(self.created_at),
            "expires_at": None if self.paused else rfc3339(self.expires_at),
            "idle_expires_at": _rfc3339_or_none(self.idle_expires_at),
            "last_activity_at": rfc3339(self.last_activity_at),
            "max_lifetime_seconds": self.max_lifetime_seconds,
            "inactivity_timeout_seconds": self.inactivity_timeout_seconds,
            "auto_kill": self.auto_kill,
            "terminates_at": _rfc3339_or_none(terminates_at),
            "remaining_seconds": remaining,
            "terminated_at": _rfc3339_or_none(self.terminated_at),
            "termination_reason": self.termination_reason,
            "on_inactivity": self.on_inactivity,
            "paused_at": _rfc3339_or_none(self.paused_at),
            "pause_expires_at": _rfc3339_or_none(self.pause_expires_at),
            "paused_seconds_total": self.paused_total_ms(now_ms) / 1000,
            "running_seconds_total": self.running_ms(now_ms) / 1000,
            "last_activity_source": self.last_activity_source,
            "activity_count": self.activity_count,
            "credits_used": credits(self.credits_used_micro(now_ms)),
        }
