"""Webhook endpoints: stored deployment-wide, filtered by type and account, checked input."""

from __future__ import annotations

from typing import Any

from daemon.webhook_endpoints import COMMAND_TYPES, Endpoints, endpoint_problem


async def test_endpoints_are_stored_listed_filtered_and_removed(redis: Any) -> None:
    endpoints = Endpoints(redis, "lifecycle")
    every = await endpoints.add({"url": "http://127.0.0.1:9/hook"})
    some = await endpoints.add({"url": "https://hooks.internal/x", "types": ["pause", "terminate"],
                                "account_id": "acme"})  # fmt: skip
    assert every.types == list(COMMAND_TYPES)
    assert some.types == ["terminate", "pause"]
    assert every.secret.startswith("whsec_") and "secret" not in every.public()
    assert set(await endpoints.all()) == {every.webhook_id, some.webhook_id}
    assert some.wants("terminate", "acme") and not some.wants("terminate", "other")
    assert not some.wants("expiring", "acme") and every.wants("low_balance", None)
    assert await endpoints.remove(some.webhook_id)
    assert not await endpoints.remove(some.webhook_id)
    assert list(await endpoints.all()) == [every.webhook_id]


def test_bad_endpoint_bodies_are_refused_with_a_message() -> None:
    assert endpoint_problem({"url": "http://10.0.0.5:8000/hooks"}) is None
    assert "http:// or https://" in (endpoint_problem({"url": "ftp://example.com/x"}) or "")
    assert "http:// or https://" in (endpoint_problem({"url": "javascript:alert(1)"}) or "")
    assert "http:// or https://" in (endpoint_problem({}) or "")
    problem = endpoint_problem({"url": "http://x/", "types": ["terminate", "exploded"]})
    assert problem is not None and '"exploded"' in problem
    assert "unknown field" in (endpoint_problem({"url": "http://x/", "secret": "s"}) or "")
    assert "account_id" in (endpoint_problem({"url": "http://x/", "account_id": "a b"}) or "")
