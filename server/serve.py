"""`plangate serve` and `plangate migrate`: start the gate, or bring the store's schema up to date."""
from __future__ import annotations

import asyncio
import gc
import signal
import sys

import uvloop
from aiohttp import web

from plangate.engine import compile_file
from plangate.policy import PlanError, PlanFileError

from .http.app import create_app
from .config import Config, ConfigError
from .logs import configure
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
    try:
        config = Config.from_env(env_file=env_file)
    except ConfigError as exc:
        return _fail(f"invalid setting: {exc}", 2)

    async def run():
        store = open_store(config.database, **config.store_options())
        await store.open()
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        before, after = asyncio.run(run())
    except StoreError as exc:
        return _fail(f"migration failed: {exc}", 1)
    print(f"plangate: {config.database}: schema version {before} -> {after}"
          if after != before else f"plangate: {config.database}: schema is current (version {after})")
    return 0
