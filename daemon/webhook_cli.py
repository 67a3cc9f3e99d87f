"""``lifecycled webhooks list|add|remove|test|deliveries|replay``: webhook endpoints over the
admin API (SPEC §9)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from daemon.cli import (
    EPILOG,
    EXIT_API_ERROR,
    EXIT_CONFIG,
    EXIT_OK,
    ApiAction,
    _positive_int,
    _print_json,
    _print_rows,
    relative,
)
from daemon.client import LifecycleClient, Webhook, WebhookDelivery
from daemon.webhook_endpoints import COMMAND_TYPES

REPLAY_PAGE = 1000


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _endpoint_rows(w: Webhook) -> list[tuple[str, str]]:
    rows = [("webhook", w.webhook_id), ("url", w.url), ("types", ", ".join(w.types)),
            ("account", w.account_id or "every account")]  # fmt: skip
    if w.secret:
        rows.append(("secret", f"{w.secret}  (shown only now: keep it for the receiver)"))
    return rows


async def webhooks_list(client: LifecycleClient, args: argparse.Namespace) -> int:
    found = await client.webhooks()
    if args.json:
        _print_json({"webhooks": [w.raw for w in found]})
    elif not found:
        print("no webhook endpoints")
    else:
        rows: list[tuple[str, ...]] = [("WEBHOOK", "URL", "TYPES", "ACCOUNT")]
        rows += [(w.webhook_id, w.url, ",".join(w.types), w.account_id or "*") for w in found]
        _table(rows)
    return EXIT_OK


async def webhooks_add(client: LifecycleClient, args: argparse.Namespace) -> int:
    made = await client.add_webhook(args.url, types=args.types, account_id=args.account)
    if args.json:
        _print_json(made.raw)
    else:
        _print_rows(_endpoint_rows(made))
    return EXIT_OK


async def webhooks_remove(client: LifecycleClient, args: argparse.Namespace) -> int:
    removed = await client.remove_webhook(args.webhook_id)
    if args.json:
        _print_json(removed.raw)
    else:
        print(f"removed {removed.webhook_id} ({removed.url}) and "
              f"{removed.deliveries_removed or 0} undelivered deliveries")  # fmt: skip
    return EXIT_OK


async def webhooks_test(client: LifecycleClient, args: argparse.Namespace) -> int:
    result = await client.test_webhook(args.webhook_id)
    if args.json:
        _print_json(result.raw)
    elif result.delivered:
        print(f"delivered {result.message_id}: HTTP {result.status} in {result.duration_ms} ms")
    else:
        print(f"not delivered {result.message_id}: {result.error} ({result.duration_ms} ms)")
    return EXIT_OK if result.delivered else EXIT_API_ERROR


def _delivery_row(d: WebhookDelivery, now: datetime) -> tuple[str, ...]:
    when = d.dead_at if d.state == "dead" else d.next_attempt_at
    moment = relative((when - now).total_seconds()) if when else "-"
    session = str(d.data.get("session_id") or d.data.get("account_id") or "")
    return (d.delivery_id, d.type, session, str(d.attempts), moment, d.last_error or "")


async def webhooks_deliveries(client: LifecycleClient, args: argparse.Namespace) -> int:
    state: Literal["dead", "pending"] = "pending" if args.pending else "dead"
    found = await client.webhook_deliveries(args.webhook_id, state, args.limit)
    if args.json:
        _print_json({"deliveries": [d.raw for d in found]})
    elif not found:
        print(f"no {state} deliveries for {args.webhook_id}")
    else:
        now = datetime.now(UTC)
        when = "DIED" if state == "dead" else "NEXT ATTEMPT"
        _table([("DELIVERY", "TYPE", "SESSION", "ATTEMPTS", when, "LAST ERROR"),
                *(_delivery_row(d, now) for d in found)])  # fmt: skip
    return EXIT_OK


async def webhooks_replay(client: LifecycleClient, args: argparse.Namespace) -> int:
    if bool(args.delivery_ids) == args.all:
        print("lifecycled: name the deliveries to replay, or --all (not both)", file=sys.stderr)
        return EXIT_CONFIG
    ids: list[str] = list(args.delivery_ids)
    if args.all:
        dead = await client.webhook_deliveries(args.webhook_id, "dead", REPLAY_PAGE)
        ids = [d.delivery_id for d in dead]
    replayed: list[dict[str, Any]] = []
    for delivery_id in ids:
        replayed.append((await client.replay_webhook_delivery(args.webhook_id, delivery_id)).raw)
    if args.json:
        _print_json({"deliveries": replayed})
    else:
        print(f"replayed {len(replayed)} deliveries of {args.webhook_id}")
    return EXIT_OK


def add_commands(
    sub: Any,
    common: argparse.ArgumentParser,
    runner: Callable[[ApiAction], Callable[[argparse.Namespace], int]],
) -> None:
    top = sub.add_parser(
        "webhooks",
        help="manage webhook endpoints (admin)",
        description="Webhook endpoints: every command of the chosen types is POSTed to them, "
        "signed by the Standard Webhooks specification.",
    )
    verbs = top.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)

    def verb(name: str, help: str, action: ApiAction) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(
            name, help=help, description=help[0].upper() + help[1:] + ".", parents=[common],
            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        parser.set_defaults(func=runner(action))
        return parser

    verb("list", "list the webhook endpoints", webhooks_list)
    add = verb("add", "add an endpoint; prints its signing secret once", webhooks_add)
    add.add_argument("url", metavar="URL", help="an http:// or https:// URL")
    add.add_argument(
        "--type", dest="types", action="append", choices=COMMAND_TYPES, metavar="TYPE",
        help=f"a command type to receive (repeat; default all: {', '.join(COMMAND_TYPES)})",
    )  # fmt: skip
    add.add_argument("--account", metavar="ID", help="only this account's commands")
    remove = verb("remove", "remove an endpoint and its undelivered deliveries", webhooks_remove)
    remove.add_argument("webhook_id", metavar="WEBHOOK")
    test = verb("test", "send an endpoint one signed test message now", webhooks_test)
    test.add_argument("webhook_id", metavar="WEBHOOK")
    deliveries = verb(
        "deliveries", "list an endpoint's dead (or --pending) deliveries", webhooks_deliveries
    )
    deliveries.add_argument("webhook_id", metavar="WEBHOOK")
    deliveries.add_argument("--pending", action="store_true", help="those still being tried")
    deliveries.add_argument("--limit", type=_positive_int, default=100, metavar="N")
    replay = verb("replay", "replay dead deliveries (with a fresh count of attempts)",
                  webhooks_replay)  # fmt: skip
    replay.add_argument("webhook_id", metavar="WEBHOOK")
    replay.add_argument("delivery_ids", nargs="*", metavar="DELIVERY", help="delivery ids")
    replay.add_argument("--all", action="store_true", help="every dead delivery (up to 1000)")
