"""`plangate serve`, `plangate migrate` and `plangate erase`: start the gate, bring the store's schema up to date,
erase a subject's personal data."""
from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys

import uvloop
from aiohttp import web

from plangate.engine import compile_file
from plangate.policy import PlanError, PlanFileError, check_file, explain_stranded, stranded

from .http.api import PLANS
from .http.app import create_app
from .config import Config, ConfigError
from .gate import Gate, StoreUnavailable
from .logs import configure
from .metrics import Metrics
from .personal import RETENTION_MIGRATION, PersonalData
from .plan_versions import PlanRefused
from .store import StoreError, open_store

SHUTDOWN_TIMEOUT = 10.0


def _fail(message: str, code: int) -> int:
    print(f"plangate: {message}", file=sys.stderr)
    return code


def _setup(env_file: str | None):
    config = Config.from_env(env_file=env_file)
    table = compile_file(config.plans)
    return config, table


def serve(env_file: str | None = "config.env") -> int:
    try:
        config, table = _setup(env_file)
        config.require_token()
    except ConfigError as exc:
        return _fail(f"invalid setting: {exc}", 2)
    except PlanFileError as exc:
        return _fail(f"cannot read the plan: {exc} (PLANGATE_PLANS)", 2)
    except PlanError as exc:
        return _fail(str(exc), 2)
    configure(config.log_level)
    try:
        uvloop.run(_serve(config, table))     # libuv's loop: less CPU per request, a shorter p99 than asyncio's
    except StoreError as exc:
        return _fail(f"the store failed: {exc} (PLANGATE_DATABASE={config.database})", 1)
    except PlanRefused as exc:
        return _fail(f"the gate did not start: {exc} (PLANGATE_PLANS={config.plans})", 1)
    except OSError as exc:
        return _fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", 1)
    return 0


async def _serve(config: Config, table) -> None:
    store = open_store(config.database, **config.store_options())
    app = create_app(config, table, store)
    # keepalive_timeout: a connection with no complete request for this long is closed, whether idle or
    # trickling its headers in (aiohttp's own default is an hour). lingering_time 0: a request answered before
    # its body came in (refused: too large, unauthorized, a body too slow) has its connection closed, not kept
    # for up to 10 s to read and drop the rest. aiohttp's lingering read is not woken when the client hangs
    # up: each such request held a task, a socket and a timer for the 10 s, so a flood of refusals grew the
    # process and paused the loop to collect the garbage.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=config.idle_timeout, lingering_time=0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP reads the plan file again: deployed if it lints clean and strands no stored subject, else refused
    # with a log line, the running plan kept.
    loop.add_signal_handler(signal.SIGHUP, app[PLANS].reload_soon, "sighup")
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        # What exists now (modules, the plan, the app) lives as long as the process. A full collection
        # walked it all, a pause every request in flight waits out: frozen, it is never walked.
        gc.freeze()
        host, port = runner.addresses[0][:2]
        print(f"plangate: listening on http://{host}:{port} (plan {table.version}, "
              f"enforcement {'on' if config.enabled else 'off'})", flush=True)
        await stop.wait()
        print("plangate: stopping: finishing requests in flight", flush=True)
    finally:
        # Stops accepting, lets requests in flight finish (up to the timeout), then closes the store.
        await runner.cleanup()


def migrate(env_file: str | None = "config.env") -> int:
    """The schema, then (once, across the migration that brought retention) the payloads stored before it,
    reduced with the plan's readers: a fresh store needs no plan."""
    try:
        config = Config.from_env(env_file=env_file)
    except ConfigError as exc:
        return _fail(f"invalid setting: {exc}", 2)
    try:
        table, unreadable = compile_file(config.plans), None
    except (PlanFileError, PlanError) as exc:
        table, unreadable = None, exc

    async def run():
        store = open_store(config.database, **config.store_options())
        await store.open()
        try:
            before, after = await store.migrate()
            reduced = None
            if table is not None:
                reduced = await PersonalData(Gate(config, table, store, Metrics())).after_migration(before, after)
            return before, after, reduced, await _stranded(store, config.plans)
        finally:
            await store.close()

    try:
        before, after, reduced, stranded_by = asyncio.run(run())
    except StoreError as exc:
        return _fail(f"migration failed: {exc}", 1)
    except StoreUnavailable:
        return _fail("migration failed: the store did not answer while reducing stored payloads", 1)
    print(f"plangate: {config.database}: schema version {before} -> {after}"
          if after != before else f"plangate: {config.database}: schema is current (version {after})")
    if reduced is not None:
        kept = f" ({reduced.kept} kept as they came, see the log)" if reduced.kept else ""
        print(f"plangate: Stripe payloads older than {config.payload_retention_days} days reduced to what the gate "
              f"reads: {reduced.reduced}{kept}")
    elif table is None and before and before < RETENTION_MIGRATION <= after:
        return _fail(f"stored Stripe payloads were not reduced: the plan cannot be read ({unreadable}; "
                     "PLANGATE_PLANS). The cleanup job of a running gate reduces them; then VACUUM the SQLite file", 1)
    if stranded_by:
        return _fail(f"the schema is current, but `plangate serve` will refuse this plan: {stranded_by}", 1)
    return 0


def erase(env_file: str | None, subject: str, actor: str) -> int:
    """`plangate erase SUBJECT`: what POST /v1/subjects/{subject}/erase does, straight on the store. Other nodes
    on PostgreSQL drop the subject from their caches; a gate on the same SQLite file forgets it within
    PLANGATE_CACHE_TTL (its next write to the subject finds the row gone)."""
    if not subject or len(subject) > 200 or not subject.isprintable():
        return _fail("erase: the subject must be 1 to 200 printable characters", 2)
    try:
        config, table = _setup(env_file)
    except ConfigError as exc:
        return _fail(f"invalid setting: {exc}", 2)
    except PlanFileError as exc:
        return _fail(f"cannot read the plan: {exc} (PLANGATE_PLANS)", 2)
    except PlanError as exc:
        return _fail(str(exc), 2)
    if not config.pseudonym_secret:
        return _fail("erase: PLANGATE_PSEUDONYM_SECRET is not set; erasure needs it (the same on every node, "
                     "never changed)", 2)

    async def run():
        store = open_store(config.database, **config.store_options())
        await store.open()
        try:
            return await PersonalData(Gate(config, table, store, Metrics())).erase(subject, actor)
        finally:
            await store.close()

    try:
        erased = asyncio.run(run())
    except (StoreError, StoreUnavailable) as exc:
        return _fail(f"erase failed: the store failed ({exc}); nothing was erased (is the schema current? "
                     "plangate migrate)", 1)
    print(json.dumps(erased.to_dict()))
    return 0


async def _stranded(store, plans: str) -> str | None:
    """What the plan file would strand among the stored subjects, in words (None: nothing, or no plan to check:
    serve reports a missing or broken one itself)."""
    try:
        checked = check_file(plans)
    except PlanFileError:
        return None
    if not checked.ok or checked.plan is None:
        return None
    census = await store.census()
    found = stranded(checked.plan, census.statuses, census.tiers)
    return explain_stranded(found, plans) if found else None
