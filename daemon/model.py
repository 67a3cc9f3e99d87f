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

TERMINATION_REASONS = ("max_lifetime", "inactivity", "requested", "billing", "external")
COMMAND_REASONS = ("max_lifetime", "inactivity", "requested", "billing")
BILLING_STATUSES = ("ok", "balance_depleted", "payment_failed", "card_expired")

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
STATUS_CODES = {"r": "ready", "u": "running", "t": "terminated"}


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
    expires_at: int
    last_activity_at: int
    inactivity_timeout_seconds: int
    max_lifetime_seconds: int
    auto_kill: bool
    terminated_at: int | None
    termination_reason: str | None
    # Credits: the session's rate (micro-credits per running hour; None: not metered),
    # since when it runs metered (None: not running), micro-credits used by earlier runs.
    credits_rate: int | None = None
    metered_since: int | None = None
    credits_used_before: int = 0

    @classmethod
    def from_fields(cls, session_id: str, fields: dict[str, str]) -> SessionRecord:
        terminated_at = fields.get("t")
        return cls(
            session_id=session_id,
            account_id=fields["a"],
            plan=fields["p"],
            status=STATUS_CODES[fields["s"]],
            created_at=int(fields["c"]),
            expires_at=int(fields["e"]),
            last_activity_at=int(fields["l"]),
            inactivity_timeout_seconds=int(fields["i"]),
            max_lifetime_seconds=(int(fields["e"]) - int(fields["c"])) // 1000,
            auto_kill=fields["k"] == "1",
            terminated_at=int(terminated_at) if terminated_at else None,
            termination_reason=fields.get("x") or None,
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
    def idle_expires_at(self) -> int | None:
        if self.terminated or not self.auto_kill:
            return None
        return self.last_activity_at + self.inactivity_timeout_seconds * 1000

    @property
    def terminates_at(self) -> int | None:
        if self.terminated:
            return None
        idle = self.idle_expires_at
        return self.expires_at if idle is None else min(self.expires_at, idle)

    def status_object(self, now_ms: int) -> dict[str, Any]:
        terminates_at = self.terminates_at
        remaining = 0.0 if terminates_at is None else max(0.0, (terminates_at - now_ms) / 1000)
        return {
            "session_id": self.session_id,
            "account_id": self.account_id,
            "plan": self.plan,
            "status": self.status,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "idle_expires_at": _rfc3339_or_none(self.idle_expires_at),
            "last_activity_at": rfc3339(self.last_activity_at),
            "max_lifetime_seconds": self.max_lifetime_seconds,
            "inactivity_timeout_seconds": self.inactivity_timeout_seconds,
            "auto_kill": self.auto_kill,
            "terminates_at": _rfc3339_or_none(terminates_at),
            "remaining_seconds": round(remaining, 3),
            "terminated_at": _rfc3339_or_none(self.terminated_at),
            "termination_reason": self.termination_reason,
            "credits_used": credits(self.credits_used_micro(now_ms)),
        }
