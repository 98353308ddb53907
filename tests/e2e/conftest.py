"""End-to-end fixtures: localstripe (PyPI), a stateful fake Stripe, served in-process on 127.0.0.1, and a real
gate over a real SQLite file wired to it both ways (localstripe's webhooks to the gate, the gate's reconciliation
to localstripe's API).

What localstripe 1.15.10 does that the fixture works around (read from its source):
- Its store pickles itself to /tmp/localstripe.pickle on every write (`Store.__setitem__`/`__delitem__` and a
  middleware after every POST, PUT and DELETE) and its command loads that file at start and binds every
  interface ('::'). Here its routes are served by a fresh aiohttp app on 127.0.0.1, without that middleware,
  and `Store.dump_to_disk`/`try_load_from_disk` do nothing: it writes no file at all.
- Its webhook registry is a module global that `DELETE /_config/data` does not empty; it is emptied here.
- Each event is sent by a task of its own after a one-second sleep, without retries; delivery tasks still
  waiting when a test ends are cancelled.
- Its module builds an app at import whose GET and DELETE handlers are plain functions, which aiohttp 3.14
  deprecates (59 DeprecationWarnings; aiohttp wraps them in coroutines itself): silenced at that import.
Otherwise it imports and runs on Python 3.11 with aiohttp 3.14 as it is.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import stripe
from aiohttp import web

from plangate.engine import compile_file
from plangate.server.http.app import create_app
from plangate.server.store import open_store
from plangate.server.http.webhook import INGEST
from tests.server.conftest import PLAN, ServedGate, config_for

from ._local import QUIET

KEY = "sk_test_plangate_e2e_0123456789"
WEBHOOK_SECRET = "whsec_e2e_localstripe_0123456789"
HOOK_ID = "plangate"
_PICKLE = Path("/tmp/localstripe.pickle")


def _localstripe():
    """localstripe's modules, imported on first use: only the tests that use it need it installed."""
    import localstripe.resources
    import localstripe.webhooks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import localstripe.server
    return localstripe.resources, localstripe.server, localstripe.webhooks


@dataclass
class LocalStripe:
    """A running localstripe: its address, the stripe package pointed at it, and its test-only routes."""

    url: str
    client: stripe.StripeClient
    session: aiohttp.ClientSession
    _http: stripe.AIOHTTPClient = field(repr=False, default=None)

    async def raw(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        """A request the stripe package has no method for (localstripe's /_config/ and test routes)."""
        headers = {"Authorization": f"Bearer {KEY}"}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text.strip() else None)

    async def hook(self, url: str, secret: str = WEBHOOK_SECRET, events: list[str] | None = None) -> None:
        """Register (or replace) the webhook endpoint localstripe delivers every event to."""
        body = {"url": url, "secret": secret, **({"events": events} if events is not None else {})}
        status, _ = await self.raw("POST", f"/_config/webhooks/{HOOK_ID}", body)
        assert status == 200, status

    def unhook(self) -> None:
        """Deliver nothing from now on (localstripe has no route to remove a webhook)."""
        _localstripe()[2]._webhooks.clear()

    async def flush(self) -> None:
        status, _ = await self.raw("DELETE", "/_config/data")
        assert status == 200, status

    async def events(self) -> list[dict]:
        """Every event localstripe has made so far, oldest first."""
        page = await self.client.v1.events.list_async(params={"limit": 100})
        return sorted((e.to_dict() for e in page.data), key=lambda e: e["created"])

    async def plan(self, plan_id: str = "price_pro_monthly", amount: int = 2000) -> None:
        """localstripe has no prices: a plan whose id is the plan's price id selects the tier the same way."""
        await self.client.v1.plans.create_async(params={
            "id": plan_id, "amount": amount, "currency": "eur", "interval": "month", "product": {"name": "Pro"}})

    async def customer(self, subject: str, payment_method: str | None = "pm_card_visa") -> dict:
        params: dict = {"metadata": {"plangate_subject": subject}, "email": f"{subject}@example.test"}
        if payment_method:
            params.update(payment_method=payment_method,
                          invoice_settings={"default_payment_method": payment_method})
        return (await self.client.v1.customers.create_async(params=params)).to_dict()

    async def subscribe(self, customer: str, subject: str | None, plan: str = "price_pro_monthly") -> dict:
        params: dict = {"customer": customer, "items": [{"plan": plan}]}
        if subject:
            params["metadata"] = {"plangate_subject": subject}
        return (await self.client.v1.subscriptions.create_async(params=params)).to_dict()


