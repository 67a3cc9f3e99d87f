"""Typed calls of the Lua scripts: the only code that changes lifecycled's state in Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon import errors
from daemon.events import ParsedEvent
from daemon.keys import GROUP, PartitionKeys, partition_of
from daemon.model import SessionRecord
from daemon.plans import Plan, encode_plans
from daemon.scripts import AsyncScript, register_all
from daemon.settings import Settings


@dataclass(frozen=True, slots=True)
class SessionView:
    record: SessionRecord
    now_ms: int
    changed: bool = False  # terminate: this call ended the session

    def status_object(self) -> dict[str, Any]:
        return self.record.status_object(self.now_ms)


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
    lateness_ms: list[int]


class OlderEntriesPending(Exception):
    """Entries older than the batch are pending; they must be claimed and applied first."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        self._scripts: dict[str, AsyncScript] = register_all(redis)
        self.set_plans(plans)

    def set_plans(self, plans: dict[str, Plan]) -> None:
        self.plans = dict(plans)
        self._plans_arg = encode_plans(self.plans)

    def partition_for(self, account_id: str) -> PartitionKeys:
        return self.partitions[partition_of(account_id, len(self.partitions))]

    async def _call(self, name: str, pk: PartitionKeys, *args: Any) -> Any:
        s = self.settings
        keys = [pk.events, pk.commands, pk.dead, pk.life, pk.idle, pk.warn, pk.lease]
        context = [
            pk.base,
            self._plans_arg,
            s.default_plan,
            s.warn_before_seconds * 1000,
            s.terminated_retention_seconds * 1000,
            s.commands_maxlen,
            1 if s.billing_hold_terminates else 0,
            s.max_clock_skew_ms,
        ]
        return await self._scripts[name](keys=keys, args=[*context, *args])

    # Sessions through the API

    async def create_session(
        self,
        session_id: str,
        account_id: str,
        timeout_seconds: int | None,
        inactivity_timeout_seconds: int | None,
        auto_kill: bool,
        deferred_error: str = "",
    ) -> SessionView:
        """Admit and create a session; raises the SPEC §2 refusals in their order."""
        if len(self.partitions) > 1 and await self._locate(session_id) is not None:
            raise errors.SessionExists(f"Session {session_id} already exists.")
        reply = await self._call(
            "create_session",
            self.partition_for(account_id),
            session_id,
            account_id,
            "" if timeout_seconds is None else timeout_seconds,
            "" if inactivity_timeout_seconds is None else inactivity_timeout_seconds,
            "1" if auto_kill else "0",
            deferred_error,
        )
        code = int(reply[0])
        if code == -402:
            raise errors.PaymentRequired(_text(reply[1]))
        if code == -429:
            raise errors.ConcurrentSessionLimit(int(reply[1]))
        if code == -422:
            raise errors.InvalidRequest(_text(reply[1]) + ".")
        if code == -409:
            raise errors.SessionExists(f"Session {session_id} already exists.")
        return _view(session_id, reply)

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

    async def _by_id(self, script: str, session_id: str, *args: Any) -> SessionView:
        pk = await self._locate(session_id)
        reply = None if pk is None else await self._call(script, pk, session_id, *args)
        if reply is None or int(reply[0]) == -404:
            raise errors.SessionNotFound(f"No session {session_id}.")
        code = int(reply[0])
        if code == -402:
            raise errors.PaymentRequired(_text(reply[1]))
        if code == -409:
            raise errors.SessionTerminated(f"Session {session_id} is terminated.")
        return _view(session_id, reply)

    async def get_session(self, session_id: str) -> SessionView:
        return await self._by_id("get_session", session_id)

    async def keepalive(self, session_id: str) -> SessionView:
        return await self._by_id("keepalive", session_id)

    async def terminate(self, session_id: str, reason: str = "requested") -> SessionView:
        return await self._by_id("terminate_session", session_id, reason)

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
            lateness_ms=[int(v) for v in reply[6:]],
        )
