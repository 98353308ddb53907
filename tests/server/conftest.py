"""Real gates for the server tests: the app on 127.0.0.1 (free port) over a real SQLite file."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from plangate.engine import compile_file
from plangate.server.http.app import create_app
from plangate.server.config import Config
from plangate.server.store import open_store
from tests import postgres

from .stripe_meters import FakeStripe

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "plans.yaml"
TOKEN = "test-token-0123456789abcdef"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
_SCOPED = object()      # ServedGate.call's default: the token the path's scope needs
# A store call's budget of 5 s, not 0.25: on a shared machine running the whole suite, a store call slower than
# 0.25 s made a correctness test get a fail-mode answer (seen once: 40 concurrent usage reports, one 503). Tests
# of the fail modes set their own budget.
PSEUDONYM_SECRET = "test-pseudonym-secret-0123456789"
BASE_ENV = {"SUBSCRIPTION_ENABLED": "true", "PLANGATE_API_TOKEN": TOKEN, "PLANGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "PLANGATE_PLANS": str(PLAN), "PLANGATE_STORE_TIMEOUT": "5", "PLANGATE_PSEUDONYM_SECRET": PSEUDONYM_SECRET}


@dataclass
class ServedGate:
    """A running gate and a client for it."""

    url: str
    session: aiohttp.ClientSession
    app: object = None
    database: str = ""

    async def call(self, method: str, path: str, body=None, *, token=_SCOPED, raw: bytes | None = None,
                   headers: dict | None = None):
        hdrs = dict(headers or {})
        if token is _SCOPED:
            token = token_for(path)
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs = {"data": raw} if raw is not None else ({"json": body} if body is not None else {})
        async with self.session.request(method, self.url + path, headers=hdrs, **kwargs) as resp:
            text = await resp.text()
            try:
                import json
                payload = json.loads(text)
            except ValueError:
                payload = text
            return resp.status, payload

    async def post(self, path: str, body=None, **kw):
        return await self.call("POST", path, body, **kw)

    async def get(self, path: str, **kw):
        return await self.call("GET", path, **kw)

    async def check(self, subject: str, amount: int = 1, meter: str = "requests"):
        return await self.post("/v1/check", {"subject": subject, "meter": meter, "amount": amount})

    async def consume(self, subject: str, amount: int = 1, key: str | None = None, meter: str = "requests"):
        body = {"subject": subject, "meter": meter, "amount": amount}
        if key is not None:
            body["idempotency_key"] = key
        return await self.post("/v1/consume", body)


def token_for(path: str) -> str:
    """The token a /v1/ path's (or URL's) scope needs: the admin token for transitions, erasure, jobs, plan
    changes and resending overage, else the API token."""
    path = urlsplit(path).path
    admin = path.startswith(("/v1/jobs/", "/v1/plan/")) or path == "/v1/overage/resend" or \
        path.endswith(("/transition", "/erase", "/credits", "/traits"))
    return ADMIN_TOKEN if admin else TOKEN


def config_for(database: str, **env) -> Config:
    return Config.from_env({**BASE_ENV, "PLANGATE_DATABASE": database, **env}, env_file=None)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    """An open, migrated store of each kind: a real SQLite file, a fresh real PostgreSQL database."""
    dsn = await postgres.create_database() if request.param == "postgresql" else str(tmp_path / "store.sqlite3")
    s = open_store(dsn)
    await s.open()
    await s.migrate()
    yield s
    await s.close()
    if request.param == "postgresql":
        await postgres.drop_database(dsn)


@pytest.fixture
def database(tmp_path) -> str:
    return str(tmp_path / "gate.sqlite3")


@pytest.fixture
async def start_gate(aiohttp_server, database):
    """start_gate(plan=..., database=..., **env) -> ServedGate: a gate app served on 127.0.0.1 by aiohttp's test
    server, over the test's SQLite file unless another store (a path or a postgresql:// DSN) is given."""
    sessions = []

    async def start(plan: Path = PLAN, database: str = database, **env) -> ServedGate:
        # No job on a schedule (once a year): a test runs the jobs it needs through POST /v1/jobs/{job}, and a
        # sweep the clock started in the middle of a test would race the one it runs.
        quiet = {f"PLANGATE_{job}_SCHEDULE": "0 0 1 1 *" for job in ("SWEEP", "RECONCILE", "CLEANUP",
                                                                     "OVERAGE_REPORT")}
        config = config_for(database, PLANGATE_PLANS=str(plan), **{**quiet, **env})
        app = create_app(config, compile_file(config.plans), open_store(config.database, **config.store_options()))
        server = await aiohttp_server(app, host="127.0.0.1")
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        sessions.append(session)
        return ServedGate(str(server.make_url("")).rstrip("/"), session, app, database)

    yield start
    for s in sessions:
        await s.close()


@pytest.fixture
async def fake_stripe(aiohttp_server):
    """A Stripe-shaped API on 127.0.0.1 (stripe_meters.FakeStripe) for a gate with STRIPE_SECRET_KEY=KEY and
    STRIPE_API_BASE=fake_stripe.url."""
    fake = FakeStripe(meters={"api_tokens_overage": "mtr_test_1"}, customers={"cus_1"})
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def gate(start_gate) -> ServedGate:
    return await start_gate()


# The shipped plan with credits of its meter and a feature (derived from plans.yaml, not a copy of it).
ENTITLED = """
features:
  priority_support: {description: Answers within the hour}
credits:
  requests:
    packs: {price_requests_pack: 1000}
    expires_after: 365d
"""


@pytest.fixture
def entitled_plan(tmp_path) -> Path:
    path = tmp_path / "entitled-plans.yaml"
    path.write_text(PLAN.read_text(encoding="utf-8") + ENTITLED, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GateProcess:
    """`plangate serve` as a real process, stopped by SIGTERM (SIGKILL if it hangs)."""

    def __init__(self, env: dict, cwd: Path, *, create_store: bool = True):
        self.port = free_port()
        full = {**os.environ, **env, "PLANGATE_PORT": str(self.port), "PLANGATE_HOST": "127.0.0.1"}
        exe = Path(sys.executable).with_name("plangate")
        # Output goes to files: a pipe nobody reads fills up and would block a busy gate.
        self._out, self._err = cwd / f"gate-{self.port}.out", cwd / f"gate-{self.port}.err"
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.proc = subprocess.Popen([str(exe), "serve", "--env-file", "", *["--create-store"] * create_store],
                                         env=full, cwd=cwd,
                                         stdout=out, stderr=err, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def output(self) -> tuple[str, str]:
        return self._out.read_text(), self._err.read_text()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plangate serve exited {self.proc.returncode}: {self.output()[1]}")
            # Its own "listening" line, not just an open port: another test's process may hold a freed port.
            if f"listening on http://127.0.0.1:{self.port} " in self._out.read_text():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("plangate serve did not start listening in time")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return (self.proc.returncode, *self.output())


@pytest.fixture
def gate_process(tmp_path):
    started = []

    def start(create_store: bool = True, **env) -> GateProcess:
        p = GateProcess({**BASE_ENV, "PLANGATE_DATABASE": str(tmp_path / "proc.sqlite3"), **env}, tmp_path,
                        create_store=create_store)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
