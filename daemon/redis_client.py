"""The Redis client for a ``redis_url``: a single server or Redis Cluster."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster


def connect(url: str, cluster: bool) -> Any:
    """A redis-py asyncio client for ``url``; failed commands are retried by the loops."""
    options: dict[str, Any] = {
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
        "health_check_interval": 15,
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)
