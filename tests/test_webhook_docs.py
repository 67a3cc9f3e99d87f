"""The receiver example of docs/api.md "Receiving webhooks", run as written against a real
daemon: it gets a command, and refuses a tampered body and an old timestamp."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from daemon.client import LifecycleClient
from daemon.webhook_message import body, signed_headers
from tests.servers import Daemon, eventually, free_port

Start = Callable[..., Daemon]
API_DOC = Path(__file__).parent.parent / "docs" / "api.md"


def receiver_example() -> str:
    section = API_DOC.read_text().split("\n## Receiving webhooks\n", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    return str(code)


async def test_the_documented_receiver_verifies_and_handles_commands(
    redis: Any, daemons: Start
) -> None:
    d = daemons()
    port = free_port()
    url = f"http://127.0.0.1:{port}/lifecycle-webhooks"
    async with LifecycleClient(d.api) as client:
        endpoint = await client.add_webhook(url, types=["terminate"])
        assert endpoint.secret is not None
        env = {**os.environ, "LIFECYCLE_WEBHOOK_SECRET": endpoint.secret, "PORT": str(port)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", receiver_example(), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:

            async def answered() -> Any:
                result = await client.test_webhook(endpoint.webhook_id)
                return result.delivered and result

            tested = await eventually(answered, what="the example receiver listening")
            assert tested.status == 204
            session = await client.create("acme")
            await client.terminate(session.session_id)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line.decode().split() == ["stop", session.session_id, "requested"]

            payload = body("terminate", "1-0", {"session_id": "s", "reason": "requested"})
            signed = signed_headers(endpoint.secret, "cmd_0_1-0", payload)
            old = signed_headers(endpoint.secret, "cmd_0_1-0", payload,
                                 at=datetime.now(UTC) - timedelta(minutes=10))  # fmt: skip
            tampered = payload.replace("requested", "billing")
            async with aiohttp.ClientSession() as http:
                for data, headers in [(tampered, signed), (payload, old)]:
                    async with http.post(url, data=data, headers=headers) as resp:
                        assert resp.status == 400  # refused: the signature is real
                async with http.post(url, data=payload, headers=signed) as resp:
                    assert resp.status == 204
        finally:
            proc.kill()
            await proc.wait()
