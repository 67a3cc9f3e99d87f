"""Typed settings: ``LIFECYCLE_<SETTING>`` environment over a TOML file over defaults."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.auth import ApiKey, parse_api_keys
from daemon.plans import PACKAGED_PLANS_FILE, Plan, PlansError, load_plans

ENV_PREFIX = "LIFECYCLE_"
CONFIG_FILE_ENV = "LIFECYCLE_CONFIG_FILE"
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# TLS options of a rediss:// URL's query (redis-py's SSLConnection): files, then others.
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_TLS_OPTIONS = (*_TLS_FILES, "ssl_ca_path", "ssl_cert_reqs", "ssl_check_hostname",
                "ssl_min_version", "ssl_ciphers")  # fmt: skip


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is one line naming the setting and the problem."""


def _default_data_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "lifecycled"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every setting of SPEC §5 and the implementation's own tuning knobs."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, validate_default=True
    )

    # Redis
    redis_url: SecretStr | None = None
    redis_cluster: bool = False
    # Writes wait for this many replicas to acknowledge them (WAIT) before a batch is
    # acknowledged, a command counts as emitted or an API call answers; 0 = do not wait.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    key_prefix: str = "lifecycle"
    partitions: int = Field(default=1, ge=1, le=16384)
    data_dir: Path = Field(default_factory=_default_data_dir)

    # Plans and admission
    plans_file: Path = PACKAGED_PLANS_FILE
    default_plan: str = "free"
    billing_hold_terminates: bool = True

    # Sessions and streams
    terminated_retention_seconds: int = Field(default=86400, ge=1)
    max_clock_skew_ms: int = Field(default=5000, ge=0)
    claim_idle_ms: int = Field(default=30000, ge=100)
    commands_maxlen: int = Field(default=1_000_000, ge=1)
    warn_before_seconds: int = Field(default=0, ge=0)
    timeline_max_entries: int = Field(default=200, ge=0, le=100_000)
    # SPEC §7: a low_balance command this long before a metered account's depletion.
    low_balance_warn_seconds: int = Field(default=600, ge=0, le=10**9)

    # Work distribution and batching
    lease_ttl_ms: int = Field(default=5000, ge=500, le=600_000)
    read_batch: int = Field(default=500, ge=1, le=10_000)
    expire_batch: int = Field(default=500, ge=1, le=10_000)

    # Webhooks (SPEC §9): a 2xx within the timeout is success; attempt n + 1 follows
    # attempt n after base × 4^(n-1) seconds, ±50 % jitter; dead after the last attempt.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0, le=86400)
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)

    # HTTP
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None
    # Take the client address of failed-auth blocking from the last X-Forwarded-For entry
    # (the one a trusted reverse proxy appends) instead of the socket's peer address.
    trust_forwarded_for: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    # Probes and scrapes come from outside the host (SPEC §5); the API stays on loopback.
    metrics_host: str = "0.0.0.0"  # nosec B104
    metrics_port: int = Field(default=9464, ge=1, le=65535)

    # Process
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # auto: uvloop when it is installed (it is a dependency), else asyncio's own loop.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments carry the TOML file's values, so the environment wins over them.
        return (env_settings, init_settings)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
            raise ValueError(
                "scheme must be redis://, rediss://, unix:// or redis+sentinel://, "
                f"got {parts.scheme!r}"
            )
        if parts.scheme == "redis+sentinel" and not parts.path.strip("/"):
            raise ValueError("redis+sentinel:// needs the service name: .../<service>[/<db>]")
        _check_tls_options(parts.scheme, parse_qs(parts.query))
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _KEY_PREFIX.fullmatch(value):
            raise ValueError("must be 1-64 characters of [A-Za-z0-9._:-]")
        return value

    @field_validator("plans_file")
    @classmethod
    def _check_plans_file(cls, value: Path) -> Path:
        try:
            load_plans(value)
        except PlansError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("default_plan")
    @classmethod
    def _check_default_plan(cls, value: str, info: ValidationInfo) -> str:
        plans_file = info.data.get("plans_file")
        if plans_file is not None:
            known = load_plans(plans_file)
            if value not in known:
                raise ValueError(f"unknown plan {value!r} (plans: {', '.join(known)})")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_keys(value.get_secret_value())
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _check_api_keys_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                text = value.read_text()
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
            parse_api_keys(text)
        return value

    @field_validator("http_host")
    @classmethod
    def _check_http_host(cls, value: str, info: ValidationInfo) -> str:
        # Count parsed entries: an empty or comments-only setting leaves the API open.
        keys = info.data.get("api_keys")
        text = keys.get_secret_value() if keys is not None else ""
        keys_file = info.data.get("api_keys_file")
        if keys_file is not None:
            text += "\n" + keys_file.read_text()
        has_keys = bool(parse_api_keys(text))
        if not _is_loopback(value) and not has_keys:
            raise ValueError(
                f"refusing to serve the API on non-loopback address {value!r} without api_keys"
            )
        return value

    # Derived values

    def plans(self) -> dict[str, Plan]:
        return load_plans(self.plans_file)

    def keys(self) -> list[ApiKey]:
        text = ""
        if self.api_keys is not None:
            text += self.api_keys.get_secret_value()
        if self.api_keys_file is not None:
            text += "\n" + self.api_keys_file.read_text()
        return parse_api_keys(text)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with secrets hidden, for ``check-config``."""
        out = self.model_dump(mode="json")
        if self.redis_url is not None:
            out["redis_url"] = redact_url(self.redis_url.get_secret_value())
        if self.api_keys is not None:
            out["api_keys"] = ",".join(f"<redacted>:{k.role}" for k in self.keys())
        return out


def _check_tls_options(scheme: str, query: dict[str, list[str]]) -> None:
    """A typo in a TLS option would otherwise fail every connection, not the start."""
    tls = [name for name in query if name.startswith("ssl_")]
    if tls and scheme != "rediss":
        raise ValueError(f"{tls[0]} needs a rediss:// URL")
    for name in tls:
        if name not in _TLS_OPTIONS:
            raise ValueError(f"unknown TLS option {name!r}; known: {', '.join(_TLS_OPTIONS)}")
        value = query[name][-1]
        if name in _TLS_FILES and not os.access(value, os.R_OK):
            raise ValueError(f"{name}: cannot read {value}")
        if name == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
            raise ValueError(f"ssl_cert_reqs must be none, optional or required, got {value!r}")


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config_file: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config_file: {path} is not valid TOML: {exc}") from None


def _describe(error: Any) -> str:
    loc = ".".join(str(part) for part in error.get("loc", ())) or "settings"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown setting"
    value = error.get("input")
    if isinstance(value, str | int | float) and error.get("type") != "extra_forbidden":
        shown = value if loc not in ("redis_url", "api_keys") else "<redacted>"
        message += f" (got {shown!r})"
    return f"{loc}: {message}"


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Build the settings or raise :class:`ConfigError` with a one-line reason."""
    path = config_file or os.environ.get(CONFIG_FILE_ENV) or None
    file_values: dict[str, Any] = _read_toml(Path(path)) if path else {}
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
