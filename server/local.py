"""`make run`'s local gate: generated secrets under var/, its defaults as the last of the settings files, and
what to try once it runs.

    python -m plangate.server.local prepare   # var/api-token, var/admin-token, var/webhook-secret, var/run.env
    python -m plangate.server.local lint      # plangate lint on the plan the settings name (PLANGATE_PLANS)
    python -m plangate.server.local hint      # the tokens and commands of the settings in effect

`plangate migrate` and `plangate serve` then read `--env-file config.env --env-file var/run.env` (config.env only
where there is one: a named file must exist): the environment wins over config.env, and config.env over make run's
defaults.
"""
from __future__ import annotations

import errno
import os
import secrets
import socket
import sys
from pathlib import Path

from .config import Config, ConfigError

VAR = Path("var")
ENV_FILES = ("config.env", str(VAR / "run.env"))
# name -> (file under var/ its value is kept in, how a new one is made)
_SECRETS = {
    "PLANGATE_API_TOKEN": ("api-token", lambda: secrets.token_urlsafe(32)),
    "PLANGATE_ADMIN_TOKEN": ("admin-token", lambda: secrets.token_urlsafe(32)),
    "STRIPE_WEBHOOK_SECRET": ("webhook-secret", lambda: "whsec_" + secrets.token_hex(24)),
}
DEFAULTS = {"SUBSCRIPTION_ENABLED": "true", "PLANGATE_DATABASE": "var/plangate.sqlite3", "PLANGATE_PORT": "8080"}


def prepare() -> None:
    """The secrets (each made once, then kept) and var/run.env, make run's defaults: files only their owner may
    read, from their first byte (they hold the admin token)."""
    VAR.mkdir(exist_ok=True)
    values = dict(DEFAULTS)
    for name, (file, make) in _SECRETS.items():
        path = VAR / file
        if not path.is_file() or not path.read_text().strip():
            _write_secret(path, make() + "\n")
        values[name] = path.read_text().strip()
    lines = [f"{name}={value}" for name, value in values.items()]
    _write_secret(VAR / "run.env", "# make run's defaults, written by it: the environment and config.env win over "
                                   "them.\n" + "\n".join(lines) + "\n")


