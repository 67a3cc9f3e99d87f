"""The processes a benchmark run starts: private valkey-servers and ``lifecycled run``."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from daemon.embedded import answers_ping
from tests import servers
from tests.servers import VALKEY_SERVER, wait_for

__all__ = ["VALKEY_SERVER", "Daemon", "Valkey"]


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
        return answers_ping(self.socket)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None


class Daemon(servers.Daemon):
    """``lifecycled run`` with the given settings only (none from the environment)."""

    def __init__(self, settings: dict[str, str], log_path: Path) -> None:
        super().__init__({f"LIFECYCLE_{k.upper()}": v for k, v in settings.items()}, log_path)
        given = {f"LIFECYCLE_{k.upper()}" for k in settings} | {
            "LIFECYCLE_HTTP_PORT", "LIFECYCLE_METRICS_PORT", "LIFECYCLE_METRICS_HOST"
        }  # fmt: skip
        self.env = {
            k: v for k, v in self.env.items() if not k.startswith("LIFECYCLE_") or k in given
        }

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait_ready: bool = True) -> Daemon:
        super().start(wait_ready)
        return self

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
