"""Webhook endpoints in the API (SPEC §9), admin only.

- ``POST /v1/webhooks`` ``{"url", "types"?, "account_id"?}`` → ``201`` the endpoint with its
  ``secret`` (shown this once); ``GET /v1/webhooks`` lists them without secrets;
  ``GET``/``DELETE /v1/webhooks/{webhook_id}``. Removing an endpoint deletes its pending
  and dead deliveries in every partition.
- ``POST /v1/webhooks/{webhook_id}/test`` sends one signed ``test`` message now and
  answers what the endpoint answered (no retries; nothing is stored).
- ``GET /v1/webhooks/{webhook_id}/deliveries?state=dead|pending&limit=`` and
  ``POST /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay`` (a dead delivery is
  due again now, with a fresh count of attempts). ``delivery_id`` is the ``webhook-id``
  the receiver saw: ``cmd_<partition>_<entry id>``.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Any

import aiohttp
from aiohttp import web

from daemon import errors
from daemon.model import rfc3339
from daemon.store import Store
from daemon.webhook_endpoints import Endpoint, Endpoints, endpoint_problem
from daemon.webhook_message import body, message_id
from daemon.webhook_store import Delivery, list_deliveries, remove_deliveries, replay_delivery
from daemon.webhooks import ensure_group, send

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STATES = ("dead", "pending")
_DELIVERY_ID = re.compile(r"cmd_([0-9]{1,6})_([0-9]{1,20}-[0-9]{1,20})")


class WebhookNotFound(errors.LifecycleError):
    status = 404
    code = "webhook_not_found"


class DeliveryNotFound(errors.LifecycleError):
    status = 404
    code = "delivery_not_found"


def _admin(request: web.Request) -> Store:
    from daemon.api import PRINCIPAL, STORE

    if not request[PRINCIPAL].is_admin:
        raise errors.Forbidden("Only an admin key may read or change webhook endpoints.")
    return request.app[STORE]


def _endpoints(store: Store) -> Endpoints:
    return Endpoints(store.redis, store.settings.key_prefix)


async def _endpoint(request: web.Request) -> tuple[Store, Endpoint]:
    store = _admin(request)
    webhook_id = request.match_info["webhook_id"]
    endpoint = await _endpoints(store).get(webhook_id)
    if endpoint is None:
        raise WebhookNotFound(f"No webhook endpoint {json.dumps(webhook_id[:140])}.")
    return store, endpoint


def delivery_object(d: Delivery) -> dict[str, Any]:
    payload = json.loads(body(d.type, d.entry_id, json.loads(d.data_json)))
    return {
        "delivery_id": message_id(d.partition, d.entry_id),
        "webhook_id": d.webhook_id,
        "partition": d.partition,
        "entry_id": d.entry_id,
        "type": d.type,
        "state": d.state,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "last_attempt_at": None if d.last_attempt_ms is None else rfc3339(d.last_attempt_ms),
        "next_attempt_at": rfc3339(d.at_ms) if d.state == "pending" else None,
        "dead_at": rfc3339(d.at_ms) if d.state == "dead" else None,
        "data": payload["data"],
    }


async def create_handler(request: web.Request) -> web.Response:
    from daemon.api import _json_object

    store = _admin(request)
    payload = await _json_object(request)
    problem = endpoint_problem(payload)
    if problem:
        raise errors.InvalidRequest(problem + ".")
    for pk in store.partitions:
        await ensure_group(store.redis, pk)
    endpoint = await _endpoints(store).add(payload)
    return web.json_response({**endpoint.public(), "secret": endpoint.secret}, status=201)


async def list_handler(request: web.Request) -> web.Response:
    store = _admin(request)
    found = await _endpoints(store).all()
    return web.json_response({"webhooks": [e.public() for e in found.values()]})


async def get_handler(request: web.Request) -> web.Response:
    _, endpoint = await _endpoint(request)
    return web.json_response(endpoint.public())


async def remove_handler(request: web.Request) -> web.Response:
    store, endpoint = await _endpoint(request)
    if not await _endpoints(store).remove(endpoint.webhook_id):
        raise WebhookNotFound(f"No webhook endpoint {endpoint.webhook_id}.")
    removed = await remove_deliveries(store, endpoint.webhook_id)
    return web.json_response({**endpoint.public(), "deliveries_removed": removed})


async def test_handler(request: web.Request) -> web.Response:
    store, endpoint = await _endpoint(request)
    now_ms = await _server_ms(store)
    msg_id = "test_" + secrets.token_hex(8)
    payload = body("test", f"{now_ms}-0", {"webhook_id": endpoint.webhook_id})
    timeout = store.settings.webhook_timeout_seconds
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        sent = await send(http, endpoint, msg_id, payload, timeout)
    return web.json_response({
        "webhook_id": endpoint.webhook_id,
        "message_id": msg_id,
        "delivered": sent.ok,
        "status": sent.status,
        "error": sent.error or None,
        "duration_ms": round((loop.time() - started) * 1000),
    })  # fmt: skip


async def _server_ms(store: Store) -> int:
    sec, usec = await store.redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def deliveries_handler(request: web.Request) -> web.Response:
    store, endpoint = await _endpoint(request)
    state = request.query.get("state", "dead")
    if state not in STATES:
        raise errors.InvalidRequest("state must be dead or pending.")
    limit = DEFAULT_LIMIT
    if "limit" in request.query:
        text = request.query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise errors.InvalidRequest(f"limit must be an integer between 1 and {MAX_LIMIT}.")
        limit = int(text)
    found = await list_deliveries(store, endpoint.webhook_id, state, limit)
    return web.json_response({"deliveries": [delivery_object(d) for d in found]})


async def replay_handler(request: web.Request) -> web.Response:
    store, endpoint = await _endpoint(request)
    delivery_id = request.match_info["delivery_id"]
    match = _DELIVERY_ID.fullmatch(delivery_id)
    if match is None or int(match.group(1)) >= len(store.partitions):
        raise DeliveryNotFound(f"No dead delivery {json.dumps(delivery_id[:140])}.")
    partition, entry_id = int(match.group(1)), match.group(2)
    replayed = await replay_delivery(store, partition, entry_id, endpoint.webhook_id)
    if replayed is None:
        raise DeliveryNotFound(
            f"No dead delivery {delivery_id} for webhook endpoint {endpoint.webhook_id}."
        )
    return web.json_response(delivery_object(replayed))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/webhooks", create_handler)
    app.router.add_get("/v1/webhooks", list_handler)
    path = "/v1/webhooks/{webhook_id}"
    app.router.add_get(path, get_handler)
    app.router.add_delete(path, remove_handler)
    app.router.add_post(path + "/test", test_handler)
    app.router.add_get(path + "/deliveries", deliveries_handler)
    app.router.add_post(path + "/deliveries/{delivery_id}/replay", replay_handler)
