"""Prepaid credits (SPEC §7): the exact arithmetic the scripts share."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon import errors
from daemon.client import InvalidRequest, LifecycleClient
from daemon.publisher import EventPublisher
from daemon.scripts import script_source
from daemon.settings import Settings
from daemon.store import Store
from tests.servers import Daemon, eventually
from tests.test_cli import cli

COMMON = script_source("includes/common")


async def _lua(redis: Any, body: str) -> Any:
    store = Store(redis, Settings(), Settings().plans())
    pk = store.partitions[0]
    keys = [pk.events, pk.commands, pk.dead, pk.deadlines, pk.held, pk.warn, pk.lease]
    args = [pk.base, store._plans_arg, "free", 0, 1000, 100, 1, 5000, store._options_arg]
    return await redis.eval(COMMON + "\n" + body, len(keys), *keys, *args)


async def _metered(harness: Any, tmp_path: Any) -> Any:
    """A harness whose default plan consumes 1 credit per running second."""
    plans = tmp_path / "plans.toml"
    plans.write_text("[plans.metered]\nmax_duration_seconds = 3600\ncredits_per_hour = 3600\n")
    return await harness(plans_file=str(plans), default_plan="metered")


def _consumed(burn: int, dt: int) -> int:
    return burn * dt // 3_600_000


async def test_consumption_and_depletion_are_exact_beyond_doubles(redis: Any) -> None:
    cases = [(3_600_000_000, 5_000), (7, 123_456_789), (10**15, 3), (999_999_937, 86_400_000)]
    for burn, dt in cases:
        got = await _lua(redis, f"return int_str(consumed({burn}, {dt}))")
        assert int(got) == _consumed(burn, dt)
    for bal, burn in [(10_000_000, 3_600_000_000), (10**15, 7_200_000_001), (1, 1), (999, 3)]:
        got = int(await _lua(redis, f"return int_str(depletion_time({bal}, 0, {burn}))"))
        assert _consumed(burn, got) >= bal > _consumed(burn, got - 1)


async def test_settle_consumes_to_the_time_and_reschedules_depletion(redis: Any) -> None:
    got = await _lua(
        redis,
        "redis.call('HSET', account_key('acme'), 'mb', '10000000', 'mt', '1000', 'mr', "
        "'3600000000', 'mn', '1')\n"
        "local bal, at, burn = settle_credits('acme', 3000)\n"
        "return {int_str(bal), int_str(at), int_str(reschedule('acme', bal, at, burn))}",
    )
    # The expirer is to wake first for the low-balance warning, 600 s before.
    assert [int(v) for v in got] == [8_000_000, 3000, 11_000 - 600_000]
    assert await redis.zscore("lifecycle:{0}:depletions", "acme") == 11_000
    assert await redis.hget("lifecycle:{0}:a:acme", "ms") == b"2000"


async def test_meter_start_and_stop_move_the_burn_and_count_credits_used(redis: Any) -> None:
    got = await _lua(
        redis,
        "redis.call('HSET', account_key('acme'), 'plan', 'metered', 'mb', '10000000', 'mt', '0')\n"
        "PLANS['metered'] = {max_concurrent = -1, max_duration = 3600, credits_per_hour_micro ="
        " 3600000000}\n"
        "meter_start('acme', 's1', 1000)\n"
        "local dep = redis.call('ZSCORE', K_DEPLETIONS, 'acme')\n"
        "local used = meter_stop('acme', 's1', 3000)\n"
        "local bal = redis.call('HGET', account_key('acme'), 'mb')\n"
        "return {dep, int_str(used), bal, redis.call('ZSCORE', K_DEPLETIONS, 'acme') or 'none'}",
    )
    assert [v.decode() if isinstance(v, bytes) else v for v in got] == [
        "11000", "2000000", "8000000", "none"
    ]  # fmt: skip


async def test_create_and_terminate_meter_a_metered_account(
    redis: Any, tmp_path: Any, harness: Any
) -> None:
    h = await _metered(harness, tmp_path)
    account = "lifecycle:{0}:a:acme"
    await redis.hset(account, mapping={"mb": "10000000", "mt": str(await h.server_ms())})
    view = await h.store.create_session("s1", "acme", None, None, True)
    assert await redis.zscore("lifecycle:{0}:depletions", "acme") is not None
    assert int(await redis.hget(account, "mr")) == 3_600_000_000
    await h.store.terminate("s1")
    assert await redis.zscore("lifecycle:{0}:depletions", "acme") is None
    assert int(await redis.hget(account, "mr")) == 0
    used = int(await redis.hget("lifecycle:{0}:s:s1", "mu"))
    assert 0 <= used == 10_000_000 - int(await redis.hget(account, "mb"))
    assert view.record.session_id == "s1"


async def test_create_with_a_zero_balance_is_402_balance_depleted(
    redis: Any, tmp_path: Any, harness: Any
) -> None:
    h = await _metered(harness, tmp_path)
    await redis.hset("lifecycle:{0}:a:acme", mapping={"mb": "0", "mt": "0"})
    with pytest.raises(errors.PaymentRequired, match="balance_depleted"):
        await h.store.create_session("s1", "acme", None, None, True)
    await h.store.create_session("s2", "other", None, None, True)  # no balance: unmetered


# Against ``lifecycled run``: a metered default plan of 1 credit per running second.

Start = Callable[..., Daemon]
COMMANDS = "lifecycle:{0}:commands"


def _metered_plans(tmp_path: Path) -> Path:
    plans = tmp_path / "metered-plans.toml"
    plans.write_text(
        "[plans.metered]\nmax_duration_seconds = 3600\ncredits_per_hour = 3600\n"
        "[plans.flat]\nmax_duration_seconds = 3600\n"
    )
    return plans


def _metered_daemon(daemons: Start, tmp_path: Path, **settings: Any) -> Daemon:
    settings.setdefault("low_balance_warn_seconds", 0)
    return daemons(plans_file=_metered_plans(tmp_path), default_plan="metered", **settings)


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


async def _top_up(
    http: aiohttp.ClientSession, api: str, account: str, amount: Any, key: str
) -> Any:
    status, body = await _call(
        http, "POST", f"{api}/v1/accounts/{account}/credits",
        {"amount": amount, "idempotency_key": key},
    )  # fmt: skip
    assert status == 200, body
    return body


async def _create(http: aiohttp.ClientSession, api: str, account: str, sid: str) -> Any:
    status, body = await _call(
        http, "POST", f"{api}/v1/sessions", {"account_id": account, "session_id": sid}
    )
    assert status == 201, body
    return body


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def _commands(redis: Any, kind: str = "terminate") -> list[dict[str, str]]:
    out = []
    for _, fields in await redis.xrange(COMMANDS):
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        if entry["type"] == kind:
            out.append(entry)
    return out


async def _when_commands(redis: Any, n: int, kind: str = "terminate", timeout: float = 15) -> Any:
    async def enough() -> list[dict[str, str]] | None:
        cmds = await _commands(redis, kind)
        return cmds if len(cmds) >= n else None

    return await eventually(enough, timeout=timeout, what=f"{n} {kind} commands")


async def _server_ms(redis: Any) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def _until(redis: Any, ms: int) -> None:
    """Wait until the server clock reads ``ms``."""
    while await _server_ms(redis) < ms:
        await asyncio.sleep(0.02)


async def _one_session(
    http: aiohttp.ClientSession, daemons: Start, tmp_path: Path, credits: int
) -> tuple[Daemon, int]:
    """A daemon, account acme topped up with ``credits`` and its session s1 (created_at)."""
    d = _metered_daemon(daemons, tmp_path)
    await _top_up(http, d.api, "acme", credits, "inv_1")
    return d, _ms((await _create(http, d.api, "acme", "s1"))["created_at"])


async def test_two_sessions_share_ten_credit_seconds_and_end_together_at_five_seconds(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = _metered_daemon(daemons, tmp_path)
    async with aiohttp.ClientSession() as http:
        account = await _top_up(http, d.api, "acme", 10, "inv_1")
        assert account["metered"] is True and account["balance"] == 10
        assert account["depletes_at"] is None and account["burn_per_hour"] == 0
        s1 = await _create(http, d.api, "acme", "s1")
        s2 = await _create(http, d.api, "acme", "s2")
        _, account = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
        assert account["burn_per_hour"] == 7200 and account["credits_per_hour"] == 3600
        c1, c2 = _ms(s1["created_at"]), _ms(s2["created_at"])
        # 10 credits = (dep - c1) + (dep - c2) seconds: to the millisecond, rounded up.
        expected = -(-(10_000 + c1 + c2) // 2)
        assert _ms(account["depletes_at"]) == expected
        cmds = await _when_commands(redis, 2)
        assert sorted(c["session_id"] for c in cmds) == ["s1", "s2"]
        for c in cmds:
            assert c["reason"] == "billing"
            assert int(c["deadline"]) == expected
            # Never early; late by no more than a loaded test machine allows the SLO.
            assert 0 <= int(c["emitted_at"]) - expected < 500
        # Each session's own running time (the account's 10 rounded up to the ms).
        used = sum(Decimal(c["credits_used"]) for c in cmds)
        assert used == Decimal(2 * expected - c1 - c2) / 1000
        _, account = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
        assert account["billing_status"] == "balance_depleted"
        assert account["balance"] == 0 and account["depletes_at"] is None
        assert account["live_sessions"] == 0 and account["usage"]["credits"] == 10
        assert account["usage"]["session_seconds"] == (2 * expected - c1 - c2) / 1000
        _, status = await _call(http, "GET", f"{d.api}/v1/sessions/s1")
        assert status["termination_reason"] == "billing"
        assert _ms(status["terminated_at"]) == expected
        status_code, body = await _call(
            http, "POST", f"{d.api}/v1/sessions", {"account_id": "acme"}
        )
        assert status_code == 402 and "balance_depleted" in body["message"]
        async with http.get(f"http://127.0.0.1:{d.metrics_port}/metrics") as resp:
            metrics = await resp.text()
    assert "lifecycle_depletions_total 1.0" in metrics
    assert "lifecycle_credits_consumed_total 10.0" in metrics
    assert 'lifecycle_terminations_total{reason="billing"} 2.0' in metrics
    assert len(await _commands(redis)) == 2


async def test_a_top_up_a_second_before_depletion_moves_it(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        d, created = await _one_session(http, daemons, tmp_path, 2)
        await _until(redis, created + 1000)
        assert await _commands(redis) == []
        account = await _top_up(http, d.api, "acme", 1.5, "inv_2")
        assert _ms(account["depletes_at"]) == created + 3500
        cmds = await _when_commands(redis, 1)
        assert int(cmds[0]["deadline"]) == created + 3500
        assert int(cmds[0]["emitted_at"]) >= created + 3500
        assert cmds[0]["credits_used"] == "3.5"


async def test_the_same_idempotency_key_credits_once_also_across_racing_replicas(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    replicas = [_metered_daemon(daemons, tmp_path) for _ in range(2)]
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(
            *(_top_up(http, replicas[i % 2].api, "acme", 25, "inv_123") for i in range(20))
        )
        assert all(a == answers[0] for a in answers)
        assert answers[0]["balance"] == 25
        again = await _top_up(http, replicas[0].api, "acme", 99, "inv_123")
        assert again == answers[0]
        await _top_up(http, replicas[1].api, "acme", 0.000001, "inv_124")
        _, account = await _call(http, "GET", f"{replicas[0].api}/v1/accounts/acme")
        assert account["balance"] == 25.000001
        # The key is the account's: another account's same key is its own top-up.
        other = await _top_up(http, replicas[0].api, "other", 1, "inv_123")
        assert other["balance"] == 1 and other["account_id"] == "other"


async def test_a_top_up_makes_a_depleted_account_ok_but_not_a_failed_payment(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = _metered_daemon(daemons, tmp_path)
    async with aiohttp.ClientSession() as http:
        await _top_up(http, d.api, "acme", 0.3, "inv_1")
        await _create(http, d.api, "acme", "s1")
        await _when_commands(redis, 1)
        status, body = await _call(http, "POST", f"{d.api}/v1/sessions", {"account_id": "acme"})
        assert status == 402 and "balance_depleted" in body["message"]
        account = await _top_up(http, d.api, "acme", 5, "inv_2")
        assert account["billing_status"] == "ok" and account["balance"] == 5
        await _create(http, d.api, "acme", "s2")
        status, _ = await _call(
            http, "PUT", f"{d.api}/v1/accounts/acme", {"billing_status": "payment_failed"}
        )
        assert status == 200
        account = await _top_up(http, d.api, "acme", 5, "inv_3")
        assert account["billing_status"] == "payment_failed"


async def test_kill_9_before_the_depletion_and_restart_after_it_emits_once_on_time(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        d, created = await _one_session(http, daemons, tmp_path, 1)
    assert d.proc is not None
    await _until(redis, created + 700)
    d.proc.kill()
    d.proc.wait()
    await _until(redis, created + 1500)
    assert await _commands(redis) == []
    d2 = _metered_daemon(daemons, tmp_path)
    cmds = await _when_commands(redis, 1)
    assert int(cmds[0]["deadline"]) == created + 1000
    assert cmds[0]["reason"] == "billing" and cmds[0]["credits_used"] == "1"
    # Once the account no longer burns, no later pass can emit for it again.
    async with aiohttp.ClientSession() as http:
        _, account = await _call(http, "GET", f"{d2.api}/v1/accounts/acme")
    assert account["depletes_at"] is None and account["balance"] == 0
    assert len(await _commands(redis)) == 1


BAD_AMOUNTS = [
    (-5, "positive"),
    (0, "more than 0"),
    ("25", "a number"),
    (1.0000001, "6 decimals"),
    (10**12 + 1, "at most 1000000000000"),
    (10**30, "at most 1000000000000"),
    (1e300, "at most 1000000000000"),
    (True, "a number"),
    (None, "a number"),
]


async def test_bad_top_ups_are_422_with_a_message_and_change_nothing(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = _metered_daemon(daemons, tmp_path)
    url = f"{d.api}/v1/accounts/acme/credits"
    async with aiohttp.ClientSession() as http:
        for amount, message in BAD_AMOUNTS:
            status, body = await _call(
                http, "POST", url, {"amount": amount, "idempotency_key": "k"}
            )
            assert status == 422, (amount, body)
            assert body["error"] == "invalid_request" and message in body["message"], amount
        for bad in [{"amount": 1}, {"amount": 1, "idempotency_key": ""},
                    {"amount": 1, "idempotency_key": "has space"},
                    {"amount": 1, "idempotency_key": "k", "extra": 1}]:  # fmt: skip
            status, body = await _call(http, "POST", url, bad)
            assert status == 422, (bad, body)
        _, account = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
        assert account["balance"] is None  # nothing was credited
        # The balance stays below 10^9 credits, where it is exact to the micro-credit.
        await _top_up(http, d.api, "acme", 999_999_999.999999, "k1")
        status, body = await _call(http, "POST", url, {"amount": 0.000001, "idempotency_key": "k2"})
        assert status == 422 and "maximum" in body["message"]
        _, account = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
        assert account["balance"] == 999_999_999.999999


async def test_credits_events_top_up_once_per_key_and_bad_ones_are_dead_lettered(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = _metered_daemon(daemons, tmp_path)
    async with EventPublisher(redis) as publisher:
        await publisher.credits("acme", 12.5, "inv_1")
        await publisher.credits("acme", "12.5", "inv_1")  # the same key: credited once
        await publisher.credits("acme", Decimal("0.000001"), "inv_2")
    events = "lifecycle:{0}:events"
    for amount in ["-1", "0", "ten", "1.0000001", "1000000000001"]:
        await redis.xadd(events, {"type": "credits", "account_id": "acme", "amount": amount,
                                  "idempotency_key": "bad"})  # fmt: skip
    await redis.xadd(events, {"type": "credits", "account_id": "acme", "amount": "1"})
    await redis.xadd(events, {"type": "credits", "account_id": "acme", "amount": "999999999",
                              "idempotency_key": "over"})  # fmt: skip

    async def dead() -> list[dict[str, str]] | None:
        entries = await redis.xrange("lifecycle:{0}:dead")
        out = [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]
        return out if len(out) >= 7 else None

    letters = await eventually(dead, what="7 dead letters")
    assert [e["amount"] for e in letters if "amount" in e][:5] == [
        "-1", "0", "ten", "1.0000001", "1000000000001"
    ]  # fmt: skip
    assert all("amount" in e["error"] or "idempotency_key" in e["error"] for e in letters)
    assert "maximum" in letters[-1]["error"]
    async with aiohttp.ClientSession() as http:
        _, account = await _call(http, "GET", f"{d.api}/v1/accounts/acme")
    assert account["balance"] == 12.500001


async def test_low_balance_is_sent_once_per_crossing_and_rearmed_by_a_top_up(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = _metered_daemon(daemons, tmp_path, low_balance_warn_seconds=1)
    async with aiohttp.ClientSession() as http:
        await _top_up(http, d.api, "acme", 2, "inv_1")
        created = _ms((await _create(http, d.api, "acme", "s1"))["created_at"])
        [warning] = await _when_commands(redis, 1, "low_balance")
        assert int(warning["depletes_at"]) == created + 2000
        assert Decimal(warning["balance"]) <= 1 and warning["account_id"] == "acme"
        assert int(warning["depletes_at"]) - 1000 <= await _server_ms(redis)
        # Out of the window again: re-armed, sent again when it comes within it.
        await _top_up(http, d.api, "acme", 1, "inv_2")
        warnings = await _when_commands(redis, 2, "low_balance")
        assert int(warnings[1]["depletes_at"]) == created + 3000
        # A top-up that leaves the depletion within the window does not re-arm it.
        await _top_up(http, d.api, "acme", 0.001, "inv_3")
        [cmd] = await _when_commands(redis, 1)
        assert int(cmd["deadline"]) == created + 3001
    assert len(await _commands(redis, "low_balance")) == 2


async def test_sdk_and_cli_top_up_and_show_the_credits(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    d = _metered_daemon(daemons, tmp_path)
    async with LifecycleClient(d.api) as client:
        account = await client.top_up("acme", Decimal("2.5"), idempotency_key="inv_1")
        assert account.metered and account.balance == 2.5 and account.usage.credits == 0
        again = await client.top_up("acme", 7, idempotency_key="inv_1")
        assert again.balance == 2.5
        async with client.session("acme") as handle:
            status = await handle.status()
            account = await client.account("acme")
            assert account.burn_per_hour == 3600 and account.depletes_at is not None
        assert (await client.status(handle.session_id)).credits_used > 0
        with pytest.raises(InvalidRequest, match="more than 0"):
            await client.top_up("acme", 0, idempotency_key="inv_2")
    assert status.credits_used >= 0
    env = {"LIFECYCLE_API_URL": d.api}
    result = await cli("credits", "acme", "1.25", "--idempotency-key", "inv_3", "--json", env=env)
    assert result.code == 0, result.err
    assert 3 < result.json()["balance"] < 3.75
    result = await cli("credits", "acme", "0.5", env=env)
    assert result.code == 0 and "balance" in result.out and "credits" in result.out
    result = await cli("credits", "acme", "-1", env=env)
    assert result.code != 0 and "Traceback" not in result.err


async def test_only_an_admin_key_tops_up(redis: Any, daemons: Start, tmp_path: Path) -> None:
    admin, own = "admin-secret", "acme-secret"
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in (admin, own)]
    d = _metered_daemon(daemons, tmp_path, api_keys=f"{digests[0]}:admin,{digests[1]}:account:acme")
    url = f"{d.api}/v1/accounts/acme/credits"
    body = {"amount": 5, "idempotency_key": "inv_1"}
    async with aiohttp.ClientSession() as http:
        for key, want in [(None, 401), (own, 403), (admin, 200)]:
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            async with http.post(url, json=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == want, answer
        assert answer["balance"] == 5
        headers = {"Authorization": f"Bearer {own}"}
        async with http.get(f"{d.api}/v1/accounts/acme", headers=headers) as resp:
            assert (await resp.json())["balance"] == 5  # the account sees its balance


async def test_a_paused_session_consumes_nothing_and_a_used_up_account_cannot_resume(
    redis: Any, tmp_path: Any, harness: Any
) -> None:
    h = await _metered(harness, tmp_path)
    await h.store.top_up("acme", 10_000_000, "inv_1")
    await h.store.create_session("s1", "acme", None, None, True)
    assert (await h.store.get_account("acme")).burn_micro_per_hour == 3_600_000_000
    paused = await h.store.pause("s1")
    account = await h.store.get_account("acme")
    assert account.burn_micro_per_hour == 0 and account.depletes_at is None
    used = paused.record.credits_used_micro(paused.now_ms)
    later = await h.store.get_session("s1")
    assert later.record.credits_used_micro(later.now_ms) == used  # nothing while paused
    resumed = await h.store.resume("s1")
    assert resumed.record.metered_since == resumed.now_ms
    assert (await h.store.get_account("acme")).depletes_at is not None
    await h.store.pause("s1")
    await redis.hset("lifecycle:{0}:a:acme", "mb", "0")  # used up while paused
    with pytest.raises(errors.PaymentRequired, match="balance_depleted"):
        await h.store.resume("s1")
