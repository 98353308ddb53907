"""The gate's configuration: one frozen object built once from the environment.

An invalid value raises ConfigError naming the variable, the value and what is allowed,
so that `plangate serve` stops before it binds a port.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from plangate.policy import Plan


class ConfigError(ValueError):
    """A setting has a value the gate cannot use."""


_MAPPED = IPv6Network("::ffff:0:0/96")     # IPv4 addresses in IPv6 form
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Config:
    enabled: bool = False
    kill_switch: bool = False
    plans: str = "plans.yaml"
    database: str = field(default="var/plangate.sqlite3", repr=False)   # a PostgreSQL address may hold a password
    host: str = "127.0.0.1"
    port: int = 8080
    # Bearer tokens by scope, several while rotating. API: check, consume, usage, reading a subject. Admin: those
    # and what changes state on a person's word (transitions, jobs).
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    admin_tokens: tuple[str, ...] = field(default=(), repr=False)
    fail_mode: str = "plan"
    cache_ttl: float = 5.0
    cache_size: int = 10_000
    stream_queue: int = 1_000           # GET /v1/stream: events a listener may lag behind before it is cut off
    stream_max_seconds: float = 300.0   # GET /v1/stream: how long one connection lasts (the client resumes)
    stream_max_listeners: int = 10_000  # GET /v1/stream: connections open at once on this node; beyond, 503
    store_timeout: float = 0.25
    max_amount: int = 1_000_000
    max_body_bytes: int = 16_384
    idle_timeout: float = 75.0
    log_level: str = "INFO"
    sqlite_synchronous: str = "NORMAL"
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_tolerance: int = 300
    webhook_max_bytes: int = 524_288
    stripe_secret_key: str = field(default="", repr=False)
    stripe_api_base: str = "https://api.stripe.com"
    sweep_schedule: str = "* * * * *"
    reconcile_schedule: str = "*/15 * * * *"
    cleanup_schedule: str = "17 3 * * *"
    report_schedule: str = "* * * * *"
    reconcile_after: float = 3 * 86400.0
    usage_retention_days: int = 400
    pool_min: int = 1
    pool_max: int = 10
    connect_timeout: float = 5.0
    command_timeout: float = 10.0
    idempotency_retention_days: int = 30
    replicas: tuple[str, ...] = field(default=(), repr=False)     # DSNs may hold passwords
    replica_max_lag: float = 1.0
    push_usage: bool = True
    payload_retention_days: int = 4
    pseudonym_secret: str = field(default="", repr=False)
    # Reverse proxies whose X-Forwarded-For the console believes (the address its login limit counts by).
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 env_file: str | Sequence[str] | None = "config.env") -> Config:
        """Settings from `env` (default: the process environment, after loading `env_file`, or each of several in
        turn, where it exists; variables already set win over a file, and an earlier file over a later one)."""
        if env is None:
            for name in [env_file] if isinstance(env_file, str) else env_file or ():
                if name and Path(name).is_file():
                    from dotenv import load_dotenv
                    load_dotenv(name, override=False)
            env = os.environ
        r = _Reader(env)
        config = cls(
            enabled=r.boolean("SUBSCRIPTION_ENABLED", False),
            kill_switch=r.boolean("SUBSCRIPTION_KILL_SWITCH", False),
            plans=r.text("PLANGATE_PLANS", "plans.yaml"),
            database=r.database("PLANGATE_DATABASE", "var/plangate.sqlite3"),
            host=r.text("PLANGATE_HOST", "127.0.0.1"),
            port=r.integer("PLANGATE_PORT", 8080, 0, 65535),
            api_tokens=r.tokens("PLANGATE_API_TOKEN"),
            admin_tokens=r.tokens("PLANGATE_ADMIN_TOKEN"),
            fail_mode=r.choice("PLANGATE_FAIL_MODE", "plan", ("plan", "open", "closed")),
            cache_ttl=r.number("PLANGATE_CACHE_TTL", 5.0, 0.0, 3600.0),
            cache_size=r.integer("PLANGATE_CACHE_SIZE", 10_000, 1, 10_000_000),
            stream_queue=r.integer("PLANGATE_STREAM_QUEUE", 1_000, 10, 1_000_000),
            stream_max_seconds=r.number("PLANGATE_STREAM_MAX_SECONDS", 300.0, 0.5, 86_400.0),
            stream_max_listeners=r.integer("PLANGATE_STREAM_MAX_LISTENERS", 10_000, 1, 1_000_000),
            store_timeout=r.number("PLANGATE_STORE_TIMEOUT", 0.25, 0.001, 60.0),
            max_amount=r.integer("PLANGATE_MAX_AMOUNT", 1_000_000, 1, 10**15),   # as a plan's limits
            max_body_bytes=r.integer("PLANGATE_MAX_BODY_BYTES", 16_384, 256, 10_000_000),
            idle_timeout=r.number("PLANGATE_IDLE_TIMEOUT", 75.0, 0.5, 3600.0),
            log_level=r.choice("PLANGATE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            sqlite_synchronous=r.choice("PLANGATE_SQLITE_SYNCHRONOUS", "NORMAL", ("NORMAL", "FULL")),
            webhook_secrets=r.secrets("STRIPE_WEBHOOK_SECRET"),
            webhook_tolerance=r.integer("STRIPE_WEBHOOK_TOLERANCE", 300, 1, 3600),
            webhook_max_bytes=r.integer("PLANGATE_WEBHOOK_MAX_BYTES", 524_288, 1024, 50_000_000),
            stripe_secret_key=r.stripe_key("STRIPE_SECRET_KEY"),
            stripe_api_base=r.url("STRIPE_API_BASE", "https://api.stripe.com"),
            sweep_schedule=r.cron("PLANGATE_SWEEP_SCHEDULE", "* * * * *"),
            reconcile_schedule=r.cron("PLANGATE_RECONCILE_SCHEDULE", "*/15 * * * *"),
            cleanup_schedule=r.cron("PLANGATE_CLEANUP_SCHEDULE", "17 3 * * *"),
            report_schedule=r.cron("PLANGATE_OVERAGE_REPORT_SCHEDULE", "* * * * *"),
            reconcile_after=r.number("PLANGATE_RECONCILE_AFTER", 3 * 86400.0, 60.0, 365 * 86400.0),
            usage_retention_days=r.integer("PLANGATE_USAGE_RETENTION_DAYS", 400, 1, 100_000),
            idempotency_retention_days=r.integer("PLANGATE_IDEMPOTENCY_RETENTION_DAYS", 30, 1, 100_000),
            payload_retention_days=r.integer("PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS", 4, 0, 100_000),
            pseudonym_secret=r.secret("PLANGATE_PSEUDONYM_SECRET"),
            pool_min=r.integer("PLANGATE_PG_POOL_MIN", 1, 0, 1000),
            pool_max=r.integer("PLANGATE_PG_POOL_MAX", 10, 1, 1000),
            connect_timeout=r.number("PLANGATE_PG_CONNECT_TIMEOUT", 5.0, 0.1, 300.0),
            command_timeout=r.number("PLANGATE_PG_COMMAND_TIMEOUT", 10.0, 0.1, 3600.0),
            replicas=r.replicas("PLANGATE_PG_REPLICAS", r.text("PLANGATE_DATABASE", "var/plangate.sqlite3")),
            replica_max_lag=r.number("PLANGATE_PG_REPLICA_MAX_LAG", 1.0, 0.01, 60.0),
            push_usage=r.boolean("PLANGATE_PG_PUSH_USAGE", True),
            trusted_proxies=r.networks("PLANGATE_TRUSTED_PROXIES"),
        )
        if config.pool_min > config.pool_max:
            raise ConfigError(f"PLANGATE_PG_POOL_MIN={config.pool_min} is more than PLANGATE_PG_POOL_MAX="
                              f"{config.pool_max}: a pool keeps at least MIN connections and opens at most MAX")
        return config

    def database_shown(self, text: str | None = None) -> str:
        """PLANGATE_DATABASE (or `text` that may quote it or a replica's address, an error's) with every password
        of PLANGATE_DATABASE and PLANGATE_PG_REPLICAS replaced by ***: what may be printed or logged."""
        return shown_address(self.database if text is None else text, self.database, *self.replicas)

    def store_options(self) -> dict:
        """What open_store needs besides the address."""
        return {"sqlite_synchronous": self.sqlite_synchronous, "pool_min": self.pool_min, "pool_max": self.pool_max,
                "connect_timeout": self.connect_timeout, "command_timeout": self.command_timeout,
                "replicas": self.replicas, "replica_max_lag": self.replica_max_lag, "push_usage": self.push_usage}

    def require_token(self) -> None:
        """Serving needs an API token: every /v1/ route is authenticated. The admin token is optional (without
        it the admin routes refuse every caller), but never one of the API tokens: that would undo the scopes."""
        if not self.api_tokens:
            raise ConfigError(f"PLANGATE_API_TOKEN=(empty): set a secret of at least {MIN_TOKEN} characters, "
                              f"e.g. the output of: {TOKEN_RECIPE}")
        if set(self.api_tokens) & set(self.admin_tokens):
            raise ConfigError("PLANGATE_ADMIN_TOKEN: a token is also in PLANGATE_API_TOKEN; the admin token must be "
                              "a secret of its own")

    def stripe_key_problem(self, plan: Plan) -> str | None:
        """Why the gate cannot run this plan with these settings, or None: a plan that sells credit packs needs
        STRIPE_SECRET_KEY (a Checkout's webhook does not say what it bought; its line items are read from
        Stripe, and without the key every pack paid for would wait)."""
        if any(c.packs for c in plan.credits) and not self.stripe_secret_key:
            return ("STRIPE_SECRET_KEY=(empty): the plan sells credit packs (credits: packs), and what a Checkout "
                    "bought is read from Stripe (its webhook leaves the line items out); set a key that may read "
                    "Checkout Sessions")
        return None


def _passwords(address: str) -> list[str]:
    """The passwords in a postgresql:// address: its user's, and any `password=` parameter."""
    found = []
    try:
        parts = urlsplit(address)
        found.append(parts.password or "")
        query = parts.query
    except ValueError:      # a malformed address (a port that is no number...): find it by hand
        userinfo = address.partition("://")[2].rpartition("@")[0]
        found.append(userinfo.partition(":")[2])
        query = address.partition("?")[2]
    found += [value for key, value in parse_qsl(query, keep_blank_values=True) if key == "password"]
    return [p for p in found if p]


