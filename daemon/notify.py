"""systemd's notification protocol (``sd_notify``): datagrams to ``$NOTIFY_SOCKET``.

Each message is one datagram of ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``STOPPING=1``). The socket is a filesystem path, or an abstract
socket when it starts with ``@``. Outside systemd (no ``NOTIFY_SOCKET``) every call is
a no-op, so the daemon sends unconditionally.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("lifecycled.notify")


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends notifications to the service manager named by the environment.

    ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are read once and removed
    from ``os.environ``, so processes started later (the embedded Valkey server) do
    not answer to systemd in the daemon's name.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        socket_name = env.get("NOTIFY_SOCKET", "")
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        self.address: str | bytes | None = None
        if socket_name.startswith(("/", "@")):
            self.address = _address(socket_name)
        self.watchdog_interval: float | None = None
        # The watchdog is meant for this process only when WATCHDOG_PID is unset or ours.
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        if for_us and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            self.watchdog_interval = int(watchdog_usec) / 2 / 1_000_000
        self._sock: socket.socket | None = None
        self._failed = False
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram; returns whether it was delivered."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            # Logged once: a missing manager must not flood the log every watchdog tick.
            if not self._failed:
                log.warning("sd_notify_failed", error=str(exc))
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Send a ``STATUS=`` line when it differs from the last one sent."""
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (253+) match the reload to the READY=1 that ends it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self._status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