def _localstripe_tasks() -> list[asyncio.Task]:
    """localstripe's own tasks (webhook deliveries, SEPA debits settling): found by the file their code is in."""
    where = str(Path(_localstripe()[0].__file__).parent)
    out = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_filename.startswith(where):
            out.append(task)
    return out


def _app() -> web.Application:
    """localstripe's routes and its error and auth middlewares, without the one that pickles to /tmp."""
    ls_server = _localstripe()[1]
    app = web.Application(middlewares=[ls_server.error_middleware, ls_server.auth_middleware])
    for route in ls_server.app.router.routes():
        app.router.add_route(route.method, route.resource.canonical, route.handler)
    return app


@pytest.fixture
def local_gate(start_gate):
    """local_gate(database, **env) -> ServedGate: the app on a free port of 127.0.0.1 over `database` (a SQLite path
    or a postgresql:// DSN), with jobs run only when a test asks."""
    async def start(database: str, **env) -> ServedGate:
        return await start_gate(database=database, **{**QUIET, **env})

    return start


@pytest.fixture
async def localstripe_server(aiohttp_server, monkeypatch):
    """localstripe on 127.0.0.1 (free port), empty, no disk store, no webhook; stopped and emptied after."""
    ls_resources, _, ls_webhooks = _localstripe()
    before = _PICKLE.stat().st_mtime_ns if _PICKLE.exists() else None
    monkeypatch.setattr(ls_resources.Store, "dump_to_disk", lambda self: None)
    monkeypatch.setattr(ls_resources.Store, "try_load_from_disk", lambda self: None)
    ls_webhooks._webhooks.clear()
    ls_resources.store.clear()
    server = await aiohttp_server(_app(), host="127.0.0.1")
    url = str(server.make_url("")).rstrip("/")
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient(KEY, http_client=http, base_addresses={"api": url}, max_network_retries=0)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    ls = LocalStripe(url, client, session, http)
    await ls.flush()
    try:
        yield ls
    finally:
        ls.unhook()
        pending = _localstripe_tasks()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await ls.flush()
        await session.close()
        await http.close_async()
        after = _PICKLE.stat().st_mtime_ns if _PICKLE.exists() else None
        assert after == before, "localstripe wrote its store to /tmp"


@pytest.fixture
async def stripe_gate(aiohttp_server, tmp_path, localstripe_server):
    """stripe_gate(hooked=True, **env) -> ServedGate: a real gate on 127.0.0.1 whose Stripe is localstripe; with hooked,
    localstripe delivers its webhooks to it."""
    sessions = []

    async def start(*, hooked: bool = True, **env) -> ServedGate:
        settings = {"STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "STRIPE_SECRET_KEY": KEY,
                    "STRIPE_API_BASE": localstripe_server.url,
                    # Jobs run when a test asks (POST /v1/jobs/...), never by the clock in the middle of one.
                    "PLANGATE_RECONCILE_SCHEDULE": "0 0 1 1 *", "PLANGATE_SWEEP_SCHEDULE": "0 0 1 1 *", **env}
        database = str(tmp_path / "gate.sqlite3")
        config = config_for(database, PLANGATE_PLANS=str(PLAN), **settings)
        app = create_app(config, compile_file(config.plans), open_store(config.database))
        server = await aiohttp_server(app, host="127.0.0.1")
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        sessions.append(session)
        gate = ServedGate(str(server.make_url("")).rstrip("/"), session, app, database)
        if hooked:
            await localstripe_server.hook(gate.url + "/webhook/stripe")
        return gate

    yield start
    localstripe_server.unhook()
    for s in sessions:
        await s.close()


def q(database: str, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(database) as db:
        return db.execute(sql, args).fetchall()


async def eventually(fetch, done, what: str, timeout: float = 10.0, every: float = 0.05):
    """Poll `fetch()` (async) until `done(value)`, for at most `timeout` seconds; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}; last seen: {value!r}")
        await asyncio.sleep(every)


def relevant(gate: ServedGate) -> frozenset[str]:
    """Event types the gate records (the others it answers `ignored` without storing)."""
    return frozenset(gate.app[INGEST].relevant)