def shown_address(text: str, *addresses: str) -> str:
    """`text` with the passwords of `addresses` (default: `text` itself, one address) replaced by ***: the one
    rule for every database address the gate may print or log, the primary's and its replicas'."""
    for address in addresses or (text,):
        for password in sorted(_passwords(address), key=len, reverse=True):
            text = text.replace(f":{password}@", ":***@").replace(f"password={password}", "password=***") \
                .replace(password, "***")
    return text


MIN_TOKEN = 16
TOKEN_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


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

    def cron(self, name: str, default: str) -> str:
        """A five-field cron schedule, checked with the parser the job scheduler (aiocron) runs on."""
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        value = self.text(name, default)
        try:
            CronSim(value, datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ConfigError(f"{name}={value!r}: allowed is a cron schedule of five fields, e.g. "
                              f"'*/5 * * * *' ({exc})") from None
        return value

    def secret(self, name: str) -> str:
        """A secret of the gate's own: unset, or at least 16 characters."""
        value = self.text(name, "")
        if value and len(value) < 16:
            raise ConfigError(f"{name}=(too short): set a secret of at least 16 characters, e.g. the output of: "
                              "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value

    def stripe_key(self, name: str) -> str:
        value = self.text(name, "")
        if value and not value.startswith(("sk_", "rk_")):
            raise ConfigError(f"{name}: the value is not a Stripe secret or restricted key (sk_... or rk_...)")
        return value

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default).rstrip("/")
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ConfigError(f"{name}={value!r}: allowed is an http:// or https:// address")
        return value

    def secrets(self, name: str) -> tuple[str, ...]:
        """Comma-separated webhook signing secrets (several while rotating); each starts with whsec_."""
        value = self._raw(name) or ""
        found = tuple(part.strip() for part in value.split(",") if part.strip())
        for secret in found:
            if not secret.startswith("whsec_") or len(secret) < 12:
                shown = secret[:6] + "..." if len(secret) > 6 else "(too short)"
                raise ConfigError(f"{name}: {shown} is not a webhook signing secret; each comma-separated "
                                  "value is the endpoint's whsec_... secret from Stripe")
        return found

    def tokens(self, name: str) -> tuple[str, ...]:
        """Comma-separated bearer tokens (several while rotating: any is accepted). Each is visible ASCII, no
        space: what a client sends after "Bearer " must be the token itself, and HTTP drops spaces at a header's
        end. A token is never shown in the message."""
        value = self._raw(name) or ""
        found = tuple(part.strip() for part in value.split(",") if part.strip())
        for i, token in enumerate(found, 1):
            if len(token) < MIN_TOKEN or not (token.isascii() and token.isprintable()) or " " in token:
                raise ConfigError(f"{name}: token {i} of {len(found)} is not usable: each comma-separated token is "
                                  f"at least {MIN_TOKEN} visible ASCII characters without spaces, e.g. the output "
                                  f"of: {TOKEN_RECIPE}")
        return found

    def database(self, name: str, default: str) -> str:
        """A SQLite file's path (or sqlite:///path) or a postgresql:// address: an address of any other scheme (a
        typo, postgressql://) is refused, not taken for the name of a file."""
        value = self.text(name, default)
        if "://" in value and not value.startswith(("postgresql://", "postgres://", "sqlite://")):
            raise ConfigError(f"{name}: {shown_address(value)!r} names no store the gate knows: give a SQLite "
                              "file's path (or sqlite:///path) or a postgresql:// address")
        return value

    def networks(self, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
        """Comma-separated IP addresses or networks (10.0.0.0/8, fd00::/8)."""
        found = []
        for part in (p.strip() for p in (self._raw(name) or "").split(",")):
            if part:
                try:
                    network = ip_network(part, strict=False)
                    if isinstance(network, IPv6Network) and network.subnet_of(_MAPPED):
                        # ::ffff:10.0.0.5 is 10.0.0.5: addresses are compared in their IPv4 form
                        network = IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
                    found.append(network)
                except ValueError:
                    raise ConfigError(f"{name}: {part!r} is not an IP address or network; give comma-separated "
                                      "addresses or networks, e.g. 10.0.0.5,192.168.0.0/16") from None
        return tuple(found)

    def replicas(self, name: str, database: str) -> tuple[str, ...]:
        """Comma-separated postgresql:// addresses of streaming replicas of the PostgreSQL database."""
        found = tuple(part.strip() for part in (self._raw(name) or "").split(",") if part.strip())
        for dsn in found:
            if not dsn.startswith(("postgresql://", "postgres://")):
                raise ConfigError(f"{name}: {dsn.split('@')[-1]!r} is not allowed; each comma-separated value is a "
                                  "postgresql:// address of a streaming replica")
        if found and not database.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{name}: replicas are allowed only with a PostgreSQL PLANGATE_DATABASE "
                              f"(postgresql://...), not {shown_address(database)!r}")
        return found

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
