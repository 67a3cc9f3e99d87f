"""Every Redis key lifecycled uses. All keys of partition ``p`` carry the hash tag ``{p}``.

Per partition (``P`` = ``key_prefix``):

- ``P:{p}:events``       stream of events in (consumer group ``lifecycled``)   SPEC §3
- ``P:{p}:commands``     stream of commands out                               SPEC §3
- ``P:{p}:dead``         dead-letter stream                                   SPEC §3
- ``P:{p}:s:<session>``  hash, one session record (fields in ``daemon.model``)
- ``P:{p}:deadlines``    sorted set, every live session -> its effective deadline (ms)
- ``P:{p}:held``         sorted set, session -> inactivity deadline the lag-safe rule holds
- ``P:{p}:warn``         sorted set, session -> time of its ``expiring`` warning (ms)
- ``P:{p}:tl:<session>`` list, the session's timeline (JSON entries, capped; SPEC §9)
- ``P:{p}:a:<account>``  hash, account record: plan, billing status
- ``P:{p}:live:<acct>``  set of the account's live session ids (admission)
- ``P:{p}:ct:<session>`` string, the creation token of the HTTP request that created the
                         session; lets a create whose reply was lost be sent again and
                         answered with that session (expires after a minute)
- ``P:{p}:lease``        string, the replica that consumes the partition now
- ``P:{p}:rl:<account>:<limit>``  string, the theoretical arrival time (ms) of the
                         account's GCRA rate limit ``requests`` or ``creates`` (SPEC §6);
                         expires once that time has passed
- ``P:{p}:wh:d:<entry>.<webhook>``  hash, one webhook delivery: w endpoint, y command type,
                         j the command's fields (JSON), n attempts made, r last error
- ``P:{p}:wh:due:<webhook>``  sorted set, the endpoint's deliveries -> next attempt (ms)
- ``P:{p}:wh:dead:<webhook>`` sorted set, the endpoint's dead deliveries -> time (ms)
- ``P:{p}:wh:gone:<webhook>`` string, set for an hour when the endpoint is removed: no
                         delivery is made for it while it lasts
- ``P:{p}:depletions``   sorted set, metered account -> its depletion moment (ms)
- ``P:{p}:lowbal``       sorted set, metered account -> time of its ``low_balance`` warning
- ``P:{p}:consumed``     string, micro-credits consumed in the partition in all

Per deployment:

- ``P:webhooks``         hash, webhook endpoint id -> JSON (url, types, account, secret)
- ``P:console:<digest>`` string, one operator console login (``daemon.console.auth``):
                         the SHA-256 hex of the session token in its cookie; expires
- ``P:config``           hash, ``partitions`` and ``plans`` (comma-separated names), written
                         by the daemon so producers (``daemon.publisher``) route and validate
                         events as it does
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

GROUP = "lifecycled"


def config_key(prefix: str) -> str:
    return f"{prefix}:config"


def console_session_key(prefix: str, digest: str) -> str:
    """A console login, by the SHA-256 hex of its cookie's token (never the token itself)."""
    return f"{prefix}:console:{digest}"


def partition_of(account_id: str, partitions: int) -> int:
    return zlib.crc32(account_id.encode()) % partitions


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    prefix: str
    partition: int

    @property
    def base(self) -> str:
        """The common prefix ``P:{p}:``; scripts build per-session keys from it."""
        return f"{self.prefix}:{{{self.partition}}}:"

    @property
    def events(self) -> str:
        return self.base + "events"

    @property
    def commands(self) -> str:
        return self.base + "commands"

    @property
    def dead(self) -> str:
        return self.base + "dead"

    @property
    def deadlines(self) -> str:
        return self.base + "deadlines"

    @property
    def held(self) -> str:
        return self.base + "held"

    @property
    def warn(self) -> str:
        return self.base + "warn"

    @property
    def lease(self) -> str:
        return self.base + "lease"

    def webhook_due(self, webhook_id: str) -> str:
        return self.base + "wh:due:" + webhook_id

    def webhook_dead(self, webhook_id: str) -> str:
        return self.base + "wh:dead:" + webhook_id

    def webhook_gone(self, webhook_id: str) -> str:
        """Marks a removed endpoint (built in webhook_remove.lua and webhook_enqueue.lua)."""
        return self.base + "wh:gone:" + webhook_id

    def delivery(self, member: str) -> str:
        return self.base + "wh:d:" + member

    @property
    def depletions(self) -> str:
        """Account -> depletion moment; apart from ``deadlines`` (see common.lua)."""
        return self.base + "depletions"

    @property
    def lowbal(self) -> str:
        """Account -> time its ``low_balance`` warning is due."""
        return self.base + "lowbal"

    @property
    def consumed(self) -> str:
        """Micro-credits consumed in the partition, in all."""
        return self.base + "consumed"

    def session(self, session_id: str) -> str:
        return self.base + "s:" + session_id

    def timeline(self, session_id: str) -> str:
        """The session's timeline list; expires with the session record."""
        return self.base + "tl:" + session_id

    def account(self, account_id: str) -> str:
        return self.base + "a:" + account_id

    def create_token(self, session_id: str) -> str:
        """The creation token of the request that created the session (create_session.lua)."""
        return self.base + "ct:" + session_id

    def live(self, account_id: str) -> str:
        return self.base + "live:" + account_id

    def rate_limit(self, account_id: str, limit: str) -> str:
        """The account's rate limit ``requests`` or ``creates`` (built in rate_limit.lua)."""
        return self.base + "rl:" + account_id + ":" + limit
