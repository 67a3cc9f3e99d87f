"""Publishing events to the events streams (SPEC §3), checked as the daemon checks them.

```python
async with EventPublisher(redis) as events:
    await events.created("ses_1", "acme", inactivity_timeout_seconds=60)
    await events.publish_many([
        Activity(session_id="ses_1", account_id="acme"),
        Keepalive(session_id="ses_2", account_id="acme", ts=now_ms),
    ])
```

Each event is validated with the daemon's own rules (:func:`daemon.events.parse_entry`)
before it is sent, so a malformed event raises :class:`InvalidEvent` at the call instead
of landing in the dead-letter stream. Events go to partition
``crc32(account_id) % partitions``; ``partitions`` (and the plan names a ``plan`` field
may take) are given, or read from the hash ``P:config`` that the daemon writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, ClassVar, Self

from daemon.events import InvalidEvent, parse_entry
from daemon.keys import PartitionKeys, config_key, partition_of
from daemon.plans import PACKAGED_PLANS_FILE, load_plans

__all__ = [
    "Activity",
    "Billing",
    "Created",
    "Credits",
    "Event",
    "EventPublisher",
    "InvalidEvent",
    "Keepalive",
    "PartitionsUnknown",
    "Pause",
    "Resume",
    "Terminate",
    "Terminated",
]

Timestamp = int | datetime  # milliseconds since the epoch, or an aware datetime


class PartitionsUnknown(RuntimeError):
    """Neither given nor recorded in Redis: guessing would send events to the wrong stream."""


def _ms(ts: Timestamp) -> str:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise InvalidEvent("field ts must be an aware datetime (a naive one has no zone)")
        return str(round(ts.timestamp() * 1000))
    return str(ts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of the event types; ``fields()`` is the flat field map that is ``XADD``-ed."""

    type: ClassVar[str]
    account_id: str

    def fields(self) -> dict[str, str]:
        out = {"type": self.type}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                out[field.name] = _ms(value) if field.name == "ts" else _text(value)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Created(Event):
    type: ClassVar[str] = "created"
    session_id: str
    timeout_seconds: int | None = None
    inactivity_timeout_seconds: int | None = None
    auto_kill: bool | None = None
    plan: str | None = None
    on_inactivity: str | None = None  # "terminate" or "pause"


@dataclass(frozen=True, slots=True, kw_only=True)
class Activity(Event):
    type: ClassVar[str] = "activity"
    session_id: str
    ts: Timestamp | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Keepalive(Event):
    type: ClassVar[str] = "keepalive"
    session_id: str
    ts: Timestamp | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause(Event):
    type: ClassVar[str] = "pause"
    session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(Event):
    type: ClassVar[str] = "resume"
    session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Terminate(Event):
    type: ClassVar[str] = "terminate"
    session_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Terminated(Event):
    type: ClassVar[str] = "terminated"
    session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Billing(Event):
    type: ClassVar[str] = "billing"
    billing_status: str
    plan: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Credits(Event):
    """A top-up of the account's prepaid credits (SPEC §7), once per idempotency key."""

    type: ClassVar[str] = "credits"
    amount: Decimal | int | float | str
    idempotency_key: str


