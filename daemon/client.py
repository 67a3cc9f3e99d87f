"""The Python client of the HTTP API (SPEC §4): typed models, typed errors, managed sessions.

```python
async with LifecycleClient("http://127.0.0.1:8080", api_key=key) as client:
    async with client.session(account_id="acme", keepalive_every=30) as session:
        ...  # the session is kept alive here and terminated on the way out
```

Every error the API answers raises a subclass of :class:`LifecycleClientError` chosen by
status and code in one table (``_ERRORS``); a server that cannot be reached, or that does
not answer within ``timeout`` seconds, raises :class:`ConnectionFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

# A library prints nothing itself: its lines go to the standard logging module, where the
# host program decides whether and where they appear.
log = structlog.wrap_logger(
    logging.getLogger("lifecycled.client"),
    # The event name is the record's message; its fields are attributes of the record.
    processors=[structlog.stdlib.render_to_log_kwargs],
    wrapper_class=structlog.stdlib.BoundLogger,
)
_T = TypeVar("_T")

__all__ = [
    "Account",
    "Conflict",
    "ConnectionFailed",
    "DeadLetter",
    "DeadLetterPage",
    "Forbidden",
    "InvalidRequest",
    "LifecycleClient",
    "LifecycleClientError",
    "ManagedSession",
    "PaymentRequired",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "SessionNotFound",
    "SessionStatus",
    "SessionTerminated",
    "TimelineEvent",
    "Unauthorized",
    "Webhook",
    "WebhookDelivery",
    "WebhookNotFound",
    "WebhookTest",
]

# Models


class _ApiModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    # The answer as the API sent it, for callers that pass it on (``lifecycled --json``).
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_api(cls, data: Any) -> Self:
        model = cls.model_validate(data)
        model._raw = data
        return model

    @property
    def raw(self) -> dict[str, Any]:
        return self._raw


_M = TypeVar("_M", bound=_ApiModel)


class SessionStatus(_ApiModel):
    """The status object of SPEC §1; times are aware UTC datetimes."""

    session_id: str
    account_id: str
    plan: str
    status: Literal["ready", "running", "paused", "terminated"]
    created_at: datetime
    expires_at: datetime | None  # None while paused
    idle_expires_at: datetime | None
    last_activity_at: datetime
    max_lifetime_seconds: int
    inactivity_timeout_seconds: int
    auto_kill: bool
    terminates_at: datetime | None
    remaining_seconds: float | None  # None while paused with no pause limit
    terminated_at: datetime | None
    termination_reason: (
        Literal["max_lifetime", "inactivity", "requested", "billing", "external", "paused_timeout"]
        | None
    )
    credits_used: float = 0  # prepaid credits the session consumed (SPEC §7)
    # Pause and why-alive (SPEC §8); the defaults are what a 0.2 server's answer means.
    on_inactivity: Literal["terminate", "pause"] = "terminate"
    paused_at: datetime | None = None
    pause_expires_at: datetime | None = None
    paused_seconds_total: float = 0.0
    running_seconds_total: float = 0.0
    last_activity_source: str | None = None
    activity_count: int = 0

    @field_validator(
        "created_at",
        "expires_at",
        "idle_expires_at",
        "last_activity_at",
        "terminates_at",
        "terminated_at",
        "paused_at",
        "pause_expires_at",
    )
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    @property
    def terminated(self) -> bool:
        return self.status == "terminated"

    @property
    def paused(self) -> bool:
        return self.status == "paused"


class TimelineEvent(_ApiModel):
    """One entry of a session's timeline (SPEC §9); fields not of its type are None."""

    type: str
    at: datetime
    source: str | None = None
    count: int | None = None
    last_at: datetime | None = None
    reason: str | None = None
    deadline: datetime | None = None
    terminates_at: datetime | None = None
    timeout_seconds: int | None = None
    inactivity_timeout_seconds: int | None = None
    auto_kill: bool | None = None

    @field_validator("at", "last_at", "deadline", "terminates_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)


class Usage(_ApiModel):
    """An account's metered totals: running time of its metered sessions, credits used."""

    session_seconds: float = 0
    credits: float = 0


class Account(_ApiModel):
    """The account object of SPEC §4; ``max_concurrent`` is None for unlimited."""

    account_id: str
    plan: str
    billing_status: Literal["ok", "balance_depleted", "payment_failed", "card_expired"]
    live_sessions: int
    max_concurrent: int | None
    max_duration_seconds: int
    # Prepaid credits (SPEC §7); the defaults are an unmetered account's.
    metered: bool = False
    balance: float | None = None  # None before the first top-up
    credits_per_hour: float | None = None  # None: the plan is not metered
    burn_per_hour: float = 0
    depletes_at: datetime | None = None
    usage: Usage = Field(default_factory=lambda: Usage())

    @field_validator("depletes_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)


class Webhook(_ApiModel):
    """A webhook endpoint (SPEC §9); ``secret`` only in the answer that created it."""

    webhook_id: str
    url: str
    types: list[str]
    account_id: str | None
    secret: str | None = None
    deliveries_removed: int | None = None  # in the answer to a removal


class WebhookTest(_ApiModel):
    """What an endpoint answered to a test message: ``status`` None without an answer."""

    webhook_id: str
    message_id: str
    delivered: bool
    status: int | None
    error: str | None
    duration_ms: int


class WebhookDelivery(_ApiModel):
    """A pending or dead delivery of a command to an endpoint; ``delivery_id`` is the
    ``webhook-id`` every attempt carries."""

    delivery_id: str
    webhook_id: str
    partition: int
    entry_id: str
    type: str
    state: Literal["pending", "dead"]
    attempts: int
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    dead_at: datetime | None
    data: dict[str, Any]

    @field_validator("last_attempt_at", "next_attempt_at", "dead_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)


class DeadLetter(_ApiModel):
    """An events-stream entry the daemon could not apply (SPEC §10): its original
    ``fields`` and the ``error`` that sent it to the dead-letter stream."""

    partition: int
    id: str
    fields: dict[str, str]
    error: str | None


class DeadLetterPage(_ApiModel):
    """A page of dead letters; ``next`` is the cursor of the next page (None: the end)."""

    dead_letters: list[DeadLetter]
    next: str | None


# Errors


class LifecycleClientError(Exception):
    """Base of every client error: the HTTP ``status`` (None without an answer), ``code``
    and ``message`` of the API's ``{"error", "message"}`` body."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r})"


class PaymentRequired(LifecycleClientError):
    """402: the account's billing status is not ``ok``."""


class RateLimited(LifecycleClientError):
    """429: too many requests for the account's plan (``rate_limited``), too many
    concurrent sessions, or too many failed authentications; ``retry_after`` is the
    answer's ``Retry-After`` in seconds (None when it had none)."""

    def __init__(
        self, status: int | None, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


class SessionNotFound(LifecycleClientError):
    """404: no such session (or not one this API key may see)."""


class SessionTerminated(LifecycleClientError):
    """409 ``session_terminated``: the session is terminated; it cannot be changed.

    Raised by a ``client.session(..., cancel_on_terminate=True)`` block whose session the
    server terminated; ``session`` is then its last status (reason in
    ``termination_reason``), or None when the server no longer knows the session."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        session: SessionStatus | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.session = session


class Conflict(LifecycleClientError):
    """409 ``session_exists`` (or another conflict): the session id is taken."""


class InvalidRequest(LifecycleClientError):
    """400, 413, 415 or 422: the request broke a rule; the message says which."""


class Unauthorized(LifecycleClientError):
    """401: the API key is missing or wrong."""


class Forbidden(LifecycleClientError):
    """403: the API key's role may not do this (e.g. ``PUT`` an account without admin)."""


class WebhookNotFound(LifecycleClientError):
    """404: no such webhook endpoint, or no such dead delivery of it."""


class ServiceUnavailable(LifecycleClientError):
    """503: the daemon cannot reach Redis right now."""


class ConnectionFailed(LifecycleClientError):
    """No answer: the server is unreachable or the connection broke."""


class RequestTimeout(ConnectionFailed):
    """No answer within the client's ``timeout``."""


# (status, code) first, then status alone; anything else is the base class.
_ERRORS: dict[tuple[int, str | None], type[LifecycleClientError]] = {
    (400, None): InvalidRequest,
    (401, None): Unauthorized,
    (402, None): PaymentRequired,
    (403, None): Forbidden,
    (404, "webhook_not_found"): WebhookNotFound,
    (404, "delivery_not_found"): WebhookNotFound,
    (404, None): SessionNotFound,
    (409, "session_terminated"): SessionTerminated,
    (409, None): Conflict,
    (413, None): InvalidRequest,
    (415, None): InvalidRequest,
    (422, None): InvalidRequest,
    (429, None): RateLimited,
    (503, None): ServiceUnavailable,
}


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_from_answer(status: int, body: str, headers: Any = None) -> LifecycleClientError:
    """The typed exception for an error answer (a JSON ``{"error", "message"}`` body or not)."""
    code, message = f"http_{status}", ""
    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if isinstance(data, dict):
            code = str(data.get("error") or code)
            message = str(data.get("message") or "")
    if not message:
        # Not the API talking (a proxy, another program on the port): show what it said.
        snippet = " ".join(body.split())[:200]
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    cls = _ERRORS.get((status, code)) or _ERRORS.get((status, None)) or LifecycleClientError
    if cls is RateLimited:
        retry = _retry_after(headers.get("Retry-After") if headers is not None else None)
        return RateLimited(status, code, message, retry)
    return cls(status, code, message)


# The client

_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE", "PATCH"})


class LifecycleClient:
    """An async client of one lifecycled API over one ``aiohttp`` session.

    ``retries`` > 0 retries idempotent calls (everything but ``create``) that failed
    without an answer, with exponential backoff from ``retry_backoff`` seconds.

    ``retry_rate_limited`` waits out a ``429 rate_limited`` (its ``Retry-After``) and sends
    the call again, every call ``create`` included (a refused request changed nothing),
    at most ``rate_limit_retries`` times and only while each wait is at most
    ``max_rate_limit_wait`` seconds; otherwise :class:`RateLimited` is raised.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 0,
        retry_backoff: float = 0.2,
        retry_rate_limited: bool = False,
        rate_limit_retries: int = 3,
        max_rate_limit_wait: float = 60.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._retry_backoff = retry_backoff
        self._rate_limit_retries = rate_limit_retries if retry_rate_limited else 0
        self._max_rate_limit_wait = max_rate_limit_wait
        self._http: aiohttp.ClientSession | None = None
        # Terminations that must finish even though their caller was cancelled.
        self._pending: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the pending terminations, then close the connection pool."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self._timeout.total)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._http

    # HTTP

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        for attempt in range(self._rate_limit_retries + 1):
            try:
                return await self._request_answered(method, path, body)
            except RateLimited as exc:
                wait = exc.retry_after
                if (
                    exc.code != "rate_limited"
                    or wait is None
                    or wait > self._max_rate_limit_wait
                    or attempt >= self._rate_limit_retries
                ):
                    raise
                log.info("request_rate_limited", method=method, path=path, delay_s=wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_answered(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        attempts = 1 + (
            self._retries
            # A top-up carries its idempotency key: sending it again credits nothing twice.
            if method in _IDEMPOTENT or path.endswith(("/keepalive", "/activity", "/credits"))
            else 0
        )
        for attempt in range(attempts):
            try:
                return await self._request_once(method, path, body)
            except ConnectionFailed as exc:
                if attempt + 1 >= attempts:
                    raise
                delay = self._retry_backoff * 2**attempt
                log.info(
                    "request_retried", method=method, path=path, error=exc.message, delay_s=delay
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_once(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = self.base_url + path
        try:
            async with self._session().request(method, url, json=body) as resp:
                text = await resp.text(errors="replace")
                if resp.status >= 400:
                    raise error_from_answer(resp.status, text, resp.headers)
        except TimeoutError:
            raise RequestTimeout(
                None, "timeout", f"{self.base_url} did not answer within {self._timeout.total} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise ConnectionFailed(
                None, "connection_failed", f"cannot reach {self.base_url}: {_reason(exc)}"
            ) from None
        try:
            return json.loads(text)
        except ValueError:
            raise LifecycleClientError(
                resp.status, "bad_answer", f"{url} answered {resp.status} with a non-JSON body"
            ) from None

    async def _status(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> SessionStatus:
        return await self._model(method, path, SessionStatus, body)

    # Sessions

    async def create(
        self,
        account_id: str,
        *,
        session_id: str | None = None,
        timeout_seconds: int | None = None,
        inactivity_timeout_seconds: int | None = None,
        auto_kill: bool | None = None,
        on_inactivity: Literal["terminate", "pause"] | None = None,
    ) -> SessionStatus:
        """``POST /v1/sessions``; unset arguments take the server's defaults."""
        body = _without_none(
            account_id=account_id,
            session_id=session_id,
            timeout_seconds=timeout_seconds,
            inactivity_timeout_seconds=inactivity_timeout_seconds,
            auto_kill=auto_kill,
            on_inactivity=on_inactivity,
        )
        result: SessionStatus = await self._status("POST", "/v1/sessions", body)
        return result

    async def status(self, session_id: str) -> SessionStatus:
        result: SessionStatus = await self._status("GET", _session_path(session_id))
        return result

    async def _touch(self, session_id: str, route: str, source: str | None) -> SessionStatus:
        body = None if source is None else {"source": source}
        result: SessionStatus = await self._status("POST", _session_path(session_id) + route, body)
        return result

    async def keepalive(self, session_id: str, source: str | None = None) -> SessionStatus:
        """Push the inactivity deadline back; ``source`` says what kept it alive."""
        return await self._touch(session_id, "/keepalive", source)

    async def activity(self, session_id: str, source: str | None = None) -> SessionStatus:
        """Record an action: like a keepalive, and a ``ready`` session becomes ``running``."""
        return await self._touch(session_id, "/activity", source)

    async def pause(self, session_id: str) -> SessionStatus:
        """Pause (a paused session: no-op); the lifetime stops counting until resumed."""
        return await self._touch(session_id, "/pause", None)

    async def resume(self, session_id: str) -> SessionStatus:
        """Resume a paused session (a running one: no-op); admitted like a create, so it
        may raise :class:`PaymentRequired` or :class:`RateLimited` (``retry_after``)."""
        return await self._touch(session_id, "/resume", None)

    async def update(
        self,
        session_id: str,
        *,
        timeout_seconds: int | None = None,
        inactivity_timeout_seconds: int | None = None,
        auto_kill: bool | None = None,
        on_inactivity: Literal["terminate", "pause"] | None = None,
    ) -> SessionStatus:
        """``PATCH`` the given fields; the others stay as they are."""
        body = _without_none(
            timeout_seconds=timeout_seconds,
            inactivity_timeout_seconds=inactivity_timeout_seconds,
            auto_kill=auto_kill,
            on_inactivity=on_inactivity,
        )
        result: SessionStatus = await self._status("PATCH", _session_path(session_id), body)
        return result

    async def terminate(self, session_id: str) -> SessionStatus:
        """Terminate with reason ``requested``; terminating a terminated session is a no-op."""
        result: SessionStatus = await self._status("DELETE", _session_path(session_id))
        return result

    async def timeline(self, session_id: str) -> list[TimelineEvent]:
        """``GET /v1/sessions/{id}/events``: the session's timeline, oldest first."""
        return await self._list(_session_path(session_id) + "/events", "events", TimelineEvent)

    async def _list(self, path: str, name: str, model: type[_M]) -> list[_M]:
        """``GET`` a JSON object holding a list of ``model`` objects under ``name``."""
        data = await self._request("GET", path)
        try:
            return [model.from_api(item) for item in data[name]]
        except (ValidationError, KeyError, TypeError) as exc:
            raise _bad_answer(path, exc) from None

    # Accounts

    async def sessions(self, account_id: str) -> list[SessionStatus]:
        """The account's live sessions."""
        return await self._list(_account_path(account_id) + "/sessions", "sessions", SessionStatus)

    async def sessions_page(
        self, *, after: str | None = None, limit: int | None = None
    ) -> tuple[list[SessionStatus], str | None]:
        """One page of every account's live sessions (``GET /v1/sessions``, an admin key)
        and the cursor of the next page, passed back as ``after`` (None: the last page)."""
        query = urlencode(_without_none(after=after, limit=limit))
        path = "/v1/sessions" + (f"?{query}" if query else "")
        data = await self._request("GET", path)
        try:
            page = [SessionStatus.from_api(item) for item in data["sessions"]]
            cursor = data["next"]
        except (ValidationError, KeyError, TypeError) as exc:
            raise _bad_answer(path, exc) from None
        return page, None if cursor is None else str(cursor)

    async def all_sessions(self, *, page_size: int | None = None) -> AsyncIterator[SessionStatus]:
        """Every live session, a page (about ``page_size``) per request."""
        after: str | None = None
        while True:
            page, after = await self.sessions_page(after=after, limit=page_size)
            for status in page:
                yield status
            if after is None:
                return

    async def account(self, account_id: str) -> Account:
        return await self._account("GET", account_id, None)

    async def set_account(
        self, account_id: str, *, plan: str | None = None, billing_status: str | None = None
    ) -> Account:
        """Set the plan and/or billing status (needs an admin key when keys are configured)."""
        return await self._account(
            "PUT", account_id, _without_none(plan=plan, billing_status=billing_status)
        )

    async def top_up(
        self, account_id: str, amount: int | float | Decimal, *, idempotency_key: str
    ) -> Account:
        """Add ``amount`` credits to the account's balance, once per ``idempotency_key``
        (the same key again answers the first top-up's answer); needs an admin key."""
        number = amount
        if isinstance(amount, Decimal):
            number = int(amount) if amount == amount.to_integral_value() else float(amount)
        body = {"amount": number, "idempotency_key": idempotency_key}
        return await self._account("POST", account_id, body, "/credits")

    async def _account(
        self, method: str, account_id: str, body: dict[str, Any] | None, suffix: str = ""
    ) -> Account:
        path = _account_path(account_id) + suffix
        data = await self._request(method, path, body)
        try:
            return Account.from_api(data)
        except ValidationError as exc:
            raise _bad_answer(path, exc) from None

    # Webhook endpoints (admin)

    async def webhooks(self) -> list[Webhook]:
        """The webhook endpoints, without their secrets."""
        return await self._list("/v1/webhooks", "webhooks", Webhook)

    async def add_webhook(
        self, url: str, *, types: list[str] | None = None, account_id: str | None = None
    ) -> Webhook:
        """Add an endpoint for ``types`` (default all) of ``account_id`` (default every
        account); the answer holds its ``secret``, shown only this once."""
        body = _without_none(url=url, types=types, account_id=account_id)
        return await self._model("POST", "/v1/webhooks", Webhook, body)

    async def webhook(self, webhook_id: str) -> Webhook:
        return await self._model("GET", _webhook_path(webhook_id), Webhook)

    async def remove_webhook(self, webhook_id: str) -> Webhook:
        """Remove an endpoint and its pending and dead deliveries."""
        return await self._model("DELETE", _webhook_path(webhook_id), Webhook)

    async def test_webhook(self, webhook_id: str) -> WebhookTest:
        """Send the endpoint one signed ``test`` message now; what it answered."""
        return await self._model("POST", _webhook_path(webhook_id) + "/test", WebhookTest)

    async def webhook_deliveries(
        self, webhook_id: str, state: Literal["dead", "pending"] = "dead", limit: int = 100
    ) -> list[WebhookDelivery]:
        path = _webhook_path(webhook_id) + f"/deliveries?state={state}&limit={limit}"
        return await self._list(path, "deliveries", WebhookDelivery)

    async def replay_webhook_delivery(self, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        """Make a dead delivery due again now, with a fresh count of attempts."""
        path = _webhook_path(webhook_id) + f"/deliveries/{quote(delivery_id, safe='')}/replay"
        return await self._model("POST", path, WebhookDelivery)

    async def _model(
        self, method: str, path: str, model: type[_M], body: dict[str, Any] | None = None
    ) -> _M:
        data = await self._request(method, path, body)
        try:
            return model.from_api(data)
        except ValidationError as exc:
            raise _bad_answer(path, exc) from None

    # Dead letters (admin)

    async def dead_letters(
        self, *, partition: int | None = None, after: str | None = None, limit: int | None = None
    ) -> DeadLetterPage:
        """``GET /v1/dead-letters``: one page, oldest first; pass ``next`` back as ``after``."""
        query = urlencode(_without_none(partition=partition, after=after, limit=limit))
        path = "/v1/dead-letters" + (f"?{query}" if query else "")
        data = await self._request("GET", path)
        try:
            return DeadLetterPage.from_api(data)
        except ValidationError as exc:
            raise _bad_answer(path, exc) from None

    async def replay_dead_letter(self, partition: int, entry_id: str) -> str:
        """Put the entry's original fields back on the events stream and remove it (one
        atomic step); returns the id of the new events-stream entry."""
        data = await self._request("POST", _dead_letter_path(partition, entry_id) + "/replay")
        return str(data["replayed_as"])

    async def drop_dead_letter(self, partition: int, entry_id: str) -> None:
        await self._request("DELETE", _dead_letter_path(partition, entry_id))

    # Managed sessions

    @contextlib.asynccontextmanager
    async def session(
        self,
        account_id: str,
        *,
        session_id: str | None = None,
        timeout_seconds: int | None = None,
        inactivity_timeout_seconds: int | None = None,
        auto_kill: bool | None = None,
        keepalive_every: float | None = None,
        on_inactivity: Literal["terminate", "pause"] | None = None,
        cancel_on_terminate: bool = False,
    ) -> AsyncIterator[ManagedSession]:
        """Create a session for the block, keep it alive, and terminate it on the way out.

        The termination runs whether the block ends normally, raises or is cancelled;
        it is shielded from cancellation, and :meth:`aclose` waits for it.

        The handle's :attr:`ManagedSession.terminated` resolves once the client learns
        that the server terminated the session (a background keepalive or any call of the
        handle). With ``cancel_on_terminate`` the block is then cancelled and the ``async
        with`` raises :class:`SessionTerminated`; a call of the handle from the block's
        own task raises it directly.
        """
        if keepalive_every is not None and keepalive_every <= 0:
            raise ValueError("keepalive_every must be positive")
        creating = asyncio.ensure_future(
            self.create(
                account_id,
                session_id=session_id,
                timeout_seconds=timeout_seconds,
                inactivity_timeout_seconds=inactivity_timeout_seconds,
                auto_kill=auto_kill,
                on_inactivity=on_inactivity,
            )
        )
        try:
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # The server may admit it anyway; a leaked session would count against the plan.
            self._track(self._terminate_once_created(creating))
            raise
        handle = ManagedSession(
            self, created, asyncio.current_task() if cancel_on_terminate else None
        )
        keeper = None
        if keepalive_every is not None:
            keeper = asyncio.ensure_future(self._keep_alive(handle, keepalive_every))
        try:
            yield handle
        except BaseException as exc:
            handle._leave_block()
            await self._stop_and_terminate(handle, keeper, quiet=True)
            if isinstance(exc, asyncio.CancelledError) and handle._take_cancel():
                raise handle._terminated_error() from None
            raise
        handle._leave_block()
        try:
            await self._stop_and_terminate(handle, keeper, quiet=False)
        except asyncio.CancelledError:
            # Our own cancellation, requested just as the block finished its last step.
            if not handle._take_cancel():
                raise
            await self._stop_and_terminate(handle, None, quiet=False)

    async def _keep_alive(self, handle: ManagedSession, every: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += every
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                handle.last_status = await self.keepalive(handle.session_id)
                handle.keepalive_error = None
            except (SessionTerminated, SessionNotFound) as exc:
                handle.keepalive_error = exc
                log.warning("keepalive_stopped", session_id=handle.session_id, error=exc.message)
                await handle._learn_ended(exc)
                return
            except LifecycleClientError as exc:
                handle.keepalive_error = exc
                log.warning(
                    "keepalive_failed",
                    session_id=handle.session_id,
                    error=exc.message,
                    code=exc.code,
                )

    async def _stop_and_terminate(
        self, handle: ManagedSession, keeper: asyncio.Future[None] | None, *, quiet: bool
    ) -> None:
        """Terminate under a shield; with ``quiet`` (the block raised) a failure is only logged
        so that it does not hide the block's own exception."""
        if keeper is not None:
            keeper.cancel()
        task = self._track(self.terminate(handle.session_id))
        try:
            handle._learned(await asyncio.shield(task))
        except SessionNotFound as exc:
            handle._gone(exc)  # gone already (retention passed): nothing left to terminate
        except LifecycleClientError as exc:
            handle._gone(exc)
            if not quiet:
                raise
            log.error(
                "session_terminate_failed",
                session_id=handle.session_id,
                error=exc.message,
                code=exc.code,
            )

    async def _terminate_once_created(self, creating: asyncio.Future[SessionStatus]) -> None:
        with contextlib.suppress(LifecycleClientError):
            created = await creating
            await self.terminate(created.session_id)

    def _track(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so that a failure after the caller was cancelled is still seen.
            log.error("session_terminate_failed", error=str(task.exception()))


class ManagedSession:
    """The handle ``client.session()`` yields.

    ``await handle.terminated`` waits until the client learns that the session is
    terminated and returns its status (``termination_reason`` says why): from a background
    keepalive, a call of the handle, or the termination at the end of the block. It raises
    the client's error when the session's end could not be read (e.g. it no longer exists).
    """

    def __init__(
        self,
        client: LifecycleClient,
        created: SessionStatus,
        block: asyncio.Task[Any] | None = None,
    ) -> None:
        self.client = client
        self.session_id = created.session_id
        self.created = created
        self.last_status = created
        # The last failed background keepalive, cleared by the next one that succeeds.
        self.keepalive_error: LifecycleClientError | None = None
        self._ended: asyncio.Future[SessionStatus] = asyncio.get_running_loop().create_future()
        # With cancel_on_terminate: the task running the block, cancelled on termination
        # while ``_inside`` the block.
        self._block = block
        self._inside = block is not None
        self._cancelling = False

    @property
    def terminated(self) -> asyncio.Future[SessionStatus]:
        """An awaitable of the terminated session's status (cancelling a wait leaves it)."""
        return asyncio.shield(self._ended)

    async def status(self) -> SessionStatus:
        self._learned(await self.client.status(self.session_id))
        return self.last_status

    async def keepalive(self, source: str | None = None) -> SessionStatus:
        return await self._update(self.client.keepalive(self.session_id, source))

    async def activity(self, source: str | None = None) -> SessionStatus:
        return await self._update(self.client.activity(self.session_id, source))

    async def _update(self, call: Coroutine[Any, Any, SessionStatus]) -> SessionStatus:
        try:
            self.last_status = await call
        except (SessionTerminated, SessionNotFound) as exc:
            await self._learn_ended(exc)
            raise
        return self.last_status

    async def _learn_ended(self, exc: LifecycleClientError) -> None:
        """The server refused a change: read why the session ended, if it still can be."""
        if isinstance(exc, SessionTerminated):
            try:
                self._learned(await self.client.status(self.session_id))
                return
            except LifecycleClientError as failed:  # terminated, but its end is unreadable
                exc = failed
        self._gone(exc)
        self._end_block()

    def _learned(self, status: SessionStatus) -> None:
        self.last_status = status
        if status.terminated:
            if not self._ended.done():
                self._ended.set_result(status)
            self._end_block()

    def _gone(self, exc: LifecycleClientError) -> None:
        if not self._ended.done():
            self._ended.set_exception(exc)
            self._ended.exception()  # retrieved: nobody need await it

    def _end_block(self) -> None:
        """With ``cancel_on_terminate``: end the block, which raises SessionTerminated."""
        block = self._block
        if block is None or not self._inside or self._cancelling:
            return
        if block is asyncio.current_task():
            raise self._terminated_error()
        self._cancelling = True
        block.cancel(f"session {self.session_id} was terminated")

    def _leave_block(self) -> None:
        self._inside = False

    def _take_cancel(self) -> bool:
        """Whether the cancellation being handled is ours alone (then it is withdrawn)."""
        if not self._cancelling or self._block is None:
            return False
        self._cancelling = False
        return self._block.uncancel() == 0

    def _terminated_error(self) -> SessionTerminated:
        status = None
        if self._ended.done() and self._ended.exception() is None:
            status = self._ended.result()
        why = f" ({status.termination_reason})" if status is not None else ""
        return SessionTerminated(
            409,
            "session_terminated",
            f"Session {self.session_id} was terminated on the server{why}.",
            session=status,
        )

    async def pause(self) -> SessionStatus:
        return await self._update(self.client.pause(self.session_id))

    async def resume(self) -> SessionStatus:
        return await self._update(self.client.resume(self.session_id))


def _session_path(session_id: str) -> str:
    return "/v1/sessions/" + quote(session_id, safe="")


def _dead_letter_path(partition: int, entry_id: str) -> str:
    return f"/v1/dead-letters/{partition}/{quote(entry_id, safe='')}"


def _account_path(account_id: str) -> str:
    return "/v1/accounts/" + quote(account_id, safe="")


def _webhook_path(webhook_id: str) -> str:
    return "/v1/webhooks/" + quote(webhook_id, safe="")


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _bad_answer(path: str, exc: Exception) -> LifecycleClientError:
    return LifecycleClientError(200, "bad_answer", f"unexpected answer from {path}: {exc}")


def _reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if error.errno and error.errno > 0:
            # asyncio's "Connect call failed (...)" hides the reason that errno names.
            return os.strerror(error.errno).lower()
        return error.strerror or str(error)
    return str(exc) or type(exc).__name__
