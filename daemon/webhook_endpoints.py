"""Webhook endpoints, one deployment-wide hash ``P:webhooks`` (endpoint id -> JSON).

Every replica reads it before turning a batch of commands into deliveries, so an
endpoint receives every command emitted after its creation returned.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from daemon.model import ID_PATTERN
from daemon.webhook_message import new_secret

COMMAND_TYPES = ("terminate", "expiring", "pause", "resume", "rejected", "low_balance")
_FIELDS = {"url", "types", "account_id"}
MAX_URL_LENGTH = 2048
# A URL a receiver can have: http(s), a host name or address, a port in range, then any
# printable ASCII. No user:password@ part: a secret does not belong in a listed URL.
# WEBHOOK_URL_PATTERN is the OpenAPI document's pattern, so the two cannot disagree; an
# IPv6 literal ([::1]) is accepted as well when it is a valid address.
_PORT = r"(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
_REST = r"(?:[/?#][!-~]*)?"
WEBHOOK_URL_PATTERN = rf"^https?://[A-Za-z0-9.-]+{_PORT}{_REST}$"
_URL = re.compile(WEBHOOK_URL_PATTERN)
_IPV6_URL = re.compile(rf"^https?://\[([0-9A-Fa-f:.]+)\]{_PORT}{_REST}$")


def _url_ok(url: str) -> bool:
    if _URL.fullmatch(url):
        return True
    v6 = _IPV6_URL.fullmatch(url)
    if v6 is None:
        return False
    try:
        ipaddress.IPv6Address(v6[1])
    except ValueError:
        return False
    return True


def endpoints_key(prefix: str) -> str:
    return f"{prefix}:webhooks"


@dataclass(frozen=True, slots=True)
class Endpoint:
    webhook_id: str
    url: str
    types: list[str]
    account_id: str | None
    secret: str

    def wants(self, kind: str, account_id: str | None) -> bool:
        if kind not in self.types:
            return False
        return self.account_id is None or self.account_id == account_id

    def public(self) -> dict[str, Any]:
        """The endpoint as listed: without its secret."""
        out = asdict(self)
        del out["secret"]
        return out


def endpoint_problem(body: dict[str, Any]) -> str | None:
    """Why a ``POST /v1/webhooks`` body is refused (422), or None."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        return f"unknown field {json.dumps(unknown[0])} (fields: account_id, types, url)"
    url = body.get("url")
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or not _url_ok(url):
        return (f"url must be an http:// or https:// URL of at most {MAX_URL_LENGTH} "
                "printable ASCII characters, with a host, a port up to 65535 if any, "
                "and no user:password@")  # fmt: skip
    types = body.get("types", list(COMMAND_TYPES))
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        return f"types must be a non-empty list of {', '.join(COMMAND_TYPES)}"
    unknown_types = [t for t in types if t not in COMMAND_TYPES]
    if unknown_types:
        return (f"unknown type {json.dumps(unknown_types[0])} in types "
                f"(types: {', '.join(COMMAND_TYPES)})")  # fmt: skip
    account = body.get("account_id")
    if account is not None and (not isinstance(account, str) or not ID_PATTERN.fullmatch(account)):
        return (
            "account_id must be 1-128 characters of [A-Za-z0-9._:-] starting with a letter or digit"
        )
    return None


class Endpoints:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.key = endpoints_key(prefix)

    async def add(self, body: dict[str, Any]) -> Endpoint:
        """Store a new endpoint from a body ``endpoint_problem`` accepted."""
        types = [t for t in COMMAND_TYPES if t in body.get("types", COMMAND_TYPES)]
        endpoint = Endpoint("wh_" + secrets.token_hex(8), body["url"], types,
                            body.get("account_id"), new_secret())  # fmt: skip
        await self.redis.hset(self.key, endpoint.webhook_id, json.dumps(asdict(endpoint)))
        return endpoint

    async def all(self) -> dict[str, Endpoint]:
        raw = await self.redis.hgetall(self.key)
        out = {}
        for value in raw.values():
            endpoint = Endpoint(**json.loads(value))
            out[endpoint.webhook_id] = endpoint
        return dict(sorted(out.items()))

    async def get(self, webhook_id: str) -> Endpoint | None:
        raw = await self.redis.hget(self.key, webhook_id)
        return None if raw is None else Endpoint(**json.loads(raw))

    async def remove(self, webhook_id: str) -> bool:
        return bool(await self.redis.hdel(self.key, webhook_id))
