"""Webhook bodies and signatures: a Standard Webhooks receiver accepts them, and only them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from daemon.webhook_message import body, message_id, new_secret, signed_headers


def test_a_signed_message_verifies_and_tampering_or_age_is_refused() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    fields = {"type": "terminate", "session_id": "123", "reason": "inactivity",
              "deadline": "1764770000000", "account_id": "acme"}  # fmt: skip
    payload = body("terminate", "1764770000123-0", fields)
    headers = signed_headers(secret, message_id(0, "1764770000123-0"), payload)
    got = Webhook(secret).verify(payload, headers)
    assert got == {
        "type": "terminate",
        "timestamp": "2025-12-03T13:53:20.123Z",
        "data": {"session_id": "123", "reason": "inactivity", "deadline": 1764770000000,
                 "account_id": "acme"},
    }  # fmt: skip
    assert headers["webhook-id"] == "cmd_0_1764770000123-0"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(payload.replace("inactivity", "requested"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(payload, headers)
    old = signed_headers(secret, headers["webhook-id"], payload,
                         datetime.now(UTC) - timedelta(minutes=6))  # fmt: skip
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(payload, old)
    assert json.loads(payload)["data"]["session_id"] == "123"
