"""Fuzzed events-stream entries (SPEC §3): random field maps, wrong types, huge values,
bytes that are not UTF-8, missing and extra fields. Every entry is applied or
dead-lettered with its original fields plus ``error``, nothing stays pending, and a valid
event after the garbage still takes effect.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.keys import GROUP
from daemon.settings import Settings
from tests.conftest import Harness
from tests.model import SPEC_PLANS, parse
from tests.servers import Daemon, ValkeyProcess, eventually

NAMES = [b"type", b"session_id", b"account_id", b"timeout_seconds",
         b"inactivity_timeout_seconds", b"auto_kill", b"plan", b"ts", b"reason",
         b"billing_status", b"error"]  # fmt: skip
PLAUSIBLE = [b"created", b"activity", b"keepalive", b"terminate", b"terminated", b"billing",
             b"s1", b"acme", b"60", b"0", b"-1", b"true", b"maybe", b"pro", b"gold",
             b"requested", b"external", b"ok", b"card_expired", b"", b"1" * 19, b"a" * 129,
             b"\xff", b"\xed\xa0\x80", "é".encode(), b"ten"]  # fmt: skip
MB = 1 << 20
# A megabyte of one sequence: generating it byte by byte would exhaust Hypothesis' buffer.
huge = st.sampled_from([b"x", b"\xff", "é".encode(), b"7"]).map(lambda b: b * (MB // len(b)))
small = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.integers().map(lambda n: str(n).encode()),
)
# One value in ten is a megabyte: enough to cross every size boundary, cheap enough to run.
values = st.sampled_from([small] * 9 + [huge]).flatmap(lambda s: s)
names = st.one_of(st.sampled_from(NAMES), st.binary(max_size=12), st.text(max_size=12).map(
    str.encode))  # fmt: skip
VALID: list[dict[bytes, bytes]] = [
    {b"type": b"created", b"session_id": b"s1", b"account_id": b"acme"},
    {b"type": b"created", b"session_id": b"s2", b"account_id": b"acme", b"timeout_seconds": b"60",
     b"inactivity_timeout_seconds": b"5", b"auto_kill": b"false", b"plan": b"pro"},
    {b"type": b"activity", b"session_id": b"s1", b"account_id": b"acme", b"ts": b"1"},
    {b"type": b"keepalive", b"session_id": b"s2", b"account_id": b"acme"},
    {b"type": b"terminate", b"session_id": b"s1", b"account_id": b"acme", b"reason": b"billing"},
    {b"type": b"terminated", b"session_id": b"s2", b"account_id": b"acme"},
    {b"type": b"billing", b"account_id": b"acme", b"billing_status": b"ok", b"plan": b"free"},
]  # fmt: skip


def _mutate(
    base: dict[bytes, bytes], edits: list[tuple[bytes, bytes | None]]
) -> dict[bytes, bytes]:
    fields = dict(base)
    for name, value in edits:
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return fields or {b"type": b""}


# A valid event with a few fields removed, replaced or added reaches every check in turn;
# free-form maps reach the shallow ones.
mutated = st.builds(
    _mutate,
    st.sampled_from(VALID),
    st.lists(st.tuples(names, st.one_of(st.none(), values)), max_size=2),
)
entries = st.one_of(mutated, st.dictionaries(names, values, min_size=1, max_size=6))
# Longer than any generated text, so no fuzzed entry can touch this account's state.
FINAL_ACCOUNT = "final.account.after.the.garbage"


async def _raw_range(redis: Any, key: str) -> list[list[bytes]]:
    """A stream's entries as flat field lists: duplicate field names survive (no dict)."""
    reply = await redis.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, key)
    return [list(fields) for _, fields in reply]


