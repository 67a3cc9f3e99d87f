"""A real aiohttp webhook receiver for the tests: verifies every request with
``standardwebhooks`` and records what it got, how many requests per ``webhook-id`` were
in flight at once, and answers as the test tells it (a status, or hanging)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from tests.servers import free_port


@dataclass
class Received:
    webhook_id: str
    payload: dict[str, Any]
    at: float  # the receiver's loop time
    wall: float  # time.time() when it arrived


@dataclass
class Receiver:
    """Answers ``answer(webhook_id)`` (a status; None hangs until the receiver stops)
    after ``delay`` seconds; ``got`` holds the requests answered 2xx, ``attempts`` counts
    every verified request per id."""

    secret: str = ""
    answer: Callable[[str], int | None] = lambda _: 200
    delay: float = 0.0
    got: list[Received] = field(default_factory=list)
    refused: int = 0
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_in_flight: int = 0
    port: int = field(default_factory=free_port)
    redirect_to: str = ""  # the Location of a 3xx answer
    _runner: web.AppRunner | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> set[str]:
        return {r.webhook_id for r in self.got}

    async def _receive(self, request: web.Request) -> web.Response:
        data = await request.text()
        try:
            payload = Webhook(self.secret).verify(data, dict(request.headers))
        except Exception:
            self.refused += 1
            return web.Response(status=400)
        msg_id = request.headers["webhook-id"]
        arrived = asyncio.get_running_loop().time(), time.time()
        self.attempts[msg_id] += 1
        self.in_flight[msg_id] += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[msg_id])
        try:
            status = self.answer(msg_id)
            if status is None:
                await self._stop.wait()
                status = 503
            elif self.delay:
                await asyncio.sleep(self.delay)
            if 200 <= status < 300:
                self.got.append(Received(msg_id, payload, *arrived))
            if 300 <= status < 400 and self.redirect_to:
                return web.Response(status=status, headers={"Location": self.redirect_to})
            return web.Response(status=status)
        finally:
            self.in_flight[msg_id] -= 1

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
