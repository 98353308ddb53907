"""`plangate serve`, `plangate migrate` and `plangate erase`: start the gate, bring the store's schema up to date,
erase a subject's personal data."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from plangate.engine import StateTable, compile_file, compile_plan
from plangate.policy import Finding, PlanError, PlanFileError, check_file, explain_stranded, stranded

from .http.api import GATE, PLANS
from .http.app import create_app
from .config import Config, ConfigError
from .gate import Gate, StoreUnavailable
from .logs import configure, log
from .metrics import Metrics
from .personal import RETENTION_MIGRATION, PersonalData
from .plan_versions import PlanRefused
from .store import StoreError, open_store, sqlite_path

SHUTDOWN_TIMEOUT = 10.0
BACKLOG = 128       # aiohttp's own default for a site


def _fail(message: str, code: int) -> int:
    print(f"plangate: {message}", file=sys.stderr)
    return code


def _plan(config: Config) -> tuple[StateTable, tuple[Finding, ...]]:
    """The compiled plan and its warnings; PlanFileError, or PlanError with its findings."""
    checked = check_file(config.plans)
    if not checked.ok or checked.plan is None:
        raise PlanError(checked.findings)
    return compile_plan(checked.plan), tuple(f for f in checked.findings if not f.is_error)


def _configured(env_file: str | Sequence[str] | None, *, serving: bool
                ) -> tuple[Config, StateTable, tuple[Finding, ...]] | int:
    """The settings and the compiled plan (with its warnings), or the exit code of a usage error, said: serve and
    erase start alike (serving also needs an API token)."""
    try:
        config = Config.from_env(env_file=env_file)
        if serving:
            config.require_token()
        table, warnings = _plan(config)
        problem = config.stripe_key_problem(table.plan) if serving else None
        if problem:
            raise ConfigError(problem)
    except ConfigError as exc:
        return _fail(f"invalid setting: {exc}", 2)
    except PlanFileError as exc:
        return _fail(f"cannot read the plan: {exc} (PLANGATE_PLANS={config.plans})", 2)
    except PlanError as exc:
        return _fail(f"{exc}\nfix the plan named by PLANGATE_PLANS={config.plans} (plangate lint {config.plans})", 2)
    return config, table, warnings


def _missing_store(config: Config) -> str | None:
    """Why serve does not start on this SQLite file: it is not there. A gate that made a new, empty store would
    answer every paying subject as new (and count old idempotency keys again) after its file was lost or moved."""
    if config.database.startswith(("postgresql://", "postgres://")):
        return None
    path = sqlite_path(config.database)
    if path == ":memory:" or Path(path).exists():
        return None
    return (f"no store at {path} (PLANGATE_DATABASE): `plangate migrate` creates it (as `make run` does); "
            "`plangate serve --create-store` starts on a new, empty one. If the gate ran on this path before, "
            "its file was deleted or moved: put it back rather than start empty")


def serve(env_file: str | Sequence[str] | None = "config.env", create_store: bool = False) -> int:
    loaded = _configured(env_file, serving=True)
    if isinstance(loaded, int):
        return loaded
    config, table, warnings = loaded
    missing = None if create_store else _missing_store(config)
    if missing:
        return _fail(missing, 2)
    configure(config.log_level)
    for finding in warnings:        # served anyway, but said where the operator looks
        log(logging.WARNING, "plan_warning", code=finding.code, message=finding.message,
            where=f"{finding.location.file}:{finding.location.line}:{finding.location.column}")
    try:
        sockets = _listen(config.host, config.port)   # before the store is opened or "started" is logged
    except OSError as exc:
        return _fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", 1)
    try:
        uvloop.run(_serve(config, table, sockets))     # libuv's loop: less CPU per request, a shorter p99
    except StoreError as exc:
        return _fail(config.database_shown(f"the store failed: {exc} (PLANGATE_DATABASE={config.database})"), 1)
    except PlanRefused as exc:
        return _fail(f"the gate did not start: {exc} (PLANGATE_PLANS={config.plans})", 1)
    except OSError as exc:
        return _fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", 1)
    return 0


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of host (as asyncio's create_server would bind them), made before
    anything starts: a port in use fails here, with nothing opened, migrated or logged as started."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's server logger, but a request aiohttp could not parse (broken framing, a header line too long, bytes
    no request line allows, TLS or other non-HTTP bytes on a connection's first request), which it refuses with a
    400 before any route runs, is counted as a refused request (plangate_rejected_requests, error bad_http_request)
    and logged as one debug line of the gate's log. aiohttp logged each as an error with a traceback (the first
    request's bad method at its own debug level), in no format of the gate's: any client could fill the log."""

    def __init__(self, rejected) -> None:
        super().__init__(server_logger, {})
        self._rejected = rejected.labels("bad_http_request")

    def _refused(self, exc_info) -> bool:
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            self._rejected.inc()
            log(logging.DEBUG, "bad_http_request", status=exc_info.code,
                why=(exc_info.message or "").partition("\n")[0][:200])
            return True
        return False

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        if not self._refused(exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg, *args, exc_info=None, **kwargs) -> None:
        if not self._refused(exc_info):
            super().debug(msg, *args, exc_info=exc_info, **kwargs)