async def _run(url: str, batch: list[dict[bytes, bytes]]) -> None:
    redis: Any = aioredis.Redis.from_url(url)
    try:
        await redis.flushall()
        h = await Harness(redis, Settings()).setup()
        for fields in batch:
            await redis.xadd(h.pk.events, fields)
        final = await h.publish(type="created", session_id="after-garbage",
                                account_id=FINAL_ACCOUNT)  # fmt: skip
        result = await h.consume()
        assert len(result.outcomes) == len(batch) + 1
        assert result.outcomes[-1] == "applied", final
        dead_expected = []
        for fields, outcome in zip(batch, result.outcomes, strict=False):
            if parse(fields, SPEC_PLANS) is None:
                assert outcome == "dead", (fields, outcome)
                dead_expected.append(fields)
            else:
                assert outcome.split(":")[0] in ("applied", "ended", "ignored", "rejected"), (
                    fields,
                    outcome,
                )
        dead = await _raw_range(redis, h.pk.dead)
        assert len(dead) == len(dead_expected)
        for letter, original in zip(dead, dead_expected, strict=True):
            flat = [x for pair in original.items() for x in pair]
            assert letter[:-2] == flat
            assert letter[-2] == b"error" and letter[-1]
        assert (await redis.xpending(h.pk.events, GROUP))["pending"] == 0
        assert (await h.store.get_session("after-garbage")).record.status == "ready"
    finally:
        await redis.aclose()


_VALKEY_URL: list[str] = []


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(entries, min_size=1, max_size=8))
def _fuzz(batch: list[dict[bytes, bytes]]) -> None:
    asyncio.run(_run(_VALKEY_URL[0], batch))


def test_fuzzed_entries_are_applied_or_dead_lettered(valkey: ValkeyProcess) -> None:
    _VALKEY_URL[:] = [valkey.url]
    _fuzz()


GARBAGE: list[dict[bytes, bytes]] = [
    {b"type": b"created", b"session_id": b"s" * 500, b"account_id": b"acme"},
    {b"type": b"created", b"session_id": b"s1", b"account_id": b"acme", b"auto_kill": b"maybe"},
    {b"type": b"created", b"session_id": b"s1", b"timeout_seconds": b"ten", b"account_id": b"a"},
    {b"type": b"activity", b"session_id": b"s1"},
    {b"\xff\xfe": b"created", b"session_id": b"s1", b"account_id": b"acme"},
    {b"type": b"keepalive", b"session_id": b"s1", b"account_id": b"acme", b"ts": b"\xc3\x28"},
    {b"type": b"launch", b"session_id": b"s1", b"account_id": b"acme"},
    {b"type": b"created", b"session_id": b"s1", b"account_id": b"acme", b"plan": b"x" * MB},
    {b"": b""},
]


async def test_the_daemon_dead_letters_garbage_and_keeps_consuming(
    redis: Any, daemons: Any
) -> None:
    """The real consumer loop: garbage first, then a valid create that must take effect."""
    prefix = "lifecycle:{0}:"
    for fields in GARBAGE:
        await redis.xadd(prefix + "events", fields)
    await redis.xadd(prefix + "events", {"type": "created", "session_id": "ok1",
                                         "account_id": "acme"})  # fmt: skip
    daemon: Daemon = daemons()

    async def settled() -> bool:
        pending = (await redis.xpending(prefix + "events", GROUP))["pending"]
        created = await redis.exists(prefix + "s:ok1")
        return bool(created) and pending == 0 and await redis.xlen(prefix + "dead") == len(GARBAGE)

    await eventually(settled, what="garbage dead-lettered and the valid create applied")
    dead = await _raw_range(redis, prefix + "dead")
    for letter, original in zip(dead, GARBAGE, strict=True):
        assert letter[:-2] == [x for pair in original.items() for x in pair]
        assert letter[-2] == b"error"
    async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.metrics_port}") as http:
        async with http.get("/metrics") as resp:
            metrics = await resp.text()
    assert f"lifecycle_events_invalid_total {float(len(GARBAGE))}" in metrics
    assert 'lifecycle_events_total{type="created"} 1.0' in metrics
