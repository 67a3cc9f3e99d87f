"""Dead letters in the API (SPEC §10): list with paging, replay, drop.

``GET /v1/dead-letters?partition=&after=&limit=`` pages through the dead-letter streams
``P:{p}:dead`` oldest first; ``next`` is ``"<partition>:<entry id>"`` of the last entry
returned, passed back as ``after``. Replay re-adds an entry's original fields to its
partition's events stream and deletes it in one script (``dead_letter_replay.lua``), so
two replicas replaying one entry at once replay it once. Admin only.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from daemon import errors
from daemon.keys import PartitionKeys
from daemon.store import Store

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_ENTRY_ID = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")


class DeadLetterNotFound(errors.LifecycleError):
    status = 404
    code = "dead_letter_not_found"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _partition(store: Store, text: str) -> PartitionKeys:
    if not text.isdigit() or int(text) >= len(store.partitions):
        raise DeadLetterNotFound(f"No partition {text[:20]}.")
    return store.partitions[int(text)]


def _entry_id(text: str) -> str:
    # Both parts are unsigned 64-bit numbers in Redis: 19 digits always fit (and are more
    # than any real entry's), and the same rule is the OpenAPI document's pattern.
    if not _ENTRY_ID.fullmatch(text):
        raise errors.InvalidRequest("entry_id must be a stream entry id such as 1700000000000-0.")
    return text


async def list_page(
    store: Store, partition: int | None, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` dead letters after the cursor, and the next cursor (None: the end)."""
    first, start = (partition or 0), ""
    if after:
        head, sep, tail = after.rpartition(":")
        if sep:
            first = _partition(store, head).partition
        start = _entry_id(tail)
    last = first if partition is not None else len(store.partitions) - 1
    found: list[dict[str, Any]] = []
    for p in range(first, last + 1):
        pk = store.partitions[p]
        want = limit + 1 - len(found)
        rows = await store._call("dead_letter_list", pk, start if p == first else "", want)
        for row in rows:
            flat = [_text(v) for v in row]
            found.append({
                "partition": p,
                "id": flat[0],
                "fields": dict(zip(flat[2::2], flat[3::2], strict=True)),
                "error": flat[1] or None,
            })  # fmt: skip
        if len(found) > limit:
            break
    if len(found) > limit:
        tail_entry = found[limit - 1]
        return found[:limit], f"{tail_entry['partition']}:{tail_entry['id']}"
    return found, None


async def replay(store: Store, pk: PartitionKeys, entry_id: str) -> str:
    """Replay one dead letter; returns the id of its new events-stream entry."""
    reply = await store._call("dead_letter_replay", pk, entry_id)
    code = int(reply[0])
    if code == -404:
        raise DeadLetterNotFound(f"No dead letter {entry_id} in partition {pk.partition}.")
    if code == -422:
        raise errors.InvalidRequest(f"Dead letter {entry_id} has no fields to replay.")
    return _text(reply[1])


async def drop(store: Store, pk: PartitionKeys, entry_id: str) -> None:
    if not await store.redis.xdel(pk.dead, entry_id):
        raise DeadLetterNotFound(f"No dead letter {entry_id} in partition {pk.partition}.")


def admin_store(request: web.Request, what: str = "read or change dead letters") -> Store:
    """The store, for an admin caller; any other key is ``403``."""
    from daemon.api import PRINCIPAL, STORE

    if not request[PRINCIPAL].is_admin:
        raise errors.Forbidden(f"Only an admin key may {what}.")
    return request.app[STORE]


def page_limit(request: web.Request) -> int:
    """The ``limit`` query parameter of a paged list: 1 to MAX_LIMIT, default DEFAULT_LIMIT."""
    text = request.query.get("limit")
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise errors.InvalidRequest(f"limit must be an integer between 1 and {MAX_LIMIT}.")
    return int(text)


async def list_handler(request: web.Request) -> web.Response:
    store = admin_store(request)
    query = request.query
    partition = None
    if query.get("partition"):
        partition = _partition(store, query["partition"]).partition
    limit = page_limit(request)
    page, cursor = await list_page(store, partition, query.get("after") or None, limit)
    return web.json_response({"dead_letters": page, "next": cursor})


async def replay_handler(request: web.Request) -> web.Response:
    store = admin_store(request)
    pk = _partition(store, request.match_info["partition"])
    entry_id = _entry_id(request.match_info["entry_id"])
    new_id = await replay(store, pk, entry_id)
    return web.json_response({"partition": pk.partition, "id": entry_id, "replayed_as": new_id})


async def drop_handler(request: web.Request) -> web.Response:
    store = admin_store(request)
    pk = _partition(store, request.match_info["partition"])
    entry_id = _entry_id(request.match_info["entry_id"])
    await drop(store, pk, entry_id)
    return web.json_response({"partition": pk.partition, "id": entry_id, "dropped": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/dead-letters", list_handler)
    path = "/v1/dead-letters/{partition}/{entry_id}"
    app.router.add_post(path + "/replay", replay_handler)
    app.router.add_delete(path, drop_handler)
