"""``lifecycled redis-cli``: the bundled ``valkey-cli``, pointed at the daemon's Redis.

The embedded server listens only on a unix socket under ``data_dir``, and the
``valkey-cli`` that comes with it is not on ``PATH``; this finds both from the same
settings the daemon reads. With ``redis_url`` set it connects there instead; a password
goes to ``valkey-cli`` in its ``REDISCLI_AUTH`` variable, never on its command line.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from daemon.embedded import EmbeddedError, EmbeddedValkey, valkey_binary
from daemon.settings import Settings


class RedisCliError(RuntimeError):
    """The configured server is not one the bundled ``valkey-cli`` can reach."""


@dataclass(frozen=True)
class CliTarget:
    """How ``valkey-cli`` reaches the configured server."""

    args: list[str]  # valkey-cli's connection options
    socket: Path | None = None  # the embedded server's unix socket
    env: dict[str, str] = field(default_factory=dict)  # REDISCLI_AUTH when there is a password

    def command(self, binary: str) -> str:
        """The exact command line, for people to copy (no password in it)."""
        return shlex.join([binary, *self.args])


def server_url(settings: Settings) -> str:
    """The URL the daemon connects to: ``redis_url`` (password included), or the embedded
    server's ``unix://`` socket."""
    if settings.redis_url is None:
        return EmbeddedValkey(settings.data_dir).url
    return settings.redis_url.get_secret_value()


def target(settings: Settings) -> CliTarget:
    if settings.redis_url is None:
        embedded = EmbeddedValkey(settings.data_dir)
        sock = embedded.socket_path
        return CliTarget(["-s", str(sock)], socket=sock)
    url = settings.redis_url.get_secret_value()
    parts = urlsplit(url)
    if parts.scheme == "rediss" and not _has_tls(valkey_binary("valkey-cli")):
        raise RedisCliError(
            "redis_url is rediss:// (TLS) and the bundled valkey-cli was built without TLS; "
            "use a valkey-cli or redis-cli with TLS"
        )
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise RedisCliError(
            f"redis_url: valkey-cli cannot follow a {parts.scheme}:// URL; "
            "point it at the current master with its own -h and -p"
        )
    args: list[str] = []
    db = parse_qs(parts.query).get("db", [""])[0]
    if parts.scheme == "unix":
        args += ["-s", unquote(parts.path)]
    else:
        args += ["-h", parts.hostname or "localhost", "-p", str(parts.port or 6379)]
        db = parts.path.strip("/") or db
        if parts.scheme == "rediss":
            args.append("--tls")
    if db and db != "0":
        args += ["-n", db]
    if parts.username:
        args += ["--user", unquote(parts.username)]
    if settings.redis_cluster:
        args.append("-c")
    env = {"REDISCLI_AUTH": unquote(parts.password)} if parts.password else {}
    return CliTarget(args, env=env)


def describe(settings: Settings) -> dict[str, Any]:
    """For ``check-config``: the embedded server's socket and the exact valkey-cli command."""
    try:
        to = target(settings)
        command = to.command(valkey_binary("valkey-cli"))
    except (RedisCliError, EmbeddedError) as exc:
        return {"socket": None, "command": None, "unavailable": str(exc)}
    if to.env:
        command = "REDISCLI_AUTH=*** " + command
    return {"socket": None if to.socket is None else str(to.socket), "command": command}


def _has_tls(binary: str) -> bool:
    return b"--tls" in Path(binary).read_bytes()


def exec_cli(settings: Settings, args: list[str]) -> None:
    """Replace this process by ``valkey-cli`` with the target's options, then ``args``."""
    to = target(settings)
    binary = valkey_binary("valkey-cli")
    argv = [binary, *to.args, *args]
    sys.stdout.flush()
    # Our own arguments and the user's, no shell: nothing is interpreted on the way.
    os.execve(binary, argv, {**os.environ, **to.env})  # nosec B606
