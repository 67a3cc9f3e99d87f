"""The HTTP API (SPEC §4): JSON in and out, every error as ``{"error", "message"}``.

Middlewares wrap every handler, outermost first: ``rate_limit_headers_middleware`` adds
the ``RateLimit-Policy`` and ``RateLimit`` headers to every answer of a request that
named an account, errors included; ``error_middleware`` turns refusals, routing errors
and Redis outages into the error body; ``auth_middleware`` checks the bearer key, the
failed-authentication block, and records who is calling; ``rate_limit_middleware``
counts the request against its account's plan's rates (SPEC §6).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any, NoReturn

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from daemon import dead_letters, errors, session_list, webhook_api
from daemon.auth import ADMIN, ApiKey, Principal, bearer_token, client_address, match_key
from daemon.console import add_console, is_console_path
from daemon.engine import Engine
from daemon.metrics import Metrics
from daemon.model import (
    BILLING_STATUSES,
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_INACTIVITY_SECONDS,
    MAX_TOP_UP_CREDITS,
    ON_INACTIVITY,
    SOURCE_PATTERN,
    SOURCE_RULE,
    new_session_id,
    top_up_micro,
)
from daemon.redis_client import write_refusal
from daemon.store import RateCheck, RateLimitResult, RateRefused, SessionView, Store

log = structlog.get_logger("lifecycled.api")

MAX_BODY_BYTES = 64 * 1024
OPENAPI_PATH = "/v1/openapi.json"


@dataclass(frozen=True, slots=True)
class Access:
    """The API keys (none: an open API where every caller is admin) and address policy."""

    keys: tuple[ApiKey, ...]
    trust_forwarded_for: bool = False


STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", Engine)
METRICS = web.AppKey("metrics", Metrics)
ACCESS = web.AppKey("access", Access)
PRINCIPAL = web.RequestKey("principal", Principal)
RATE_LIMIT = web.RequestKey("rate_limit", RateLimitResult)
RATE_CHECK = web.RequestKey("rate_check", RateCheck)

_CREATE_FIELDS = {
    "session_id",
    "account_id",
    "timeout_seconds",
    "inactivity_timeout_seconds",
    "auto_kill",
    "on_inactivity",
}
_PATCH_FIELDS = {"timeout_seconds", "inactivity_timeout_seconds", "auto_kill", "on_inactivity"}
_TOUCH_FIELDS = {"source"}
_ACCOUNT_FIELDS = {"plan", "billing_status"}
_TOP_UP_FIELDS = {"amount", "idempotency_key"}
_ADMISSION_RESULT = {
    errors.PaymentRequired: "payment_required",
    errors.ConcurrentSessionLimit: "concurrent_session_limit",
    errors.InvalidRequest: "invalid",
    errors.SessionExists: "conflict",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.LifecycleError as exc:
        headers = {}
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if isinstance(exc, errors.Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        return error_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413, "payload_too_large", f"The request body is over {MAX_BODY_BYTES} bytes."
        )
    except web.HTTPMethodNotAllowed as exc:
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on this path.",
            {"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPNotFound:
        return error_response(404, "not_found", "No such route.")
    except web.HTTPException as exc:
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason + ".")
    except (RedisError, OSError) as exc:
        refusal = write_refusal(exc)
        log.warning("request_failed_redis_unavailable", path=request.path, error=str(exc))
        message = "Redis is unreachable" if refusal is None else refusal
        return error_response(503, "unavailable", f"{message}; retry shortly.")
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return error_response(500, "internal_error", "The request failed unexpectedly.")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = request.app[ACCESS]
    if not access.keys or is_console_path(request.path):  # the console logs in by cookie
        request[PRINCIPAL] = ADMIN
        return await handler(request)
    if request.path == OPENAPI_PATH and request.method in ("GET", "HEAD"):
        # The description is public and served without Redis, even to a blocked address.
        return await handler(request)
    address = client_address(
        request.remote, request.headers.get("X-Forwarded-For"), access.trust_forwarded_for
    )
    token = bearer_token(request.headers.get("Authorization"))
    key = None if token is None else match_key(access.keys, token)
    # One script call: a blocked address is refused whatever it presents, and a failure
    # is recorded only while the address is not blocked.
    state = await request.app[STORE].auth_failures(address, record=key is None)
    if state.blocked:
        raise errors.TooManyAuthFailures(max(1, math.ceil(state.retry_after_ms / 1000)))
    if key is None:
        log.info(
            "auth_failed",
            client=address,
            reason="missing_key" if token is None else "wrong_key",
            failures=state.count,
        )
        if token is None:
            raise errors.Unauthorized("An API key is required (Authorization: Bearer <key>).")
        raise errors.Unauthorized("The API key is not valid.")
    request[PRINCIPAL] = Principal(key.account_id)
    return await handler(request)


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


# Request rate limits (SPEC §6)

# Routes that create (or resume) a session also count against creates_per_minute.
_CREATE_ROUTES = frozenset({("POST", "/v1/sessions"), ("POST", "/v1/sessions/{session_id}/resume")})
_RATE_WINDOW_SECONDS = 60
_RATE_UNITS = {"requests": "requests", "creates": "session creations"}


# Routes whose operation script checks the rate limits itself (one script call per
# request): their handler passes request[RATE_CHECK] to the store.
_FOLDED_ROUTES = frozenset({
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/{session_id}/keepalive"),
    ("POST", "/v1/sessions/{session_id}/activity"),
})  # fmt: skip


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After authentication, before the operation: a request over its account's rate is
    ``429 rate_limited`` and changes nothing.

    On the hot routes (_FOLDED_ROUTES) the operation's own script checks the limits
    first; a handler that refuses the request before reaching the store (a bad body)
    changed nothing, so the limits are then checked after it, and a 429 still wins."""
    named = await _named_account(request)
    if named is None:
        return await handler(request)
    session_id, account_id, creates = named
    principal = request.get(PRINCIPAL, ADMIN)
    match = request.match_info
    resource = match.route.resource
    if (request.method, resource.canonical if resource else "") in _FOLDED_ROUTES:
        rate = request[RATE_CHECK] = RateCheck(creates, principal.account_id or "")
        try:
            response = await handler(request)
        except RateRefused as exc:
            _rate_limited(request, exc.result)
        except errors.LifecycleError:
            if not rate.done:
                await _rate_limit_first(request, session_id, account_id, creates, principal)
            raise
        finally:
            if rate.result is not None:
                request[RATE_LIMIT] = rate.result
        if not rate.done:  # the handler answered without the store (not expected)
            await _rate_limit_first(request, session_id, account_id, creates, principal)
        return response
    await _rate_limit_first(request, session_id, account_id, creates, principal)
    return await handler(request)


