"""The ``lifecycled`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from daemon import __version__
from daemon.client import (
    Account,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    LifecycleClient,
    LifecycleClientError,
    PaymentRequired,
    RateLimited,
    ServiceUnavailable,
    SessionNotFound,
    SessionStatus,
    TimelineEvent,
    Unauthorized,
    WebhookNotFound,
)
from daemon.embedded import EmbeddedError
from daemon.logs import configure_logging
from daemon.model import BILLING_STATUSES, ON_INACTIVITY, SOURCE_RULE, top_up_micro
from daemon.settings import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_CONFIG = 2  # invalid configuration, and bad input (as argparse's usage errors)
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
EXIT_AUTH = 5
EXIT_UNREACHABLE = 6
EXIT_INTERRUPTED = 130

# Most specific first: the first matching class decides the exit code.
_EXIT_CODES: list[tuple[type[LifecycleClientError], int]] = [
    (ConnectionFailed, EXIT_UNREACHABLE),
    (SessionNotFound, EXIT_NOT_FOUND),
    (WebhookNotFound, EXIT_NOT_FOUND),
    (PaymentRequired, EXIT_REFUSED),
    (RateLimited, EXIT_REFUSED),
    (InvalidRequest, EXIT_CONFIG),
    (Unauthorized, EXIT_AUTH),
    (Forbidden, EXIT_AUTH),
]

EPILOG = """\
API commands take --api URL (default $LIFECYCLE_API_URL, else the local daemon at
http://127.0.0.1:$LIFECYCLE_HTTP_PORT or :8080), --api-key KEY (default $LIFECYCLE_API_KEY)
and --json (print the API's JSON instead of a table).

exit codes:
  0    success (keepalive --every: stopped by SIGINT or SIGTERM)
  1    any other error answered by the API (e.g. 409 session terminated, 503)
  2    bad input (400/413/415/422, usage errors) or invalid configuration
  3    not found (404)
  4    refused by limits or billing (402, 429)
  5    unauthorized or forbidden (401, 403)
  6    server unreachable or no answer in time
  130  interrupted (Ctrl-C) during any other command
"""


def _settings_or_exit(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        print(f"lifecycled: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop of ``event_loop``: uvloop (``auto`` when importable), or asyncio's."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            print("lifecycled: event_loop = uvloop but uvloop is not installed", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        return None
    return uvloop.new_event_loop


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.app import run_daemon

    settings = _settings_or_exit(args.config)
    configure_logging(settings.log_format, settings.log_level)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
            return runner.run(run_daemon(settings, args.config))
    except EmbeddedError as exc:
        print(f"lifecycled: {exc}", file=sys.stderr)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    from daemon import redis_cli

    settings = _settings_or_exit(args.config)
    # Not a setting: how the bundled valkey-cli reaches the server these settings name.
    shown = {**settings.redacted(), "redis_cli": redis_cli.describe(settings)}
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def cmd_redis_url(args: argparse.Namespace) -> int:
    from daemon import redis_cli

    print(redis_cli.server_url(_settings_or_exit(args.config)))
    return 0


def cmd_redis_cli(argv: list[str]) -> int:
    """``lifecycled redis-cli [--config PATH] [--] [ARGS...]``: every other argument is
    valkey-cli's own, ``--help`` included."""
    from daemon import redis_cli

    config = None
    if argv[:1] == ["--config"] and len(argv) > 1:
        config, argv = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith("--config="):
        config, argv = argv[0].split("=", 1)[1], argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    settings = _settings_or_exit(config)
    try:
        redis_cli.exec_cli(settings, argv)
    except (redis_cli.RedisCliError, EmbeddedError, OSError) as exc:
        return _fail(str(exc), EXIT_CONFIG)
    return EXIT_OK  # pragma: no cover (exec does not return)


# The API commands


def default_api_url() -> str:
    """``$LIFECYCLE_API_URL``, else the daemon on this machine (its ``http_port``)."""
    url = os.environ.get("LIFECYCLE_API_URL")
    if url:
        return url
    return f"http://127.0.0.1:{os.environ.get('LIFECYCLE_HTTP_PORT') or 8080}"


def exit_code_for(exc: LifecycleClientError) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_API_ERROR


def _fail(message: str, code: int) -> int:
    print("lifecycled: " + " ".join(message.split()), file=sys.stderr)
    return code


ApiAction = Callable[[LifecycleClient, argparse.Namespace], Awaitable[int]]


def _api_command(action: ApiAction) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(_with_client(action, args))
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


async def _with_client(action: ApiAction, args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("LIFECYCLE_API_KEY") or None
    try:
        client = LifecycleClient(args.api or default_api_url(), api_key)
    except ValueError as exc:
        return _fail(f"--api: {exc}", EXIT_CONFIG)
    async with client:
        try:
            return await action(client, args)
        except LifecycleClientError as exc:
            return _fail(_error_message(exc), exit_code_for(exc))


def _error_message(exc: LifecycleClientError) -> str:
    """The API's message; a 429 always says how long to wait."""
    wait = exc.retry_after if isinstance(exc, RateLimited) else None
    if wait is not None and "retry in" not in exc.message:
        return f"{exc.message} Retry in {wait:g} s."
    return exc.message


def relative(seconds: float) -> str:
    """``in 4m 12s`` for a moment ``seconds`` ahead, ``3s ago`` for one behind."""
    left = round(abs(seconds))
    if left == 0:
        return "now"
    counts: list[tuple[int, str]] = []
    for size, name in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        count, left = divmod(left, size)
        counts.append((count, name))
    first = next(i for i, (count, _) in enumerate(counts) if count)
    # Two units are precise enough for people: "1d 3h", "4m 12s".
    text = " ".join(f"{count}{name}" for count, name in counts[first : first + 2] if count)
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _moment(when: datetime | None, now: datetime, none: str = "-") -> str:
    if when is None:
        return none
    return f"{when:%Y-%m-%d %H:%M:%S} UTC ({relative((when - now).total_seconds())})"


def _deadline_kind(status: SessionStatus) -> str:
    if status.paused:
        return "pause limit"
    if status.terminates_at is not None and status.terminates_at == status.idle_expires_at:
        return "pause on inactivity" if status.on_inactivity == "pause" else "inactivity"
    return "max lifetime"


def _next_deadline(status: SessionStatus) -> str:
    """``in 4m 12s (inactivity)``; a pause without a limit has no deadline."""
    if status.remaining_seconds is None:
        return "never (paused; the plan's pauses do not end)"
    # The server computed remaining_seconds on its clock; ours may disagree a little.
    return f"{relative(status.remaining_seconds)} ({_deadline_kind(status)})"


def _duration(seconds: float) -> str:
    return relative(seconds).removeprefix("in ") if round(seconds) else "0s"


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")


def _print_status(status: SessionStatus) -> None:
    now = datetime.now(UTC)
    state: str = status.status
    if status.termination_reason:
        state += f" ({status.termination_reason})"
    rows = [
        ("session", status.session_id),
        ("account", status.account_id),
        ("plan", status.plan),
        ("status", state),
        ("created", _moment(status.created_at, now)),
        ("last activity", _moment(status.last_activity_at, now)),
    ]
    if status.terminated:
        # When and why it ended; its deadlines no longer mean anything.
        rows.append(("ended", _moment(status.terminated_at, now)))
        rows.append(("reason", str(status.termination_reason)))
    elif status.paused:
        rows.append(("paused", _moment(status.paused_at, now)))
        rows.append(("pause ends", _moment(status.pause_expires_at, now, none="never")))
        rows.append(("terminates", _next_deadline(status)))
    else:
        rows.append(("expires", _moment(status.expires_at, now)))
        rows.append(("idle expires", _moment(status.idle_expires_at, now)))
        rows.append(("terminates", _next_deadline(status)))
    # Why it is alive: what acted last, how often, and where its time went.
    source = status.last_activity_source or "-"
    rows += [
        ("activity", f"{status.activity_count} (last from {source})"),
        ("running time", _duration(status.running_seconds_total)),
        ("paused time", _duration(status.paused_seconds_total)),
        ("max lifetime", f"{status.max_lifetime_seconds} s of running time"),
        ("inactivity timeout", f"{status.inactivity_timeout_seconds} s"),
        ("auto kill", "yes" if status.auto_kill else "no"),
        ("on inactivity", status.on_inactivity),
    ]
    _print_rows(rows)


def _print_account(account: Account) -> None:
    limit = "unlimited" if account.max_concurrent is None else str(account.max_concurrent)
    _print_rows(
        [
            ("account", account.account_id),
            ("plan", account.plan),
            ("billing status", account.billing_status),
            ("live sessions", f"{account.live_sessions} of {limit}"),
            ("max duration", f"{account.max_duration_seconds} s"),
            *_credit_rows(account),
        ]
    )


def _credit_rows(account: Account) -> list[tuple[str, str]]:
    """An account's prepaid credits, for people (SPEC §7); none before its first top-up."""
    if account.balance is None:
        return []
    depletes = _moment(account.depletes_at, datetime.now(UTC))
    return [
        ("metered", "yes" if account.metered else "no (the plan has no credits_per_hour)"),
        ("balance", f"{account.balance:g} credits"),
        ("burn", f"{account.burn_per_hour:g} credits per hour"),
        ("depletes", depletes),
        ("used", f"{account.usage.credits:g} credits in {account.usage.session_seconds:g} s"),
    ]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _show(status: SessionStatus, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(status.raw)
    else:
        _print_status(status)
    return EXIT_OK


async def api_create(client: LifecycleClient, args: argparse.Namespace) -> int:
    status = await client.create(
        args.account,
        session_id=args.session_id,
        timeout_seconds=args.timeout,
        inactivity_timeout_seconds=args.inactivity_timeout,
        auto_kill=False if args.no_auto_kill else None,
        on_inactivity=args.on_inactivity,
    )
    return _show(status, args)


async def api_status(client: LifecycleClient, args: argparse.Namespace) -> int:
    return _show(await client.status(args.session_id), args)


async def api_terminate(client: LifecycleClient, args: argparse.Namespace) -> int:
    return _show(await client.terminate(args.session_id), args)


async def api_activity(client: LifecycleClient, args: argparse.Namespace) -> int:
    return _show(await client.activity(args.session_id, args.source), args)


async def api_pause(client: LifecycleClient, args: argparse.Namespace) -> int:
    return _show(await client.pause(args.session_id), args)


async def api_resume(client: LifecycleClient, args: argparse.Namespace) -> int:
    return _show(await client.resume(args.session_id), args)


async def api_extend(client: LifecycleClient, args: argparse.Namespace) -> int:
    status = await client.update(
        args.session_id,
        timeout_seconds=args.timeout,
        inactivity_timeout_seconds=args.inactivity_timeout,
        auto_kill=args.auto_kill,
        on_inactivity=args.on_inactivity,
    )
    return _show(status, args)


async def api_keepalive(client: LifecycleClient, args: argparse.Namespace) -> int:
    if args.every is None:
        return _show(await client.keepalive(args.session_id, args.source), args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Stopping is how a wrapping script ends the loop (kill or Ctrl-C): a success.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        first = True
        while not stop.is_set():
            try:
                _print_kept_alive(await client.keepalive(args.session_id, args.source), args)
            except (ConnectionFailed, ServiceUnavailable) as exc:
                if first:
                    raise
                # A blip must not end the loop: the session outlives one missed keepalive.
                print(f"lifecycled: keepalive failed, retrying: {exc.message}", file=sys.stderr)
            first = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.every)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return EXIT_OK


def _print_kept_alive(status: SessionStatus, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(status.raw), flush=True)
    else:
        print(f"{status.session_id} kept alive; terminates {_next_deadline(status)}", flush=True)


def _timeline_line(event: TimelineEvent, now: datetime) -> str:
    details = []
    if event.source:
        details.append(f"source {event.source}")
    if event.count is not None and event.last_at is not None:
        details.append(f"x{event.count}, last {relative((event.last_at - now).total_seconds())}")
    if event.reason:
        details.append(f"reason {event.reason}")
    for name in ("timeout_seconds", "inactivity_timeout_seconds", "auto_kill"):
        value = getattr(event, name)
        if value is not None:
            details.append(f"{name} {value}")
    when = relative((event.at - now).total_seconds())
    return f"{when:<12}  {event.type:<10}  {', '.join(details)}".rstrip()


async def api_events(client: LifecycleClient, args: argparse.Namespace) -> int:
    events = await client.timeline(args.session_id)
    if args.json:
        _print_json({"events": [e.raw for e in events]})
        return EXIT_OK
    now = datetime.now(UTC)
    for event in events:
        print(_timeline_line(event, now))
    return EXIT_OK


async def api_sessions(client: LifecycleClient, args: argparse.Namespace) -> int:
    if args.account is None:
        # Every account's: read a page at a time (an admin key).
        sessions = [s async for s in client.all_sessions(page_size=args.page_size)]
    else:
        sessions = await client.sessions(args.account)
    if args.json:
        _print_json({"sessions": [s.raw for s in sessions]})
        return EXIT_OK
    if not sessions:
        print("no live sessions" + ("" if args.account is None else f" for account {args.account}"))
        return EXIT_OK
    now = datetime.now(UTC)
    every = args.account is None  # then an ACCOUNT column first
    table = [(*(["ACCOUNT"] * every), "SESSION", "STATUS", "PLAN", "CREATED", "TERMINATES")]
    for s in sessions:
        table.append(
            (
                *([s.account_id] * every),
                s.session_id,
                s.status,
                s.plan,
                relative((s.created_at - now).total_seconds()),
                _next_deadline(s),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


async def api_account(client: LifecycleClient, args: argparse.Namespace) -> int:
    if args.plan is None and args.billing_status is None:
        account = await client.account(args.account)
    else:
        account = await client.set_account(
            args.account, plan=args.plan, billing_status=args.billing_status
        )
    if args.json:
        _print_json(account.raw)
    else:
        _print_account(account)
    return EXIT_OK


async def api_credits(client: LifecycleClient, args: argparse.Namespace) -> int:
    key = args.idempotency_key or "cli_" + secrets.token_urlsafe(16)
    account = await client.top_up(args.account, args.amount, idempotency_key=key)
    if args.json:
        _print_json(account.raw)
    else:
        _print_account(account)
    return EXIT_OK


def _amount(text: str) -> Decimal:
    try:
        top_up_micro(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Decimal(text)


SOURCE_HELP = f"what acted: {SOURCE_RULE}"


def _entry(args: argparse.Namespace) -> tuple[int, str]:
    """A dead letter named ``PARTITION:ID`` (as ``dead-letters list`` prints it) or ``ID``
    (with ``--partition``, default 0)."""
    head, sep, tail = args.entry.rpartition(":")
    if sep and head.isdigit():
        return int(head), tail
    return args.partition or 0, args.entry


async def api_dead_letters_list(client: LifecycleClient, args: argparse.Namespace) -> int:
    page = await client.dead_letters(partition=args.partition, after=args.after, limit=args.limit)
    if args.json:
        _print_json(page.raw)
        return EXIT_OK
    if not page.dead_letters:
        print("no dead letters")
    for entry in page.dead_letters:
        fields = " ".join(f"{k}={v}" for k, v in entry.fields.items())
        print(f"{entry.partition}:{entry.id}  {entry.error or '-'}  {fields}")
    if page.next is not None:
        print(f"more: lifecycled dead-letters list --after {page.next}", file=sys.stderr)
    return EXIT_OK


async def api_dead_letters_replay(client: LifecycleClient, args: argparse.Namespace) -> int:
    partition, entry_id = _entry(args)
    new_id = await client.replay_dead_letter(partition, entry_id)
    if args.json:
        _print_json({"partition": partition, "id": entry_id, "replayed_as": new_id})
    else:
        print(f"replayed {partition}:{entry_id} as events entry {new_id}")
    return EXIT_OK


async def api_dead_letters_drop(client: LifecycleClient, args: argparse.Namespace) -> int:
    partition, entry_id = _entry(args)
    await client.drop_dead_letter(partition, entry_id)
    if args.json:
        _print_json({"partition": partition, "id": entry_id, "dropped": True})
    else:
        print(f"dropped {partition}:{entry_id}")
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _add_api_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("API options")
    group.add_argument(
        "--api", metavar="URL", help="API base URL (default $LIFECYCLE_API_URL, else local)"
    )
    group.add_argument(
        "--api-key", metavar="KEY", help="API key (default $LIFECYCLE_API_KEY; prefer the env)"
    )
    group.add_argument("--json", action="store_true", help="print the API's JSON")

    def command(
        name: str, help: str, action: ApiAction, within: Any = sub
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = within.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            parents=[common],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=_api_command(action))
        return parser

    create = command("create", "create a session", api_create)
    create.add_argument("--account", required=True, metavar="ID", help="account id")
    create.add_argument("--session-id", metavar="ID", help="session id (default: generated)")
    create.add_argument("--timeout", type=_positive_int, metavar="S", help="max lifetime, s")
    create.add_argument(
        "--inactivity-timeout", type=_positive_int, metavar="S", help="inactivity timeout, s"
    )
    create.add_argument(
        "--no-auto-kill", action="store_true", help="do not terminate on inactivity"
    )
    create.add_argument(
        "--on-inactivity", choices=ON_INACTIVITY, help="what inactivity does (default terminate)"
    )

    status = command("status", "show a session", api_status)
    status.add_argument("session_id", metavar="ID")

    keepalive = command(
        "keepalive", "keep a session alive (once, or --every S seconds)", api_keepalive
    )
    keepalive.add_argument("session_id", metavar="ID")
    keepalive.add_argument(
        "--every",
        type=_positive_seconds,
        metavar="S",
        help="send a keepalive every S seconds until SIGINT or SIGTERM (then exit 0)",
    )
    keepalive.add_argument("--source", metavar="S", help=SOURCE_HELP)

    activity = command(
        "activity", "record an action on a session (a ready session becomes running)",
        api_activity,
    )  # fmt: skip
    activity.add_argument("session_id", metavar="ID")
    activity.add_argument("--source", metavar="S", help=SOURCE_HELP)

    pause = command("pause", "pause a session (its lifetime stops counting)", api_pause)
    pause.add_argument("session_id", metavar="ID")

    resume = command("resume", "resume a paused session (admitted like a create)", api_resume)
    resume.add_argument("session_id", metavar="ID")

    extend = command(
        "extend", "change a live session's limits (max lifetime within the plan)", api_extend
    )
    extend.add_argument("session_id", metavar="ID")
    extend.add_argument("--timeout", type=_positive_int, metavar="S", help="max lifetime, s")
    extend.add_argument(
        "--inactivity-timeout", type=_positive_int, metavar="S", help="inactivity timeout, s"
    )
    extend.add_argument(
        "--auto-kill", action=argparse.BooleanOptionalAction, default=None,
        help="terminate on inactivity (--no-auto-kill: only at the max lifetime)",
    )  # fmt: skip
    extend.add_argument("--on-inactivity", choices=ON_INACTIVITY, help="what inactivity does")

    events = command("events", "show a session's timeline", api_events)
    events.add_argument("session_id", metavar="ID")

    terminate = command("terminate", "terminate a session", api_terminate)
    terminate.add_argument("session_id", metavar="ID")

    sessions = command(
        "sessions", "list an account's live sessions (no ACCOUNT: every account's)", api_sessions
    )
    sessions.add_argument(
        "account", metavar="ACCOUNT", nargs="?", help="default: all accounts (an admin key)"
    )
    sessions.add_argument(
        "--page-size", type=_positive_int, metavar="N",
        help="sessions per request when listing all accounts (default: the server's, 100)",
    )  # fmt: skip

    dead = sub.add_parser(
        "dead-letters",
        help="list, replay or drop dead letters (admin)",
        description="Events-stream entries the daemon could not apply (admin key).",
    )
    dead_sub = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    listing = command("list", "list dead letters, oldest first", api_dead_letters_list, dead_sub)
    listing.add_argument("--partition", type=int, metavar="P", help="only this partition")
    listing.add_argument("--after", metavar="CURSOR", help="the page after this cursor")
    listing.add_argument("--limit", type=_positive_int, metavar="N", help="at most N (100)")
    for name, help, action in (
        ("replay", "put a dead letter back on the events stream", api_dead_letters_replay),
        ("drop", "delete a dead letter", api_dead_letters_drop),
    ):
        one = command(name, help, action, dead_sub)
        one.add_argument("entry", metavar="ENTRY", help="PARTITION:ID as listed, or ID")
        one.add_argument("--partition", type=int, metavar="P", help="the ID's partition (0)")

    from daemon import webhook_cli

    webhook_cli.add_commands(sub, common, _api_command)

    account = command("account", "show an account, or set its plan and billing status", api_account)
    account.add_argument("account", metavar="ACCOUNT")
    account.add_argument("--plan", metavar="P", help="set the plan")
    account.add_argument(
        "--billing-status", choices=BILLING_STATUSES, help="set the billing status"
    )

    credits = command("credits", "top up an account's prepaid credits (admin)", api_credits)
    credits.add_argument("account", metavar="ACCOUNT")
    credits.add_argument("amount", type=_amount, metavar="AMOUNT", help="credits to add")
    credits.add_argument(
        "--idempotency-key", metavar="KEY",
        help="the top-up's key: the same key again credits nothing (default: a new one)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifecycled",
        description="Session lifecycle daemon: lifetime and inactivity deadlines in Redis.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lifecycled {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", metavar="PATH", help="TOML settings file")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config", help="validate and print the effective configuration (secrets redacted)"
    )
    check.add_argument("--config", metavar="PATH", help="TOML settings file")
    check.set_defaults(func=cmd_check_config)

    cli = sub.add_parser(
        "redis-cli",
        help="run the bundled valkey-cli on the configured Redis (valkey-cli's arguments)",
        add_help=False,
    )
    cli.add_argument("--config", metavar="PATH", help="TOML settings file")
    cli.add_argument("args", nargs=argparse.REMAINDER, help="valkey-cli's arguments")

    url = sub.add_parser(
        "redis-url", help="print the configured Redis URL (embedded: its unix:// socket)"
    )
    url.add_argument("--config", metavar="PATH", help="TOML settings file")
    url.set_defaults(func=cmd_redis_url)

    _add_api_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["redis-cli"]:
        # Passed through untouched: valkey-cli's options are not ours to parse.
        return cmd_redis_cli(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head -1``): stop quietly, as other Unix tools do. Point
        # stdout at /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for such a pipeline
    return code


if __name__ == "__main__":
    sys.exit(main())
