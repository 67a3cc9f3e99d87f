"""The HTTP API (SPEC §4): JSON in and out, every error as ``{"error", "message"}``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from daemon import errors
from daemon.engine import Engine
from daemon.metrics import Metrics
from daemon.model import ID_PATTERN, MAX_INACTIVITY_SECONDS, new_session_id
from daemon.store import SessionView, Store

log = structlog.get_logger("lifecycled.api")

MAX_BODY_BYTES = 64 * 1024

STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", Engine)
METRICS = web.AppKey("metrics", Metrics)

_CREATE_FIELDS = {
    "session_id",
    "account_id",
    "timeout_seconds",
    "inactivity_timeout_seconds",
    "auto_kill",
}
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
    except errors.ConcurrentSessionLimit as exc:
        return error_response(
            exc.status, exc.code, exc.message, {"Retry-After": str(exc.retry_after)}
        )
    except errors.LifecycleError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413, "payload_too_large", f"The request body is over {MAX_BODY_BYTES} bytes."
        )
    except web.HTTPMethodNotAllowed as exc:
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}.",
            {"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPNotFound:
        return error_response(404, "not_found", f"No route {request.path}.")
    except web.HTTPException as exc:
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason + ".")
    except (RedisError, OSError) as exc:
        log.warning("request_failed_redis_unavailable", path=request.path, error=str(exc))
        return error_response(503, "unavailable", "Redis is unreachable; retry shortly.")


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise _UnsupportedMedia()
    try:
        body = await request.json(loads=json.loads)
    except json.JSONDecodeError as exc:
        raise _BadJson(f"The body is not valid JSON: {exc.msg}.") from None
    except UnicodeDecodeError:
        raise _BadJson("The body is not valid UTF-8.") from None
    if not isinstance(body, dict):
        raise _BadJson("The body must be a JSON object.")
    return body


class _UnsupportedMedia(errors.LifecycleError):
    status = 415
    code = "unsupported_media_type"

    def __init__(self) -> None:
        super().__init__("The body must be JSON (Content-Type: application/json).")


class _BadJson(errors.LifecycleError):
    status = 400
    code = "bad_request"


def _int_field(body: dict[str, Any], name: str, low: int, high: int | None) -> str | None:
    """A problem with an optional integer field, or None."""
    value = body.get(name)
    if value is None and name not in body:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be an integer"
    if value < low or (high is not None and value > high):
        return f"{name} must be between {low} and {high}" if high else f"{name} must be >= {low}"
    return None


def _id_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        return f"{name} must be 1-128 characters of [A-Za-z0-9._:-] starting with a letter or digit"
    return None


def _view(view: SessionView, status: int = 200) -> web.Response:
    return web.json_response(view.status_object(), status=status)


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
    # Other field errors are reported after the billing and concurrency checks (SPEC §2).
    problems = [f"unknown field {name}" for name in sorted(set(body) - _CREATE_FIELDS)]
    session_id = body.get("session_id", new_session_id())
    problems.append(_id_problem("session_id", session_id) or "")
    problems.append(_int_field(body, "timeout_seconds", 1, None) or "")
    problems.append(_int_field(body, "inactivity_timeout_seconds", 1, MAX_INACTIVITY_SECONDS) or "")
    auto_kill = body.get("auto_kill", True)
    if not isinstance(auto_kill, bool):
        problems.append("auto_kill must be true or false")
    deferred = next((p for p in problems if p), "")
    try:
        view = await store.create_session(
            session_id if isinstance(session_id, str) else "",
            account_id,
            body.get("timeout_seconds") if not deferred else None,
            body.get("inactivity_timeout_seconds") if not deferred else None,
            auto_kill is not False,
            deferred,
        )
    except errors.LifecycleError as exc:
        result = _ADMISSION_RESULT.get(type(exc))
        if result:
            metrics.admissions.labels(result=result).inc()
        raise
    metrics.admissions.labels(result="admitted").inc()
    request.app[ENGINE].nudge(store.partition_for(account_id), view.record.terminates_at)
    log.info("session_created", session_id=view.record.session_id, account_id=account_id)
    return _view(view, 201)


async def get_session(request: web.Request) -> web.Response:
    return _view(await request.app[STORE].get_session(request.match_info["session_id"]))


async def keepalive(request: web.Request) -> web.Response:
    return _view(await request.app[STORE].keepalive(request.match_info["session_id"]))


async def terminate(request: web.Request) -> web.Response:
    view = await request.app[STORE].terminate(request.match_info["session_id"])
    if view.changed:
        request.app[METRICS].terminations.labels(reason="requested").inc()
    return _view(view)


def make_api(store: Store, engine: Engine, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[STORE] = store
    app[ENGINE] = engine
    app[METRICS] = metrics
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_get("/v1/sessions/{session_id}", get_session)
    app.router.add_post("/v1/sessions/{session_id}/keepalive", keepalive)
    app.router.add_delete("/v1/sessions/{session_id}", terminate)
    return app