class EventPublisher:
    """Publishes events of one deployment (``key_prefix``) on a ``redis.asyncio`` client.

    The client is the caller's: :meth:`aclose` does not close it.
    """

    def __init__(
        self,
        redis: Any,
        *,
        partitions: int | None = None,
        key_prefix: str = "lifecycle",
        plans: Iterable[str] | None = None,
    ) -> None:
        if partitions is not None and partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.redis = redis
        self.key_prefix = key_prefix
        self._partitions = partitions
        self._plans = frozenset(plans) if plans is not None else None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing is buffered: every call has sent its events when it returns."""

    async def _config(self) -> tuple[int, frozenset[str]]:
        if self._partitions is None or self._plans is None:
            recorded = await self.redis.hgetall(config_key(self.key_prefix))
            config = {_str(k): _str(v) for k, v in recorded.items()}
            if self._partitions is None:
                if "partitions" not in config:
                    raise PartitionsUnknown(
                        f"{config_key(self.key_prefix)} has no partitions field (no daemon has "
                        "started on this Redis yet): pass partitions= to EventPublisher"
                    )
                # Fixed for the life of a deployment, so read once.
                self._partitions = int(config["partitions"])
            if self._plans is None:
                names = config.get("plans")
                self._plans = frozenset(
                    names.split(",") if names else load_plans(PACKAGED_PLANS_FILE)
                )
        return self._partitions, self._plans

    async def stream_for(self, account_id: str) -> str:
        """The events stream of the account's partition."""
        partitions, _ = await self._config()
        return PartitionKeys(self.key_prefix, partition_of(account_id, partitions)).events

    def validate(self, event: Event, plans: Iterable[str]) -> dict[str, str]:
        """The event's fields, or :class:`InvalidEvent` with the daemon's reason."""
        fields = event.fields()
        raw = {name.encode(): value.encode() for name, value in fields.items()}
        parsed = parse_entry("0-0", raw, frozenset(plans))
        if parsed.error is not None:
            raise InvalidEvent(f"{event.type} event: {parsed.error}")
        return fields

    async def publish(self, event: Event) -> str:
        """Send one event; returns its stream entry id."""
        ids = await self.publish_many([event])
        return ids[0]

    async def publish_many(self, events: Sequence[Event]) -> list[str]:
        """Send events in one pipeline, in order; all are validated before any is sent."""
        partitions, plans = await self._config()
        checked = [(event.account_id, self.validate(event, plans)) for event in events]
        if not checked:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for account_id, fields in checked:
            pk = PartitionKeys(self.key_prefix, partition_of(account_id, partitions))
            pipe.xadd(pk.events, fields)
        return [_str(entry_id) for entry_id in await pipe.execute()]

    # One method per event type (SPEC §3)

    async def created(
        self,
        session_id: str,
        account_id: str,
        *,
        timeout_seconds: int | None = None,
        inactivity_timeout_seconds: int | None = None,
        auto_kill: bool | None = None,
        plan: str | None = None,
        on_inactivity: str | None = None,
    ) -> str:
        return await self.publish(
            Created(
                session_id=session_id,
                account_id=account_id,
                timeout_seconds=timeout_seconds,
                inactivity_timeout_seconds=inactivity_timeout_seconds,
                auto_kill=auto_kill,
                plan=plan,
                on_inactivity=on_inactivity,
            )
        )

    async def activity(
        self,
        session_id: str,
        account_id: str,
        *,
        ts: Timestamp | None = None,
        source: str | None = None,
    ) -> str:
        return await self.publish(
            Activity(session_id=session_id, account_id=account_id, ts=ts, source=source)
        )

    async def keepalive(
        self,
        session_id: str,
        account_id: str,
        *,
        ts: Timestamp | None = None,
        source: str | None = None,
    ) -> str:
        return await self.publish(
            Keepalive(session_id=session_id, account_id=account_id, ts=ts, source=source)
        )

    async def pause(self, session_id: str, account_id: str) -> str:
        return await self.publish(Pause(session_id=session_id, account_id=account_id))

    async def resume(self, session_id: str, account_id: str) -> str:
        return await self.publish(Resume(session_id=session_id, account_id=account_id))

    async def terminate(
        self, session_id: str, account_id: str, *, reason: str | None = None
    ) -> str:
        return await self.publish(
            Terminate(session_id=session_id, account_id=account_id, reason=reason)
        )

    async def terminated(self, session_id: str, account_id: str) -> str:
        return await self.publish(Terminated(session_id=session_id, account_id=account_id))

    async def billing(
        self, account_id: str, billing_status: str, *, plan: str | None = None
    ) -> str:
        return await self.publish(
            Billing(account_id=account_id, billing_status=billing_status, plan=plan)
        )

    async def credits(
        self, account_id: str, amount: Decimal | int | float | str, idempotency_key: str
    ) -> str:
        return await self.publish(
            Credits(account_id=account_id, amount=amount, idempotency_key=idempotency_key)
        )


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
