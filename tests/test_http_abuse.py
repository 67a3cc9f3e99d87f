"""The HTTP listener under abuse: huge bodies, slow clients, a thousand connections."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.servers import Daemon

Start = Any


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raise_fd_limit(wanted: int = 4096) -> int:
    """Raise this process's open-files limit towards ``wanted``; returns the limit now.

    The test holds 1,200 client sockets at once, as many as the limit allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def test_oversized_slow_and_many_clients(redis: Any, daemons: Start) -> None:
    # 1,000 concurrent clients and 200 slow ones, unless the machine's hard limit on open
    # files is lower: the daemon, under the same limit, also holds up to 256 connections
    # to Valkey and its own files.
    limit = raise_fd_limit()
    slow_clients = min(200, (limit - 400) // 5)
    clients = min(1000, limit - 400 - slow_clients)
    d: Daemon = daemons()
    assert d.proc is not None
    async with aiohttp.ClientSession(d.api) as http:
        async with http.post("/v1/sessions", json={"account_id": "acme"}) as resp:
            sid = (await resp.json())["session_id"]
    rss_before = rss_kib(d.proc.pid)

    # Oversized bodies are refused with 413 and the JSON error body.
    async with aiohttp.ClientSession(d.api) as http:
        big = b'{"account_id": "' + b"a" * (8 * 1024 * 1024) + b'"}'
        async with http.post(
            "/v1/sessions", data=big, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "payload_too_large"

    # Slow clients hold connections open, sending a header byte now and then ...
    slow: list[socket.socket] = []
    for _ in range(slow_clients):
        s = socket.create_connection(("127.0.0.1", d.http_port))
        s.sendall(b"GET /v1/sessions/" + sid.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    try:
        # ... while a crowd of concurrent clients is answered, none with a 5xx.
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(d.api, connector=connector) as http:

            async def one(i: int) -> int:
                path = f"/v1/sessions/{sid}" if i % 2 else f"/v1/sessions/missing{i}"
                async with http.get(path) as resp:
                    await resp.read()
                    return resp.status

            statuses = Counter(await asyncio.gather(*(one(i) for i in range(clients))))
        assert statuses == {200: clients // 2, 404: clients - clients // 2}
        for s in slow:
            s.sendall(b"X-Slow: 1\r\n")
        assert d.ready()
    finally:
        for s in slow:
            s.close()
    # Memory stays bounded: nothing of the burst is kept.
    assert rss_kib(d.proc.pid) - rss_before < 64 * 1024


async def _raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_unparsable_requests_get_the_json_error_and_leave_no_bytes_in_the_log(
    redis: Any, daemons: Start
) -> None:
    key = "sk-live-7f3a9c1e55d04b2a"
    d: Daemon = daemons()
    port = int(d.api.rsplit(":", 1)[1])
    auth = f"Authorization: Bearer {key}\r\n".encode()
    requests = {
        "nul in a header": b"GET /v1/sessions/x HTTP/1.1\r\nHost: a\r\n" + auth
        + b"X-Bad: a\x00b\r\n\r\n",
        "header over 8190 bytes": b"GET /v1/sessions/x HTTP/1.1\r\nHost: a\r\n" + auth
        + b"X-Long: " + b"k" * 9000 + b"\r\n\r\n",
        "negative content-length": b"POST /v1/sessions HTTP/1.1\r\nHost: a\r\n" + auth
        + b"Content-Length: -5\r\n\r\n",
    }  # fmt: skip
    for what, request in requests.items():
        status, headers, body = await _raw_request(port, request)
        assert status == 400, what
        assert headers["content-type"].startswith("application/json"), what
        reply = json.loads(body)
        assert set(reply) == {"error", "message"} and reply["error"] == "bad_request", what
    log = d.log()
    assert log.count('"http_request_refused"') == len(requests)
    assert key not in log and "kkkkkkkk" not in log and "Traceback" not in log
    assert '"level": "error"' not in log
