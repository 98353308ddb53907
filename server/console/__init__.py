"""The console: web pages under /console for operators and product owners, served by the gate itself."""
from __future__ import annotations

from aiohttp import web

from . import logs, pages, proposal
from .pages import SESSIONS, TOKENS, Refused
from ._session import Sessions

__all__ = ["setup"]


def setup(app: web.Application, api_tokens: tuple[str, ...], admin_tokens: tuple[str, ...]) -> None:
    """Add the console's routes (before the API's catch-all 404)."""
    app[SESSIONS] = Sessions()
    app[TOKENS] = (tuple(f"Bearer {t}" for t in api_tokens), tuple(f"Bearer {t}" for t in admin_tokens))
    for method, path, handler in (*pages.ROUTES, *logs.ROUTES, *proposal.ROUTES):
        app.router.add_route(method, path, _answering(handler))
    app.router.add_route("GET", "/console", _to_home)


async def _to_home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/console/")


def _answering(handler):
    async def answering(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as refused:
            return refused.response
    return answering
