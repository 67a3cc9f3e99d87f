"""The README's "Using the CLI" and "Using the SDK" examples, run as written."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.client import LifecycleClient, SessionNotFound
from daemon.plans import PACKAGED_PLANS_FILE
from tests.servers import Daemon, eventually

Start = Callable[..., Daemon]
README = Path(__file__).parent.parent / "README.md"
EXAMPLE_API = "http://127.0.0.1:8080"


def blocks(section: str, language: str) -> list[str]:
    """The ``language`` code blocks of the README section titled ``section``."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", body, re.S | re.M)


async def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    # The examples call the console script by name, as a user's shell finds it.
    base = os.environ if env is None else env
    env = {**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd
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


async def test_sdk_example_runs_twice_on_a_free_account(daemons: Start) -> None:
    """It cleans up after itself: a second run at once is not refused (shipped plans)."""
    d = daemons(plans_file=PACKAGED_PLANS_FILE)
    example = blocks("Using the SDK", "python")[0].replace(EXAMPLE_API, d.api)
    for _ in range(2):
        code, out, err = await run(sys.executable, "-c", example)
        assert code == 0, err
        lines = out.splitlines()
        assert re.fullmatch(r"ses_\S+ ready \S+ \S+", lines[0]), lines
        assert lines[1:4] == ["paused running", "requested", "404 session_not_found"], lines
        assert re.fullmatch(r"retry in [0-9.]+ s", lines[4]), lines
        assert len(lines) == 5, lines
    async with LifecycleClient(d.api) as client:
        assert await client.sessions("acme") == []


async def test_stream_examples_against_the_embedded_server(tmp_path: Path) -> None:
    """``make run``'s daemon: the embedded Valkey on a unix socket, valkey-cli not on PATH."""
    d = Daemon({"LIFECYCLE_DATA_DIR": str(tmp_path / "data")}, tmp_path / "daemon.log")
    env = {k: v for k, v in d.env.items() if k != "LIFECYCLE_REDIS_URL"}
    env["PATH"] = os.defpath  # no valkey-cli but the bundled one
    d.start()
    try:
        started = [json.loads(line) for line in d.log().splitlines() if "embedded_valkey" in line]
        [line] = [e for e in started if e["event"] == "embedded_valkey_started"]
        assert line["cli"].split()[-2:] == ["-s", line["socket"]], line
        code, out, err = await run("lifecycled", "check-config", env=env)
        assert code == 0, err
        assert json.loads(out)["redis_cli"] == {"socket": line["socket"], "command": line["cli"]}

        async with LifecycleClient(d.api) as client:
            await client.create("acme", session_id="ses_x")
            [xadd] = blocks("Streams", "sh")
            code, out, err = await run("bash", "-e", "-c", xadd, env=env)
            assert code == 0, err
            assert re.fullmatch(r"\d+-\d+\n", out), out
            # The activity was applied: the session is running.
            await eventually(lambda: _status_is(client, "ses_x", "running"), what="activity")

            publisher_example = blocks("Using the SDK", "python")[1]
            (tmp_path / "publish.py").write_text(publisher_example)
            [command] = blocks("Using the SDK", "sh")
            code, out, err = await run("bash", "-e", "-c", command, env=env, cwd=tmp_path)
            assert code == 0, err
            ended = await eventually(
                lambda: _terminated(client, "ses_job_1"), what="events applied"
            )
        assert ended.termination_reason == "requested" and ended.status == "terminated"
    finally:
        d.stop()


async def _status_is(client: LifecycleClient, session_id: str, status: str) -> bool:
    return (await client.status(session_id)).status == status


async def _terminated(client: LifecycleClient, session_id: str) -> Any:
    try:
        status = await client.status(session_id)
    except SessionNotFound:  # not applied yet
        return None
    return status if status.terminated else None
