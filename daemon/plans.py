"""Plans: per-plan session limits loaded from a TOML file (SPEC §2)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

PACKAGED_PLANS_FILE = Path(__file__).with_name("plans.toml")
_PLAN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PlansError(ValueError):
    """The plans file is missing, unreadable or breaks a rule."""


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    max_concurrent: int | None  # None: unlimited
    max_duration_seconds: int


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlansError(f"{where} must be a positive integer, got {value!r}")
    return value


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
        unknown = set(body) - {"max_concurrent", "max_duration_seconds"}
        if unknown:
            raise PlansError(f"{source}: plans.{name} has unknown keys {sorted(unknown)}")
        if "max_duration_seconds" not in body:
            raise PlansError(f"{source}: plans.{name}.max_duration_seconds is required")
        concurrent = body.get("max_concurrent")
        plans[name] = Plan(
            name=name,
            max_concurrent=(
                None
                if concurrent is None
                else _positive_int(concurrent, f"{source}: plans.{name}.max_concurrent")
            ),
            max_duration_seconds=_positive_int(
                body["max_duration_seconds"], f"{source}: plans.{name}.max_duration_seconds"
            ),
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


def encode_plans(plans: dict[str, Plan]) -> str:
    """The compact form the Lua scripts parse: ``name:max_concurrent:max_duration,...``.

    An unlimited ``max_concurrent`` is written as -1.
    """
    return ",".join(
        f"{p.name}:{-1 if p.max_concurrent is None else p.max_concurrent}:{p.max_duration_seconds}"
        for p in plans.values()
    )
