"""The Lua scripts against a real Valkey: every event type, admission, expiry rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from daemon import errors
from daemon.events import parse_entry
from daemon.store import OlderEntriesPending
from tests.conftest import Harness

Make = Callable[..., Any]


async def test_create_and_read_status_object(harness: Make) -> None:
    h: Harness = await harness()
    view = await h.store.create_session("s1", "acme", 120, 30, True)
    status = view.status_object()
    assert status["status"] == "ready"
    assert status["plan"] == "free"
    assert status["max_lifetime_seconds"] == 120
    assert status["inactivity_timeout_seconds"] == 30
    rec = view.record
    assert rec.expires_at == rec.created_at + 120_000
    assert rec.terminates_at == rec.created_at + 30_000
    assert status["remaining_seconds"] == pytest.approx(30, abs=0.5)
    assert status["created_at"].endswith("Z") and len(status["created_at"]) == 24


async def test_default_timeout_is_min_of_3600_and_plan(harness: Make) -> None:
    h: Harness = await harness()
    view = await h.store.create_session("s1", "acme", None, None, True)
    assert view.record.max_lifetime_seconds == 3600
    assert view.record.inactivity_timeout_seconds == 300


async def test_admission_order_billing_then_limit_then_invalid_then_conflict(
    harness: Make,
) -> None:
    h: Harness = await harness()
    await h.store.create_session("a", "acme", 60, 60, True)
    await h.store.create_session("b", "acme", 60, 60, True)
    # Limit reached: a field error and a duplicate id are both reported as the limit.
    with pytest.raises(errors.ConcurrentSessionLimit) as limit:
        await h.store.create_session("a", "acme", 60, 60, True, "auto_kill must be a boolean")
    assert 1 <= limit.value.retry_after <= 60
    await h.store.terminate("b")
    with pytest.raises(errors.InvalidRequest, match="auto_kill"):
        await h.store.create_session("a", "acme", 60, 60, True, "auto_kill must be a boolean")
    with pytest.raises(errors.InvalidRequest, match="over the maximum of plan free"):
        await h.store.create_session("c", "acme", 3601, 60, True)
    with pytest.raises(errors.SessionExists):
        await h.store.create_session("a", "acme", 60, 60, True)
    await h.publish(type="billing", account_id="acme", billing_status="card_expired")
    await h.consume()
    with pytest.raises(errors.PaymentRequired, match="card_expired"):
        await h.store.create_session("z", "acme", 60, 60, True)


async def test_fifty_racing_creates_admit_exactly_two(harness: Make) -> None:
    h: Harness = await harness()
    results = await asyncio.gather(
        *(h.store.create_session(f"s{i}", "acme", 60, 60, True) for i in range(50)),
        return_exceptions=True,
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, errors.ConcurrentSessionLimit)]
    assert len(admitted) == 2
    assert len(refused) == 48


async def test_activity_moves_forward_only_and_starts_running(harness: Make) -> None:
    h: Harness = await harness()
    created = (await h.store.create_session("s1", "acme", 600, 60, True)).record
    await h.publish(type="activity", session_id="s1", account_id="acme",
                    ts=str(created.created_at + 5000))  # fmt: skip
    await h.publish(type="activity", session_id="s1", account_id="acme",
                    ts=str(created.created_at + 1000))  # fmt: skip
    result = await h.consume()
    assert result.outcomes == ["applied", "ignored:stale"]
    rec = (await h.store.get_session("s1")).record
    assert rec.status == "running"
    assert rec.last_activity_at == created.created_at + 5000
    assert rec.expires_at == created.expires_at
    assert rec.idle_expires_at == created.created_at + 5000 + 60_000


async def test_keepalive_event_keeps_status_ready(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.publish(type="keepalive", session_id="s1", account_id="acme")
    assert (await h.consume()).outcomes == ["applied"]
    rec = (await h.store.get_session("s1")).record
    assert rec.status == "ready"
    assert rec.last_activity_at > rec.created_at or rec.last_activity_at == rec.created_at


async def test_future_ts_beyond_skew_is_clamped_to_server_now(harness: Make) -> None:
    h: Harness = await harness(max_clock_skew_ms=1000)
    await h.store.create_session("s1", "acme", 600, 60, True)
    now = await h.server_ms()
    await h.publish(type="activity", session_id="s1", account_id="acme", ts=str(now + 3_600_000))
    result = await h.consume()
    rec = (await h.store.get_session("s1")).record
    assert rec.last_activity_at == result.now_ms
    # Within the allowed skew, ts is taken as given.
    await h.publish(type="activity", session_id="s1", account_id="acme", ts=str(now + 900))
    await h.consume()
    assert (await h.store.get_session("s1")).record.last_activity_at == now + 900


async def test_absent_ts_uses_entry_time(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    entry = await h.publish(type="activity", session_id="s1", account_id="acme")
    await h.consume()
    rec = (await h.store.get_session("s1")).record
    assert rec.last_activity_at == int(entry.split("-")[0])


async def test_keepalive_never_extends_past_max_lifetime(harness: Make) -> None:
    h: Harness = await harness()
    rec = (await h.store.create_session("s1", "acme", 2, 60, True)).record
    view = await h.store.keepalive("s1")
    assert view.record.expires_at == rec.expires_at
    assert view.record.terminates_at == rec.expires_at


async def test_events_for_unknown_or_terminated_sessions_are_counted_noops(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.store.terminate("s1")
    await h.publish(type="activity", session_id="nope", account_id="acme")
    await h.publish(type="keepalive", session_id="s1", account_id="acme")
    await h.publish(type="terminate", session_id="s1", account_id="acme")
    await h.publish(type="activity", session_id="s1", account_id="other")
    result = await h.consume()
    assert result.outcomes == [
        "ignored:unknown_session",
        "ignored:terminated",
        "ignored:terminated",
        "ignored:unknown_session",
    ]
    assert [c["type"] for c in await h.commands()] == ["terminate"]


async def test_created_event_uses_entry_time_and_rejections_are_commands(harness: Make) -> None:
    h: Harness = await harness()
    first = await h.publish(type="created", session_id="s1", account_id="acme",
                            timeout_seconds="100", inactivity_timeout_seconds="50",
                            auto_kill="false")  # fmt: skip
    await h.publish(type="created", session_id="s1", account_id="acme")
    await h.publish(type="created", session_id="s2", account_id="acme", timeout_seconds="99999")
    await h.publish(type="created", session_id="s3", account_id="acme")
    await h.publish(type="created", session_id="s4", account_id="acme")
    await h.publish(type="billing", account_id="broke", billing_status="balance_depleted")
    await h.publish(type="created", session_id="s5", account_id="broke")
    result = await h.consume()
    assert result.outcomes == ["applied", "rejected:409", "rejected:422", "applied",
                               "rejected:429", "ended:0", "rejected:402"]  # fmt: skip
    rec = (await h.store.get_session("s1")).record
    assert rec.created_at == int(first.split("-")[0])
    assert rec.auto_kill is False and rec.idle_expires_at is None
    assert rec.expires_at == rec.created_at + 100_000
    rejected = [c for c in await h.commands() if c["type"] == "rejected"]
    assert [(c["session_id"], c["code"]) for c in rejected] == [
        ("s1", "409"), ("s2", "422"), ("s4", "429"), ("s5", "402"),
    ]  # fmt: skip
    assert "balance_depleted" in rejected[3]["error"]


async def test_created_event_plan_applies_to_a_new_account(harness: Make) -> None:
    h: Harness = await harness()
    await h.publish(type="created", session_id="s1", account_id="big", plan="enterprise",
                    timeout_seconds="80000")  # fmt: skip
    assert (await h.consume()).outcomes == ["applied"]
    assert (await h.store.get_session("s1")).record.plan == "enterprise"


async def test_terminate_event_emits_requested_with_request_time(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    entry = await h.publish(type="terminate", session_id="s1", account_id="acme")
    assert (await h.consume()).outcomes == ["ended:requested"]
    [cmd] = await h.commands()
    assert cmd["reason"] == "requested"
    assert cmd["deadline"] == entry.split("-")[0]
    rec = (await h.store.get_session("s1")).record
    assert rec.terminated_at == int(entry.split("-")[0])
    assert int(cmd["duration_ms"]) == rec.terminated_at - rec.created_at
    assert set(cmd) == {"type", "session_id", "account_id", "reason", "deadline", "emitted_at",
                        "created_at", "duration_ms", "running_ms", "credits_used"}  # fmt: skip
    assert cmd["running_ms"] == cmd["duration_ms"]  # never paused


async def test_terminated_event_is_external_without_command(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.publish(type="terminated", session_id="s1", account_id="acme")
    assert (await h.consume()).outcomes == ["ended:external"]
    assert await h.commands() == []
    rec = (await h.store.get_session("s1")).record
    assert rec.termination_reason == "external" and rec.status == "terminated"
    # The slot is free again.
    await h.store.create_session("s2", "acme", 600, 60, True)
    await h.store.create_session("s3", "acme", 600, 60, True)


async def test_billing_hold_terminates_live_sessions_once_each(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.store.create_session("s2", "acme", 600, 60, True)
    await h.publish(type="billing", account_id="acme", billing_status="payment_failed", plan="pro")
    await h.publish(type="billing", account_id="acme", billing_status="card_expired")
    assert (await h.consume()).outcomes == ["ended:2", "ended:0"]
    cmds = await h.commands()
    assert sorted(c["session_id"] for c in cmds) == ["s1", "s2"]
    assert {c["reason"] for c in cmds} == {"billing"}
    with pytest.raises(errors.PaymentRequired):
        await h.store.keepalive("s1")


async def test_billing_hold_can_be_disabled(harness: Make) -> None:
    h: Harness = await harness(billing_hold_terminates=False)
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.publish(type="billing", account_id="acme", billing_status="payment_failed")
    assert (await h.consume()).outcomes == ["ended:0"]
    assert (await h.store.get_session("s1")).record.status == "ready"


async def test_dead_letters_keep_original_fields(harness: Make) -> None:
    h: Harness = await harness()
    bad: list[dict[Any, Any]] = [
        {"type": "bogus", "session_id": "s"},
        {"session_id": "s", "account_id": "a"},
        {"type": "activity", "account_id": "a"},
        {"type": "activity", "session_id": "x" * 500, "account_id": "a"},
        {"type": "created", "session_id": "s", "account_id": "a", "auto_kill": "maybe"},
        {"type": "created", "session_id": "s", "account_id": "a", "timeout_seconds": "ten"},
        {"type": "created", "session_id": "s", "account_id": "a", "timeout_seconds": "0"},
        {"type": "created", "session_id": "s", "account_id": "a",
         "inactivity_timeout_seconds": "86401"},
        {"type": "created", "session_id": "s", "account_id": "a", "plan": "gold"},
        {"type": "activity", "session_id": "-bad", "account_id": "a"},
        {"type": "activity", "session_id": "s", "account_id": "a", "ts": "yesterday"},
        {"type": "terminate", "session_id": "s", "account_id": "a", "reason": "bored"},
        {"type": "billing", "account_id": "a", "billing_status": "rich"},
        {"type": "activity", "session_id": b"\xff\xfe", "account_id": "a"},
        {b"\xff": b"1", "type": "activity", "session_id": "s", "account_id": "a"},
        {"type": "keepalive", "session_id": "s", "account_id": "a", "ts": ""},
    ]  # fmt: skip
    for fields in bad:
        await h.redis.xadd(h.pk.events, fields)
    result = await h.consume()
    assert result.outcomes == ["dead"] * len(bad)
    dead = await h.redis.xrange(h.pk.dead)
    assert len(dead) == len(bad)
    for original, (_, fields) in zip(bad, dead, strict=True):
        expected = {(k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str)
                    else v) for k, v in original.items()}  # fmt: skip
        assert {k: v for k, v in fields.items() if k != b"error"} == expected
        assert fields[b"error"]
    errors_text = [fields[b"error"].decode() for _, fields in dead]
    assert "unknown type 'bogus'" in errors_text[0]
    assert "missing field type" in errors_text[1]
    assert "missing field session_id" in errors_text[2]
    assert "auto_kill" in errors_text[4]
    assert "not UTF-8" in errors_text[13] and "not UTF-8" in errors_text[14]
    pending = await h.redis.xpending(h.pk.events, "lifecycled")
    assert pending["pending"] == 0


async def test_a_batch_applied_twice_is_skipped_the_second_time(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.publish(type="terminate", session_id="s1", account_id="acme")
    events = await h.read()
    first = await h.store.apply_events(h.pk, h.replica, events)
    again = await h.store.apply_events(h.pk, h.replica, events)
    assert first is not None and first.outcomes == ["ended:requested"]
    assert again is not None and again.outcomes == ["skipped"]
    assert len(await h.commands()) == 1


async def test_apply_is_fenced_by_the_lease(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.publish(type="terminate", session_id="s1", account_id="acme")
    events = await h.read()
    await h.redis.set(h.pk.lease, "another-replica")
    assert await h.store.apply_events(h.pk, h.replica, events) is None
    assert (await h.store.get_session("s1")).record.status == "ready"
    assert (await h.redis.xpending(h.pk.events, "lifecycled"))["pending"] == 1


async def test_applied_events_are_trimmed_from_the_stream(harness: Make) -> None:
    h: Harness = await harness()
    for _ in range(300):
        await h.publish(type="activity", session_id="nobody", account_id="acme")
    await h.consume()
    # Approximate trimming removes whole macro nodes (100 entries by default).
    assert await h.redis.xlen(h.pk.events) < 100


async def test_delete_is_idempotent_and_emits_once(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    first = await h.store.terminate("s1")
    second = await h.store.terminate("s1")
    assert first.changed and not second.changed
    assert second.record.termination_reason == "requested"
    assert len(await h.commands()) == 1
    with pytest.raises(errors.SessionNotFound):
        await h.store.terminate("missing")
    with pytest.raises(errors.SessionTerminated):
        await h.store.keepalive("s1")


async def test_terminated_sessions_disappear_after_retention(harness: Make) -> None:
    h: Harness = await harness(terminated_retention_seconds=1)
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.store.terminate("s1")
    assert (await h.store.get_session("s1")).record.status == "terminated"
    ttl = await h.redis.pttl(h.pk.session("s1"))
    assert 0 < ttl <= 1000


async def test_expiry_reasons_and_never_early(harness: Make) -> None:
    h: Harness = await harness()
    idle = (await h.store.create_session("idle", "acme", 600, 1, True)).record
    life = (await h.store.create_session("life", "acme", 1, 600, True)).record
    assert (await h.store.expire_due(h.pk)).terminated == 0
    deadline = max(idle.terminates_at or 0, life.terminates_at or 0)
    while await h.server_ms() < deadline:
        await asyncio.sleep(0.05)
    result = await h.store.expire_due(h.pk)
    assert result.terminated == 2 and result.by_inactivity == 1
    cmds = {c["session_id"]: c for c in await h.commands()}
    assert cmds["idle"]["reason"] == "inactivity"
    assert int(cmds["idle"]["deadline"]) == idle.idle_expires_at
    assert cmds["life"]["reason"] == "max_lifetime"
    assert int(cmds["life"]["deadline"]) == life.expires_at
    for cmd in cmds.values():
        assert int(cmd["emitted_at"]) >= int(cmd["deadline"])


async def test_auto_kill_false_runs_to_max_lifetime(harness: Make) -> None:
    h: Harness = await harness()
    rec = (await h.store.create_session("s1", "acme", 2, 1, False)).record
    assert rec.idle_expires_at is None and rec.terminates_at == rec.expires_at
    result = await h.store.expire_due(h.pk)
    assert result.next_due_ms == rec.expires_at


@pytest.mark.parametrize("on_inactivity", ["terminate", "pause"])
async def test_lag_safe_hold_waits_for_activity_in_the_stream(
    harness: Make, on_inactivity: str
) -> None:
    """Daytona#5154: a session ended while its activity waited in the stream. The
    inactivity pause (SPEC §8) waits for the consumer exactly as the termination does."""
    h: Harness = await harness()
    rec = (await h.store.create_session("s1", "acme", 600, 2, True, "", on_inactivity)).record
    while await h.server_ms() < rec.created_at + 1000:
        await asyncio.sleep(0.05)
    # The activity enters the stream before the deadline but is not applied yet.
    entry = await h.publish(type="activity", session_id="s1", account_id="acme")
    assert int(entry.split("-")[0]) < (rec.idle_expires_at or 0)
    while await h.server_ms() <= (rec.idle_expires_at or 0):
        await asyncio.sleep(0.05)
    held = await h.store.expire_due(h.pk)
    assert held.terminated == 0 and held.paused == 0 and held.held
    await h.consume()
    after = await h.store.expire_due(h.pk)
    assert after.terminated == 0 and after.paused == 0 and not after.held
    rec2 = (await h.store.get_session("s1")).record
    assert rec2.status == "running"
    assert rec2.idle_expires_at == int(entry.split("-")[0]) + 2000
    assert await h.commands() == []


async def test_lag_safe_hold_never_delays_max_lifetime(harness: Make) -> None:
    h: Harness = await harness()
    rec = (await h.store.create_session("s1", "acme", 1, 1, True)).record
    await h.publish(type="activity", session_id="other", account_id="acme")
    while await h.server_ms() < rec.expires_at:
        await asyncio.sleep(0.05)
    result = await h.store.expire_due(h.pk)
    assert result.terminated == 1
    [cmd] = await h.commands()
    assert cmd["reason"] == "max_lifetime"


async def test_expiring_warning_once_per_deadline(harness: Make) -> None:
    h: Harness = await harness(warn_before_seconds=1)
    rec = (await h.store.create_session("s1", "acme", 600, 2, True)).record
    while await h.server_ms() < (rec.terminates_at or 0) - 1000:
        await asyncio.sleep(0.05)
    assert (await h.store.expire_due(h.pk)).warned == 1
    assert (await h.store.expire_due(h.pk)).warned == 0
    [warning] = await h.commands()
    assert warning["type"] == "expiring" and warning["reason"] == "inactivity"
    assert int(warning["terminates_at"]) == rec.terminates_at
    # A keepalive moves the deadline: a new warning will come for the new one.
    view = await h.store.keepalive("s1")
    assert await h.redis.zscore(h.pk.warn, "s1") == (view.record.terminates_at or 0) - 1000


async def test_a_batch_waits_for_older_entries_another_consumer_left_pending(
    harness: Make,
) -> None:
    h: Harness = await harness()
    await h.publish(type="created", session_id="s1", account_id="acme")
    # A superseded holder read the create but never applied it.
    await h.read("old-holder")
    await h.publish(type="terminate", session_id="s1", account_id="acme")
    events = await h.read()
    with pytest.raises(OlderEntriesPending):
        await h.store.apply_events(h.pk, h.replica, events)
    assert (await h.redis.xpending(h.pk.events, "lifecycled"))["pending"] == 2
    # Claimed from the start, both apply in stream order.
    claimed = await h.redis.xautoclaim(h.pk.events, "lifecycled", h.replica, 0, "0-0")
    events = [parse_entry(eid, f, h.store.plans) for eid, f in claimed[1]]
    result = await h.store.apply_events(h.pk, h.replica, events)
    assert result is not None and result.outcomes == ["applied", "ended:requested"]


async def test_activity_that_arrived_after_the_deadline_ends_the_session_at_it(
    harness: Make,
) -> None:
    h: Harness = await harness()
    now = await h.server_ms()
    # Entries with ids in the past: created at now-10s with 2 s of inactivity allowed,
    # then an activity that entered the stream 5 s later, 3 s after the deadline.
    fields = {"type": "created", "session_id": "s1", "account_id": "acme",
              "inactivity_timeout_seconds": "2"}  # fmt: skip
    await h.redis.xadd(h.pk.events, fields, id=f"{now - 10_000}-0")
    await h.redis.xadd(h.pk.events, {"type": "activity", "session_id": "s1",
                                     "account_id": "acme"}, id=f"{now - 5_000}-0")  # fmt: skip
    assert (await h.consume()).outcomes == ["applied", "ended:inactivity"]
    [cmd] = await h.commands()
    assert cmd["reason"] == "inactivity"
    assert int(cmd["deadline"]) == now - 8_000
    rec = (await h.store.get_session("s1")).record
    assert rec.last_activity_at == now - 10_000 and rec.terminated_at == now - 8_000


async def test_huge_integers_are_rejected_or_clamped_not_dead_lettered(harness: Make) -> None:
    h: Harness = await harness()
    await h.publish(type="created", session_id="s1", account_id="acme", timeout_seconds="9" * 30)
    await h.publish(type="created", session_id="s2", account_id="acme")
    await h.publish(type="activity", session_id="s2", account_id="acme", ts="9" * 30)
    result = await h.consume()
    assert result.outcomes == ["rejected:422", "applied", "applied"]
    assert (await h.store.get_session("s2")).record.last_activity_at == result.now_ms


async def test_commands_stream_is_trimmed_to_about_commands_maxlen(harness: Make) -> None:
    h: Harness = await harness(commands_maxlen=50)
    await h.publish(type="billing", account_id="big", billing_status="ok", plan="enterprise")
    for i in range(600):
        await h.publish(type="created", session_id=f"s{i}", account_id="big")
        await h.publish(type="terminate", session_id=f"s{i}", account_id="big")
    await h.consume()
    # Approximate trimming removes whole nodes (100 entries by default): never far above.
    assert 50 <= await h.redis.xlen(h.pk.commands) < 200


async def test_a_keepalive_after_the_deadline_ends_the_session_at_it(harness: Make) -> None:
    h: Harness = await harness()
    now = await h.server_ms()
    fields = {"type": "created", "session_id": "s1", "account_id": "acme",
              "inactivity_timeout_seconds": "2"}  # fmt: skip
    await h.redis.xadd(h.pk.events, fields, id=f"{now - 10_000}-0")
    await h.consume()
    with pytest.raises(errors.SessionTerminated):
        await h.store.keepalive("s1")
    [cmd] = await h.commands()
    assert cmd["reason"] == "inactivity" and int(cmd["deadline"]) == now - 8_000


async def test_a_keepalive_during_a_held_deadline_keeps_the_session(harness: Make) -> None:
    h: Harness = await harness()
    now = await h.server_ms()
    fields = {"type": "created", "session_id": "s1", "account_id": "acme",
              "inactivity_timeout_seconds": "2"}  # fmt: skip
    await h.redis.xadd(h.pk.events, fields, id=f"{now - 10_000}-0")
    await h.consume()
    # An unapplied entry from before the deadline holds it: the keepalive still counts.
    await h.redis.xadd(h.pk.events, {"type": "activity", "session_id": "s1",
                                     "account_id": "acme"}, id=f"{now - 9_000}-0")  # fmt: skip
    view = await h.store.keepalive("s1")
    assert view.record.status == "ready" and view.record.last_activity_at == view.now_ms
    assert await h.commands() == []


async def test_sessions_of_the_0_1_layout_move_to_the_deadlines_set(harness: Make) -> None:
    h: Harness = await harness()
    now = await h.server_ms()
    base = h.pk.base
    # 0.1 kept a max-lifetime set and an inactivity set; the records are unchanged.
    sessions = {
        "busy": (now + 600_000, now, 300, "1"),  # due at its inactivity deadline
        "calm": (now + 600_000, now, 300, "0"),  # no auto_kill: its max lifetime
        "overdue": (now - 5_000, now - 60_000, 300, "1"),  # its lifetime passed meanwhile
    }
    for sid, (e, last, i, k) in sessions.items():
        await h.redis.hset(base + "s:" + sid, mapping={"a": "acme", "p": "free", "s": "u",
                           "c": now - 60_000, "e": e, "l": last, "i": i, "k": k})  # fmt: skip
        await h.redis.sadd(base + "live:acme", sid)
        await h.redis.zadd(base + "life", {sid: e})
        if k == "1":
            await h.redis.zadd(base + "idle", {sid: last + i * 1000})
    await h.redis.zadd(base + "life", {"gone": now})  # a record already expired

    await h.store.migrate_deadlines(h.pk)
    assert not await h.redis.exists(base + "life", base + "idle")
    scores = dict(await h.redis.zrange(h.pk.deadlines, 0, -1, withscores=True))
    assert scores == {b"busy": now + 300_000, b"calm": now + 600_000, b"overdue": now - 5_000}

    result = await h.store.expire_due(h.pk)
    assert result.terminated == 1 and result.next_due_ms == now + 300_000
    [cmd] = await h.commands()
    assert cmd["session_id"] == "overdue" and cmd["reason"] == "max_lifetime"
    assert int(cmd["deadline"]) == now - 5_000


async def test_a_held_session_still_ends_at_its_max_lifetime(harness: Make) -> None:
    h: Harness = await harness()
    rec = (await h.store.create_session("s1", "acme", 3, 1, True)).record
    # An entry from before the inactivity deadline stays unapplied: the deadline is held.
    await h.publish(type="activity", session_id="other", account_id="acme")
    while await h.server_ms() <= (rec.idle_expires_at or 0):
        await asyncio.sleep(0.05)
    held = await h.store.expire_due(h.pk)
    assert held.terminated == 0 and held.held
    assert held.next_due_ms == rec.expires_at  # the held deadline waits for the consumer
    assert await h.redis.zscore(h.pk.held, "s1") == rec.idle_expires_at
    assert await h.redis.zcard(h.pk.deadlines) == 1
    while await h.server_ms() < rec.expires_at:
        await asyncio.sleep(0.05)
    result = await h.store.expire_due(h.pk)
    assert result.terminated == 1 and result.by_inactivity == 0 and not result.held
    [cmd] = await h.commands()
    assert cmd["reason"] == "max_lifetime" and int(cmd["deadline"]) == rec.expires_at
    assert not await h.redis.exists(h.pk.deadlines, h.pk.held)
