"""The console: web pages under /console for operators and product owners, served by the gate itself."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from . import operations, pages, proposal
from .pages import FAILED, SESSIONS, TOKENS, Refused
from ..logs import log
from ..gate import Gate
from ._html import e, link, page
from ._session import FailedLogins, Sessions

__all__ = ["setup"]


def setup(app: web.Application, gate: Gate, api_tokens: tuple[str, ...], admin_tokens: tuple[str, ...]) -> None:
    """Add the console's routes (before the API's catch-all 404); its sessions live in the gate's store."""
    app[TOKENS] = (tuple(f"Bearer {t}" for t in api_tokens), tuple(f"Bearer {t}" for t in admin_tokens))
    app[SESSIONS] = Sessions(gate, *app[TOKENS])
    app[FAILED] = FailedLogins()
    app[proposal.PREVIEWING] = asyncio.Lock()
    methods: dict[str, set[str]] = {}
    for method, path, handler in (*pages.ROUTES, *operations.ROUTES, *proposal.ROUTES, ("GET", "/console", _to_home)):
        app.router.add_route(method, path, _answering(handler))
        methods.setdefault(path, set()).add(method)
        if method == "GET":     # a page answers HEAD as it answers GET (the API's routes do too)
            app.router.add_route("HEAD", path, _answering(handler))
            methods[path].add("HEAD")
    # Any other method: a 405 naming the page's methods (it fell to the API's catch-all, a 404 "no route").
    for path, allowed in methods.items():
        app.router.add_route("*", path, _not_allowed(",".join(sorted(allowed))))
    # Any other path under /console/ (a page mistyped, a link from an older version): a page, not the API's JSON.
    app.router.add_route("*", "/console/{tail:.*}", _no_page)


async def _to_home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/console/")


async def _no_page(request: web.Request) -> web.Response:
    return page("Not found", f'<p class="bad">The console has no page at {e(request.path)}.</p>'
                f'<p>{link("/console/", "Go to the console")}</p>', status=404)


def _not_allowed(allow: str):
    async def not_allowed(request: web.Request) -> web.Response:
        response = page("Refused", f'<p class="bad">{e(request.method)} is not allowed here; allowed: {e(allow)}.</p>',
                        status=405)
        response.headers["Allow"] = allow
        return response
    return not_allowed


def _answering(handler):
    """handler with its refusals answered as pages, and a failure logged (never the form: it may hold a token)
    and answered as a page that says so."""
    async def answering(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as refused:
            return refused.response
        except web.HTTPException:
            raise
        except (web.RequestPayloadError, ConnectionResetError) as exc:
            transport = request.transport
            if isinstance(exc, ConnectionResetError) and transport is not None and not transport.is_closing():
                return _failed(request)
            # A form that could not be read whole (cut short, or its client gone before it came): the client's, as
            # the API takes it, not an error of the gate's with a traceback in the log. Nothing else of it can be
            # told from a next request: the connection closes after the answer (which may go nowhere).
            response = page("Refused", '<p class="bad">The form could not be read whole.</p>', status=400)
            response.force_close()
            return response
        except Exception:
            return _failed(request)
    return answering


def _failed(request: web.Request) -> web.Response:
    log(logging.ERROR, "internal_error", path=request.path, exc_info=True)
    return page("Failed", '<p class="bad">The gate failed to show this page; it was logged.</p>', status=500)
