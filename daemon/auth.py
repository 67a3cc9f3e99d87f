"""API keys: SHA-256 digests with a role, compared in constant time (SPEC §4)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.model import ID_PATTERN

_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    digest: bytes
    role: str  # "admin" or "account:<account_id>"

    @property
    def account_id(self) -> str | None:
        return self.role.removeprefix("account:") if self.role != "admin" else None


def parse_api_keys(text: str) -> list[ApiKey]:
    """Parse ``<sha256-hex>:<role>`` entries separated by commas or newlines.

    Blank entries and lines starting with ``#`` are skipped.
    """
    keys: list[ApiKey] = []
    for raw in re.split(r"[,\n]", text):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        digest, sep, role = entry.partition(":")
        if not sep or not _DIGEST.fullmatch(digest):
            raise ValueError("each entry must be <sha256-hex>:<role> with a 64-digit hex digest")
        if role != "admin":
            account = role.removeprefix("account:")
            if account == role or not ID_PATTERN.fullmatch(account):
                raise ValueError(f"role must be 'admin' or 'account:<account_id>', got {role!r}")
        keys.append(ApiKey(digest=bytes.fromhex(digest), role=role))
    return keys


def match_key(keys: Sequence[ApiKey], presented: str) -> ApiKey | None:
    """The key whose digest matches ``presented``; every digest is compared."""
    # Header values arrive with undecodable bytes as surrogates; hash the bytes as sent.
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an admin, or a key limited to one account."""

    account_id: str | None  # None: admin

    @property
    def is_admin(self) -> bool:
        return self.account_id is None


ADMIN = Principal(None)


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def client_address(peer: str | None, forwarded_for: str | None, trust_forwarded_for: bool) -> str:
    """The address failed authentications are counted against.

    By default the socket's peer. Behind a reverse proxy (``trust_forwarded_for``) the
    last ``X-Forwarded-For`` entry: the one the proxy appended, which the client cannot
    forge (entries before it can be). A missing or malformed entry falls back to the peer.
    """
    if trust_forwarded_for and forwarded_for:
        last = forwarded_for.rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            pass
    return peer or "unknown"
