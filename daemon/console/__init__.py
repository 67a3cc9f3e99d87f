"""The operator console (SPEC §10): server-rendered pages under ``/ui`` on the API listener.

A sub-application of the API with its own middleware: admin login by cookie
(``daemon.console.auth``), a CSRF token on every POST, refusals rendered as pages.
Templates are Jinja2 (``templates/``); htmx and uPlot are shipped in ``static/``, so
the console works offline with no build step. Reads are paged (``daemon.console.reads``).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from daemon import __version__, dead_letters, errors
from daemon.auth import client_address, match_key
from daemon.console import auth, reads
from daemon.console.charts import Sampler
from daemon.engine import Engine
from daemon.metrics import Metrics
from daemon.model import ID_PATTERN
from daemon.store import SessionView, Store
from daemon.webhook_store import replay_delivery

log = structlog.get_logger("lifecycled.console")

PREFIX = "/ui"
STORE = web.AppKey("console_store", Store)
ENGINE = web.AppKey("console_engine", Engine)
METRICS = web.AppKey("console_metrics", Metrics)
SAMPLER = web.AppKey("console_sampler", Sampler)
OPEN = web.AppKey("console_open", bool)  # no API keys: no login
TOKEN = web.RequestKey("console_token", str)
NEW_TOKEN = web.RequestKey("console_new_token", str)

# Scripts and styles only from the console's own files (uPlot sets element styles).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
ID_RULE = "Ids are 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit."
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _listens_everywhere(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        return False


def console_url(host: str, port: int) -> str:
    """The console's address as a browser on this machine opens it."""
    if _listens_everywhere(host):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{PREFIX}/"


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _page(request: web.Request, template: str, code: int = 200, **context: Any) -> web.Response:
    token = request.get(TOKEN)
    base = {
        "csrf": auth.csrf_token(token) if token else "",
        "logged_in": token is not None,
        "open": request.app[OPEN],
        "path": request.path,
        **_flash(request),
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=code)


FLASH = ("msg", "error", "session")


def _redirect(request: web.Request, location: str, **query: str | None) -> web.HTTPSeeOther:
    """A redirect after a form, carrying its outcome (``msg``, ``error``, ``session``)
    signed for this login, so a link from elsewhere cannot make the console say things."""
    params = {k: v for k, v in query.items() if v}
    token = request.get(TOKEN)
    if params and token:
        params["sig"] = auth.flash_signature(token, [params.get(k, "") for k in FLASH])
    return web.HTTPSeeOther(location + ("?" + urlencode(params) if params else ""))


