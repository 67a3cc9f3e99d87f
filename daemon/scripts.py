"""The Lua scripts: one file per atomic operation, loaded once and called by SHA.

Each script under ``lua/`` may splice shared code with a line ``--- @include "name"``
(``lua/includes/name.lua``). redis-py's script objects call ``EVALSHA`` and load the
script again when the server answers NOSCRIPT (after a restart or failover).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any, Protocol

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)

SCRIPT_NAMES = (
    "create_session",
    "get_session",
    "keepalive",
    "pause_session",
    "resume_session",
    "terminate_session",
    "patch_session",
    "get_account",
    "set_account",
    "top_up",
    "list_sessions",
    "auth_failure",
    "rate_limit",
    "apply_events",
    "expire_due",
    "migrate_deadlines",
    "lease",
    "lease_release",
    "replicas",
    "dead_letter_list",
    "dead_letter_replay",
    "get_timeline",
    "webhook_enqueue",
    "webhook_claim",
    "webhook_finish",
    "webhook_remove",
    "webhook_deliveries",
    "webhook_replay",
)


@cache
def script_source(name: str) -> str:
    """The script's text with its includes spliced in."""
    lua = resources.files("daemon") / "lua"

    def include(match: re.Match[str]) -> str:
        # Includes may include others (common includes timeline).
        return _INCLUDE.sub(include, (lua / "includes" / f"{match.group(1)}.lua").read_text())

    return _INCLUDE.sub(include, (lua / f"{name}.lua").read_text())


class AsyncScript(Protocol):
    async def __call__(
        self, keys: list[Any] | None = None, args: list[Any] | None = None, client: Any = None
    ) -> Any: ...


class ScriptRegistrar(Protocol):
    def register_script(self, script: str) -> Any: ...


def register_all(client: ScriptRegistrar) -> dict[str, AsyncScript]:
    return {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
