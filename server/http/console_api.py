"""Read routes the console needs and operators' scripts may use too: the webhook log (keyset pages), subjects
counted by status, and the subject linked to a Stripe customer or subscription. Reads: the API token will do."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from . import _input as inp, _json
from ..gate import StoreUnavailable
from .api import GATE, iso

MAX_PAGE = 200
# The counts read every subject (about a second at a million on SQLite: bench/console.py): a dashboard's read,
# given more than a decision's store budget (PLANGATE_STORE_TIMEOUT).
CENSUS_TIMEOUT = 10.0
CENSUS_FRESH = 5.0      # seconds a census is answered again before it is read again
STORED_OUTCOMES = ("applied", "noop", "stale", "other_subscription", "ended_subscription", "pending",
                   "ignored")   # as stored


def cursor_of(created: float, event_id: str) -> str:
    return f"{created!r}|{event_id}"


def parse_cursor(value: str) -> tuple[float, str]:
    created, bar, event_id = value.partition("|")
    try:
        when = float(created)
    except ValueError:
        when = float("nan")
    # A control character (a NUL: PostgreSQL takes none, and failed as a store error, a 503) is in no event id.
    if not bar or not event_id or when != when or len(value) > 300 or inp.has_control(event_id):
        raise inp.BadRequest(400, "invalid_field", "'before' must be the 'next' cursor of a previous page")
    return when, event_id


def _query_text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return None if value is None else inp.text({name: value}, name)


async def event_log(request: web.Request) -> web.Response:
    """Stored Stripe events, newest first, optionally of one outcome and one type; `next` pages on."""
    gate = request.app[GATE]
    outcome, type_ = _query_text(request, "outcome"), _query_text(request, "type")
    if outcome is not None and outcome not in STORED_OUTCOMES:
        raise inp.BadRequest(400, "invalid_field", f"'outcome' must be one of {', '.join(STORED_OUTCOMES)}")
    before = request.query.get("before")
    key = parse_cursor(before) if before is not None else None
    limit = _limit(request)
    try:
        rows = await gate.timed("event_log", gate.store.event_log(outcome, type_, key, limit + 1))
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be read right now; try again") from None
    page, more = rows[:limit], len(rows) > limit
    return _json.response({
        "events": [{"id": r.id, "type": r.type, "created": iso(r.created), "outcome": r.outcome, "reason": r.reason,
                    "subject": r.subject, "stripe_customer": r.stripe_customer,
                    "stripe_subscription": r.stripe_subscription, "stripe_payment": r.stripe_payment}
                   for r in page],
        "next": cursor_of(page[-1].created, page[-1].id) if more else None})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:     # "²" is a digit int() refuses
        raise inp.BadRequest(400, "invalid_field", f"'limit' must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


class SharedCensus:
    """The census read at most once per CENSUS_FRESH seconds, one read at a time whoever asks: it visits every
    subject (about 0.7 s at a million on SQLite), and pages or scripts that ask in a loop must not keep the
    store from the decisions' reads."""

    def __init__(self) -> None:
        self.value, self.read_at = None, float("-inf")
        self.reading: asyncio.Future | None = None

    async def get(self, gate):
        """Stored subjects per status and tier, at most CENSUS_FRESH seconds old. StoreUnavailable."""
        if self.value is not None and time.monotonic() - self.read_at < CENSUS_FRESH:
            return self.value
        if self.reading is None:
            self.reading = asyncio.ensure_future(self._read(gate))
        return await asyncio.shield(self.reading)

    async def _read(self, gate):
        try:
            self.value = await gate.timed("census", gate.store.census(), timeout=CENSUS_TIMEOUT)
            self.read_at = time.monotonic()
            return self.value
        finally:
            self.reading = None


CENSUS = web.AppKey("census", SharedCensus)


async def status_counts(request: web.Request) -> web.Response:
    """Stored subjects per status (and per tier), every status of the active plan named."""
    gate = request.app[GATE]
    try:
        census = await request.app[CENSUS].get(gate)
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be read right now; try again") from None
    statuses = {s: 0 for s in gate.table.statuses} | census.statuses
    tiers = {k if k is not None else "none": v for k, v in census.tiers.items()}
    return _json.response({"statuses": statuses, "tiers": tiers, "total": sum(statuses.values())})


async def find_subject(request: web.Request) -> web.Response:
    """The subject linked to a Stripe subscription or customer id (by the links the webhook stored)."""
    gate = request.app[GATE]
    stripe_id = _query_text(request, "stripe_id")
    if stripe_id is None:
        raise inp.BadRequest(400, "missing_field", "'stripe_id' is required")
    try:
        subject = await gate.timed("find", gate.store.find_subject(stripe_id, stripe_id))
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be read right now; try again") from None
    if subject is None:
        raise inp.BadRequest(404, "not_found", "no subject is linked to that Stripe id")
    return _json.response({"subject": subject})


ROUTES = (
    ("GET", "/v1/events", event_log),
    ("GET", "/v1/statuses", status_counts),
    ("GET", "/v1/find", find_subject),
)
