"""Shielding the Redis call that records an outcome from cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The awaiting side may be gone (cancelled at shutdown); the outcome is in Redis
    # either way, so the exception is only retrieved to keep asyncio from reporting it.
    if not task.cancelled():
        task.exception()


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion even if the caller is cancelled while it runs.

    A script call that was sent must finish: cancelling the caller must not leave the
    connection mid-reply or the daemon unaware of what the script did.
    """
    task = asyncio.ensure_future(coro)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)