async def _serve(config: Config, table, sockets: list[socket.socket]) -> None:
    store = open_store(config.database, **config.store_options())
    app = create_app(config, table, store)
    # keepalive_timeout: a connection with no complete request for this long is closed, whether idle or
    # trickling its headers in (aiohttp's own default is an hour). lingering_time 0: a request answered before
    # its body came in (refused: too large, unauthorized, a body too slow) has its connection closed, not kept
    # for up to 10 s to read and drop the rest. aiohttp's lingering read is not woken when the client hangs
    # up: each such request held a task, a socket and a timer for the 10 s, so a flood of refusals grew the
    # process and paused the loop to collect the garbage.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=config.idle_timeout, lingering_time=0,
                           logger=_ServerLog(app[GATE].metrics.rejected))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    setup = asyncio.ensure_future(runner.setup())
    stopped = asyncio.ensure_future(stop.wait())
    plans, reload_asked = app[PLANS], False

    def reload() -> None:
        """SIGHUP reads the plan file again: deployed if it lints clean and strands no stored subject, else refused
        with a log line, the running plan kept. One that comes while the gate starts is done once it has started:
        read before, the store not open yet, it was refused as the store's failure."""
        nonlocal reload_asked
        if setup.done():
            plans.reload_soon("sighup")
        else:
            reload_asked = True
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        # A SIGTERM while the gate starts stops it there: a start waits up to PLANGATE_PG_CONNECT_TIMEOUT (as long
        # as 300 s) for the database, for each replica and for its listener, and the signal waited with it.
        await asyncio.wait((setup, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not setup.done():
            print("plangate: stopping before it served", flush=True)
            setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await setup
            if setup.cancelled():       # else it had started after all: runner.cleanup() stops it, and says so
                log(logging.INFO, "stopped", why="stopped while it started")
            return
        setup.result()
        if reload_asked:
            plans.reload_soon("sighup")
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        # What exists now (modules, the plan, the app) lives as long as the process. A full collection
        # walked it all, a pause every request in flight waits out: frozen, it is never walked.
        gc.freeze()
        host, port = runner.addresses[0][:2]
        print(f"plangate: listening on http://{host}:{port} (plan {table.version}, "
              f"enforcement {'on' if config.enabled else 'off'})", flush=True)
        await stopped
        print("plangate: stopping: finishing requests in flight", flush=True)
    finally:
        stopped.cancel()
        # Stops accepting, lets requests in flight finish (up to the timeout), then closes the store.
        await runner.cleanup()


def migrate(env_file: str | Sequence[str] | None = "config.env") -> int:
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
        return _fail(config.database_shown(f"migration failed: {exc} (PLANGATE_DATABASE={config.database})"), 1)
    except StoreUnavailable:
        return _fail("migration failed: the store did not answer while reducing stored payloads", 1)
    shown = config.database_shown()
    print(f"plangate: {shown}: schema version {before} -> {after}"
          if after != before else f"plangate: {shown}: schema is current (version {after})")
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


def erase(env_file: str | Sequence[str] | None, subject: str, actor: str) -> int:
    """`plangate erase SUBJECT`: what POST /v1/subjects/{subject}/erase does, straight on the store. Other nodes
    on PostgreSQL drop the subject from their caches; a gate on the same SQLite file forgets it within
    PLANGATE_CACHE_TTL (its next write to the subject finds the row gone)."""
    # Not the subject id rule (subject_problem): a subject stored before that rule may still need erasing.
    if not subject or len(subject) > 200 or not subject.isprintable():
        return _fail("erase: the subject must be 1 to 200 printable characters", 2)
    loaded = _configured(env_file, serving=False)
    if isinstance(loaded, int):
        return loaded
    config, table, _ = loaded
    if not config.pseudonym_secret:
        return _fail("erase: PLANGATE_PSEUDONYM_SECRET is not set; erasure needs it (the same on every node, "
                     "never changed)", 2)
    if _missing_store(config):      # opening it would make an empty one, on which serve would then start
        return _fail(f"erase: no store at {sqlite_path(config.database)} (PLANGATE_DATABASE): nothing to erase "
                     "there; name the file the gate serves", 2)

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
        return _fail(config.database_shown(f"erase failed: the store failed ({exc}); the erasure may not have "
                                           "been written: run it again, erasure is idempotent (is the schema "
                                           "current? plangate migrate)"), 1)
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
