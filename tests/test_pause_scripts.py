"""Pause and resume (SPEC §8) in the scripts against a real Valkey.

Stream entries with ids in the past stand for time that has passed, so the clocks of a
pause are checked to the millisecond without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon import errors
from tests.conftest import Harness

Make = Callable[..., Any]


async def past(h: Harness, at: int, **fields: str) -> str:
    """An events-stream entry that entered the stream at ``at`` (ms, in the past)."""
    entry_id = await h.redis.xadd(h.pk.events, fields, id=f"{at}-0")
    return str(entry_id.decode())


async def of_type(h: Harness, kind: str) -> list[dict[str, str]]:
    return [c for c in await h.commands() if c["type"] == kind]


async def created_pausing(h: Harness) -> int:
    """Session s1 created 10 s ago, paused by 2 s of inactivity; returns now (ms)."""
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme",
               inactivity_timeout_seconds="2", on_inactivity="pause")  # fmt: skip
    return t0


def short_pauses(tmp_path: Path, seconds: int = 1) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(
        "[plans.free]\nmax_concurrent = 2\nmax_duration_seconds = 3600\n"
        f"max_paused_seconds = {seconds}\n"
        "[plans.open]\nmax_duration_seconds = 3600\n"
    )
    return path


async def test_pause_then_resume_counts_running_time_only(harness: Make) -> None:
    h: Harness = await harness()
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme",
               timeout_seconds="5")  # fmt: skip
    await past(h, t0 - 9_000, type="pause", session_id="s1", account_id="acme")
    assert (await h.consume()).outcomes == ["applied", "paused:requested"]
    paused = (await h.store.get_session("s1")).record
    now = await h.server_ms()
    status = paused.status_object(now)
    assert status["status"] == "paused"
    assert status["expires_at"] is None and status["idle_expires_at"] is None
    assert paused.paused_at == t0 - 9_000
    assert paused.pause_expires_at == t0 - 9_000 + 86_400_000  # the free plan's limit
    assert status["running_seconds_total"] == 1.0
    assert status["paused_seconds_total"] == pytest.approx(9.0, abs=0.1)
    assert await h.redis.smembers(h.pk.live("acme")) == set()
    assert await h.redis.zscore(h.pk.deadlines, "s1") == paused.pause_expires_at
    # Five seconds after its creation it would have ended; paused, it did not.
    assert (await h.store.expire_due(h.pk)).terminated == 0

    await past(h, t0 - 2_000, type="resume", session_id="s1", account_id="acme")
    assert (await h.consume()).outcomes == ["resumed"]
    resumed = (await h.store.get_session("s1")).record
    assert resumed.status == "running"
    assert resumed.expires_at == t0 - 2_000 + 4_000  # resumed + the 4 s of lifetime left
    assert resumed.last_activity_at == t0 - 2_000
    assert resumed.max_lifetime_seconds == 5
    assert resumed.paused_ms == 7_000 and resumed.paused_at is None
    assert await h.redis.smembers(h.pk.live("acme")) == {b"s1"}
    [pause] = await of_type(h, "pause")
    assert pause["reason"] == "requested" and int(pause["deadline"]) == t0 - 9_000
    [resume] = await of_type(h, "resume")
    assert resume["session_id"] == "s1" and resume["account_id"] == "acme"

    # It ends at its lifetime in running time, with the time it ran.
    while await h.server_ms() < resumed.expires_at:
        await asyncio.sleep(0.05)
    assert (await h.store.expire_due(h.pk)).terminated == 1
    [end] = await of_type(h, "terminate")
    assert end["reason"] == "max_lifetime" and int(end["deadline"]) == resumed.expires_at
    assert int(end["running_ms"]) == 5_000
    assert int(end["duration_ms"]) == 12_000
    final = (await h.store.get_session("s1")).status_object()
    assert final["running_seconds_total"] == 5.0 and final["paused_seconds_total"] == 7.0
    assert final["max_lifetime_seconds"] == 5


async def test_one_command_per_transition_and_no_ops(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    first = await h.store.pause("s1")
    again = await h.store.pause("s1")
    assert first.changed and not again.changed and again.record.status == "paused"
    assert again.record.paused_at == first.record.paused_at
    resumed = await h.store.resume("s1")
    once_more = await h.store.resume("s1")
    assert resumed.changed and not once_more.changed and once_more.record.status == "running"
    assert [c["type"] for c in await h.commands()] == ["pause", "resume"]
    # Through the stream: the same no-ops, counted as ignored.
    await h.publish(type="resume", session_id="s1", account_id="acme")
    await h.publish(type="pause", session_id="s1", account_id="acme")
    await h.publish(type="pause", session_id="s1", account_id="acme")
    await h.publish(type="pause", session_id="s1", account_id="other")
    outcomes = (await h.consume()).outcomes
    assert outcomes == ["ignored:not_paused", "paused:requested", "ignored:paused",
                        "ignored:unknown_session"]  # fmt: skip
    assert [c["type"] for c in await h.commands()] == ["pause", "resume", "pause"]
    timeline = [e["type"] for e in await h.store.timeline("s1", None)]
    assert timeline == ["created", "paused", "resumed", "paused"]


async def test_a_terminated_session_is_409_and_a_paused_one_terminates(harness: Make) -> None:
    h: Harness = await harness()
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme")
    await past(h, t0 - 7_000, type="pause", session_id="s1", account_id="acme")
    await h.consume()
    ended = await h.store.terminate("s1")
    assert ended.changed and ended.record.status == "terminated"
    [end] = await of_type(h, "terminate")
    assert end["reason"] == "requested" and int(end["running_ms"]) == 3_000
    status = ended.status_object()
    assert status["running_seconds_total"] == 3.0
    assert status["paused_seconds_total"] == pytest.approx(7.0, abs=0.1)
    assert status["paused_at"] is None and status["pause_expires_at"] is None
    assert await h.redis.zscore(h.pk.deadlines, "s1") is None
    with pytest.raises(errors.SessionTerminated):
        await h.store.pause("s1")
    with pytest.raises(errors.SessionTerminated):
        await h.store.resume("s1")
    await h.publish(type="resume", session_id="s1", account_id="acme")
    assert (await h.consume()).outcomes == ["ignored:terminated"]


async def test_resume_is_admitted_like_a_create(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("a", "acme", 600, 60, True)
    await h.store.pause("a")
    # A paused session does not count toward max_concurrent (free: 2).
    await h.store.create_session("b", "acme", 600, 60, True)
    await h.store.create_session("c", "acme", 600, 30, True)
    with pytest.raises(errors.ConcurrentSessionLimit) as limit:
        await h.store.resume("a")
    assert 29 <= limit.value.retry_after <= 30  # the earliest live session's deadline
    assert (await h.store.get_session("a")).record.status == "paused"
    # Refused on the stream: a rejected command, as for a create.
    await h.publish(type="resume", session_id="a", account_id="acme")
    assert (await h.consume()).outcomes == ["rejected:429"]
    [rejected] = await of_type(h, "rejected")
    assert rejected["session_id"] == "a" and rejected["code"] == "429"
    # Billing comes first.
    await h.publish(type="billing", account_id="acme", billing_status="card_expired")
    await h.consume()
    with pytest.raises(errors.PaymentRequired, match="card_expired"):
        await h.store.resume("a")
    assert await of_type(h, "resume") == []


async def test_the_inactivity_deadline_pauses_with_on_inactivity_pause(harness: Make) -> None:
    h: Harness = await harness()
    t0 = await created_pausing(h)
    await h.consume()
    result = await h.store.expire_due(h.pk)
    assert result.terminated == 0 and result.paused == 1
    [pause] = await h.commands()
    assert pause["type"] == "pause" and pause["reason"] == "inactivity"
    assert int(pause["deadline"]) == t0 - 8_000
    rec = (await h.store.get_session("s1")).record
    assert rec.status == "paused" and rec.on_inactivity == "pause"
    assert rec.paused_at == t0 - 8_000 and rec.run_ms == 2_000
    # Nothing more is due: a second pass writes nothing.
    assert (await h.store.expire_due(h.pk)).paused == 0
    assert len(await h.commands()) == 1


async def test_activity_in_the_stream_before_the_deadline_prevents_the_pause(
    harness: Make,
) -> None:
    h: Harness = await harness()
    t0 = await created_pausing(h)
    await h.consume()
    # An activity entered the stream before the deadline, not applied yet: held.
    entry = await past(h, t0 - 9_000, type="activity", session_id="s1", account_id="acme",
                       source="ide")  # fmt: skip
    held = await h.store.expire_due(h.pk)
    assert held.paused == 0 and held.held
    assert await h.commands() == []
    # Applied, it moves the deadline; the session then pauses at the new one.
    await h.consume()
    result = await h.store.expire_due(h.pk)
    assert result.paused == 1
    [pause] = await h.commands()
    assert int(pause["deadline"]) == int(entry.split("-")[0]) + 2_000
    rec = (await h.store.get_session("s1")).record
    assert rec.last_activity_source == "ide" and rec.activity_count == 1


async def test_activity_that_arrived_after_the_deadline_finds_the_session_paused(
    harness: Make,
) -> None:
    h: Harness = await harness()
    t0 = await created_pausing(h)
    await past(h, t0 - 5_000, type="activity", session_id="s1", account_id="acme")
    await past(h, t0 - 4_000, type="keepalive", session_id="s1", account_id="acme")
    await past(h, t0 - 3_000, type="resume", session_id="s1", account_id="acme")
    outcomes = (await h.consume()).outcomes
    assert outcomes == ["applied", "paused:inactivity", "ignored:paused", "resumed"]
    [pause, resume] = await h.commands()
    assert pause["type"] == "pause" and int(pause["deadline"]) == t0 - 8_000
    assert resume["type"] == "resume"
    rec = (await h.store.get_session("s1")).record
    assert rec.status == "running" and rec.last_activity_at == t0 - 3_000
    assert rec.paused_ms == 5_000 and rec.activity_count == 0


async def test_activity_and_keepalive_leave_a_paused_session_paused(harness: Make) -> None:
    h: Harness = await harness()
    created = (await h.store.create_session("s1", "acme", 600, 60, True)).record
    await h.store.keepalive("s1", source="ide")
    paused = (await h.store.pause("s1")).record
    view = await h.store.keepalive("s1", activity=True, source="terminal")
    assert view.record.status == "paused"
    assert view.record.last_activity_at == paused.last_activity_at
    assert view.record.last_activity_source == "ide" and view.record.activity_count == 1
    await h.publish(type="activity", session_id="s1", account_id="acme")
    assert (await h.consume()).outcomes == ["ignored:paused"]
    assert paused.last_activity_at >= created.last_activity_at
    assert [c["type"] for c in await h.commands()] == ["pause"]


async def test_a_patch_while_paused_applies_on_resume(harness: Make) -> None:
    h: Harness = await harness()
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme",
               timeout_seconds="600")  # fmt: skip
    await past(h, t0 - 6_000, type="pause", session_id="s1", account_id="acme")
    await h.consume()
    with pytest.raises(errors.InvalidRequest, match="already run \\(4 seconds\\)"):
        await h.store.patch_session("s1", timeout_seconds=3)
    patched = await h.store.patch_session(
        "s1", timeout_seconds=20, inactivity_timeout_seconds=7, on_inactivity="pause"
    )
    rec = patched.record
    assert rec.status == "paused" and rec.max_lifetime_seconds == 20
    assert rec.inactivity_timeout_seconds == 7 and rec.on_inactivity == "pause"
    assert patched.status_object()["expires_at"] is None
    resumed = await h.store.resume("s1")
    rec = resumed.record
    assert rec.expires_at == resumed.now_ms + 16_000  # 20 s, 4 of them run
    assert rec.idle_expires_at == resumed.now_ms + 7_000
    assert await h.redis.zscore(h.pk.deadlines, "s1") == resumed.now_ms + 7_000


async def test_a_patch_past_the_inactivity_deadline_pauses_at_the_patch(harness: Make) -> None:
    h: Harness = await harness()
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme",
               on_inactivity="pause")  # fmt: skip
    await h.consume()
    view = await h.store.patch_session("s1", inactivity_timeout_seconds=1)
    assert view.record.status == "paused" and view.record.paused_at == view.now_ms
    [pause] = await h.commands()
    assert pause["reason"] == "inactivity" and int(pause["deadline"]) == view.now_ms


async def test_a_pause_ends_at_the_plans_max_paused_seconds(harness: Make, tmp_path: Path) -> None:
    h: Harness = await harness(plans_file=short_pauses(tmp_path, 1))
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme")
    await past(h, t0 - 8_000, type="pause", session_id="s1", account_id="acme")
    await h.consume()
    result = await h.store.expire_due(h.pk)
    assert result.terminated == 1 and result.by_paused_timeout == 1
    [_, end] = await h.commands()
    assert end["reason"] == "paused_timeout" and int(end["deadline"]) == t0 - 7_000
    assert int(end["running_ms"]) == 2_000
    status = (await h.store.get_session("s1")).status_object()
    assert status["termination_reason"] == "paused_timeout"
    assert status["paused_seconds_total"] == 1.0 and status["running_seconds_total"] == 2.0
    # A keepalive or a resume after the pause's end, before the expirer: 409 and one command.
    await past(h, t0 - 7_500, type="created", session_id="s2", account_id="acme")
    await past(h, t0 - 7_000, type="pause", session_id="s2", account_id="acme")
    await h.consume()
    with pytest.raises(errors.SessionTerminated):
        await h.store.resume("s2")
    with pytest.raises(errors.SessionTerminated):
        await h.store.keepalive("s2")
    ends = [c for c in await of_type(h, "terminate") if c["session_id"] == "s2"]
    assert [c["reason"] for c in ends] == ["paused_timeout"]


async def test_a_plan_without_max_paused_seconds_never_ends_a_pause(
    harness: Make, tmp_path: Path
) -> None:
    h: Harness = await harness(plans_file=short_pauses(tmp_path))
    await h.publish(type="billing", account_id="big", billing_status="ok", plan="open")
    await h.consume()
    await h.store.create_session("s1", "big", 600, 60, True)
    view = await h.store.pause("s1")
    status = view.status_object()
    assert status["pause_expires_at"] is None and status["terminates_at"] is None
    assert status["remaining_seconds"] is None
    assert await h.redis.zscore(h.pk.deadlines, "s1") is None
    resumed = await h.store.resume("s1")
    assert await h.redis.zscore(h.pk.deadlines, "s1") == resumed.record.terminates_at


async def test_why_alive_fields_count_activity_and_keep_its_source(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("s1", "acme", 600, 60, True)
    await h.publish(type="keepalive", session_id="s1", account_id="acme")
    await h.publish(type="activity", session_id="s1", account_id="acme", source="ide")
    await h.consume()
    rec = (await h.store.get_session("s1")).record
    assert rec.last_activity_source == "ide" and rec.activity_count == 2
    rec = (await h.store.keepalive("s1")).record
    assert rec.last_activity_source == "api" and rec.activity_count == 3
    await h.publish(type="keepalive", session_id="s1", account_id="acme", source="Bad!")
    assert (await h.consume()).outcomes == ["dead"]
    [dead] = await h.redis.xrange(h.pk.dead)
    assert b"source" in dead[1][b"error"]


async def test_a_billing_hold_leaves_a_paused_session_paused(harness: Make) -> None:
    h: Harness = await harness()
    await h.store.create_session("running", "acme", 600, 60, True)
    await h.store.create_session("paused", "acme", 600, 60, True)
    await h.store.pause("paused")
    await h.publish(type="billing", account_id="acme", billing_status="payment_failed")
    assert (await h.consume()).outcomes == ["ended:1"]
    assert (await h.store.get_session("paused")).record.status == "paused"
    with pytest.raises(errors.PaymentRequired):
        await h.store.resume("paused")
    await h.publish(type="billing", account_id="acme", billing_status="ok")
    await h.consume()
    assert (await h.store.resume("paused")).record.status == "running"
    assert [c["type"] for c in await h.commands()] == ["pause", "terminate", "resume"]


async def test_a_stream_end_older_than_the_pause_ends_it_at_the_pause(harness: Make) -> None:
    h: Harness = await harness()
    t0 = await h.server_ms()
    await past(h, t0 - 5_000, type="created", session_id="s1", account_id="acme")
    await h.consume()
    # The terminate entered the stream before the API pause, and is applied after it.
    await past(h, t0 - 1_000, type="terminate", session_id="s1", account_id="acme")
    paused = (await h.store.pause("s1")).record
    assert (await h.consume()).outcomes == ["ended:requested"]
    [_, end] = await h.commands()
    assert int(end["deadline"]) == paused.paused_at
    assert int(end["running_ms"]) == int(end["duration_ms"]) == paused.run_ms
    rec = (await h.store.get_session("s1")).record
    assert rec.terminated_at == paused.paused_at and rec.paused_ms == 0


async def test_a_delete_after_a_passed_deadline_ends_the_session_at_that_deadline(
    harness: Make,
) -> None:
    """The expirer had not reached it yet: a DELETE then is late, and the session ends at
    its deadline with its reason (never running past its lifetime), once."""
    h: Harness = await harness()
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme",
               timeout_seconds="5", inactivity_timeout_seconds="600")  # fmt: skip
    await past(h, t0 - 9_999, type="created", session_id="s2", account_id="acme",
               inactivity_timeout_seconds="2", on_inactivity="pause")  # fmt: skip
    await h.consume()
    ended = await h.store.terminate("s1")
    assert ended.changed and ended.record.termination_reason == "max_lifetime"
    status = ended.status_object()
    assert status["running_seconds_total"] == 5.0
    # A passed inactivity deadline that pauses: paused there, then ended by the request.
    paused_then_ended = await h.store.terminate("s2")
    assert paused_then_ended.record.termination_reason == "requested"
    commands = await h.commands()
    assert [(c["type"], c.get("reason")) for c in commands] == [
        ("terminate", "max_lifetime"), ("pause", "inactivity"), ("terminate", "requested"),
    ]  # fmt: skip
    assert int(commands[0]["deadline"]) == t0 - 5_000 and int(commands[0]["running_ms"]) == 5_000
    assert int(commands[1]["deadline"]) == t0 - 7_999 and int(commands[2]["running_ms"]) == 2_000
    assert not (await h.store.terminate("s1")).changed
    assert len(await h.commands()) == 3


@pytest.mark.parametrize(
    "ending",
    [
        {"type": "terminate", "session_id": "s1", "account_id": "acme"},
        {"type": "billing", "account_id": "acme", "billing_status": "payment_failed"},
    ],
    ids=["terminate", "billing-hold"],
)
async def test_a_stream_end_after_a_passed_deadline_is_that_deadline(
    harness: Make, ending: dict[str, str]
) -> None:
    """A terminate or a billing hold that entered the stream after the session's maximum
    lifetime: the session ends at that lifetime, with its reason."""
    h: Harness = await harness()
    t0 = await h.server_ms()
    await past(h, t0 - 10_000, type="created", session_id="s1", account_id="acme",
               timeout_seconds="5", inactivity_timeout_seconds="600")  # fmt: skip
    await past(h, t0 - 2_000, **ending)
    await h.consume()
    [end] = await h.commands()
    assert (end["reason"], int(end["deadline"])) == ("max_lifetime", t0 - 5_000)
    assert int(end["running_ms"]) == 5_000
