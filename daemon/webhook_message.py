"""What a webhook receiver gets (SPEC §9): the body, the Standard Webhooks headers, secrets.

The body is ``{"type", "timestamp", "data"}``: the command's type, the time of its stream
entry (RFC 3339) and its fields. ``webhook-id`` names the command (partition and stream
entry id), so every attempt of it carries the same id; ``webhook-timestamp`` is the
attempt's time, which the signature covers (receivers refuse one over five minutes old).
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from math import floor

from standardwebhooks import Webhook

# The Standard Webhooks prefix of a secret, not a secret.
SECRET_PREFIX = "whsec_"  # nosec B105
# Command fields that stay strings even when they look like numbers.
_TEXT_FIELDS = frozenset({"session_id", "account_id", "reason", "error", "source"})


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def message_id(partition: int, entry_id: str) -> str:
    return f"cmd_{partition}_{entry_id}"


def _value(name: str, value: str) -> object:
    if name in _TEXT_FIELDS:
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value) if value.replace(".", "", 1).lstrip("-").isdigit() else value
    except ValueError:
        return value


def body(kind: str, entry_id: str, fields: dict[str, str]) -> str:
    """The JSON body for a command; numbers in its fields become JSON numbers."""
    ms = int(entry_id.partition("-")[0])
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    data = {k: _value(k, v) for k, v in fields.items() if k != "type"}
    return json.dumps(
        {"type": kind, "timestamp": stamp.replace("+00:00", "Z"), "data": data},
        separators=(",", ":"),
    )


def signed_headers(
    secret: str, msg_id: str, payload: str, at: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers (signed with the ``standardwebhooks`` package)."""
    when = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(floor(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, payload),
        "Content-Type": "application/json",
    }
