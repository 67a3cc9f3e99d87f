"""Every live session, paged: ``GET /v1/sessions?after=&limit=`` (admin).

Pages walk each partition's deadlines set with ``ZSCAN`` (``list_sessions.lua``), one step
per script call, so a page costs about its own size however many sessions there are.
``next`` is ``"<partition>:<ZSCAN cursor>"``, passed back as ``after``; null at the end.
As with ``SCAN``, a session live for the whole walk is listed at least once (the walk
may list one twice while the set grows), and a page holds about ``limit`` sessions: a
step may return a few more, and a small partition is returned whole.
"""

from __future__ import annotations

import re

from aiohttp import web

from daemon import errors
from daemon.dead_letters import admin_store, page_limit
from daemon.store import SessionView, Store

_CURSOR = re.compile(r"([0-9]{1,6}):([0-9]{1,19})")


def _cursor(after: str | None) -> tuple[int, str]:
    """A well-formed cursor that no page can have given (a partition past the last) is
    past the end of what it names, not an error. 19 digits always fit ZSCAN's 64 bits."""
    if not after:
        return 0, "0"
    match = _CURSOR.fullmatch(after)
    if match is None:
        raise errors.InvalidRequest(
            "after must be the next cursor of the previous page, such as 0:17."
        )
    return int(match[1]), match[2]


async def list_page(
    store: Store, after: str | None, limit: int
) -> tuple[list[SessionView], str | None]:
    """About ``limit`` live sessions from the cursor on, and the next cursor (None: the end)."""
    partition, cursor = _cursor(after)
    found: list[SessionView] = []
    seen: set[str] = set()
    if partition >= len(store.partitions):
        return found, None
    while len(found) < limit:
        views, cursor = await store.live_sessions_step(partition, cursor, limit - len(found))
        found += [v for v in views if v.record.session_id not in seen]
        seen.update(v.record.session_id for v in views)
        if cursor == "0":
            partition += 1
            if partition >= len(store.partitions):
                return found, None
    return found, f"{partition}:{cursor}"


async def list_handler(request: web.Request) -> web.Response:
    store = admin_store(request, "list every account's sessions")
    page, cursor = await list_page(store, request.query.get("after") or None, page_limit(request))
    return web.json_response({"sessions": [v.status_object() for v in page], "next": cursor})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/sessions", list_handler)
