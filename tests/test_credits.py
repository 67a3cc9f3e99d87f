"""Prepaid credits (SPEC §7): the exact arithmetic the scripts share."""

from __future__ import annotations

from typing import Any

import pytest

from daemon import errors
from daemon.scripts import script_source
from daemon.settings import Settings
from daemon.store import Store

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
        "local bal, at, burn = settle('acme', 3000)\n"
        "return {int_str(bal), int_str(at), int_str(reschedule('acme', bal, at, burn))}",
    )
    assert [int(v) for v in got] == [8_000_000, 3000, 11_000]
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
