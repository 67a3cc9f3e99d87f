"""Validation of events-stream entries (SPEC §3) into the arguments of ``apply_events.lua``.

Checking happens here, in Python, so that the script only applies well-formed events;
an entry that breaks a rule becomes a dead-letter operation carrying its original
fields and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass

from daemon.model import (
    BILLING_STATUSES,
    COMMAND_REASONS,
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_INACTIVITY_SECONDS,
    ON_INACTIVITY,
    SOURCE_PATTERN,
    SOURCE_RULE,
    top_up_micro,
)

EVENT_TYPES = (
    "created",
    "activity",
    "keepalive",
    "terminate",
    "terminated",
    "billing",
    "pause",
    "resume",
    "credits",
)

_OPS = {
    "created": "C",
    "activity": "A",
    "keepalive": "K",
    "terminate": "T",
    "terminated": "X",
    "billing": "B",
    "pause": "P",
    "resume": "R",
    "credits": "M",
}
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
_DIGITS = re.compile(r"[0-9]{1,64}")
_BOOLS = {"true": "1", "1": "1", "false": "0", "0": "0"}
# Larger values are over every plan's maximum (a 422 rejection) or far ahead of the clock
# (clamped to now) anyway; capped, they stay within Lua's exact integers.
_TIMEOUT_CAP = 10**9
_TS_CAP = 10**15


class InvalidEvent(ValueError):
    """The entry breaks a rule of SPEC §3; the message says which."""


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    entry_id: str
    type: str  # an EVENT_TYPES member, or "invalid"
    args: list[bytes | str | int]  # op code, argument count, arguments (see apply_events.lua)
    error: str | None = None

    @property
    def entry_ms(self) -> int:
        """The time the entry entered the stream (its id's milliseconds)."""
        return int(self.entry_id.partition("-")[0])


def _decode(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    decoded: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        try:
            name = raw_name.decode()
        except UnicodeDecodeError:
            raise InvalidEvent("a field name is not UTF-8") from None
        try:
            decoded[name] = raw_value.decode()
        except UnicodeDecodeError:
            raise InvalidEvent(f"field {name} is not UTF-8") from None
    return decoded


def _id(fields: dict[str, str], name: str) -> str:
    value = fields[name]
    if not ID_PATTERN.fullmatch(value):
        raise InvalidEvent(
            f"field {name} must be 1-128 characters of [A-Za-z0-9._:-] starting with a "
            "letter or digit"
        )
    return value


def _int(fields: dict[str, str], name: str, low: int, high: int | None = None) -> int:
    value = fields[name]
    if not _DIGITS.fullmatch(value):
        raise InvalidEvent(f"field {name} must be an integer, got {value[:40]!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidEvent(f"field {name} must be {bound}, got {number}")
    return number


def _choice(fields: dict[str, str], name: str, allowed: Container[str], what: str) -> str:
    value = fields[name]
    if value not in allowed:
        raise InvalidEvent(f"field {name} must be {what}, got {value[:40]!r}")
    return value


def _validate(fields: dict[str, str], plans: Container[str]) -> tuple[str, list[str]]:
    if "type" not in fields:
        raise InvalidEvent("missing field type")
    kind = fields["type"]
    if kind not in _OPS:
        raise InvalidEvent(f"unknown type {kind[:40]!r}")
    for name in _REQUIRED[kind]:
        if name not in fields:
            raise InvalidEvent(f"missing field {name} for type {kind}")
    account = _id(fields, "account_id")
    if kind == "billing":
        status = _choice(
            fields, "billing_status", BILLING_STATUSES, "one of " + ", ".join(BILLING_STATUSES)
        )
        plan = _choice(fields, "plan", plans, "a known plan") if "plan" in fields else ""
        return kind, [account, status, plan]
    if kind == "credits":
        try:
            amount = top_up_micro(fields["amount"])
        except ValueError as exc:
            raise InvalidEvent(f"field {exc}, got {fields['amount'][:40]!r}") from None
        key = fields["idempotency_key"]
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
            raise InvalidEvent(
                "field idempotency_key must be 1-255 printable ASCII characters without spaces"
            )
        return kind, [account, str(amount), key]
    session = _id(fields, "session_id")
    if kind == "created":
        timeout = ""
        if "timeout_seconds" in fields:
            timeout = str(min(_int(fields, "timeout_seconds", 1), _TIMEOUT_CAP))
        inactivity = ""
        if "inactivity_timeout_seconds" in fields:
            inactivity = str(_int(fields, "inactivity_timeout_seconds", 1, MAX_INACTIVITY_SECONDS))
        auto_kill = "1"
        if "auto_kill" in fields:
            auto_kill = _BOOLS.get(fields["auto_kill"].lower(), "")
            if not auto_kill:
                raise InvalidEvent(
                    f"field auto_kill must be true, false, 1 or 0, got {fields['auto_kill'][:40]!r}"
                )
        plan = _choice(fields, "plan", plans, "a known plan") if "plan" in fields else ""
        on_inactivity = ""
        if "on_inactivity" in fields:
            chosen = _choice(fields, "on_inactivity", ON_INACTIVITY, "terminate or pause")
            on_inactivity = "p" if chosen == "pause" else ""
        return kind, [session, account, timeout, inactivity, auto_kill, plan, on_inactivity]
    if kind in ("activity", "keepalive"):
        ts = str(min(_int(fields, "ts", 0), _TS_CAP)) if "ts" in fields else ""
        source = fields.get("source", "")
        if "source" in fields and not SOURCE_PATTERN.fullmatch(source):
            raise InvalidEvent(f"field source must be {SOURCE_RULE}, got {source[:40]!r}")
        return kind, [session, account, ts, source]
    if kind == "terminate":
        reason = "requested"
        if "reason" in fields:
            reason = _choice(
                fields, "reason", COMMAND_REASONS, "one of " + ", ".join(COMMAND_REASONS)
            )
        return kind, [session, account, reason]
    return kind, [session, account]


# Activity and keepalive are nearly all of the traffic: checked on the raw bytes (an
# id matching the ASCII pattern is valid UTF-8), without decoding the entry.
_ID_BYTES = re.compile(ID_PATTERN.pattern.encode())
_DIGITS_BYTES = re.compile(_DIGITS.pattern.encode())
_SOURCE_BYTES = re.compile(SOURCE_PATTERN.pattern.encode())
_TOUCH_OPS = {b"activity": ("activity", b"A"), b"keepalive": ("keepalive", b"K")}


def _fast_touch(eid: str, fields: Mapping[bytes, bytes]) -> ParsedEvent | None:
    kind = _TOUCH_OPS.get(fields.get(b"type", b""))
    if kind is None:
        return None
    session, account = fields.get(b"session_id"), fields.get(b"account_id")
    ts, source = fields.get(b"ts"), fields.get(b"source")
    if (
        session is None
        or account is None
        or len(fields) != 3 + (ts is not None) + (source is not None)
        or not _ID_BYTES.fullmatch(session)
        or not _ID_BYTES.fullmatch(account)
        or (ts is not None and (len(ts) > 15 or not _DIGITS_BYTES.fullmatch(ts)))
        or (source is not None and not _SOURCE_BYTES.fullmatch(source))
    ):
        return None  # the full check below accepts it or names the problem
    return ParsedEvent(eid, kind[0], [kind[1], 4, session, account, ts or b"", source or b""])


def parse_entry(
    entry_id: bytes | str, fields: Mapping[bytes, bytes], plans: Container[str]
) -> ParsedEvent:
    """Turn one stream entry into script arguments, or a dead-letter operation."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    fast = _fast_touch(eid, fields)
    if fast is not None:
        return fast
    try:
        kind, args = _validate(_decode(fields), plans)
    except InvalidEvent as exc:
        error = str(exc)
        raw: list[bytes | str | int] = [error]
        for name, value in fields.items():
            raw += [name, value]
        return ParsedEvent(eid, "invalid", ["D", len(raw), *raw], error)
    return ParsedEvent(eid, kind, [_OPS[kind], len(args), *args])
