"""Property tests: random runs of events, API calls, consumption and expiry, applied both
to the reference model (tests/model.py) and to the real Lua scripts on a real Valkey, with
every session, account, command, dead letter and outcome compared after each step.

Time cannot be moved on the server, so the events stream carries it instead: entries are
XADDed with explicit ids starting five minutes in the past, which makes stream-created
sessions' created_at, activity times and so deadlines lie before the server's TIME. The
model is told the ``now`` each script call reports and derives everything else.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from daemon import errors
from daemon.events import ParsedEvent, parse_entry
from daemon.keys import GROUP
from daemon.model import SessionRecord
from daemon.settings import Settings
from daemon.store import SessionView
from tests.conftest import Harness
from tests.model import METERED_PLANS, PartitionModel, Session, retry_after_bounds
from tests.servers import ValkeyProcess, plans_without_rate_limits

T = TypeVar("T")

SIDS = ("a0", "a1", "a2", "b0", "b1", "b2")
ACCOUNTS = ("acme", "beta")
PAST_MS = 3_600_000  # the first entry's time, before the server's clock at the start

gaps = st.sampled_from([0, 1, 999, 1000, 1001, 2000, 5000, 60_000, 600_000])
sids = st.sampled_from(SIDS)
accounts = st.sampled_from(ACCOUNTS)


def _owner(sid: str, other: bool) -> tuple[str, str]:
    own = ACCOUNTS[SIDS.index(sid) // 3]
    return sid, (ACCOUNTS[1] if own == ACCOUNTS[0] else ACCOUNTS[0]) if other else own


# Mostly a session with its own account: a random pairing would make most events no-ops.
owned = st.builds(_owner, sids, st.sampled_from([False] * 6 + [True]))
counts = st.integers(min_value=1, max_value=12)
# fmt: off
MALFORMED: list[dict[bytes, bytes]] = [
    {b"type": b"nope", b"session_id": b"a0", b"account_id": b"acme"},
    {b"session_id": b"a0", b"account_id": b"acme"},
    {b"type": b"activity", b"account_id": b"acme"},
    {b"type": b"billing", b"account_id": b"acme"},
    {b"type": b"created", b"session_id": b"-a0", b"account_id": b"acme"},
    {b"type": b"terminate", b"session_id": b"a" * 129, b"account_id": b"acme"},
    {b"type": b"keepalive", b"session_id": b"a0", b"account_id": b"acme", b"note": b"\xff"},
    {b"type": b"terminate", b"session_id": b"a0", b"account_id": b"acme", b"reason": b"external"},
    {b"type": b"billing", b"account_id": b"acme", b"billing_status": b"broke"},
    {b"type": b"created", b"session_id": b"a1", b"account_id": b"acme", b"timeout_seconds": b"0"},
    {b"type": b"created", b"session_id": b"a1", b"account_id": b"acme", b"auto_kill": b"maybe"},
    {b"type": b"created", b"session_id": b"b0", b"account_id": b"beta", b"plan": b"gold"},
    {b"type": b"created", b"session_id": b"b0", b"account_id": b"beta", b"ts": b"x",
     b"inactivity_timeout_seconds": b"86401"},
    {b"type": b"credits", b"account_id": b"acme", b"amount": b"0", b"idempotency_key": b"k"},
    {b"type": b"credits", b"account_id": b"acme", b"amount": b"-1", b"idempotency_key": b"k"},
    {b"type": b"credits", b"account_id": b"acme", b"amount": b"1.0000001",
     b"idempotency_key": b"k"},
    {b"type": b"credits", b"account_id": b"acme", b"amount": b"1e13", b"idempotency_key": b"k"},
    {b"type": b"credits", b"account_id": b"acme", b"amount": b"1"},
    {b"type": b"credits", b"account_id": b"acme", b"amount": b"1", b"idempotency_key": b"a b"},
]
# fmt: on


@dataclass(frozen=True)
class Pub:
    """One entry to XADD: ``gap`` ms after the previous one.

    ``ts``: ("entry", d) is the entry's time + d; ("skew", d) is the server's now + the
    allowed skew + d, clamped or not depending on the now of the call that applies it.
    """

    gap: int
    fields: dict[bytes, bytes]
    ts: tuple[str, int] | None = None


def _fields(**values: str | None) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in values.items() if v is not None}


@st.composite
def created(draw: st.DrawFn) -> Pub:
    sid, account = draw(owned)
    return Pub(
        draw(gaps),
        _fields(
            type="created",
            session_id=sid,
            account_id=account,
            timeout_seconds=draw(
                st.sampled_from([None, "1", "2", "30", "600", "3600", "3601", "7200", "20000"])
            ),
            inactivity_timeout_seconds=draw(
                st.sampled_from([None, "1", "2", "60", "300", "3600", "86400"])
            ),
            auto_kill=draw(st.sampled_from([None, "true", "false", "0", "1", "TRUE"])),
            plan=draw(st.sampled_from([None, None, None, "free", "pro", "enterprise", "metered"])),
            on_inactivity=draw(
                st.sampled_from([None, None, "terminate", "pause", "pause", "sleep"])
            ),
        ),
    )


# Top-ups: amounts (credits) that last from milliseconds to hours at the metered rate.
amounts = st.sampled_from(["0.000001", "0.001", "0.01", "0.5", "2", "25"])
keys = st.sampled_from(["k1", "k2", "k3", "k4"])


@st.composite
def credited(draw: st.DrawFn) -> Pub:
    return Pub(draw(gaps), _fields(type="credits", account_id=draw(accounts),
                                   amount=draw(amounts), idempotency_key=draw(keys)))  # fmt: skip


@st.composite
def touched(draw: st.DrawFn) -> Pub:
    ts = draw(
        st.one_of(
            st.none(),
            st.tuples(st.just("entry"), st.sampled_from([0, -5000, -1, 1, 2500, 60_000])),
            st.tuples(st.just("skew"), st.sampled_from([-2000, 0, 2000, 10**9])),
            st.sampled_from(["-1", "soon", "1" * 19, "007"]),
        )
    )
    kind = draw(st.sampled_from(["activity", "keepalive"]))
    sid, account = draw(owned)
    source = draw(st.sampled_from([None, None, "ide", "a" * 64, "Bad!", ""]))
    fields = _fields(type=kind, session_id=sid, account_id=account,
                     ts=ts if isinstance(ts, str) else None, source=source)  # fmt: skip
    return Pub(draw(gaps), fields, ts if isinstance(ts, tuple) else None)


@st.composite
def ended(draw: st.DrawFn) -> Pub:
    kind = draw(st.sampled_from(["terminate", "terminated"]))
    reason = draw(st.sampled_from([None, None, "requested", "billing", "inactivity"]))
    sid, account = draw(owned)
    return Pub(draw(gaps), _fields(type=kind, session_id=sid, account_id=account,
                                   reason=reason))  # fmt: skip


@st.composite
def paused_or_resumed(draw: st.DrawFn) -> Pub:
    kind = draw(st.sampled_from(["pause", "resume"]))
    sid, account = draw(owned)
    return Pub(draw(gaps), _fields(type=kind, session_id=sid, account_id=account))


@st.composite
def billing(draw: st.DrawFn) -> Pub:
    status = draw(st.sampled_from(["ok"] * 4 + ["balance_depleted", "payment_failed"]))
    plan = draw(st.sampled_from([None, "free", "pro", "enterprise", "metered"]))
    return Pub(draw(gaps), _fields(type="billing", account_id=draw(accounts),
                                   billing_status=status, plan=plan))  # fmt: skip


malformed = st.builds(Pub, gaps, st.sampled_from(MALFORMED))
# Creates and activity weigh most: they make the sessions everything else acts on.
_KINDS = {"created": created(), "touched": touched(), "ended": ended(), "billing": billing(),
          "paused": paused_or_resumed(), "credited": credited(),
          "malformed": malformed}  # fmt: skip
publications = st.sampled_from(
    ["created"] * 4
    + ["touched"] * 4
    + ["ended"] * 2
    + ["paused"] * 2
    + ["billing", "credited", "malformed"]
).flatmap(_KINDS.__getitem__)


def _record(rec: SessionRecord) -> tuple[Any, ...]:
    # expires_at is null while paused (SPEC §8): the stored value then means nothing.
    return (rec.account_id, rec.plan, rec.status, rec.created_at,
            None if rec.paused else rec.expires_at,
            rec.last_activity_at, rec.inactivity_timeout_seconds, rec.max_lifetime_seconds,
            rec.auto_kill, rec.terminated_at, rec.termination_reason, rec.on_inactivity,
            rec.run_ms, rec.resumed_at or rec.created_at, rec.paused_at, rec.pause_expires_at,
            rec.paused_ms, rec.activity_count, rec.last_activity_source, rec.credits_rate,
            rec.metered_since, rec.credits_used_before)  # fmt: skip


def _modelled(s: Session) -> tuple[Any, ...]:
    return (s.account_id, s.plan, s.status, s.created_at, None if s.paused else s.expires_at,
            s.last_activity_at, s.inactivity_timeout_seconds, s.max_lifetime_seconds,
            s.auto_kill, s.terminated_at, s.termination_reason, s.on_inactivity, s.run_ms,
            s.run_started_at, s.paused_at, s.pause_expires_at, s.paused_ms,
            s.activity_count, s.last_activity_source, s.rate, s.metered_since,
            s.credits_used)  # fmt: skip


def _sorted(commands: list[dict[str, str]]) -> list[list[tuple[str, str]]]:
    # Within one step the order of a billing hold's terminations is a set's order.
    return sorted(sorted(c.items()) for c in commands)


async def answer(call: Awaitable[SessionView]) -> tuple[int, SessionView | None, int]:
    """An API script call's status code, its view when 200, and a 429's Retry-After."""
    try:
        view = await call
    except errors.SessionNotFound:
        return 404, None, 0
    except errors.PaymentRequired:
        return 402, None, 0
    except errors.SessionTerminated:
        return 409, None, 0
    except errors.ConcurrentSessionLimit as exc:
        return 429, None, exc.retry_after
    return 200, view, 0


_plans_file: Path | None = None


def _plans_with_a_metered_one() -> Path:
    """The shipped plans (without rate limits) and METERED_PLANS."""
    global _plans_file
    if _plans_file is None:
        lines = [plans_without_rate_limits().read_text()]
        for name, (concurrent, duration, rate) in METERED_PLANS.items():
            assert concurrent is None
            lines.append(f"[plans.{name}]\nmax_duration_seconds = {duration}\n"
                         f"credits_per_hour = {rate / 1_000_000}\n")  # fmt: skip
        _plans_file = Path(tempfile.mkdtemp(prefix="plans-")) / "plans.toml"
        _plans_file.write_text("\n".join(lines))
    return _plans_file


class PartitionMachine(RuleBasedStateMachine):
    url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client: Any = aioredis.Redis.from_url(self.url)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    @initialize(
        hold=st.booleans(),
        skew=st.sampled_from([5000, 0]),
        metered=st.sampled_from([None, "0.000001", "0.01"]),
    )
    def start(self, hold: bool, skew: int, metered: str | None = None) -> None:
        """``metered``: account beta starts on the metered plan with this balance, which
        lasts a few milliseconds or seconds of a session (acme may move to it too)."""

        async def setup() -> Harness:
            # One server for the test session; each example starts from nothing so that
            # stream ids can start in the past again.
            await self.client.flushall()
            settings = Settings(billing_hold_terminates=hold, max_clock_skew_ms=skew,
                                plans_file=_plans_with_a_metered_one(),
                                low_balance_warn_seconds=0)  # fmt: skip
            return await Harness(self.client, settings).setup()

        self.h = self.run(setup())
        self.model = PartitionModel(max_clock_skew_ms=skew, billing_hold_terminates=hold)
        assert {n: (p.max_concurrent, p.max_duration_seconds)
                for n, p in self.h.store.plans.items()} == self.model.plans  # fmt: skip
        assert {n: p.credits_per_hour_micro for n, p in self.h.store.plans.items()
                if p.credits_per_hour_micro is not None} == self.model.rates  # fmt: skip
        if metered:  # with credits for seconds of sessions: depletions come soon
            self.run(self.h.store.set_account("beta", "metered"))
            self.model.api_set_account("beta", "metered", None, 0)
            self.api_top_up("beta", metered, "k0")
        self.cursor = self.run(self.h.server_ms()) - PAST_MS
        self.commands_seen = 0
        self.delivered: list[ParsedEvent] = []
        self.last_batch: list[ParsedEvent] = []

    # Producers

    def _publish(self, pub: Pub) -> None:
        async def go() -> None:
            now = await self.h.server_ms()
            # Entries stay in the past; a later one may share a millisecond (seq + 1).
            self.cursor = min(self.cursor + pub.gap, now - 1)
            if self.model.entries:
                self.cursor = max(self.cursor, self.model.entries[-1].ms)
            fields = dict(pub.fields)
            if pub.ts is not None:
                how, delta = pub.ts
                base = self.cursor if how == "entry" else now + self.model.max_clock_skew_ms
                fields[b"ts"] = str(max(0, base + delta)).encode()
            entry_id = self.model.publish(self.cursor, fields)
            await self.client.xadd(self.h.pk.events, fields, id=entry_id)

        self.run(go())

    @rule(
        pubs=st.lists(publications, min_size=1, max_size=8),
        then=st.sampled_from(["consume", "expire", "consume+expire", "deliver+expire", "-"]),
    )
    def publish(self, pubs: list[Pub], then: str) -> None:
        for pub in pubs:
            self._publish(pub)
        # Swarm testing may switch the consumer or expirer rules off for a whole run; these
        # keep entries flowing into the scripts, and expiry meeting unapplied entries.
        if self.delivered:
            return
        if then.startswith("consume"):
            self._consume(len(self.model.entries))
        elif then.startswith("deliver"):
            self.delivered = self.run(self._read(len(pubs) // 2 + 1))
        if then.endswith("expire"):
            self.expire()

    # The consumer

    async def _read(self, count: int) -> list[ParsedEvent]:
        reply = await self.client.xreadgroup(
            GROUP, self.h.replica, {self.h.pk.events: ">"}, count=count
        )
        entries = reply[0][1] if reply else []
        events = [parse_entry(eid, f, self.h.store.plans) for eid, f in entries]
        assert [e.entry_id for e in events] == self.model.deliver(count)
        return events

    async def _apply(self, events: list[ParsedEvent]) -> None:
        result = await self.h.store.apply_events(self.h.pk, self.h.replica, events)
        assert result is not None
        outcomes, wake = self.model.apply([e.entry_id for e in events], result.now_ms)
        assert result.outcomes == outcomes
        assert result.earliest_new_deadline == wake

    @precondition(lambda self: not self.delivered)
    @rule(count=counts)
    def consume(self, count: int) -> None:
        self._consume(count)

    def _consume(self, count: int) -> None:
        async def go() -> None:
            events = await self._read(count)
            if events:
                await self._apply(events)
                self.last_batch = events

        self.run(go())

    @precondition(lambda self: not self.delivered)
    @rule(count=counts)
    def deliver_without_applying(self, count: int) -> None:
        """Entries read but not applied yet: pending, which the lag-safe rule must see."""
        self.delivered = self.run(self._read(count))

    @precondition(lambda self: bool(self.delivered))
    @rule()
    def apply_delivered(self) -> None:
        self.run(self._apply(self.delivered))
        self.last_batch, self.delivered = self.delivered, []

    @precondition(lambda self: bool(self.last_batch))
    @rule()
    def apply_again(self) -> None:
        """A batch applied twice (a retry after a lost reply) changes nothing."""
        self.run(self._apply(self.last_batch))

    # The expirer

    @rule()
    def expire(self) -> None:
        result = self.run(self.h.store.expire_due(self.h.pk))
        want = self.model.expire(result.now_ms)
        got = (result.terminated, result.by_inactivity, result.by_paused_timeout,
               result.paused, result.next_due_ms, result.held,
               sorted(result.lateness_ms), result.by_billing, result.depletions)  # fmt: skip
        assert got == (want.terminated, want.by_inactivity, want.by_paused_timeout,
                       want.paused, want.next_due_ms, want.held, want.lateness_ms,
                       want.by_billing, want.depletions)  # fmt: skip
        assert result.warned == 0

    # The API, at the server's present

    @rule(
        owner=owned,
        timeout=st.sampled_from([None, 1, 2, 60, 3600, 3601, 14400, 14401]),
        inactivity=st.sampled_from([None, 1, 2, 300, 86400]),
        auto_kill=st.booleans(),
        on_inactivity=st.sampled_from(["terminate", "pause"]),
    )
    def api_create(
        self,
        owner: tuple[str, str],
        timeout: int | None,
        inactivity: int | None,
        auto_kill: bool,
        on_inactivity: str,
    ) -> None:
        sid, account = owner

        async def go() -> None:
            t0 = await self.h.server_ms()
            retry = 0
            try:
                view = await self.h.store.create_session(sid, account, timeout, inactivity,
                                                         auto_kill, "", on_inactivity)  # fmt: skip
            except errors.PaymentRequired:
                code = 402
            except errors.ConcurrentSessionLimit as exc:
                code, retry = 429, exc.retry_after
            except errors.InvalidRequest:
                code = 422
            except errors.SessionExists:
                code = 409
            else:
                code = 201
                assert view.record.created_at == view.now_ms
            t1 = await self.h.server_ms()
            if code == 429:
                high = retry_after_bounds(self.model, account, t0)
                assert retry_after_bounds(self.model, account, t1) <= retry <= high
            now = view.now_ms if code == 201 else t0
            assert code == self.model.api_create(sid, account, timeout, inactivity, auto_kill,
                                                 now, on_inactivity)  # fmt: skip

        self.run(go())

    @rule(sid=sids)
    def api_keepalive(self, sid: str) -> None:
        async def go() -> None:
            t0 = await self.h.server_ms()
            code, view, _ = await answer(self.h.store.keepalive(sid))
            assert code == self.model.api_keepalive(sid, view.now_ms if view else t0)

        self.run(go())

    @rule(sid=sids)
    def api_pause(self, sid: str) -> None:
        async def go() -> None:
            t0 = await self.h.server_ms()
            code, view, _ = await answer(self.h.store.pause(sid))
            now, changed = (view.now_ms, view.changed) if view else (t0, False)
            assert self.model.api_pause(sid, now) == (code, changed)

        self.run(go())

    @rule(sid=sids)
    def api_resume(self, sid: str) -> None:
        async def go() -> None:
            t0 = await self.h.server_ms()
            code, view, retry = await answer(self.h.store.resume(sid))
            changed = view.changed if view else False
            if code == 429:
                account = self.model.sessions[sid].account_id
                t1 = await self.h.server_ms()
                high = retry_after_bounds(self.model, account, t0)
                assert retry_after_bounds(self.model, account, t1) <= retry <= high
            assert self.model.api_resume(sid, view.now_ms if view else t0) == (code, changed)

        self.run(go())

    @rule(sid=sids)
    def api_terminate(self, sid: str) -> None:
        async def go() -> None:
            t0 = await self.h.server_ms()
            try:
                view = await self.h.store.terminate(sid)
            except errors.SessionNotFound:
                assert self.model.api_terminate(sid, t0) == (404, False)
            else:
                assert self.model.api_terminate(sid, view.now_ms) == (200, view.changed)

        self.run(go())

    @rule(
        sid=sids,
        timeout=st.sampled_from([None, 1, 60, 300, 600, 3600, 3601, 14400]),
        inactivity=st.sampled_from([None, 1, 5, 300, 86400]),
        auto_kill=st.sampled_from([None, True, False]),
        on_inactivity=st.sampled_from([None, None, "terminate", "pause"]),
    )
    def api_patch(
        self,
        sid: str,
        timeout: int | None,
        inactivity: int | None,
        auto_kill: bool | None,
        on_inactivity: str | None,
    ) -> None:
        async def go() -> None:
            t0 = await self.h.server_ms()
            try:
                view = await self.h.store.patch_session(
                    sid, timeout, inactivity, auto_kill, on_inactivity=on_inactivity
                )
            except errors.SessionNotFound:
                code = 404
            except errors.SessionTerminated:
                code = 409
            except errors.InvalidRequest:
                code = 422
            else:
                assert self.model.api_patch(sid, timeout, inactivity, auto_kill,
                                            view.now_ms, on_inactivity) == 200  # fmt: skip
                assert _record(view.record) == _modelled(self.model.sessions[sid])
                return
            # The refusal of a lifetime shorter than the time already run depends on the
            # script's now, somewhere between these two readings of the clock.
            t1 = await self.h.server_ms()
            assert code in (self.model.patch_code(sid, timeout, t0),
                            self.model.patch_code(sid, timeout, t1))  # fmt: skip

        self.run(go())

    @rule(
        account=accounts,
        plan=st.sampled_from([None, "free", "pro", "enterprise", "metered"]),
        status=st.sampled_from([None, None, "ok", "ok", "payment_failed", "card_expired"]),
    )
    def api_set_account(self, account: str, plan: str | None, status: str | None) -> None:
        async def go() -> None:
            t0 = await self.h.server_ms()
            view, ended = await self.h.store.set_account(account, plan, status)
            t1 = await self.h.server_ms()
            # The reply has no clock; a hold's commands carry the script's now as deadline.
            fresh = (await self.h.commands())[self.commands_seen :]
            now = int(fresh[0]["deadline"]) if fresh else t0
            assert t0 <= now <= t1
            assert ended == self.model.api_set_account(account, plan, status, now)
            assert (view.plan, view.billing_status, view.live_sessions) == (
                self.model.plan_of(account),
                self.model.account(account).billing_status,
                self.model.live_count(account),
            )

        self.run(go())

    @rule(account=accounts, amount=amounts, key=keys)
    def api_top_up(self, account: str, amount: str, key: str) -> None:
        micro = int(Decimal(amount) * 1_000_000)

        async def go() -> None:
            view = await self.h.store.top_up(account, micro, key)
            assert view.now_ms is not None
            answer = self.model.top_up(account, micro, key, view.now_ms)
            assert answer is not None
            dep = "" if view.depletes_at is None else str(view.depletes_at)
            got = ("1" if view.metered else "0", str(view.balance_micro),
                   str(view.burn_micro_per_hour), dep, str(view.session_ms),
                   str(view.consumed_micro))  # fmt: skip
            assert got == answer

        self.run(go())

    # Everything observable, after every step

    @invariant()
    def agrees_with_the_model(self) -> None:
        self.run(self._compare())

    async def _compare(self) -> None:
        store, model = self.h.store, self.model
        for sid in SIDS:
            try:
                rec = (await store.get_session(sid)).record
            except errors.SessionNotFound:
                assert sid not in model.sessions, sid
            else:
                assert sid in model.sessions, sid
                assert _record(rec) == _modelled(model.sessions[sid]), sid
        for account in ACCOUNTS:
            view = await store.get_account(account)
            got = (view.plan, view.billing_status, view.live_sessions)
            assert got == (model.plan_of(account), model.account(account).billing_status,
                           model.live_count(account))  # fmt: skip
            stored = await self.client.hmget(self.h.pk.account(account),
                                             "mb", "mt", "mr", "mn", "ms", "mc")  # fmt: skip
            dep = await self.client.zscore(self.h.pk.depletions, account)
            balance = None if stored[0] is None else int(stored[0])
            # Fields never written read as 0.
            credit = (
                balance,
                *(int(v or 0) for v in stored[1:]),
                None if dep is None else int(dep),
            )
            want = model.account(account).credits()
            if want[0] is None:
                assert balance is None and dep is None, account
            else:
                assert credit == want, (account, credit, want)
        commands = await self.h.commands()
        fresh = commands[self.commands_seen :]
        for command in fresh:
            if command["type"] == "rejected":
                assert command.pop("error")
        assert len(commands) == len(model.commands)
        assert _sorted(fresh) == _sorted(model.commands[self.commands_seen :])
        self.commands_seen = len(commands)
        dead = [f for _, f in await self.client.xrange(self.h.pk.dead)]
        assert len(dead) == len(model.dead)
        for letter, original in zip(dead, model.dead, strict=True):
            assert letter.pop(b"error")
            assert letter == original
        pending = await self.client.xpending(self.h.pk.events, GROUP)
        assert pending["pending"] == len(model.pending())


def test_scripts_agree_with_the_reference_model(valkey: ValkeyProcess) -> None:
    PartitionMachine.url = valkey.url
    # Each step is a dozen round trips, so shrinking a failure can take minutes, beyond
    # the suite's per-test timeout: set MODEL_SHRINK=1 (and --timeout 0) to shrink one.
    phases = list(Phase) if os.environ.get("MODEL_SHRINK") else [Phase.explicit, Phase.generate]
    run_state_machine_as_test(
        PartitionMachine,
        settings=settings(
            max_examples=75,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,
            database=None,
            print_blob=True,
            phases=phases,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def _scenario(
    url: str, hold: bool = True, skew: int = 5000, metered: str | None = None
) -> PartitionMachine:
    PartitionMachine.url = url
    machine = PartitionMachine()
    machine.start(hold=hold, skew=skew, metered=metered)
    return machine


def _created(gap: int, sid: str, account: str, **extra: str) -> Pub:
    return Pub(gap, _fields(type="created", session_id=sid, account_id=account, **extra))


def test_lag_safe_hold_then_in_time_activity_counts(valkey: ValkeyProcess) -> None:
    """An inactivity deadline passed while an activity sent before it is unapplied."""
    m = _scenario(valkey.url)
    try:
        m.publish([_created(0, "a0", "acme", inactivity_timeout_seconds="60", plan="pro",
                            timeout_seconds="7200")], "consume")  # fmt: skip
        # The activity enters 30 s after the create, before the 60 s deadline.
        m.publish([Pub(30_000, _fields(type="activity", session_id="a0", account_id="acme"))],
                  "deliver+expire")  # fmt: skip
        m.agrees_with_the_model()
        assert m.model.sessions["a0"].live
        m.apply_delivered()
        m.expire()
        m.agrees_with_the_model()
        session = m.model.sessions["a0"]
        assert session.termination_reason == "inactivity"
        assert session.terminated_at == session.created_at + 90_000
    finally:
        m.teardown()


def test_inactivity_deadline_equal_to_lifetime_ends_as_max_lifetime(
    valkey: ValkeyProcess,
) -> None:
    m = _scenario(valkey.url)
    try:
        m.publish([_created(0, "b0", "beta", timeout_seconds="60",
                            inactivity_timeout_seconds="60")], "consume+expire")  # fmt: skip
        m.agrees_with_the_model()
        assert m.model.sessions["b0"].termination_reason == "max_lifetime"
    finally:
        m.teardown()


def test_activity_ts_beyond_skew_is_clamped_and_within_counts(valkey: ValkeyProcess) -> None:
    m = _scenario(valkey.url, skew=5000)
    try:
        m.publish([_created(0, "a1", "acme")], "consume")
        m.publish([Pub(1, _fields(type="keepalive", session_id="a1", account_id="acme"),
                       ("skew", 10**9))], "consume")  # fmt: skip
        m.agrees_with_the_model()
        clamped = m.model.sessions["a1"].last_activity_at
        m.publish([Pub(1, _fields(type="activity", session_id="a1", account_id="acme"),
                       ("skew", -1000))], "consume")  # fmt: skip
        m.agrees_with_the_model()
        session = m.model.sessions["a1"]
        assert session.status == "running"
        assert clamped < session.last_activity_at <= clamped + 5000
    finally:
        m.teardown()


def test_a_metered_session_ends_at_the_depletion_and_a_top_up_makes_the_account_ok(
    valkey: ValkeyProcess,
) -> None:
    """A balance of a micro-credit: a create uses it up within a millisecond, the expiry
    ends the session at the depletion moment; a top-up makes the account ok again."""
    m = _scenario(valkey.url, metered="0.000001")
    try:
        # The create entry's time is the server's present (less 1 ms).
        m.publish([_created(10**9, "b0", "beta")], "consume")
        m.agrees_with_the_model()
        m.expire()
        m.agrees_with_the_model()
        assert m.model.sessions["b0"].termination_reason == "billing"
        assert m.model.account("beta").billing_status == "balance_depleted"
        assert m.model.account("beta").balance == 0
        m.api_create(("b1", "beta"), None, None, True, "terminate")
        assert "b1" not in m.model.sessions  # 402 balance_depleted
        m.api_top_up("beta", "25", "k1")
        assert m.model.account("beta").billing_status == "ok"
        m.api_create(("b1", "beta"), None, None, True, "terminate")
        m.agrees_with_the_model()
        assert m.model.sessions["b1"].rate == 7_500_000
    finally:
        m.teardown()


def test_a_top_up_after_the_depletion_moment_comes_too_late_for_the_sessions(
    valkey: ValkeyProcess,
) -> None:
    m = _scenario(valkey.url, metered="0.000001")
    try:
        m.publish([_created(10**9, "b0", "beta")], "consume")
        m.api_top_up("beta", "25", "k1")  # before the expirer has run
        m.agrees_with_the_model()
        assert m.model.sessions["b0"].termination_reason == "billing"
        assert m.model.account("beta").billing_status == "ok"
        assert m.model.account("beta").balance == 25_000_000
    finally:
        m.teardown()


def test_a_lagging_create_whose_run_the_balance_cannot_pay_ends_when_it_ran_out(
    valkey: ValkeyProcess,
) -> None:
    """Applied an hour late, a create of 0.01 credits' account (4.8 s at 7.5 per hour): the
    depletion moment lies in the past, before the session's own inactivity deadline, and
    the session ends at it."""
    m = _scenario(valkey.url, metered="0.01")
    try:
        m.publish([_created(0, "b0", "beta")], "consume")
        m.agrees_with_the_model()
        b0 = m.model.sessions["b0"]
        assert m.model.account("beta").depletes_at == b0.created_at + 4800
        m.expire()
        m.agrees_with_the_model()
        assert (b0.termination_reason, b0.terminated_at) == ("billing", b0.created_at + 4800)
        assert b0.credits_used == 10_000
    finally:
        m.teardown()


def test_a_lagging_stop_before_the_balance_ran_out_gives_back_the_rest(
    valkey: ValkeyProcess,
) -> None:
    m = _scenario(valkey.url, metered="0.01")
    try:
        m.publish([_created(0, "b0", "beta"),
                   Pub(1000, _fields(type="terminate", session_id="b0", account_id="beta"))],
                  "consume")  # fmt: skip
        m.agrees_with_the_model()
        b0 = m.model.sessions["b0"]
        assert (b0.termination_reason, b0.terminated_at) == ("requested", b0.created_at + 1000)
        account = m.model.account("beta")
        # What it used, to the micro-credit (the charge and the refund each round down).
        assert account.balance is not None and account.depletes_at is None
        assert 0 <= 10_000 - b0.credits_used - account.balance <= 1
    finally:
        m.teardown()


def test_inactivity_pause_then_a_late_resume_resumes_it(valkey: ValkeyProcess) -> None:
    """An inactivity pause held for an in-time activity, then a resume entry that arrives
    after the next deadline: paused there, then resumed, one command each."""
    m = _scenario(valkey.url)
    try:
        m.publish([_created(0, "a0", "acme", inactivity_timeout_seconds="60", plan="pro",
                            timeout_seconds="7200", on_inactivity="pause")],
                  "consume")  # fmt: skip
        m.publish([Pub(30_000, _fields(type="activity", session_id="a0", account_id="acme"))],
                  "deliver+expire")  # fmt: skip
        m.agrees_with_the_model()
        assert m.model.sessions["a0"].status == "ready"
        m.apply_delivered()
        m.publish([Pub(600_000, _fields(type="resume", session_id="a0", account_id="acme"))],
                  "consume")  # fmt: skip
        m.agrees_with_the_model()
        session = m.model.sessions["a0"]
        assert session.status == "running" and session.run_ms == 90_000
        assert [c["type"] for c in m.model.commands] == ["pause", "resume"]
        assert m.model.commands[0]["deadline"] == str(session.created_at + 90_000)
    finally:
        m.teardown()
