"""The aiohttp application: routes (each with its request id, token check, errors as JSON and latency) and
life cycle."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from dataclasses import dataclass

from aiohttp import HttpVersion11, web

from plangate.engine import StateTable

from . import _json, api, console_api, plan_api, stream_api, webhook
from .. import console
from ._auth import Scope, Tokens, matches
from ._input import MAX_BODY, BadRequest
from ..config import Config
from ..gate import Gate
from ..stripe.ingest import Ingest
from ..jobs import Jobs
from ..personal import PersonalData
from ..logs import log, request_id as current_request_id
from ..metrics import Metrics
from ..plan_versions import PlanKeeper
from ..store import Store

# Routes that change state on a person's word: the admin token only. Every other /v1/ route takes either token.
ADMIN_PATHS = api.ADMIN_PATHS | plan_api.ADMIN_PATHS
_BY_PATH = object()     # the scope of the catch-all route: an API token for a path under /v1/, else none
_HTTP_ERRORS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large", 415: "unsupported_media_type"}


def create_app(config: Config, table: StateTable, store: Store, *, migrate: bool = True,
               run_jobs: bool = True) -> web.Application:
    metrics = Metrics()
    metrics.replica_lags = store.replica_lags
    gate = Gate(config, table, store, metrics)
    # The webhook may carry large events; /v1/ bodies are held to max_body_bytes in _input.
    client_max_size = max(config.max_body_bytes, config.webhook_max_bytes)
    # Bodies are decoded by the routes that read them (_input.decoded), so that a Content-Encoding the gate
    # does not take is answered in JSON like any bad input.
    app = web.Application(client_max_size=client_max_size, handler_args={"auto_decompress": False})
    app[api.GATE] = gate
    app[MAX_BODY] = config.max_body_bytes
    personal = PersonalData(gate)
    app[api.PERSONAL] = personal
    ingest = Ingest(gate, personal)
    app[webhook.INGEST] = ingest
    jobs = Jobs(gate, ingest, personal)
    app[api.JOBS] = jobs
    plans = PlanKeeper(gate, config.plans)
    app[plan_api.PLANS] = plans
    app[console_api.CENSUS] = console_api.SharedCensus()
    console.setup(app, gate, config.api_tokens, config.admin_tokens)   # before _add_routes' catch-all 404
    _add_routes(app, (*api.ROUTES, *plan_api.ROUTES, *console_api.ROUTES, *stream_api.ROUTES,
                      ("POST", "/webhook/stripe", webhook.receive)),
                _Guard(Tokens(config.api_tokens, config.admin_tokens), metrics, client_max_size))

    async def starting() -> int:
        """What comes before the first request, on an open store: the timers that fell due while the gate was down
        fired, their number returned."""
        await store.claim()
        if migrate:
            await personal.after_migration(*await store.migrate())
        await plans.start()     # checked against the stored subjects before anything is decided with it
        store.listen(gate.invalidate, gate.invalidate_all, plans.announced, on_usage=gate.usage_counted)
        # Served before its listener is up, a node reads usage on every check, tells streams that copies may not
        # decide (their clients ask again 5 s later), and drops every cached subject when it connects.
        if not await store.listening():
            log(logging.WARNING, "listener_not_ready", why="serving before this node hears the others: usage is read "
                "from the database on every check, and streams tell clients their copies may not decide, until it does")
        return await jobs.run("sweep")   # timers that fell due while the gate was down

    async def stopping() -> None:
        """What starting() started stops, and the store closes (a SQLite file's claim with it), each step whatever
        the others did."""
        try:
            try:
                await store.unlisten()      # first: a notification heard later would start a task on the plans
            finally:
                await plans.stop()
        finally:
            await store.close()

    async def lifecycle(app: web.Application):
        await store.open()      # opened, or nothing of it left open
        try:
            caught_up = await starting()
        except BaseException:
            # Refused (a claimed file, a plan that strands subjects) or stopped while it waited (a signal during a
            # listener's connect).
            await stopping()
            raise
        refresher = asyncio.create_task(gate.refresh_ahead(), name="plangate-cache-refresh")
        if run_jobs:
            jobs.start()
        if not config.webhook_secrets:
            log(logging.WARNING, "webhook_disabled",
                why="STRIPE_WEBHOOK_SECRET is not set: /webhook/stripe answers 503")
        if not config.stripe_secret_key:
            log(logging.WARNING, "stripe_api_disabled",
                why="STRIPE_SECRET_KEY is not set: reconciliation asks Stripe nothing (a lost webhook is not "
                    "recovered) and overage is not reported")
        log(logging.INFO, "started", plan_version=gate.table.version, enforcement=config.enabled,
            kill_switch=config.kill_switch, fail_mode=config.fail_mode, timers_fired_at_start=caught_up)
        yield
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        try:
            await jobs.stop()
        finally:
            await stopping()
        log(logging.INFO, "stopped")

    app.cleanup_ctx.append(lifecycle)

    async def end_streams(app: web.Application) -> None:
        gate.feed.close()
    app.on_shutdown.append(end_streams)
    return app


def _error(status: int, code: str, message: str, request_id: str, headers: dict | None = None) -> web.Response:
    return _json.response({"error": code, "message": message}, status=status,
                          headers={"X-Request-Id": request_id, **(headers or {})})


@dataclass(frozen=True)
class _Guard:
    """What every route's wrapper checks and reports with."""

    tokens: Tokens
    metrics: Metrics
    client_max_size: int    # the application's limit on a body, named when aiohttp refuses one (413)


def _add_routes(app: web.Application, routes, guard: _Guard) -> None:
    """Each route's handler wrapped by _guarded; every path answers its other methods with a JSON 405 naming
    those it has, and every other path gets a JSON 404. A wrapper per route, not a middleware: with any
    middleware aiohttp runs a chain of two on every request."""
    by_path: dict[str, list] = {}
    for method, path, handler in routes:
        by_path.setdefault(path, []).append((method, handler))
    expect = _expecting(guard)
    for path, handlers in by_path.items():
        allowed = set()
        scope = Scope.ADMIN if path in ADMIN_PATHS else Scope.API if path.startswith("/v1/") else None
        for method, handler in handlers:
            app.router.add_route(method, path, _guarded(handler, path, scope, guard), expect_handler=expect)
            allowed |= {method, "HEAD"} if method == "GET" else {method}
            if method == "GET":
                app.router.add_route("HEAD", path, _guarded(handler, path, scope, guard), expect_handler=expect)
        app.router.add_route("*", path, _guarded(_not_allowed(",".join(sorted(allowed))), "unmatched", scope,
                                                 guard), expect_handler=expect)
    app.router.add_route("*", "/{tail:.*}", _guarded(_not_found, "unmatched", _BY_PATH, guard),
                         expect_handler=expect)


def _expecting(guard: _Guard):
    """The routes' Expect handler: `100-continue` gets the interim answer (HTTP/1.1 clients wait for it before a
    body); any other expectation is bad input, answered in JSON as any is (aiohttp answered a text 417)."""
    rejected = guard.metrics.rejected

    async def expect(request: web.Request) -> web.StreamResponse | None:
        value = request.headers.get("Expect", "")
        if value.lower() == "100-continue":
            if request.version >= HttpVersion11:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0      # the interim answer is no part of the response's size
            return None
        rejected.labels("invalid_header").inc()
        return _error(400, "invalid_header", f"Expect: {value[:64]!r} is not an expectation this gate meets; send "
                                             "none, or 100-continue", request.headers.get("X-Request-Id", "")[:64]
                      or _new_request_id())
    return expect


def _not_allowed(allow: str):
    async def not_allowed(request: web.Request) -> web.Response:
        raise BadRequest(405, "method_not_allowed", f"{request.method} is not allowed here; allowed: {allow}",
                         headers={"Allow": allow})
    return not_allowed


async def _not_found(request: web.Request) -> web.Response:
    raise BadRequest(404, "not_found", f"no route for {request.path}; see /openapi.json")


def _guarded(handler, route: str, scope, guard: _Guard):
    """handler with the request id (the caller's X-Request-Id, else a new one, echoed in the answer), the token
    of its scope (a Scope; None: open; _BY_PATH: an API token under /v1/), errors as JSON and the route's
    latency."""
    tokens = guard.tokens
    accepted = {needs: tokens.accepted(needs) for needs in Scope}
    too_large = f"the body is larger than {guard.client_max_size} bytes"
    rejected, latency = guard.metrics.rejected, guard.metrics.latency.labels(route)

    async def guarded(request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id", "")[:64] or _new_request_id()
        current_request_id.set(request_id)
        started = time.perf_counter()
        try:
            needs = scope if scope is not _BY_PATH else Scope.API if request.path.startswith("/v1/") else None
            if needs is not None:
                # One header, exactly a token of the scope: the common case is a comparison of strings.
                given = request.headers.getall("Authorization", None)
                if given is None or len(given) != 1 or not matches(given[0], accepted[needs]):
                    refused = tokens.refusal(given, needs)
                    if refused is not None:
                        raise refused
            response = await handler(request)
            response.headers["X-Request-Id"] = request_id
            return response
        except BadRequest as exc:
            rejected.labels(exc.code).inc()
            return _error(exc.status, exc.code, exc.message, request_id, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_ERRORS.get(exc.status, "http_error")
            rejected.labels(code).inc()
            message = exc.text if exc.status != 413 else too_large
            return _error(exc.status, code, message or exc.reason, request_id)
        except web.RequestPayloadError:
            # A body that could not be read (its chunks malformed or cut short): the caller's to fix. The rest
            # of it cannot be told from a next request: the connection closes after the answer.
            rejected.labels("invalid_body").inc()
            response = _error(400, "invalid_body", "the body could not be read whole", request_id)
            response.force_close()
            return response
        except ConnectionResetError:
            transport = request.transport
            if transport is not None and not transport.is_closing():
                return _internal(request, request_id)
            # The client went away before its request was read: nobody to answer, no failure of the gate. The
            # answer goes nowhere (aiohttp drops it quietly); raised, aiohttp logged an error and a traceback.
            rejected.labels("invalid_body").inc()
            response = _error(400, "invalid_body", "the body could not be read whole", request_id)
            response.force_close()
            return response
        except Exception:
            return _internal(request, request_id)
        finally:
            latency.observe(time.perf_counter() - started)

    return guarded


def _internal(request: web.Request, request_id: str) -> web.Response:
    log(logging.ERROR, "internal_error", path=request.path, request_id=request_id, exc_info=True)
    return _error(500, "internal", "the gate failed to handle this request; it was logged", request_id)


# Request ids: a random prefix per process and a counter, 32 hex digits as uuid4().hex was (which costs a
# random draw a request); unique within the process, and across processes but for a 64-bit prefix collision.
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_ids = itertools.count(1)


def _new_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):016x}"
