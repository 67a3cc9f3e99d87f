"""The console's reads of Redis, each bounded by a page: no read grows with the number of
sessions or accounts (a ZRANGE of the deadlines set by rank, an account's live set, a
SCAN with COUNT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.keys import PartitionKeys
from daemon.model import SessionRecord
from daemon.store import SessionView, Store
from daemon.webhook_endpoints import Endpoints

PAGE = 50
SCAN_COUNT = 500
SCAN_STEPS = 8  # at most this many SCAN calls a page


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _server_ms(redis: Any) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@dataclass(frozen=True, slots=True)
class SessionPage:
    views: list[SessionView]
    total: int  # members of the partition's deadlines set
    offset: int
    has_more: bool


async def _views(store: Store, pk: PartitionKeys, session_ids: list[str]) -> list[SessionView]:
    """The records of these sessions, one pipelined read, with the server's clock."""
    pipe = store.redis.pipeline(transaction=False)
    for sid in session_ids:
        pipe.hgetall(pk.session(sid))
    records = await pipe.execute()
    now = await _server_ms(store.redis)
    views = []
    for sid, raw in zip(session_ids, records, strict=True):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if "a" in fields:  # gone since the ids were read
            views.append(SessionView(SessionRecord.from_fields(sid, fields), now))
    return views


async def soonest_sessions(store: Store, pk: PartitionKeys, offset: int) -> SessionPage:
    """Live sessions of a partition by their next deadline, soonest first, one page."""
    pipe = store.redis.pipeline(transaction=False)
    pipe.zrange(pk.deadlines, offset, offset + PAGE)
    pipe.zcard(pk.deadlines)
    members, total = await pipe.execute()
    ids = [_text(m) for m in members]
    # Other members (an account's credit deadline, ``a:<account>``) are not sessions.
    sessions = [m for m in ids[:PAGE] if not m.startswith("a:")]
    views = await _views(store, pk, sessions)
    return SessionPage(views, int(total), offset, len(ids) > PAGE)


@dataclass(frozen=True, slots=True)
class AccountSessions:
    views: list[SessionView]
    total: int  # the account's live sessions
    cursor: int  # 0: the last page


async def account_sessions(store: Store, account_id: str, cursor: int) -> AccountSessions:
    """A page of an account's live sessions (an SSCAN of its live set), oldest first."""
    pk = store.partition_for(account_id)
    pipe = store.redis.pipeline(transaction=False)
    pipe.sscan(pk.live(account_id), cursor, count=PAGE)
    pipe.scard(pk.live(account_id))
    (cursor, members), total = await pipe.execute()
    views = await _views(store, pk, sorted(_text(m) for m in members))
    views.sort(key=lambda v: (v.record.created_at, v.record.session_id))
    return AccountSessions(views, int(total), int(cursor))


@dataclass(frozen=True, slots=True)
class AccountPage:
    account_ids: list[str]
    partition: int
    cursor: int  # 0: the scan is complete


async def account_ids(store: Store, pk: PartitionKeys, cursor: int) -> AccountPage:
    """Accounts with a record or live sessions in a partition: a few SCAN steps (until
    half a page is found), so a page costs the same however many keys there are."""
    found: list[str] = []
    for _ in range(SCAN_STEPS):
        cursor, keys = await store.redis.scan(cursor, match=pk.base + "[al]*", count=SCAN_COUNT)
        for key in keys:
            rest = _text(key)[len(pk.base) :]
            for head in ("a:", "live:"):
                if rest.startswith(head):
                    found.append(rest[len(head) :])
        if len(found) >= PAGE // 2 or cursor == 0:
            break
    return AccountPage(sorted(set(found)), pk.partition, int(cursor))


DEAD_SHOWN = 10  # most recent dead deliveries shown per endpoint and partition


@dataclass(frozen=True, slots=True)
class DeadDelivery:
    partition: int
    entry_id: str  # of the command on the commands stream
    type: str
    attempts: str
    error: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class WebhookRow:
    endpoint: dict[str, Any]
    dead: int  # dead deliveries over all partitions
    due: int  # deliveries waiting for an attempt
    recent_dead: list[DeadDelivery]


async def webhooks(store: Store) -> list[WebhookRow]:
    endpoints = await Endpoints(store.redis, store.settings.key_prefix).all()
    pipe = store.redis.pipeline(transaction=False)
    for webhook_id in endpoints:
        for pk in store.partitions:
            pipe.zcard(pk.webhook_dead(webhook_id))
            pipe.zcard(pk.webhook_due(webhook_id))
    counts = await pipe.execute()
    n = 2 * len(store.partitions)
    rows = []
    for i, (webhook_id, endpoint) in enumerate(endpoints.items()):
        mine = counts[i * n : (i + 1) * n]
        recent = await _recent_dead(store, webhook_id)
        rows.append(WebhookRow(endpoint.public(), sum(mine[0::2]), sum(mine[1::2]), recent))
    return rows


async def _recent_dead(store: Store, webhook_id: str) -> list[DeadDelivery]:
    """The endpoint's most recent dead deliveries, newest first (a few per partition)."""
    pipe = store.redis.pipeline(transaction=False)
    for pk in store.partitions:
        pipe.zrange(pk.webhook_dead(webhook_id), -DEAD_SHOWN, -1, withscores=True)
    found = [
        (pk, _text(member), int(score))
        for pk, members in zip(store.partitions, await pipe.execute(), strict=True)
        for member, score in members
    ]
    pipe = store.redis.pipeline(transaction=False)
    for pk, member, _ in found:
        pipe.hmget(pk.delivery(member), "y", "n", "r")
    details = await pipe.execute()
    out = []
    for (pk, member, at), (kind, attempts, error) in zip(found, details, strict=True):
        entry_id = member.partition(".")[0]
        out.append(DeadDelivery(pk.partition, entry_id, _text(kind or ""),
                                _text(attempts or ""), _text(error or ""), at))  # fmt: skip
    out.sort(key=lambda d: d.at_ms, reverse=True)
    return out[:DEAD_SHOWN]


async def overview(store: Store) -> dict[str, Any]:
    """Counts of the whole deployment: a few O(1) reads per partition."""
    redis = store.redis
    pipe = redis.pipeline(transaction=False)
    for pk in store.partitions:
        pipe.zcard(pk.deadlines)
        pipe.xlen(pk.dead)
        pipe.xlen(pk.events)
    pipe.zcard(f"{store.settings.key_prefix}:replicas")
    replies = await pipe.execute(raise_on_error=False)
    ints = [r if isinstance(r, int) else 0 for r in replies]
    return {
        "live": sum(ints[0:-1:3]),
        "dead_letters": sum(ints[1:-1:3]),
        "events_stream": sum(ints[2:-1:3]),
        "replicas": ints[-1],
        "partitions": len(store.partitions),
    }