def _flash(request: web.Request) -> dict[str, str]:
    """The outcome a redirect of this login carried, or nothing."""
    token = request.get(TOKEN)
    values = [request.query.get(k, "") for k in FLASH]
    if not token or not any(values):
        return {}
    if not hmac.compare_digest(request.query.get("sig", ""), auth.flash_signature(token, values)):
        return {}
    return {k: v for k, v in zip(FLASH, values, strict=True) if v}


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Login (or an open console), the CSRF token of every POST, refusals as pages."""
    app = request.app
    store = app[STORE]
    prefix = store.settings.key_prefix
    if request.path.startswith(PREFIX + "/static/"):
        return await handler(request)
    token = request.cookies.get(auth.COOKIE)
    try:
        if app[OPEN]:
            # Nothing to log in to: the cookie only carries the browser's CSRF secret.
            if token is not None and auth.plausible_token(token):
                request[TOKEN] = token
            else:
                request[TOKEN] = request[NEW_TOKEN] = auth.new_token()
        elif token is not None and await auth.valid_session(store.redis, prefix, token):
            request[TOKEN] = token
        elif request.path != PREFIX + "/login":
            if request.method == "POST":
                return _page(
                    request,
                    "error.html",
                    403,
                    title="Not logged in",
                    message="Log in again: your console login has ended.",
                )
            raise web.HTTPSeeOther(PREFIX + "/login")
        if request.method == "POST" and request.path != PREFIX + "/login":
            form = await request.post()
            presented = form.get("csrf")
            if not auth.csrf_ok(request[TOKEN], presented if isinstance(presented, str) else None):
                log.info("console_csrf_refused", path=request.path)
                return _page(
                    request,
                    "error.html",
                    403,
                    title="Refused",
                    message="The form's CSRF token is missing or wrong; "
                    "reload the page and try again.",
                )
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.status != 405:
            return _page(
                request,
                "error.html",
                exc.status,
                title=exc.reason,
                message="There is no such page.",
            )
        # Redirects are answered here: the API's error middleware would make them errors.
        response = web.Response(status=exc.status, headers=exc.headers)
    except errors.LifecycleError as exc:
        return _page(request, "error.html", exc.status, title=exc.code, message=exc.message)
    except (RedisError, OSError) as exc:
        log.warning("console_redis_unavailable", path=request.path, error=str(exc))
        return _page(
            request,
            "error.html",
            503,
            title="Redis is unreachable",
            message="Redis does not answer; this page will work again once it does.",
        )
    new = request.get(NEW_TOKEN)
    if new is not None:
        auth.set_cookie(request, response, auth.COOKIE, new)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


# Login


async def login_form(request: web.Request) -> web.StreamResponse:
    if request.get(TOKEN):
        raise web.HTTPSeeOther(PREFIX + "/")
    nonce = request.cookies.get(auth.LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = _page(request, "login.html", login_csrf=nonce, title="Log in")
    auth.set_cookie(request, response, auth.LOGIN_COOKIE, nonce)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    form = await request.post()
    nonce = request.cookies.get(auth.LOGIN_COOKIE)
    presented = form.get("csrf")
    if not nonce or not isinstance(presented, str) or not hmac.compare_digest(nonce, presented):
        return _page(
            request,
            "login.html",
            403,
            login_csrf=nonce or "",
            title="Log in",
            failure="The form expired; please log in again.",
        )
    key = form.get("key")
    keys = store.settings.keys()
    found = match_key(keys, key) if isinstance(key, str) and key else None
    admin = found is not None and found.account_id is None
    address = client_address(
        request.remote, request.headers.get("X-Forwarded-For"), store.settings.trust_forwarded_for
    )
    state = await store.auth_failures(address, record=not admin)
    if state.blocked:
        return _page(
            request,
            "login.html",
            429,
            login_csrf=nonce,
            title="Log in",
            failure="Too many failed logins from your address; try again later.",
        )
    if not admin:
        log.info(
            "console_login_failed",
            client=address,
            failures=state.count,
            reason="not_admin" if found else "wrong_key",
        )
        failure = "That key is not an admin key." if found else "That key is not valid."
        return _page(request, "login.html", 401, login_csrf=nonce, title="Log in", failure=failure)
    token = await auth.new_session(store.redis, store.settings.key_prefix)
    log.info("console_login", client=address)
    response = web.Response(status=303, headers={"Location": PREFIX + "/"})
    auth.set_cookie(request, response, auth.COOKIE, token)
    response.del_cookie(auth.LOGIN_COOKIE, path=PREFIX)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    await auth.end_session(store.redis, store.settings.key_prefix, request[TOKEN])
    response = web.Response(status=303, headers={"Location": PREFIX + "/login"})
    response.del_cookie(auth.COOKIE, path=PREFIX)
    return response


# Overview and charts


def _gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def _total(metrics: Metrics, name: str) -> float:
    """The sum of a gauge's series over its labels (the partitions)."""
    return sum(
        sample.value
        for metric in metrics.registry.collect()
        if metric.name == name
        for sample in metric.samples
    )


async def overview(request: web.Request) -> web.Response:
    store, metrics = request.app[STORE], request.app[METRICS]
    counts = await reads.overview(store)
    health = {
        "redis_up": _gauge(metrics, "lifecycle_redis_up") == 1,
        "ready": _gauge(metrics, "lifecycle_ready") == 1,
        "consuming": int(_gauge(metrics, "lifecycle_partitions_consumed") or 0),
        "backlog": int(_total(metrics, "lifecycle_events_backlog")),
    }
    return _page(request, "overview.html", title="Overview", counts=counts, health=health)