def _write_secret(path: Path, text: str) -> None:
    """text into path, readable and writable by its owner alone (a file kept from before is made so too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _settings() -> Config | None:
    try:
        return Config.from_env(env_file=ENV_FILES)
    except ConfigError as exc:
        print(f"plangate: invalid setting: {exc}", file=sys.stderr)
        return None


def lint() -> int:
    """`plangate lint` on the plan serve will run (PLANGATE_PLANS of the settings in effect, plans.yaml unless
    set), not always the shipped one."""
    from plangate.cli import main as plangate_main
    config = _settings()
    if config is None:
        return 2
    print(f"{_plangate()} lint {config.plans}", flush=True)
    return plangate_main(["lint", config.plans])


def hint(out=None) -> int:
    """The tokens, the secret and the commands of the settings in effect (what serve will read); 2, and nothing
    printed, when the port is taken (a gate started by an earlier make run, say)."""
    out = out or sys.stdout
    config = _settings()
    if config is None:
        return 2
    if _in_use(config.host, config.port):
        print(f"plangate: {config.host}:{config.port} is in use: is a gate (an earlier make run) still running? "
              "Stop it, or set PLANGATE_PORT to another port", file=sys.stderr)
        return 2
    api = config.api_tokens[0] if config.api_tokens else "(none: set PLANGATE_API_TOKEN)"
    admin = config.admin_tokens[0] if config.admin_tokens else "(none: the admin routes refuse every caller)"
    secret = config.webhook_secrets[0] if config.webhook_secrets else "(none: /webhook/stripe answers 503)"
    url = f"http://{config.host}:{config.port}"
    kept = {name: (VAR / file).read_text().strip() if (VAR / file).is_file() else None
            for name, (file, _) in _SECRETS.items()}
    # The simulator finds var/'s values by itself; a value config.env or the environment set is passed along.
    given = [f"--{flag} {value}" for flag, name, value in (("token", "PLANGATE_API_TOKEN", api),
                                                         ("admin-token", "PLANGATE_ADMIN_TOKEN", admin),
                                                         ("secret", "STRIPE_WEBHOOK_SECRET", secret))
             if value != kept[name] and not value.startswith("(")]
    extra = "".join(" " + g for g in given)
    # A token config.env or the environment set: the README's $(cat var/api-token) names one the gate refuses.
    moved = {name: f" (set in config.env or the environment: var/{_SECRETS[name][0]} holds make run's own, which "
                   f"this gate does not take)" if kept[name] and value != kept[name] and not value.startswith("(")
             else "" for name, value in (("PLANGATE_API_TOKEN", api), ("PLANGATE_ADMIN_TOKEN", admin),
                                         ("STRIPE_WEBHOOK_SECRET", secret))}
    enforcement = "on" if config.enabled else "off (SUBSCRIPTION_ENABLED=false)"
    if config.kill_switch:
        enforcement += "; kill switch ON (SUBSCRIPTION_KILL_SWITCH=true): every check and consume is denied"
    meter = _first_meter(config.plans)
    if Path(config.plans).resolve() == Path("plans.yaml").resolve():
        simulate = f"Simulate Stripe (another shell, same directory):  {_plangate()} stripe-simulate --url {url}{extra}"
    else:       # its lifecycles expect the shipped plan's statuses and meter
        simulate = (f"Simulate Stripe: stripe-simulate plays the shipped plans.yaml's lifecycles; for "
                    f"{config.plans}, write stories: {_plangate()} test {config.plans} <stories>")
    print(f"""
API token (check, consume, usage, subjects; PLANGATE_API_TOKEN): {api}{moved["PLANGATE_API_TOKEN"]}
Admin token (transitions, credits, traits, erasure, plan reloads, jobs; PLANGATE_ADMIN_TOKEN): {admin}\
{moved["PLANGATE_ADMIN_TOKEN"]}
Stripe webhook secret (STRIPE_WEBHOOK_SECRET): {secret}{moved["STRIPE_WEBHOOK_SECRET"]}
Enforcement {enforcement}; store {config.database_shown()}
Try:  curl -s -X POST {url}/v1/check -H "Authorization: Bearer {api}" -d '{{"subject": "alice", "meter": "{meter}"}}'
{simulate}
Console:  {url}/console/ (log in with the admin token; the API token opens it read-only)
Stop with Ctrl-C.
""", file=out, flush=True)
    return 0


def _in_use(host: str, port: int) -> bool:
    """Whether serve could not listen on host:port because something listens there already (any other reason to
    fail is serve's to say)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as aiohttp's server sets it
        if probe.family == socket.AF_INET6:     # as asyncio's server does: an IPv4 service on the port is no clash
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _first_meter(plans: str) -> str:
    """The plan's first meter, for the curl line ("requests" when the plan does not load: serve says why)."""
    from plangate.policy import PlanError, PlanFileError, load_plan
    try:
        return load_plan(plans).meters[0].name
    except (PlanError, PlanFileError, OSError, IndexError):
        return "requests"


def _plangate() -> str:
    """The plangate command beside this interpreter, as a path from here (.venv/bin/plangate)."""
    found = Path(sys.executable).with_name("plangate")
    return os.path.relpath(found) if found.is_file() else "plangate"


if __name__ == "__main__":
    if sys.argv[1:] == ["prepare"]:
        prepare()
    elif sys.argv[1:] == ["lint"]:
        sys.exit(lint())
    elif sys.argv[1:] == ["hint"]:
        sys.exit(hint())
    else:
        sys.exit("usage: python -m plangate.server.local prepare|lint|hint")
