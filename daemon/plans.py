"""Plans: per-plan session limits loaded from a TOML file (SPEC §2, §6, §7, §8)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

PACKAGED_PLANS_FILE = Path(__file__).with_name("plans.toml")
_PLAN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEYS = {
    "max_concurrent",
    "max_duration_seconds",
    "requests_per_minute",
    "creates_per_minute",
    "credits_per_hour",
    "max_paused_seconds",
}
MICRO = 1_000_000  # micro-credits per credit: balances and rates are exact to 10⁻⁶


class PlansError(ValueError):
    """The plans file is missing, unreadable or breaks a rule."""


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    max_concurrent: int | None  # None: unlimited
    max_duration_seconds: int
    requests_per_minute: int | None = None  # None: unlimited (SPEC §6)
    creates_per_minute: int | None = None
    credits_per_hour_micro: int | None = None  # micro-credits per running hour; None: unmetered
    max_paused_seconds: int | None = None  # None: a pause never times out (SPEC §8)

    @property
    def credits_per_hour(self) -> float | None:
        micro = self.credits_per_hour_micro
        return None if micro is None else micro / MICRO


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlansError(f"{where} must be a positive integer, got {value!r}")
    return value


def _optional_int(body: dict[str, object], key: str, where: str) -> int | None:
    value = body.get(key)
    return None if value is None else _positive_int(value, f"{where}.{key}")


def _micro_credits(value: object, where: str) -> int:
    """A positive number of credits with at most 6 decimals, as integer micro-credits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlansError(f"{where} must be a positive number, got {value!r}")
    try:
        micro = Decimal(str(value)) * MICRO
    except InvalidOperation:
        raise PlansError(f"{where} must be a positive number, got {value!r}") from None
    if micro <= 0 or micro != micro.to_integral_value():
        raise PlansError(f"{where} must be a positive number with at most 6 decimals")
    return int(micro)


def parse_plans(data: dict[str, object], source: str) -> dict[str, Plan]:
    table = data.get("plans")
    if not isinstance(table, dict) or not table:
        raise PlansError(f"{source}: no [plans.<name>] tables")
    plans: dict[str, Plan] = {}
    for name, body in table.items():
        if not _PLAN_NAME.fullmatch(name):
            raise PlansError(f"{source}: plan name {name!r} must match [A-Za-z0-9._-]{{1,64}}")
        if not isinstance(body, dict):
            raise PlansError(f"{source}: plans.{name} must be a table")
        unknown = set(body) - _KEYS
        if unknown:
            raise PlansError(f"{source}: plans.{name} has unknown keys {sorted(unknown)}")
        if "max_duration_seconds" not in body:
            raise PlansError(f"{source}: plans.{name}.max_duration_seconds is required")
        where = f"{source}: plans.{name}"
        credits = body.get("credits_per_hour")
        plans[name] = Plan(
            name=name,
            max_concurrent=_optional_int(body, "max_concurrent", where),
            max_duration_seconds=_positive_int(
                body["max_duration_seconds"], f"{where}.max_duration_seconds"
            ),
            requests_per_minute=_optional_int(body, "requests_per_minute", where),
            creates_per_minute=_optional_int(body, "creates_per_minute", where),
            credits_per_hour_micro=(
                None if credits is None else _micro_credits(credits, f"{where}.credits_per_hour")
            ),
            max_paused_seconds=_optional_int(body, "max_paused_seconds", where),
        )
    return plans


def load_plans(path: Path) -> dict[str, Plan]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise PlansError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlansError(f"{path}: {exc}") from None
    return parse_plans(data, str(path))


def _or_unlimited(value: int | None) -> int:
    return -1 if value is None else value


def encode_plans(plans: dict[str, Plan]) -> str:
    """The compact form the Lua scripts parse, one plan a comma-separated item:

    ``name:max_concurrent:max_duration:requests_per_minute:creates_per_minute:
    credits_per_hour_micro:max_paused_seconds``; an omitted (unlimited, unmetered) value
    is written as -1.
    """
    return ",".join(
        ":".join(
            str(v)
            for v in (
                p.name,
                _or_unlimited(p.max_concurrent),
                p.max_duration_seconds,
                _or_unlimited(p.requests_per_minute),
                _or_unlimited(p.creates_per_minute),
                _or_unlimited(p.credits_per_hour_micro),
                _or_unlimited(p.max_paused_seconds),
            )
        )
        for p in plans.values()
    )
