"""The daemon's Redis client: commands packed by hiredis, byte for byte as redis-py packs them."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from daemon.redis_client import connect
from tests.servers import ValkeyProcess

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "0" * 40, 7, "lifecycle:{0}:events", b"raw \xff bytes", 12, -3, 2.5, 0.1),
    ("XADD", "k", "*", "session_id", "s\u00e9ance-\u2603", "ts", 1_764_620_000_123),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"x"),
    ("SET", "k", bytearray(b"from a bytearray"), "PX", 10**15),
    ("ZADD", "k", 1e20, "m", float("inf"), "n"),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    client = connect("redis://127.0.0.1:1/0", cluster=False)
    packed = client.connection_pool.connection_class().pack_command(*args)
    reference = Connection().pack_command(*args)
    assert b"".join(packed) == b"".join(reference)


def test_values_redis_py_refuses_are_refused() -> None:
    conn = connect("redis://127.0.0.1:1/0", cluster=False).connection_pool.connection_class()
    for bad in (True, None, object()):
        with pytest.raises(DataError):
            conn.pack_command("SET", "k", bad)


async def test_every_connection_kind_packs_with_hiredis(valkey: ValkeyProcess) -> None:
    for url, kind in (("unix:///tmp/none.sock", UnixDomainSocketConnection),
                      ("rediss://127.0.0.1:1/0", SSLConnection)):  # fmt: skip
        chosen = connect(url, cluster=False).connection_pool.connection_class
        assert issubclass(chosen, kind) and chosen is not kind
    client = connect(valkey.url, cluster=False)
    try:
        await client.set("k", "v\u00e9", px=60_000)
        assert await client.get("k") == "v\u00e9".encode()
        args = [str(i) for i in range(5000)]
        script = client.register_script("return #ARGV")
        assert await script(args=args) == 5000
    finally:
        await client.aclose()
