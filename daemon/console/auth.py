"""Console logins: an admin key exchanged for a server-side session, and CSRF tokens.

The login form posts the key once; the console answers with a cookie holding a random
token (``HttpOnly``, ``SameSite=Strict``, path ``/ui``). Redis keeps only the token's
SHA-256 (``P:console:<digest>``, expiring after ``SESSION_SECONDS``), so every replica
accepts it and neither Redis nor a log ever holds the key. Every state-changing form
carries a CSRF token derived from the session token (an HMAC), which another site can
neither read nor compute. With no API keys configured the API is open, and so is the
console: a visitor gets a cookie with a random token at once (nothing kept in Redis),
which serves only as the secret of its CSRF tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from aiohttp import web

from daemon.keys import console_session_key

COOKIE = "lifecycled_console"
LOGIN_COOKIE = "lifecycled_console_login"
SESSION_SECONDS = 8 * 3600


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def csrf_token(token: str) -> str:
    return hmac.new(token.encode(), b"lifecycled-console-csrf", hashlib.sha256).hexdigest()


def flash_signature(token: str, values: list[str]) -> str:
    message = "\x00".join(["flash", *values]).encode("utf-8", "surrogateescape")
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]


def csrf_ok(token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(token), presented)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def plausible_token(token: str | None) -> bool:
    """A token as ``new_token`` makes them (the open console keeps no record of them)."""
    return token is not None and len(token) == 43 and token.isascii()


async def new_session(redis: Any, prefix: str) -> str:
    token = new_token()
    await redis.set(console_session_key(prefix, _digest(token)), "admin", ex=SESSION_SECONDS)
    return token


async def valid_session(redis: Any, prefix: str, token: str | None) -> bool:
    if not token or len(token) > 100:
        return False
    return bool(await redis.exists(console_session_key(prefix, _digest(token))))


async def end_session(redis: Any, prefix: str, token: str) -> None:
    await redis.delete(console_session_key(prefix, _digest(token)))


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=SESSION_SECONDS,
    )
