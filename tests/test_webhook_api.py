"""The webhook admin API of a real daemon: endpoints, a test delivery, dead deliveries
listed and replayed, removal cleaning up, bad input refused with a message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from tests.servers import Daemon, ValkeyProcess, eventually
from tests.test_auth import ACME_KEY, ADMIN_KEY, API_KEYS, bearer
from tests.webhook_receiver import Receiver

Start = Callable[..., Daemon]


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, **kw) as resp:
        return resp.status, await resp.json()


async def test_endpoints_are_created_listed_and_removed_and_bad_input_is_refused(
    redis: Any, daemons: Start
) -> None:
    d = daemons()
    hooks = f"{d.api}/v1/webhooks"
    async with aiohttp.ClientSession() as http:
        for body, words in [
            ({"url": "ftp://example.com/hook"}, "http:// or https://"),
            ({"url": "javascript:alert(1)"}, "http:// or https://"),
            ({}, "url"),
            ({"url": "http://127.0.0.1:9/h", "types": ["terminate", "explode"]}, '"explode"'),
            ({"url": "http://127.0.0.1:9/h", "types": []}, "non-empty"),
            ({"url": "http://127.0.0.1:9/h", "account_id": "no spaces"}, "account_id"),
            ({"url": "http://127.0.0.1:9/h", "secret": "mine"}, '"secret"'),
        ]:
            status, answer = await _call(http, "POST", hooks, body)
            assert status == 422, body
            assert answer["error"] == "invalid_request" and words in answer["message"], answer
        status, made = await _call(http, "POST", hooks, {
            "url": "http://10.0.0.7:8000/lifecycle", "types": ["terminate", "pause"],
            "account_id": "acme"})  # fmt: skip
        assert status == 201
        assert made["secret"].startswith("whsec_") and made["webhook_id"].startswith("wh_")
        assert made["types"] == ["terminate", "pause"] and made["account_id"] == "acme"
        status, every = await _call(http, "POST", hooks, {"url": "https://hooks.example/x"})
        assert every["types"] == ["terminate", "expiring", "pause", "resume", "rejected",
                                  "low_balance"]  # fmt: skip
        assert every["account_id"] is None

        status, listed = await _call(http, "GET", hooks)
        assert status == 200
        assert sorted(w["webhook_id"] for w in listed["webhooks"]) == sorted(
            [made["webhook_id"], every["webhook_id"]]
        )
        assert all("secret" not in w for w in listed["webhooks"])  # shown once, at creation
        one = f"{hooks}/{made['webhook_id']}"
        status, got = await _call(http, "GET", one)
        assert status == 200 and got["url"] == made["url"] and "secret" not in got

        status, removed = await _call(http, "DELETE", one)
        assert status == 200 and removed["webhook_id"] == made["webhook_id"]
        for method in ("GET", "DELETE"):
            status, answer = await _call(http, method, one)
            assert status == 404 and answer["error"] == "webhook_not_found"
        status, answer = await _call(http, "POST", f"{hooks}/wh_nope/test")
        assert status == 404 and "wh_nope" in answer["message"]
        status, answer = await _call(http, "GET", f"{hooks}/{every['webhook_id']}/deliveries",
                                     params={"state": "lost"})  # fmt: skip
        assert status == 422 and "dead or pending" in answer["message"]


async def test_only_an_admin_key_manages_endpoints(redis: Any, daemons: Start) -> None:
    d = daemons(api_keys=API_KEYS)
    hooks = f"{d.api}/v1/webhooks"
    async with aiohttp.ClientSession() as http:
        body = {"url": "http://127.0.0.1:9/h"}
        status, answer = await _call(http, "POST", hooks, body, headers=bearer(ACME_KEY))
        assert status == 403 and answer["error"] == "forbidden"
        assert (await _call(http, "GET", hooks, headers=bearer(ACME_KEY)))[0] == 403
        assert (await _call(http, "GET", hooks))[0] == 401
        status, _ = await _call(http, "POST", hooks, body, headers=bearer(ADMIN_KEY))
        assert status == 201


async def test_a_test_delivery_is_signed_and_reports_the_answer(redis: Any, daemons: Start) -> None:
    d = daemons(webhook_timeout_seconds=1)
    receiver = await Receiver().start()
    try:
        async with aiohttp.ClientSession() as http:
            _, made = await _call(http, "POST", f"{d.api}/v1/webhooks", {"url": receiver.url})
            receiver.secret = made["secret"]
            test = f"{d.api}/v1/webhooks/{made['webhook_id']}/test"
            status, answer = await _call(http, "POST", test)
            assert status == 200
            assert answer["delivered"] is True and answer["status"] == 200, answer
            [got] = receiver.got
            assert got.webhook_id == answer["message_id"]
            assert got.payload["type"] == "test"
            assert got.payload["data"] == {"webhook_id": made["webhook_id"]}

            receiver.answer = lambda _: 500
            status, answer = await _call(http, "POST", test)
            assert answer["delivered"] is False and answer["status"] == 500
            assert answer["error"] == "HTTP 500"
            elsewhere = await Receiver(secret=receiver.secret).start()
            receiver.answer, receiver.redirect_to = (lambda _: 307), elsewhere.url
            status, answer = await _call(http, "POST", test)
            await elsewhere.stop()
            assert answer["delivered"] is False and answer["error"] == "HTTP 307"
            assert elsewhere.attempts == {} and elsewhere.refused == 0  # not followed
            receiver.answer = lambda _: None  # hangs
            status, answer = await _call(http, "POST", test)
            assert answer["delivered"] is False and answer["status"] is None
            assert "no answer within 1 s" in answer["error"]
    finally:
        await receiver.stop()


async def test_dead_deliveries_are_listed_and_replayed_with_their_id(
    redis: Any, valkey: ValkeyProcess, daemons: Start
) -> None:
    # As config/redis-users.acl's least-privileged user: every command it needs is allowed.
    await redis.acl_log_reset()
    d = daemons(webhook_retry_base_seconds=0.05, webhook_max_attempts=2,
                redis_url=valkey.url_as("lifecycled"))  # fmt: skip
    receiver = await Receiver(answer=lambda _: 500).start()
    try:
        async with aiohttp.ClientSession() as http:
            _, made = await _call(http, "POST", f"{d.api}/v1/webhooks", {"url": receiver.url})
            receiver.secret = made["secret"]
            deliveries = f"{d.api}/v1/webhooks/{made['webhook_id']}/deliveries"
            _, session = await _call(http, "POST", f"{d.api}/v1/sessions", {"account_id": "acme"})
            sid = session["session_id"]
            assert (await _call(http, "DELETE", f"{d.api}/v1/sessions/{sid}"))[0] == 200

            async def dead() -> list[dict[str, Any]]:
                _, answer = await _call(http, "GET", deliveries)
                found: list[dict[str, Any]] = answer["deliveries"]
                return found

            [item] = await eventually(dead, what="a dead delivery")
            assert item["state"] == "dead" and item["attempts"] == 2
            assert item["last_error"] == "HTTP 500" and item["type"] == "terminate"
            assert item["data"]["session_id"] == sid and item["data"]["reason"] == "requested"
            assert item["delivery_id"].startswith("cmd_0_") and item["dead_at"]
            assert receiver.got == []
            metrics = f"http://127.0.0.1:{d.metrics_port}/metrics"
            dead_gauge = "lifecycle_webhook_dead_deliveries 1.0"
            await eventually(lambda: _has(http, metrics, dead_gauge), what="the dead gauge")
            text = await _text(http, metrics)
            assert "lifecycle_webhook_backlog 0.0" in text
            assert 'lifecycle_webhook_deliveries_total{result="retry"} 1.0' in text
            assert 'lifecycle_webhook_deliveries_total{result="dead"} 1.0' in text

            receiver.answer = lambda _: 200
            replay = f"{deliveries}/{item['delivery_id']}/replay"
            status, replayed = await _call(http, "POST", replay)
            assert status == 200 and replayed["state"] == "pending"
            assert replayed["delivery_id"] == item["delivery_id"]
            await eventually(lambda: _true(receiver.got), what="the replayed delivery")
            assert receiver.ids() == {item["delivery_id"]}  # the webhook-id of every attempt
            assert await dead() == []
            done = 'lifecycle_webhook_deliveries_total{result="delivered"} 1.0'
            await eventually(lambda: _has(http, metrics, done), what="the delivered count")
            await eventually(
                lambda: _has(http, metrics, "lifecycle_webhook_dead_deliveries 0.0"),
                what="no dead delivery counted",
            )
            assert "lifecycle_webhook_latency_seconds_count 1.0" in await _text(http, metrics)
            status, answer = await _call(http, "POST", replay)
            assert status == 404 and answer["error"] == "delivery_not_found"
            status, answer = await _call(http, "POST", f"{deliveries}/cmd_9_1-0/replay")
            assert status == 404
        assert await redis.acl_log() == []
    finally:
        await receiver.stop()


async def test_removing_an_endpoint_deletes_its_deliveries(
    redis: Any, valkey: ValkeyProcess, daemons: Start
) -> None:
    await redis.acl_log_reset()
    d = daemons(webhook_retry_base_seconds=60, redis_url=valkey.url_as("lifecycled"))
    receiver = await Receiver(answer=lambda _: 500).start()
    try:
        async with aiohttp.ClientSession() as http:
            _, made = await _call(http, "POST", f"{d.api}/v1/webhooks", {"url": receiver.url})
            receiver.secret = made["secret"]
            for _ in range(3):
                _, s = await _call(http, "POST", f"{d.api}/v1/sessions", {"account_id": "acme"})
                await _call(http, "DELETE", f"{d.api}/v1/sessions/{s['session_id']}")
            pending = f"{d.api}/v1/webhooks/{made['webhook_id']}/deliveries?state=pending"

            async def three_failed() -> bool:
                _, answer = await _call(http, "GET", pending)
                return len(answer["deliveries"]) == 3 and all(
                    x["attempts"] == 1 for x in answer["deliveries"])  # fmt: skip

            await eventually(three_failed, what="three deliveries waiting for a retry")
            status, removed = await _call(
                http, "DELETE", f"{d.api}/v1/webhooks/{made['webhook_id']}"
            )
            assert status == 200 and removed["deliveries_removed"] == 3
        assert await redis.acl_log() == []
        left = [k async for k in redis.scan_iter("lifecycle:{0}:wh:*")]
        assert left == [f"lifecycle:{{0}}:wh:gone:{made['webhook_id']}".encode()]
    finally:
        await receiver.stop()


async def _true(value: Any) -> bool:
    return bool(value)


async def _text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        return await resp.text()


async def _has(http: aiohttp.ClientSession, url: str, line: str) -> bool:
    return line in (await _text(http, url)).splitlines()