async def _rate_limit_first(
    request: web.Request,
    session_id: str | None,
    account_id: str | None,
    creates: bool,
    principal: Principal,
) -> None:
    """Count the request in a script call of its own; RateLimited when refused."""
    try:
        result = await request.app[STORE].rate_limit(
            session_id=session_id, account_id=account_id, creates=creates,
            scope=principal.account_id,
        )  # fmt: skip
    except RedisError as exc:
        if write_refusal(exc) is None:
            raise
        # Redis refuses to count (out of memory, disk full): the request goes on
        # uncounted, so reads are still answered; a write is refused by its own script.
        return
    if result is None:
        return
    request[RATE_LIMIT] = result
    if not result.admitted:
        _rate_limited(request, result)


def _rate_limited(request: web.Request, result: RateLimitResult) -> NoReturn:
    exhausted = result.exhausted
    for limit in exhausted:
        request.app[METRICS].rate_limited.labels(limit=limit.name).inc()
    log.info("rate_limited", account_id=result.account_id, plan=result.plan,
             limits=[limit.name for limit in exhausted],
             retry_after=result.retry_after)  # fmt: skip
    allows = " and ".join(f"{limit.quota} {_RATE_UNITS[limit.name]}" for limit in exhausted)
    raise errors.RateLimited(
        f"Too many requests for account {result.account_id}: plan {result.plan} allows "
        f"{allows} per minute; retry in {result.retry_after} s.",
        result.retry_after,
    )


async def _named_account(request: web.Request) -> tuple[str | None, str | None, bool] | None:
    """The account a request names: (session id, or None and account id, whether it
    creates a session); None when it names none (a route without one, an id that is
    not valid, or a create whose body has no valid ``account_id``)."""
    match = request.match_info
    if match.http_exception is not None:
        return None
    resource = match.route.resource
    creates = (request.method, resource.canonical if resource else "") in _CREATE_ROUTES
    session_id = match.get("session_id")
    if session_id is not None:
        return (session_id, None, creates) if ID_PATTERN.fullmatch(session_id) else None
    account_id = match.get("account_id")
    if account_id is None and creates:
        try:
            account_id = (await _json_object(request)).get("account_id")
        except errors.LifecycleError:
            return None  # the handler reports the body's problem (a body too large: 413 here)
    if isinstance(account_id, str) and ID_PATTERN.fullmatch(account_id):
        return None, account_id, creates
    return None


