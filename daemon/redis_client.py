"""The Redis client for a ``redis_url``: a single server or Redis Cluster.

In Cluster mode every script and stream command names keys of one partition only, all
carrying the partition's hash tag ``{p}``, so each call goes to the one node owning that
slot. redis-py's cluster client follows ``MOVED``/``ASK`` redirections and refreshes its
slot map itself; what it gives up on (a failover still in progress, slots not covered
for a moment) surfaces as one of ``TRANSIENT_ERRORS``, which the engine's loops treat
like a lost connection: not ready, back off with jitter, try again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import Sentinel
from redis.connection import HiredisRespSerializer
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    OutOfMemoryError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Failures that pass by themselves: the server or a cluster node is unreachable, or the
# cluster is resharding or failing over (MovedError is a subclass of AskError).
# RedisClusterException is not a RedisError, so a loop catching only RedisError would die.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    ClusterDownError,
    TryAgainError,
    AskError,
    RedisClusterException,
)


def write_refusal(exc: BaseException) -> str | None:
    """Why the server refused a write, when ``exc`` is such a refusal; else ``None``.

    A server at ``maxmemory`` with the ``noeviction`` policy answers ``OOM`` to a write;
    one that cannot persist (a full disk failing the AOF write or an RDB save with
    ``stop-writes-on-bgsave-error``) answers ``MISCONF`` to writes and to ``PING``. Both
    pass once the operator frees memory or disk; reads are still served meanwhile.
    """
    if isinstance(exc, OutOfMemoryError):
        return "Redis refuses writes: it is out of memory (maxmemory reached)"
    if isinstance(exc, ResponseError) and str(exc).startswith("MISCONF"):
        return "Redis refuses writes: it cannot persist them to disk (MISCONF)"
    return None


def connect(url: str, cluster: bool) -> Any:
    """A redis-py asyncio client for ``url``; failed commands are retried by the loops."""
    options: dict[str, Any] = {
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
        "health_check_interval": 15,
    }
    if url.startswith("redis+sentinel://"):
        return _sentinel_master(url, options)
    if cluster:
        # Blocking XREADGROUPs hold a connection each (one per held partition), plus the
        # expirers and HTTP requests: more than redis-py's default cap per node when a
        # replica holds many partitions of one node.
        return RedisCluster.from_url(url, max_connections=1000, **options)
    # A burst of requests waits for a free connection instead of failing at the cap;
    # blocked XREADGROUPs hold one connection per consumed partition.
    pool = BlockingConnectionPool.from_url(url, max_connections=256, timeout=5, **options)
    pool.connection_class = _HIREDIS_PACKING.get(pool.connection_class, pool.connection_class)
    return Redis(connection_pool=pool)


class _HiredisPacking:
    """Packs commands with hiredis's C packer, as redis-py's synchronous client does.

    redis-py's asyncio connections pack in Python, which costs more than anything else the
    consumer does: a batch's ``apply_events`` call carries thousands of arguments. Used for
    one server; Sentinel and Cluster clients build their connections themselves and keep
    redis-py's packer.
    """

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


class _PackedConnection(_HiredisPacking, Connection):
    pass


class _PackedUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


class _PackedSSLConnection(_HiredisPacking, SSLConnection):
    pass


_HIREDIS_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _PackedConnection,
    UnixDomainSocketConnection: _PackedUnixConnection,
    SSLConnection: _PackedSSLConnection,
}


def _sentinel_master(url: str, options: dict[str, Any]) -> Any:
    """``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]``.

    The client asks the Sentinels for the current primary on every new connection, so
    after a failover the loops' reconnects reach the promoted replica. The credentials
    are the data nodes'; ``?sentinel_password=`` authenticates to the Sentinels.
    """
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.partition(":")
        sentinels.append((name, int(port or 26379)))
    service, _, db = parts.path.strip("/").partition("/")
    query = parse_qs(parts.query)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    return sentinel.master_for(
        service,
        db=int(db or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        max_connections=1000,
        **options,
    )
