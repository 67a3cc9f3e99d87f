"""``lifecycled webhooks …`` and the SDK's webhook methods against a real daemon and a real
receiver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from daemon.client import InvalidRequest, LifecycleClient, WebhookNotFound
from tests.servers import Daemon, eventually
from tests.test_cli import cli
from tests.webhook_receiver import Receiver

Start = Callable[..., Daemon]


async def _terminated_session(client: LifecycleClient) -> str:
    session = await client.create("acme")
    await client.terminate(session.session_id)
    return session.session_id


async def test_the_webhooks_commands_manage_test_and_replay(redis: Any, daemons: Start) -> None:
    d = daemons(webhook_max_attempts=1)
    api = ("--api", d.api)
    receiver = await Receiver(answer=lambda _: 500).start()
    try:
        bad = await cli("webhooks", "add", "ftp://example.com/x", *api)
        assert bad.failed_cleanly(2, "http:// or https://"), bad
        made = await cli("webhooks", "add", receiver.url, "--type", "terminate", *api, "--json")
        assert made.code == 0, made
        endpoint = made.json()
        wid, receiver.secret = endpoint["webhook_id"], endpoint["secret"]
        assert endpoint["types"] == ["terminate"]
        listed = await cli("webhooks", "list", *api)
        assert listed.code == 0 and wid in listed.out and receiver.url in listed.out
        assert endpoint["secret"] not in listed.out

        failed = await cli("webhooks", "test", wid, *api)
        assert failed.code == 1 and "not delivered" in failed.out and "HTTP 500" in failed.out
        receiver.answer = lambda msg_id: 200 if msg_id.startswith("test_") else 500
        tested = await cli("webhooks", "test", wid, *api)
        assert tested.code == 0 and "delivered test_" in tested.out and "HTTP 200" in tested.out

        async with LifecycleClient(d.api) as client:
            sid = await _terminated_session(client)

            async def dead() -> Any:
                result = await cli("webhooks", "deliveries", wid, *api)
                return sid in result.out and result

            shown = await eventually(dead, what="the dead delivery listed")
            assert "HTTP 500" in shown.out and "terminate" in shown.out
        receiver.answer = lambda _: 200
        replayed = await cli("webhooks", "replay", wid, "--all", *api)
        assert replayed.code == 0 and "replayed 1 deliveries" in replayed.out, replayed

        async def delivered() -> bool:
            return any(r.payload["data"].get("session_id") == sid for r in receiver.got)

        await eventually(delivered, what="the replayed delivery")
        empty = await cli("webhooks", "deliveries", wid, *api)
        assert f"no dead deliveries for {wid}" in empty.out
        usage = await cli("webhooks", "replay", wid, *api)
        assert usage.failed_cleanly(2, "--all"), usage

        removed = await cli("webhooks", "remove", wid, *api)
        assert removed.code == 0 and f"removed {wid}" in removed.out
        again = await cli("webhooks", "remove", wid, *api)
        assert again.failed_cleanly(3, "No webhook endpoint"), again
        assert (await cli("webhooks", "list", *api)).out.strip() == "no webhook endpoints"
    finally:
        await receiver.stop()


async def test_the_sdk_manages_endpoints_and_deliveries(redis: Any, daemons: Start) -> None:
    d = daemons(webhook_max_attempts=1)
    receiver = await Receiver(answer=lambda _: 500).start()
    try:
        async with LifecycleClient(d.api) as client:
            with pytest.raises(InvalidRequest, match="unknown type"):
                await client.add_webhook(receiver.url, types=["terminated"])
            made = await client.add_webhook(receiver.url, account_id="acme")
            assert made.secret and made.secret.startswith("whsec_")
            receiver.secret = made.secret
            [listed] = await client.webhooks()
            assert listed.webhook_id == made.webhook_id and listed.secret is None
            assert (await client.webhook(made.webhook_id)).account_id == "acme"
            test = await client.test_webhook(made.webhook_id)
            assert not test.delivered and test.status == 500

            sid = await _terminated_session(client)

            async def dead() -> Any:
                return await client.webhook_deliveries(made.webhook_id)

            [item] = await eventually(dead, what="a dead delivery")
            assert item.state == "dead" and item.data["session_id"] == sid
            assert item.dead_at is not None and item.last_error == "HTTP 500"
            receiver.answer = lambda _: 200
            again = await client.replay_webhook_delivery(made.webhook_id, item.delivery_id)
            assert again.state == "pending" and again.attempts == 0
            await eventually(lambda: _ids(receiver), what="the replayed delivery")
            assert receiver.ids() == {item.delivery_id}
            with pytest.raises(WebhookNotFound):
                await client.replay_webhook_delivery(made.webhook_id, item.delivery_id)
            removed = await client.remove_webhook(made.webhook_id)
            assert removed.deliveries_removed == 0
            with pytest.raises(WebhookNotFound):
                await client.webhook(made.webhook_id)
    finally:
        await receiver.stop()


async def _ids(receiver: Receiver) -> set[str]:
    return receiver.ids()