def rate_limit_headers(result: RateLimitResult) -> dict[str, str]:
    """The IETF httpapi rate-limit headers (structured-field form) of the limits."""
    if not result.limits:
        return {}
    limits = result.limits
    policy = [f'"{x.name}";q={x.quota};w={_RATE_WINDOW_SECONDS}' for x in limits]
    state = [f'"{x.name}";r={x.remaining};t={x.reset_seconds}' for x in limits]
    return {"RateLimit-Policy": ", ".join(policy), "RateLimit": ", ".join(state)}


@web.middleware
async def rate_limit_headers_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    response = await handler(request)
    result = request.get(RATE_LIMIT)
    if result is not None:
        response.headers.update(rate_limit_headers(result))
    return response


# Request bodies and fields


async def _json_object(request: web.Request) -> dict[str, Any]:
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise errors.UnsupportedMediaType("The body must be JSON (Content-Type: application/json).")
    raw = await request.read()
    try:
        body = json.loads(
            raw.decode("utf-8"), parse_int=_parse_int, object_pairs_hook=_no_duplicate_keys
        )
    except UnicodeDecodeError:
        raise errors.BadRequest("The body is not valid UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise errors.BadRequest(f"The body is not valid JSON: {exc.msg}.") from None
    except RecursionError:
        raise errors.BadRequest("The body is nested too deeply.") from None
    except _DuplicateKey as exc:
        raise errors.InvalidRequest(f"The field {_name(exc.key)} appears more than once.") from None
    if not isinstance(body, dict):
        raise errors.BadRequest("The body must be a JSON object.")
    return body


class TooLarge:
    """A JSON integer beyond what any field accepts (more than 2⁶³ or 4300 digits)."""


TOO_LARGE = TooLarge()
_INT64_LIMIT = 2**63


def _parse_int(text: str) -> int | TooLarge:
    # Python refuses to parse integers of more than 4300 digits (ValueError); no field
    # takes one beyond 2⁶³, so both are reported as too large for the field they are in.
    if len(text.lstrip("-")) > 19:
        return TOO_LARGE
    value = int(text)
    return TOO_LARGE if abs(value) >= _INT64_LIMIT else value


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:
            raise _DuplicateKey(key)
        body[key] = value
    return body


def _name(field: str) -> str:
    """A field name as it may appear in a message: quoted, escaped, ASCII."""
    return json.dumps(field)


def _unknown_fields(body: dict[str, Any], known: set[str]) -> str | None:
    unknown = sorted(set(body) - known)
    if not unknown:
        return None
    return f"unknown field {_name(unknown[0])} (fields: {', '.join(sorted(known))})"


def _int_field(
    body: dict[str, Any], name: str, low: int, high: int | None
) -> tuple[int | None, str | None]:
    """An optional integer field: (value or None when absent, problem or None).

    A JSON number without a fractional part (``60.0``) counts as an integer, as in JSON
    Schema.
    """
    if name not in body:
        return None, None
    value = body[name]
    if isinstance(value, float) and value.is_integer():
        value = TOO_LARGE if abs(value) >= _INT64_LIMIT else int(value)
    if value is TOO_LARGE:
        return None, f"{name} is too large"
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"{name} must be an integer"
    if value < low or (high is not None and value > high):
        if high is None:
            return None, f"{name} must be at least {low}"
        return None, f"{name} must be between {low} and {high}"
    return value, None


def _bool_field(body: dict[str, Any], name: str) -> tuple[bool | None, str | None]:
    if name not in body:
        return None, None
    value = body[name]
    if not isinstance(value, bool):
        return None, f"{name} must be true or false"
    return value, None


def _id_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        return f"{name} must be 1-128 characters of [A-Za-z0-9._:-] starting with a letter or digit"
    return None


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    problem = _id_problem(name, value)
    if problem:
        raise errors.InvalidRequest(problem + ".")
    return value


def _view(view: SessionView, status: int = 200) -> web.Response:
    return web.json_response(view.status_object(), status=status)


# Sessions


async def create_session(request: web.Request) -> web.Response:
    body = await _json_object(request)
    store, metrics = request.app[STORE], request.app[METRICS]
    if "account_id" not in body:
        metrics.admissions.labels(result="invalid").inc()
        raise errors.InvalidRequest("account_id is required.")
    problem = _id_problem("account_id", body["account_id"])
    if problem:
        metrics.admissions.labels(result="invalid").inc()
        raise errors.InvalidRequest(problem + ".")
    account_id: str = body["account_id"]
    scope = _principal(request).account_id
    if scope is not None and account_id != scope:
        raise errors.Forbidden(f"This API key may only create sessions of account {scope}.")
    # Other field errors are reported after the billing and concurrency checks (SPEC §2).
    session_id = body.get("session_id", new_session_id())
    id_problem = _id_problem("session_id", session_id)
    timeout, inactivity, auto_kill, on_inactivity, problem = _limits(
        body, _CREATE_FIELDS, id_problem
    )
    deferred = problem or ""
    try:
        view = await store.create_session(
            session_id if id_problem is None else "",
            account_id,
            timeout,
            inactivity,
            auto_kill is not False,
            deferred,
            on_inactivity or "terminate",
            rate=request.get(RATE_CHECK),
        )
    except errors.LifecycleError as exc:
        result = _ADMISSION_RESULT.get(type(exc))
        if result:
            metrics.admissions.labels(result=result).inc()
        raise
    metrics.admissions.labels(result="admitted").inc()
    request.app[ENGINE].nudge(store.partition_for(account_id), view.wake_ms)
    log.info("session_created", session_id=view.record.session_id, account_id=account_id)
    return _view(view, 201)


def _limits(
    body: dict[str, Any], allowed: set[str], id_problem: str | None = None
) -> tuple[int | None, int | None, bool | None, str | None, str | None]:
    """``timeout_seconds``, ``inactivity_timeout_seconds``, ``auto_kill``,
    ``on_inactivity`` and the first problem with the body's fields (an unknown field,
    then the id, then the limits in order), as create and PATCH read them.
    """
    timeout, timeout_problem = _int_field(body, "timeout_seconds", 1, None)
    inactivity, inactivity_problem = _int_field(
        body, "inactivity_timeout_seconds", 1, MAX_INACTIVITY_SECONDS
    )
    auto_kill, auto_kill_problem = _bool_field(body, "auto_kill")
    on_inactivity = body.get("on_inactivity")
    on_inactivity_problem = None
    if "on_inactivity" in body and on_inactivity not in ON_INACTIVITY:
        on_inactivity, on_inactivity_problem = None, "on_inactivity must be terminate or pause"
    problems = (_unknown_fields(body, allowed), id_problem, timeout_problem,
                inactivity_problem, auto_kill_problem, on_inactivity_problem)  # fmt: skip
    return (timeout, inactivity, auto_kill, on_inactivity,
            next((p for p in problems if p), None))  # fmt: skip


async def get_session(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    scope = _principal(request).account_id
    return _view(await request.app[STORE].get_session(session_id, account=scope))


async def _source(request: web.Request) -> str:
    """The optional body ``{"source": ...}`` of a keepalive or activity; default ``api``."""
    if not request.can_read_body:
        return "api"
    body = await _json_object(request)
    problem = _unknown_fields(body, _TOUCH_FIELDS)
    if problem:
        raise errors.InvalidRequest(problem + ".")
    source = body.get("source", "api")
    if not isinstance(source, str) or not SOURCE_PATTERN.fullmatch(source):
        raise errors.InvalidRequest(f"source must be {SOURCE_RULE}.")
    return source


async def keepalive(request: web.Request) -> web.Response:
    return await _touch(request, activity=False)


async def activity(request: web.Request) -> web.Response:
    """An action recorded over HTTP, as a stream ``activity`` event records it."""
    return await _touch(request, activity=True)


async def _touch(request: web.Request, activity: bool) -> web.Response:
    session_id = _path_id(request, "session_id")
    source = await _source(request)
    scope = _principal(request).account_id
    store = request.app[STORE]
    view = await store.keepalive(
        session_id, account=scope, source=source, activity=activity, rate=request.get(RATE_CHECK)
    )
    return _view(view)


def _nudge(request: web.Request, view: SessionView) -> None:
    """Wake the partition's expirer if the session's deadline moved nearer."""
    record = view.record
    pk = request.app[STORE].partition_for(record.account_id)
    request.app[ENGINE].nudge(pk, record.terminates_at)


async def pause(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    scope = _principal(request).account_id
    view = await request.app[STORE].pause(session_id, account=scope)
    if view.changed:
        request.app[METRICS].pauses.labels(reason="requested").inc()
        _nudge(request, view)
        log.info("session_paused", session_id=session_id,
                 account_id=view.record.account_id, reason="requested")  # fmt: skip
    return _view(view)


async def resume(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    scope = _principal(request).account_id
    view = await request.app[STORE].resume(session_id, account=scope)
    if view.changed:
        request.app[METRICS].resumes.inc()
        _nudge(request, view)
        if view.record.metered_since is not None:  # its account's depletion moved nearer
            pk = request.app[STORE].partition_for(view.record.account_id)
            request.app[ENGINE].nudge(pk, view.now_ms)
        log.info("session_resumed", session_id=session_id, account_id=view.record.account_id)
    return _view(view)


async def timeline(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    scope = _principal(request).account_id
    return web.json_response({"events": await request.app[STORE].timeline(session_id, scope)})


async def patch_session(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    body = await _json_object(request)
    timeout, inactivity, auto_kill, on_inactivity, problem = _limits(body, _PATCH_FIELDS)
    if problem:
        raise errors.InvalidRequest(problem + ".")
    store = request.app[STORE]
    view = await store.patch_session(
        session_id, timeout, inactivity, auto_kill, account=_principal(request).account_id,
        on_inactivity=on_inactivity,
    )  # fmt: skip
    record = view.record
    _nudge(request, view)
    log.info("session_updated", session_id=session_id, account_id=record.account_id,
             fields=sorted(body))  # fmt: skip
    if record.terminated:
        reason = record.termination_reason or "inactivity"
        request.app[METRICS].terminations.labels(reason=reason).inc()
        log.info("session_terminated", session_id=session_id,
                 account_id=record.account_id, reason=reason)  # fmt: skip
    elif record.paused and record.paused_at == view.now_ms:
        # The new inactivity deadline had passed: this PATCH paused it, at its own time.
        request.app[METRICS].pauses.labels(reason="inactivity").inc()
        log.info("session_paused", session_id=session_id,
                 account_id=record.account_id, reason="inactivity")  # fmt: skip
    return _view(view)


async def terminate(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    scope = _principal(request).account_id
    view = await request.app[STORE].terminate(session_id, account=scope)
    if view.changed:
        # A deadline that had passed before the request ends the session with its reason.
        reason = view.record.termination_reason or "requested"
        request.app[METRICS].terminations.labels(reason=reason).inc()
        log.info("session_terminated", session_id=session_id,
                 account_id=view.record.account_id, reason=reason)  # fmt: skip
    return _view(view)


# Accounts


def _account_in_scope(request: web.Request) -> str:
    account_id = _path_id(request, "account_id")
    scope = _principal(request).account_id
    if scope is not None and account_id != scope:
        raise errors.AccountNotFound(f"No account {account_id}.")
    return account_id


async def get_account(request: web.Request) -> web.Response:
    account_id = _account_in_scope(request)
    view = await request.app[STORE].get_account(account_id)
    return web.json_response(view.account_object())


async def put_account(request: web.Request) -> web.Response:
    account_id = _path_id(request, "account_id")
    if not _principal(request).is_admin:
        raise errors.Forbidden("Only an admin key may change an account.")
    body = await _json_object(request)
    store = request.app[STORE]
    plan = body.get("plan")
    billing_status = body.get("billing_status")
    problem = _unknown_fields(body, _ACCOUNT_FIELDS)
    known_plan = isinstance(plan, str) and plan in store.plans
    if problem is None and "plan" in body and not known_plan:
        problem = f"plan must be one of {', '.join(sorted(store.plans))}"
    if problem is None and "billing_status" in body and billing_status not in BILLING_STATUSES:
        problem = f"billing_status must be one of {', '.join(BILLING_STATUSES)}"
    if problem:
        raise errors.InvalidRequest(problem + ".")
    view, ended = await store.set_account(account_id, plan, billing_status)
    if ended:
        request.app[METRICS].terminations.labels(reason="billing").inc(ended)
    log.info("account_updated", account_id=account_id, plan=view.plan,
             billing_status=view.billing_status, sessions_terminated=ended)  # fmt: skip
    return web.json_response(view.account_object())


def _top_up_problem(body: dict[str, Any]) -> tuple[int, str] | str:
    """The top-up body's (amount in micro-credits, idempotency key), or what is wrong."""
    problem = _unknown_fields(body, _TOP_UP_FIELDS)
    if problem:
        return problem
    if "amount" not in body:
        return "amount is required"
    amount = body["amount"]
    if amount is TOO_LARGE:
        return f"amount must be at most {MAX_TOP_UP_CREDITS} credits"
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return "amount must be a number of credits"
    try:
        micro = top_up_micro(repr(amount))
    except ValueError as exc:
        return str(exc)
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        return "idempotency_key is required: 1-255 printable ASCII characters without spaces"
    return micro, key


async def top_up(request: web.Request) -> web.Response:
    account_id = _path_id(request, "account_id")
    if not _principal(request).is_admin:
        raise errors.Forbidden("Only an admin key may top up an account's credits.")
    parsed = _top_up_problem(await _json_object(request))
    if isinstance(parsed, str):
        raise errors.InvalidRequest(parsed + ".")
    store = request.app[STORE]
    view = await store.top_up(account_id, *parsed)
    if view.depletes_at is not None:  # a first top-up may start a depletion
        warn_ms = store.settings.low_balance_warn_seconds * 1000
        request.app[ENGINE].nudge(store.partition_for(account_id), view.depletes_at - warn_ms)
    log.info("credits_topped_up", account_id=account_id, amount_micro=parsed[0],
             balance=view.balance_micro)  # fmt: skip
    return web.json_response(view.account_object())


async def list_sessions(request: web.Request) -> web.Response:
    account_id = _account_in_scope(request)
    views = await request.app[STORE].list_sessions(account_id)
    return web.json_response({"sessions": [v.status_object() for v in views]})


# The API's description


@cache
def openapi_document() -> bytes:
    """The OpenAPI 3.1 description shipped with the package (``daemon/openapi.json``)."""
    return (resources.files("daemon") / "openapi.json").read_bytes()


@lru_cache(maxsize=8)
def served_openapi_document(plans: tuple[tuple[str, int], ...]) -> bytes:
    """The document with the loaded plans (name, max duration) in place of the shipped ones:
    the enum of ``plan`` and the largest ``timeout_seconds``. The shipped plans give the
    shipped document, byte for byte."""
    doc = json.loads(openapi_document())
    schemas = doc["components"]["schemas"]
    schemas["AccountUpdate"]["properties"]["plan"]["enum"] = [name for name, _ in plans]
    for name in ("SessionCreate", "SessionUpdate"):
        schemas[name]["properties"]["timeout_seconds"]["maximum"] = max(m for _, m in plans)
    return (json.dumps(doc, indent=2) + "\n").encode()


async def openapi(request: web.Request) -> web.Response:
    plans = request.app[STORE].plans.values()
    body = served_openapi_document(tuple((p.name, p.max_duration_seconds) for p in plans))
    return web.Response(body=body, content_type="application/json")


def make_api(store: Store, engine: Engine, metrics: Metrics) -> web.Application:
    app = web.Application(
        middlewares=[
            rate_limit_headers_middleware,
            error_middleware,
            auth_middleware,
            rate_limit_middleware,
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[STORE] = store
    app[ENGINE] = engine
    app[METRICS] = metrics
    settings = store.settings
    app[ACCESS] = Access(tuple(settings.keys()), settings.trust_forwarded_for)
    app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_get("/v1/sessions/{session_id}", get_session)
    app.router.add_patch("/v1/sessions/{session_id}", patch_session)
    app.router.add_delete("/v1/sessions/{session_id}", terminate)
    app.router.add_post("/v1/sessions/{session_id}/keepalive", keepalive)
    app.router.add_post("/v1/sessions/{session_id}/activity", activity)
    app.router.add_post("/v1/sessions/{session_id}/pause", pause)
    app.router.add_post("/v1/sessions/{session_id}/resume", resume)
    app.router.add_get("/v1/sessions/{session_id}/events", timeline)
    app.router.add_get("/v1/accounts/{account_id}", get_account)
    app.router.add_put("/v1/accounts/{account_id}", put_account)
    app.router.add_get("/v1/accounts/{account_id}/sessions", list_sessions)
    app.router.add_post("/v1/accounts/{account_id}/credits", top_up)
    dead_letters.add_routes(app)
    add_console(app, store, engine, metrics)
    session_list.add_routes(app)
    webhook_api.add_routes(app)
    return app
