"""API keys: SHA-256 digests with a role, compared in constant time (SPEC §4)."""

from __future__ import annotations

import hashlib
import hmac
import re
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


def match_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The key whose digest matches ``presented``; every digest is compared."""
    digest = hashlib.sha256(presented.encode()).digest()
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found
