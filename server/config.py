"""The gate's configuration: one frozen object built once from the environment.

An invalid value raises ConfigError naming the variable, the value and what is allowed,
so that `plangate serve` stops before it binds a port.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the gate cannot use."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Config:
    enabled: bool = False
    kill_switch: bool = False
    plans: str = "plans.yaml"
    database: str = "var/plangate.sqlite3"
    host: str = "127.0.0.1"
    port: int = 8080
    api_token: str = field(default="", repr=False)
    fail_mode: str = "plan"
    cache_ttl: float = 5.0
    cache_size: int = 10_000
    store_timeout: float = 0.25
    max_amount: int = 1_000_000
    max_body_bytes: int = 16_384
    log_level: str = "INFO"
    sqlite_synchronous: str = "NORMAL"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, env_file: str | None = "config.env") -> "Config":
        """Settings from `env` (default: the process environment, after loading `env_file` if it exists;
        variables already set win over the file)."""
        if env is None:
            if env_file and Path(env_file).is_file():
                from dotenv import load_dotenv
                load_dotenv(env_file, override=False)
            env = os.environ
        r = _Reader(env)
        return cls(
            enabled=r.boolean("SUBSCRIPTION_ENABLED", False),
            kill_switch=r.boolean("SUBSCRIPTION_KILL_SWITCH", False),
            plans=r.text("PLANGATE_PLANS", "plans.yaml"),
            database=r.text("PLANGATE_DATABASE", "var/plangate.sqlite3"),
            host=r.text("PLANGATE_HOST", "127.0.0.1"),
            port=r.integer("PLANGATE_PORT", 8080, 0, 65535),
            api_token=r.text("PLANGATE_API_TOKEN", ""),
            fail_mode=r.choice("PLANGATE_FAIL_MODE", "plan", ("plan", "open", "closed")),
            cache_ttl=r.number("PLANGATE_CACHE_TTL", 5.0, 0.0, 3600.0),
            cache_size=r.integer("PLANGATE_CACHE_SIZE", 10_000, 1, 10_000_000),
            store_timeout=r.number("PLANGATE_STORE_TIMEOUT", 0.25, 0.001, 60.0),
            max_amount=r.integer("PLANGATE_MAX_AMOUNT", 1_000_000, 1, 2**62),
            max_body_bytes=r.integer("PLANGATE_MAX_BODY_BYTES", 16_384, 256, 10_000_000),
            log_level=r.choice("PLANGATE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            sqlite_synchronous=r.choice("PLANGATE_SQLITE_SYNCHRONOUS", "NORMAL", ("NORMAL", "FULL")),
        )

    def require_token(self) -> None:
        """Serving needs a token: every /v1/ route is authenticated."""
        if len(self.api_token) < 16:
            shown = "(empty)" if not self.api_token else "(too short)"
            raise ConfigError(f"PLANGATE_API_TOKEN={shown}: set a secret of at least 16 characters, "
                              "e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'")


class _Reader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return None if value is None else value.strip()

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value in (None, "") else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={value!r}: allowed are true/false (also 1/0, yes/no, on/off)")

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self._raw(name)
        if value in (None, ""):
            return default
        for option in allowed:
            if value.lower() == option.lower():
                return option
        raise ConfigError(f"{name}={value!r}: allowed are {', '.join(allowed)}")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._raw(name)
        if value in (None, ""):
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r}: a whole number from {low} to {high} is needed") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}={value!r}: a whole number from {low} to {high} is needed")
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self._raw(name)
        if value in (None, ""):
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r}: a number of seconds from {low} to {high} is needed") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}={value!r}: a number of seconds from {low} to {high} is needed")
        return number
