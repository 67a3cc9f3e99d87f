"""``daemon.client`` against real ``lifecycled run`` subprocesses on a real Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.client import (
    Account,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    LifecycleClient,
    LifecycleClientError,
    PaymentRequired,
    RateLimited,
    RequestTimeout,
    SessionNotFound,
    SessionStatus,
    SessionTerminated,
    Unauthorized,
)
from daemon.publisher import EventPublisher
from tests.servers import Daemon, eventually, free_port

Start = Callable[..., Daemon]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def _server_ms(redis: Any) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def test_every_method_returns_typed_models(daemons: Start) -> None:
    d = daemons()
    async with LifecycleClient(d.api) as client:
        created = await client.create(
            "acme", session_id="s1", timeout_seconds=600, inactivity_timeout_seconds=60
        )
        assert isinstance(created, SessionStatus)
        assert (created.session_id, created.account_id, created.plan) == ("s1", "acme", "free")
        assert created.status == "ready" and created.auto_kill is True
        assert created.created_at.tzinfo is not None
        assert created.created_at.utcoffset() == UTC.utcoffset(None)
        assert abs((created.created_at - datetime.now(UTC)).total_seconds()) < 5
        assert created.expires_at is not None
        assert (created.expires_at - created.created_at).total_seconds() == 600
        assert created.terminates_at == created.idle_expires_at
        assert created.raw["created_at"].endswith("Z")

        status = await client.status("s1")
        assert status.session_id == "s1" and status.max_lifetime_seconds == 600
        alive = await client.keepalive("s1")
        assert alive.last_activity_at >= created.last_activity_at

        updated = await client.update("s1", inactivity_timeout_seconds=120, auto_kill=False)
        assert updated.inactivity_timeout_seconds == 120 and updated.auto_kill is False
        assert updated.idle_expires_at is None and updated.terminates_at == updated.expires_at

        generated = await client.create("acme")
        assert generated.session_id.startswith("ses_")
        live = await client.sessions("acme")
        assert sorted(s.session_id for s in live) == sorted(["s1", generated.session_id])
        assert all(isinstance(s, SessionStatus) for s in live)

        account = await client.account("acme")
        assert isinstance(account, Account)
        assert (account.plan, account.billing_status) == ("free", "ok")
        assert (account.live_sessions, account.max_concurrent) == (2, 2)
        assert account.max_duration_seconds == 3600
        upgraded = await client.set_account("acme", plan="enterprise")
        assert upgraded.plan == "enterprise" and upgraded.max_concurrent is None

        gone = await client.terminate("s1")
        assert gone.terminated and gone.termination_reason == "requested"
        assert gone.terminated_at is not None and gone.terminates_at is None
        assert gone.remaining_seconds == 0
        assert (await client.terminate("s1")).termination_reason == "requested"  # idempotent
        assert [s.session_id for s in await client.sessions("acme")] == [generated.session_id]


async def test_every_error_answer_raises_its_type(redis: Any, daemons: Start) -> None:
    d = daemons()
    async with LifecycleClient(d.api) as client:
        with pytest.raises(SessionNotFound) as missing:
            await client.status("nope")
        assert missing.value.status == 404 and missing.value.code == "session_not_found"
        assert "nope" in missing.value.message and str(missing.value) == missing.value.message

        await client.create("acme", session_id="s1")
        with pytest.raises(Conflict) as taken:
            await client.create("acme", session_id="s1")
        assert (taken.value.status, taken.value.code) == (409, "session_exists")

        with pytest.raises(InvalidRequest) as too_long:
            await client.create("acme", timeout_seconds=999_999)
        assert too_long.value.status == 422 and "timeout_seconds" in too_long.value.message
        with pytest.raises(InvalidRequest) as bad_id:
            await client.create("not valid!")
        assert bad_id.value.status == 422 and "account_id" in bad_id.value.message
        with pytest.raises(InvalidRequest) as unknown:
            await client.update("s1", timeout_seconds=0)
        assert unknown.value.status == 422

        await client.create("acme", session_id="s2")
        with pytest.raises(RateLimited) as limited:
            await client.create("acme")
        assert limited.value.code == "concurrent_session_limit"
        assert limited.value.retry_after is not None and limited.value.retry_after >= 1

        await client.terminate("s2")
        with pytest.raises(SessionTerminated) as ended:
            await client.keepalive("s2")
        assert (ended.value.status, ended.value.code) == (409, "session_terminated")
        with pytest.raises(SessionTerminated):
            await client.update("s2", inactivity_timeout_seconds=5)

        await EventPublisher(redis).billing("acme", "card_expired")
        await eventually(lambda: _billing_status(client, "acme", "card_expired"))
        with pytest.raises(PaymentRequired) as unpaid:
            await client.create("acme")
        assert unpaid.value.status == 402 and "card_expired" in unpaid.value.message
        # Every one of them is a LifecycleClientError carrying status, code and message.
        for caught in (missing, taken, too_long, limited, ended, unpaid):
            assert isinstance(caught.value, LifecycleClientError)


async def _billing_status(client: LifecycleClient, account_id: str, status: str) -> bool:
    return (await client.account(account_id)).billing_status == status


async def _raising(call: Any) -> Any:
    try:
        await call
    except LifecycleClientError as exc:
        return exc
    return None


async def test_api_keys_unauthorized_forbidden_and_lockout(daemons: Start) -> None:
    d = daemons(api_keys=f"{_digest('root-key')}:admin,{_digest('acme-key')}:account:acme")
    async with (
        LifecycleClient(d.api, api_key="root-key") as admin,
        LifecycleClient(d.api, api_key="acme-key") as acme,
        LifecycleClient(d.api) as anonymous,
        LifecycleClient(d.api, api_key="wrong-key") as wrong,
    ):
        other = await admin.create("globex", session_id="theirs")
        mine = await acme.create("acme")
        assert (await acme.status(mine.session_id)).account_id == "acme"
        with pytest.raises(SessionNotFound):
            await acme.status(other.session_id)
        with pytest.raises(Forbidden) as forbidden:
            await acme.set_account("acme", plan="enterprise")
        assert forbidden.value.status == 403 and forbidden.value.code == "forbidden"

        with pytest.raises(Unauthorized) as no_key:
            await anonymous.status(mine.session_id)
        assert no_key.value.status == 401 and no_key.value.code == "unauthorized"
        # After 10 failures from this address every request is refused for a while.
        errors: list[Any] = []
        while len(errors) < 12:
            errors.append(await _raising(wrong.status(mine.session_id)))
            if isinstance(errors[-1], RateLimited):
                break
        assert all(isinstance(e, Unauthorized) for e in errors[:9]), errors
        locked = errors[-1]
        assert isinstance(locked, RateLimited) and len(errors) <= 11, errors
        assert locked.code == "too_many_auth_failures"
        assert locked.retry_after is not None and locked.retry_after > 0


_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({})))


@contextlib.contextmanager
def client_logs() -> Iterator[list[dict[str, Any]]]:
    """The SDK's log lines, as the standard logging module receives them."""
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}
            lines.append({"event": record.getMessage(), **fields})

    logger = logging.getLogger("lifecycled.client")
    handler = Collect()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_transport_failures_are_connection_failed(caplog: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with LifecycleClient(dead) as client:
        with pytest.raises(ConnectionFailed) as refused:
            await client.status("s1")
    assert refused.value.status is None and dead in refused.value.message

    async with LifecycleClient(dead, retries=2, retry_backoff=0.01) as client:
        with client_logs() as logs, pytest.raises(ConnectionFailed):
            await client.terminate("s1")
        assert [e["event"] for e in logs] == ["request_retried", "request_retried"]
        with client_logs() as logs, pytest.raises(ConnectionFailed):
            await client.create("acme")
        assert logs == []  # creating is not idempotent: never retried

    # A server that accepts the connection and never answers.
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        async with LifecycleClient(f"http://127.0.0.1:{port}", timeout=0.3) as client:
            with pytest.raises(RequestTimeout) as slow:
                await client.status("s1")
        assert isinstance(slow.value, ConnectionFailed) and "0.3" in slow.value.message
    finally:
        silent.close()
    with pytest.raises(ValueError, match="http"):
        LifecycleClient("localhost:8080")


@pytest.fixture
async def client(daemons: Start) -> AsyncIterator[LifecycleClient]:
    async with LifecycleClient(daemons().api) as client:
        yield client


async def test_session_terminates_on_exit_error_and_cancellation(
    client: LifecycleClient,
) -> None:
    async with client.session("acme", inactivity_timeout_seconds=60) as normal:
        assert (await normal.status()).status == "ready"
    assert (await client.status(normal.session_id)).termination_reason == "requested"

    class JobFailed(Exception):
        pass

    with pytest.raises(JobFailed):
        async with client.session("acme") as failing:
            raise JobFailed
    assert (await client.status(failing.session_id)).termination_reason == "requested"

    entered = asyncio.Event()
    ids: list[str] = []

    async def job() -> None:
        async with client.session("acme", keepalive_every=0.1) as session:
            ids.append(session.session_id)
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(job())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Terminated by the time the cancelled task has finished, not eventually.
    assert (await client.status(ids[0])).termination_reason == "requested"
    assert await client.sessions("acme") == []


async def test_keepalives_hold_a_session_past_its_inactivity_timeout(
    redis: Any, client: LifecycleClient
) -> None:
    async with client.session("acme", inactivity_timeout_seconds=1, keepalive_every=0.25) as s:
        start = await _server_ms(redis)
        await eventually(
            lambda: _after(redis, start + 2500), what="2.5 inactivity timeouts", timeout=10
        )
        status = await s.status()
        assert status.status != "terminated", status
        assert s.keepalive_error is None
        assert status.last_activity_at > s.created.last_activity_at
    assert (await client.status(s.session_id)).termination_reason == "requested"


async def _after(redis: Any, ms: int) -> bool:
    return await _server_ms(redis) > ms


async def test_keepalive_loop_logs_failures_and_stops_on_termination(
    redis: Any, client: LifecycleClient
) -> None:
    with client_logs() as logs:
        async with client.session("acme", keepalive_every=0.1) as held:
            await client.terminate(held.session_id)
            await eventually(lambda: _is(held.keepalive_error, SessionTerminated))
            stopped = [e for e in logs if e["event"] == "keepalive_stopped"]
            assert stopped and stopped[0]["session_id"] == held.session_id
            count = len(logs)
        async with client.session("globex", keepalive_every=0.1) as unpaid:
            await EventPublisher(redis).billing("globex", "payment_failed")
            await eventually(lambda: _is(unpaid.keepalive_error, PaymentRequired))
    failed = [e for e in logs if e["event"] == "keepalive_failed"]
    assert failed and failed[0]["code"] == "payment_required"
    # The terminated session's loop ended: no more keepalives were logged for it.
    assert not [e for e in logs[count:] if e.get("session_id") == held.session_id]


async def _is(value: Any, cls: type) -> bool:
    return isinstance(value, cls)


async def test_handle_terminated_resolves_with_the_servers_reason(
    client: LifecycleClient,
) -> None:
    # The background keepalive learns that the server ended the session at its max lifetime.
    async with client.session("acme", timeout_seconds=1, keepalive_every=0.1) as expiring:
        ended = await asyncio.wait_for(expiring.terminated, timeout=10)
        assert ended.status == "terminated" and ended.termination_reason == "max_lifetime"
        assert ended.session_id == expiring.session_id

    # Without a background keepalive a status read of the handle learns it.
    async with client.session("acme") as read:
        waiting = asyncio.ensure_future(read.terminated)
        await client.terminate(read.session_id)
        assert not waiting.done()
        assert (await read.status()).status == "terminated"
        assert (await asyncio.wait_for(waiting, 1)).termination_reason == "requested"

    # A block that ends by itself: the handle's own termination resolves it.
    async with client.session("acme") as normal:
        pass
    assert (await normal.terminated).termination_reason == "requested"


async def test_cancel_on_terminate_ends_the_block_with_session_terminated(
    client: LifecycleClient,
) -> None:
    async def held_forever(**options: Any) -> str:
        async with client.session("acme", cancel_on_terminate=True, **options) as session:
            ids.append(session.session_id)
            started.set()
            await asyncio.Event().wait()
        raise AssertionError("the block went on")

    # The background keepalive learns of it and cancels the block.
    ids: list[str] = []
    started = asyncio.Event()
    job = asyncio.ensure_future(held_forever(keepalive_every=0.1))
    await started.wait()
    await client.terminate(ids[0])
    with pytest.raises(SessionTerminated) as ended:
        await asyncio.wait_for(job, timeout=10)
    assert ended.value.session is not None
    assert ended.value.session.termination_reason == "requested"
    assert ids[0] in ended.value.message and "requested" in ended.value.message
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0

    # A status read in the block's own task raises it there.
    async def read_after_termination() -> None:
        async with client.session("acme", cancel_on_terminate=True) as session:
            await client.terminate(session.session_id)
            await session.status()
            raise AssertionError("status() returned a terminated session")

    with pytest.raises(SessionTerminated) as read:
        await read_after_termination()
    assert read.value.session is not None and read.value.session.status == "terminated"

    # A status read in another task (a watcher the block started) cancels the block.
    async def watched() -> None:
        async with client.session("acme", cancel_on_terminate=True) as session:
            await client.terminate(session.session_id)
            watcher = asyncio.ensure_future(session.status())
            await asyncio.Event().wait()
        await watcher

    with pytest.raises(SessionTerminated):
        await asyncio.wait_for(watched(), timeout=10)

    # Cancelled from outside, the block still ends with CancelledError, not the opt-in's error.
    ids.clear()
    started.clear()
    job = asyncio.ensure_future(held_forever(keepalive_every=0.1))
    await started.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert (await client.status(ids[0])).termination_reason == "requested"
