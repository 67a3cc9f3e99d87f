"""The session record as stored in Redis and the status object users see (SPEC §1)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# What acted (an activity or keepalive's optional ``source``, SPEC §8).
SOURCE_PATTERN = re.compile(r"[a-z0-9._-]{1,64}")

TERMINATION_REASONS = ("max_lifetime", "inactivity", "requested", "billing", "external")
COMMAND_REASONS = ("max_lifetime", "inactivity", "requested", "billing")
BILLING_STATUSES = ("ok", "balance_depleted", "payment_failed", "card_expired")

MAX_INACTIVITY_SECONDS = 86400
DEFAULT_INACTIVITY_SECONDS = 300

# Short field names keep each session hash a compact listpack.
STATUS_CODES = {"r": "ready", "u": "running", "t": "terminated"}


def new_session_id() -> str:
    return "ses_" + secrets.token_urlsafe(15)[:20]


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as ``2026-11-24T13:45:00.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


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
        )

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
        }
