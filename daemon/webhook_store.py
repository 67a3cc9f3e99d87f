"""Webhook delivery state in Redis: typed calls of the ``webhook_*`` scripts (SPEC §9).

A delivery is one (command, endpoint) pair, member ``<entry id>.<endpoint id>`` of the
endpoint's due set in the command's partition; an attempt claims it (moves it to now +
``claim_ms``), then records its outcome: delivered (removed), retry (scored at its next
attempt) or dead (moved to the endpoint's dead set).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.keys import PartitionKeys
from daemon.store import Store

WEBHOOK_GROUP = "webhooks"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A command read from the commands stream, with the endpoints that want it."""

    entry_id: str
    type: str
    data_json: str
    webhook_ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class Claimed:
    member: str
    webhook_id: str
    attempt: int
    type: str
    data_json: str

    @property
    def entry_id(self) -> str:
        return self.member.partition(".")[0]


@dataclass(frozen=True, slots=True)
class ClaimResult:
    now_ms: int
    next_due_ms: int | None
    backlog: int  # the named endpoints' deliveries in the partition, not delivered nor dead
    dead: int  # and their dead deliveries
    claimed: list[Claimed]


def retry_delay_ms(base_seconds: float, attempt: int, rng: random.Random | None = None) -> int:
    """Delay after failed attempt ``attempt`` (1-based): base × 4^(attempt-1), ±50 %."""
    jitter = (rng or random).uniform(0.5, 1.5)
    delay: int = max(1, round(base_seconds * 4 ** (attempt - 1) * jitter * 1000))
    return delay


class WebhookStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def enqueue(self, pk: PartitionKeys, commands: Sequence[Outgoing]) -> int:
        """Create the deliveries of a batch of commands and acknowledge them, atomically."""
        args: list[Any] = [WEBHOOK_GROUP]
        for c in commands:
            args += [c.entry_id, c.type, c.data_json, len(c.webhook_ids), *c.webhook_ids]
        reply = await self.store._call("webhook_enqueue", pk, *args)
        return int(reply[1])

    async def claim(
        self, pk: PartitionKeys, claim_ms: int, rooms: Mapping[str, int]
    ) -> ClaimResult:
        args: list[Any] = [claim_ms]
        for webhook_id, room in rooms.items():
            args += [webhook_id, room]
        reply = await self.store._call("webhook_claim", pk, *args)
        rest = reply[4:]
        claimed = [
            Claimed(
                _text(rest[i]),
                _text(rest[i + 1]),
                int(rest[i + 2]),
                _text(rest[i + 3]),
                _text(rest[i + 4]),
            )
            for i in range(0, len(rest), 5)
        ]
        next_due = int(reply[1])
        return ClaimResult(int(reply[0]), next_due if next_due >= 0 else None,
                           int(reply[2]), int(reply[3]), claimed)  # fmt: skip

    async def finish(
        self,
        pk: PartitionKeys,
        claimed: Claimed,
        outcome: str,
        delay_ms: int,
        max_attempts: int,
        error: str = "",
    ) -> str:
        """Record an attempt's outcome ('ok', 'fail', 'gone'); returns what became of it."""
        reply = await self.store._call(
            "webhook_finish", pk, claimed.member, claimed.webhook_id, claimed.attempt,
            outcome, delay_ms, max_attempts, error[:500],
        )  # fmt: skip
        return _text(reply)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery as the API lists it: pending (``at`` = its next attempt) or dead
    (``at`` = when it died)."""

    partition: int
    entry_id: str
    webhook_id: str
    state: str
    at_ms: int
    attempts: int
    type: str
    data_json: str
    last_error: str | None
    last_attempt_ms: int | None


REMOVE_BATCH = 1000
GONE_MARK_MS = 3_600_000


async def remove_deliveries(store: Store, webhook_id: str) -> int:
    """Delete a removed endpoint's pending and dead deliveries in every partition, a batch
    per script call; returns how many were deleted."""
    deleted = 0
    for pk in store.partitions:
        while True:
            reply = await store._call("webhook_remove", pk, webhook_id, REMOVE_BATCH, GONE_MARK_MS)
            deleted += int(reply[0])
            if int(reply[1]) == 0 or int(reply[0]) == 0:
                break
    return deleted


async def list_deliveries(store: Store, webhook_id: str, state: str, limit: int) -> list[Delivery]:
    """Up to ``limit`` of an endpoint's ``dead`` or ``pending`` deliveries, every partition
    in turn, oldest death (or soonest attempt) first within a partition."""
    found: list[Delivery] = []
    for pk in store.partitions:
        if len(found) >= limit:
            break
        reply = await store._call("webhook_deliveries", pk, webhook_id, state, limit - len(found))
        rest = [_text(v) for v in reply[1:]]
        for i in range(0, len(rest), 7):
            member, score, attempts, kind, data, error, last = rest[i : i + 7]
            found.append(
                Delivery(
                    pk.partition, member.partition(".")[0], webhook_id, state,
                    int(float(score)), int(attempts), kind, data, error or None,
                    int(last) if last else None,
                )
            )  # fmt: skip
    return found


async def replay_delivery(
    store: Store, partition: int, entry_id: str, webhook_id: str
) -> Delivery | None:
    """Make a dead delivery due now with a fresh count of attempts; None if it is not dead."""
    pk = store.partitions[partition]
    reply = await store._call("webhook_replay", pk, webhook_id, f"{entry_id}.{webhook_id}")
    if int(reply[0]) != 1:
        return None
    now, kind, data, error, last = (_text(v) for v in reply[1:6])
    return Delivery(partition, entry_id, webhook_id, "pending", int(now), 0, kind, data,
                    error or None, int(last) if last else None)  # fmt: skip
