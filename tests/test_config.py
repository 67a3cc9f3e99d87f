"""Configuration: environment over TOML over defaults; bad values exit 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.settings import ConfigError, load_settings


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "setting", "problem"),
    [
        ({"LIFECYCLE_PARTITIONS": "abc"}, "partitions", "valid integer"),
        ({"LIFECYCLE_PARTITIONS": "0"}, "partitions", "greater than or equal to 1"),
        ({"LIFECYCLE_HTTP_PORT": "99999"}, "http_port", "less than or equal to 65535"),
        ({"LIFECYCLE_DEFAULT_PLAN": "gold"}, "default_plan", "unknown plan 'gold'"),
        ({"LIFECYCLE_HTTP_HOST": "0.0.0.0"}, "http_host", "without api_keys"),
        ({"LIFECYCLE_REDIS_URL": "http://x"}, "redis_url", "redis://"),
        ({"LIFECYCLE_API_KEYS": "abc:admin"}, "api_keys", "64-digit hex"),
        ({"LIFECYCLE_LOG_FORMAT": "xml"}, "log_format", "'json' or 'console'"),
        ({"LIFECYCLE_PLANS_FILE": "/nonexistent/plans.toml"}, "plans_file", "No such file"),
        ({"LIFECYCLE_CONFIG_FILE": "/nonexistent/x.toml"}, "config_file", "cannot read"),
    ],
)
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_invalid_setting_exits_2_with_one_line(
    command: str, env: dict[str, str], setting: str, problem: str
) -> None:
    result = run_cli(command, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"lifecycled: invalid configuration: {setting}: ")
    assert problem in lines[0]
    assert "Traceback" not in result.stderr


def test_redis_password_is_not_echoed_in_errors() -> None:
    result = run_cli("check-config", env={"LIFECYCLE_REDIS_URL": "http://u:hunter2@x"})
    assert result.returncode == 2
    assert "hunter2" not in result.stderr


def test_toml_file_and_environment_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "lifecycled.toml"
    config.write_text('partitions = 4\nkey_prefix = "fromfile"\nhttp_port = 9000\n')
    monkeypatch.setenv("LIFECYCLE_PARTITIONS", "8")
    settings = load_settings(config)
    assert settings.partitions == 8  # environment wins
    assert settings.key_prefix == "fromfile"  # file over default
    assert settings.http_port == 9000
    assert settings.commands_maxlen == 1_000_000  # default


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("warn_before_seconds = 30\n")
    monkeypatch.setenv("LIFECYCLE_CONFIG_FILE", str(config))
    assert load_settings().warn_before_seconds == 30


def test_unknown_or_malformed_toml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("partitons = 4\n")
    with pytest.raises(ConfigError, match="partitons: unknown setting"):
        load_settings(config)
    config.write_text("partitions = \n")
    with pytest.raises(ConfigError, match=r"config_file: .* is not valid TOML"):
        load_settings(config)


def test_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    settings = load_settings(root / "config" / "lifecycled.toml")
    assert settings.partitions == 1
    plans = settings.plans()
    assert plans["free"].max_concurrent == 2 and plans["free"].max_duration_seconds == 3600
    assert plans["pro"].max_concurrent == 10 and plans["pro"].max_duration_seconds == 14400
    assert plans["enterprise"].max_concurrent is None
    assert plans["enterprise"].max_duration_seconds == 86400
    limits = {
        name: (p.requests_per_minute, p.creates_per_minute, p.max_paused_seconds)
        for name, p in plans.items()
    }
    assert limits == {
        "free": (120, 10, 86400),
        "pro": (1200, 60, 604800),
        "enterprise": (12000, 600, 2592000),
    }


def test_credits_per_hour_is_exact_to_a_micro_credit(tmp_path: Path) -> None:
    from daemon.plans import PlansError, encode_plans, parse_plans

    plans = parse_plans({"plans": {"m": {"max_duration_seconds": 60, "credits_per_hour": 2.5}}},
                        "t")  # fmt: skip
    assert plans["m"].credits_per_hour_micro == 2_500_000 and plans["m"].credits_per_hour == 2.5
    assert encode_plans(plans) == "m:-1:60:-1:-1:2500000:-1"
    for bad in (0, -1, 0.0000001, "ten", True):
        with pytest.raises(PlansError, match="credits_per_hour"):
            parse_plans({"plans": {"m": {"max_duration_seconds": 60, "credits_per_hour": bad}}},
                        "t")  # fmt: skip


def test_bad_plans_file_is_named(tmp_path: Path) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text("[plans.free]\nmax_concurrent = -1\nmax_duration_seconds = 10\n")
    result = run_cli("check-config", env={"LIFECYCLE_PLANS_FILE": str(plans)})
    assert result.returncode == 2
    assert "plans_file:" in result.stderr and "positive integer" in result.stderr


def test_non_loopback_host_with_keys_is_accepted() -> None:
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    result = run_cli(
        "check-config",
        env={"LIFECYCLE_HTTP_HOST": "0.0.0.0", "LIFECYCLE_API_KEYS": f"{digest}:admin",
             "LIFECYCLE_REDIS_URL": "redis://user:secret@localhost:6379/0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "secret" not in result.stdout and digest not in result.stdout
    assert "user:***@localhost" in result.stdout


def test_redis_cli_runs_the_bundled_valkey_cli_on_the_configured_server(valkey: Any) -> None:
    env = {"LIFECYCLE_REDIS_URL": valkey.url, "PATH": os.defpath}  # no valkey-cli on PATH
    result = run_cli("redis-cli", "--raw", "ECHO", "lifecycled-was-here", env=env)
    assert (result.returncode, result.stdout) == (0, "lifecycled-was-here\n"), result.stderr
    assert run_cli("redis-url", env=env).stdout == valkey.url + "\n"

    # A password is handed over in valkey-cli's own variable, never shown.
    url = "redis://bob:hunter2@db.example:6390/2"
    shown = json.loads(run_cli("check-config", env={"LIFECYCLE_REDIS_URL": url}).stdout)
    command = shown["redis_cli"]["command"]
    assert command.startswith("REDISCLI_AUTH=*** /") and "hunter2" not in command
    assert command.endswith("valkey-cli -h db.example -p 6390 -n 2 --user bob"), command

    sentinel = run_cli("redis-cli", "PING", env={"LIFECYCLE_REDIS_URL": "redis+sentinel://s:1/m"})
    assert sentinel.returncode == 2 and sentinel.stderr.count("\n") == 1
    assert "redis+sentinel://" in sentinel.stderr and "Traceback" not in sentinel.stderr
