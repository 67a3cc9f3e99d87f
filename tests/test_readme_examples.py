"""The README's "Using the CLI" and "Using the SDK" examples, run as written."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.client import LifecycleClient, SessionNotFound
from tests.servers import Daemon, ValkeyProcess, eventually

Start = Callable[..., Daemon]
README = Path(__file__).parent.parent / "README.md"
EXAMPLE_API = "http://127.0.0.1:8080"
EXAMPLE_REDIS = "redis://127.0.0.1:6379/0"


def blocks(section: str, language: str) -> list[str]:
    """The ``language`` code blocks of the README section titled ``section``."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", body, re.S | re.M)


async def run(*args: str) -> tuple[int, str, str]:
    # The examples call the console script by name, as a user's shell finds it.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_example(daemons: Start) -> None:
    d = daemons()
    [script] = blocks("Using the CLI", "sh")
    code, out, err = await run("bash", "-e", "-c", script.replace(EXAMPLE_API, d.api))
    assert code == 0, err
    assert out.rstrip().endswith("exit code 3"), out
    assert "lifecycled: No session no-such-session." in err
    assert re.search(r"^plan\s+pro$", out, re.M), out
    assert "Traceback" not in err


async def test_sdk_examples(valkey: ValkeyProcess, daemons: Start) -> None:
    d = daemons()
    client_example, publisher_example = blocks("Using the SDK", "python")
    code, out, err = await run(sys.executable, "-c", client_example.replace(EXAMPLE_API, d.api))
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"ses_\S+ ready \S+ \S+", lines[0]), lines
    assert lines[1:4] == ["paused running", "requested", "404 session_not_found"], lines
    assert re.fullmatch(r"retry in [0-9.]+ s", lines[4]), lines

    example = publisher_example.replace(EXAMPLE_REDIS, valkey.url)
    code, out, err = await run(sys.executable, "-c", example)
    assert code == 0, err
    async with LifecycleClient(d.api) as client:
        ended = await eventually(lambda: _terminated(client, "ses_job_1"), what="events applied")
    assert ended.termination_reason == "requested" and ended.status == "terminated"


async def _terminated(client: LifecycleClient, session_id: str) -> Any:
    try:
        status = await client.status(session_id)
    except SessionNotFound:  # not applied yet
        return None
    return status if status.terminated else None
