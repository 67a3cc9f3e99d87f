"""The ``lifecycled`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from daemon import __version__
from daemon.embedded import EmbeddedError
from daemon.logs import configure_logging
from daemon.settings import ConfigError, Settings, load_settings

EXIT_CONFIG = 2


def _settings_or_exit(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        print(f"lifecycled: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.app import run_daemon

    settings = _settings_or_exit(args.config)
    configure_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(run_daemon(settings, args.config))
    except EmbeddedError as exc:
        print(f"lifecycled: {exc}", file=sys.stderr)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args.config)
    print(json.dumps(settings.redacted(), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifecycled",
        description="Session lifecycle daemon: lifetime and inactivity deadlines in Redis.",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
