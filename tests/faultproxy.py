"""A TCP proxy in front of Valkey that loses chosen replies, or delays every chunk.

    proxy = FaultProxy("10.200.0.2", 6379).start()     # its own thread and event loop
    proxy.lose_replies(sha, every=5, limit=3)           # EVALSHA <sha>: 1 call in 5, 3 times
    proxy.delay(200, 100)                               # 200 ms ± 100 ms each way

Losing a reply: the request that names ``sha`` is forwarded, the proxy waits for the
server's answer (so the script has run) and then closes both connections instead of
passing it on. The client sees its connection drop after the script took effect.

Delay: every chunk read in either direction is written on after ``delay ± jitter``
milliseconds, never before a chunk read earlier on the same connection (TCP keeps order),
for kernels without ``tc netem``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class _LoseRule:
    needle: bytes
    every: int
    limit: int
    seen: int = 0
    lost: int = 0


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.delay_ms = 0.0
        self.jitter_ms = 0.0
        self.lost: Counter[str] = Counter()  # replies lost, by rule name
        self.connections = 0
        self._rules: dict[str, _LoseRule] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._rng = random.Random()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms

    def lose_replies(self, name: str, needle: bytes, every: int = 1, limit: int = 1) -> None:
        """Lose the reply of every ``every``-th request containing ``needle``, ``limit`` times."""
        with self._lock:
            self._rules[name] = _LoseRule(needle, every, limit)

    def stop_losing(self) -> None:
        with self._lock:
            self._rules.clear()

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # Forwarding

    def _doomed_by(self, data: bytes) -> str | None:
        """The rule that loses this request's reply, if any (counts the matches)."""
        with self._lock:
            for name, rule in self._rules.items():
                hits = data.count(rule.needle)
                if not hits or rule.lost >= rule.limit:
                    continue
                before = rule.seen
                rule.seen += hits
                if rule.seen // rule.every > before // rule.every:
                    rule.lost += 1
                    return name
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        doomed: asyncio.Event = asyncio.Event()
        doom_name: list[str] = []

        async def upward() -> None:
            tail = b""
            async for data in self._delayed(reader):
                # A needle split across two reads is found in the joined tail.
                name = self._doomed_by(tail + data) if not doomed.is_set() else None
                tail = data[-64:]
                up_writer.write(data)
                await up_writer.drain()
                if name is not None:
                    doom_name.append(name)
                    doomed.set()

        async def downward() -> None:
            async for data in self._delayed(up_reader):
                if doomed.is_set():
                    # The server answered the doomed request: it ran. Drop the answer.
                    self.lost[doom_name[0]] += 1
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upward()), asyncio.ensure_future(downward())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is closing: end this connection like any other
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()

    async def _delayed(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        """The chunks of ``reader``, each held for the proxy's delay (order kept)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        last_due = 0.0

        async def pump() -> None:
            nonlocal last_due
            while True:
                try:
                    data = await reader.read(65536)
                except OSError:
                    data = b""  # reset: like an end of stream
                wait = self.delay_ms + self._rng.uniform(-self.jitter_ms, self.jitter_ms)
                due = max(last_due, time.monotonic() + max(0.0, wait) / 1000)
                last_due = due
                await queue.put((due, data))
                if not data:
                    return

        task = asyncio.ensure_future(pump())
        try:
            while True:
                due, data = await queue.get()
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                if not data:
                    return
                yield data
        finally:
            task.cancel()