async def metrics_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[SAMPLER].series())


# Sessions


def _partition_arg(request: web.Request, store: Store) -> int:
    text = request.query.get("partition", "0")
    if not text.isdigit() or int(text) >= len(store.partitions):
        raise errors.InvalidRequest(f"No partition {text[:20]}.")
    return int(text)


def _offset_arg(request: web.Request, name: str = "offset") -> int:
    text = request.query.get(name, "0")
    if not text.isdigit() or len(text) > 12:
        raise errors.InvalidRequest(f"{name} must be a whole number.")
    return int(text)


async def sessions(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    query = (request.query.get("q") or "").strip()
    context: dict[str, Any] = {"title": "Sessions", "q": query, "partitions": store.partitions}
    if query:
        if not ID_PATTERN.fullmatch(query):
            return _page(
                request,
                "sessions.html",
                views=[],
                searched=False,
                error=ID_RULE,
                **context,
            )
        try:
            await store.get_session(query)
        except errors.SessionNotFound:
            owned = await reads.account_sessions(store, query, 0)
            if owned.total:
                raise web.HTTPSeeOther(f"{PREFIX}/accounts/{query}") from None
            return _page(request, "sessions.html", views=[], searched=True, **context)
        raise web.HTTPSeeOther(f"{PREFIX}/sessions/{query}")
    partition = _partition_arg(request, store)
    page = await reads.soonest_sessions(store, store.partitions[partition], _offset_arg(request))
    return _page(
        request,
        "sessions.html",
        views=_rows(page.views),
        page=page,
        partition=partition,
        page_size=reads.PAGE,
        **context,
    )


def _rows(views: list[SessionView]) -> list[dict[str, Any]]:
    return [_row(v) for v in views]


def _row(view: SessionView) -> dict[str, Any]:
    status = view.status_object()
    return {"status": status, "countdown": _countdown(status)}


def _countdown(status: dict[str, Any]) -> float | None:
    if status.get("terminates_at") is None or status.get("status") == "terminated":
        return None
    remaining = status.get("remaining_seconds")
    return float(remaining) if isinstance(remaining, int | float) else None


def _session_id(request: web.Request) -> str:
    sid = request.match_info["sid"]
    if not ID_PATTERN.fullmatch(sid):
        raise errors.SessionNotFound(f"No session {sid[:128]}.")
    return sid


async def session(request: web.Request) -> web.Response:
    store = request.app[STORE]
    sid = _session_id(request)
    view = await store.get_session(sid)
    status = view.status_object()
    timeline = await store.timeline(sid)
    return _page(
        request,
        "session.html",
        title=f"Session {sid}",
        status=status,
        remaining=_countdown(status),
        timeline=timeline,
        sid=sid,
    )


def _counted(request: web.Request, view: SessionView, reason: str) -> None:
    """Count and log a termination this console action caused, as the API does."""
    record = view.record
    request.app[METRICS].terminations.labels(reason=reason).inc()
    log.info(
        "session_terminated",
        session_id=record.session_id,
        account_id=record.account_id,
        reason=reason,
        via="console",
    )


def _paused_or_resumed(request: web.Request, view: SessionView, done: str) -> str:
    """Count, log and wake the expirer for a pause or resume (SPEC §8), as the API does."""
    record = view.record
    if not view.changed:
        return f"Nothing to do: the session was already {record.status}."
    pk = request.app[STORE].partition_for(record.account_id)
    engine, metrics = request.app[ENGINE], request.app[METRICS]
    engine.nudge(pk, record.terminates_at)
    if record.paused:
        metrics.pauses.labels(reason="requested").inc()
        log.info("session_paused", session_id=record.session_id,
                 account_id=record.account_id, reason="requested", via="console")  # fmt: skip
    else:
        metrics.resumes.inc()
        if record.metered_since is not None:  # its account's depletion moved nearer
            engine.nudge(pk, view.now_ms)
        log.info("session_resumed", session_id=record.session_id,
                 account_id=record.account_id, via="console")  # fmt: skip
    return done


async def session_action(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    sid = _session_id(request)
    action = request.match_info["action"]
    form = await request.post()
    here = f"{PREFIX}/sessions/{sid}"
    try:
        if action == "terminate":
            view = await store.terminate(sid)
            if view.changed:
                _counted(request, view, view.record.termination_reason or "requested")
            message = "Terminated." if view.changed else "The session was already terminated."
        elif action == "extend":
            text = str(form.get("seconds", ""))
            if not text.isdigit() or not 1 <= int(text) <= 10**9:
                raise errors.InvalidRequest("Extend by a whole number of seconds (at least 1).")
            current = (await store.get_session(sid)).record
            view = await store.patch_session(sid, current.max_lifetime_seconds + int(text))
            record = view.record
            pk = store.partition_for(record.account_id)
            request.app[ENGINE].nudge(pk, record.terminates_at)
            message = f"Maximum lifetime now {record.max_lifetime_seconds} s."
            if record.terminated:
                _counted(request, view, record.termination_reason or "inactivity")
        elif action == "pause":
            view = await store.pause(sid)
            message = _paused_or_resumed(request, view, "Paused.")
        elif action == "resume":
            view = await store.resume(sid)
            message = _paused_or_resumed(request, view, "Resumed.")
        else:
            raise web.HTTPNotFound()
    except errors.LifecycleError as exc:
        raise _redirect(request, here, error=exc.message) from None
    log.info("console_action", action=action, session_id=sid)
    raise _redirect(request, here, msg=message)


# Accounts


async def accounts(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    query = (request.query.get("q") or "").strip()
    if query:
        if ID_PATTERN.fullmatch(query):
            raise web.HTTPSeeOther(f"{PREFIX}/accounts/{query}")
        raise _redirect(request, PREFIX + "/accounts", error=ID_RULE)
    partition = _partition_arg(request, store)
    page = await reads.account_ids(
        store, store.partitions[partition], _offset_arg(request, "cursor")
    )
    views = await asyncio.gather(*(store.get_account(a) for a in page.account_ids))
    return _page(
        request,
        "accounts.html",
        title="Accounts",
        page=page,
        partition=partition,
        partitions=store.partitions,
        accounts=[v.account_object() for v in views],
    )


async def account(request: web.Request) -> web.Response:
    store = request.app[STORE]
    account_id = request.match_info["aid"]
    if not ID_PATTERN.fullmatch(account_id):
        raise errors.AccountNotFound(f"No account {account_id[:128]}.")
    view = await store.get_account(account_id)
    live = await reads.account_sessions(store, account_id, _offset_arg(request, "cursor"))
    return _page(
        request,
        "account.html",
        title=f"Account {account_id}",
        account=view.account_object(),
        views=_rows(live.views),
        live=live,
    )


# Dead letters


def _ms_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _entry_time(entry_id: str) -> str:
    return _ms_time(int(entry_id.partition("-")[0]))


async def dead_letter_list(request: web.Request) -> web.Response:
    store = request.app[STORE]
    after = request.query.get("after") or None
    page, cursor = await dead_letters.list_page(store, None, after, reads.PAGE)
    for entry in page:
        entry["time"] = _entry_time(entry["id"])
    return _page(
        request,
        "dead_letters.html",
        title="Dead letters",
        entries=page,
        cursor=cursor,
        after=after,
        replayed=_flash(request).get("session"),
    )


async def dead_letter_action(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    action = request.match_info["action"]
    here = PREFIX + "/dead-letters"
    try:
        pk = dead_letters._partition(store, request.match_info["partition"])
        entry_id = dead_letters._entry_id(request.match_info["entry"])
        if action == "replay":
            form = await request.post()
            new_id = await dead_letters.replay(store, pk, entry_id)
            log.info(
                "console_dead_letter_replayed",
                partition=pk.partition,
                id=entry_id,
                replayed_as=new_id,
            )
            session_id = form.get("session_id")
            raise _redirect(
                request,
                here,
                msg=f"Replayed {entry_id} as events entry {new_id}.",
                session=session_id if isinstance(session_id, str) else None,
            )
        if action == "drop":
            await dead_letters.drop(store, pk, entry_id)
            log.info("console_dead_letter_dropped", partition=pk.partition, id=entry_id)
            raise _redirect(request, here, msg=f"Dropped {entry_id}.")
    except errors.LifecycleError as exc:
        raise _redirect(request, here, error=exc.message) from None
    raise web.HTTPNotFound()


# Webhooks


async def webhooks(request: web.Request) -> web.Response:
    rows = await reads.webhooks(request.app[STORE])
    return _page(request, "webhooks.html", title="Webhooks", rows=rows)


async def webhook_replay(request: web.Request) -> web.StreamResponse:
    """Make a dead delivery due now with a fresh count of attempts (SPEC §9)."""
    store = request.app[STORE]
    here = PREFIX + "/webhooks"
    webhook_id = request.match_info["wid"]
    try:
        pk = dead_letters._partition(store, request.match_info["partition"])
        entry_id = dead_letters._entry_id(request.match_info["entry"])
    except errors.LifecycleError as exc:
        raise _redirect(request, here, error=exc.message) from None
    replayed = None
    if ID_PATTERN.fullmatch(webhook_id):
        replayed = await replay_delivery(store, pk.partition, entry_id, webhook_id)
    if replayed is None:
        raise _redirect(
            request, here, error=f"No dead delivery of {entry_id} to {webhook_id[:128]}."
        )
    log.info(
        "console_delivery_replayed", partition=pk.partition, id=entry_id, webhook_id=webhook_id
    )
    raise _redirect(request, here, msg=f"Replayed the delivery of {entry_id}: due now.")


def _fmt_seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    seconds = max(0, int(value))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def make_console(store: Store, engine: Engine, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[console_middleware])
    app[STORE] = store
    app[ENGINE] = engine
    app[METRICS] = metrics
    app[SAMPLER] = Sampler(metrics.registry)
    app[OPEN] = not store.settings.keys()
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("daemon.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )
    env.filters["duration"] = _fmt_seconds
    env.filters["ms_time"] = _ms_time
    env.globals["prefix"] = PREFIX
    env.globals["static"] = lambda name: f"{PREFIX}/static/{name}?v={__version__}"

    async def start_sampler(_: web.Application) -> None:
        app[SAMPLER].start()

    async def stop_sampler(_: web.Application) -> None:
        await app[SAMPLER].stop()

    app.on_startup.append(start_sampler)
    app.on_cleanup.append(stop_sampler)
    app.router.add_static("/static/", Path(__file__).parent / "static")
    app.router.add_get("/", overview)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/metrics.json", metrics_json)
    app.router.add_get("/sessions", sessions)
    app.router.add_get("/sessions/{sid}", session)
    app.router.add_post("/sessions/{sid}/{action}", session_action)
    app.router.add_get("/accounts", accounts)
    app.router.add_get("/accounts/{aid}", account)
    app.router.add_get("/dead-letters", dead_letter_list)
    app.router.add_post("/dead-letters/{partition}/{entry}/{action}", dead_letter_action)
    app.router.add_get("/webhooks", webhooks)
    app.router.add_post("/webhooks/{wid}/{partition}/{entry}/replay", webhook_replay)
    return app


def add_console(api: web.Application, store: Store, engine: Engine, metrics: Metrics) -> None:
    """Mount the console at ``/ui`` of the API application."""

    async def to_console(_: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": PREFIX + "/"})

    api.router.add_get(PREFIX, to_console)
    api.add_subapp(PREFIX, make_console(store, engine, metrics))
