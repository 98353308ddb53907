"""A small Stripe-shaped HTTP server on 127.0.0.1 for what localstripe lacks: billing meter events (POST
/v1/billing/meter_events, form-encoded as the stripe package sends it), meters and their event summaries, a
Checkout Session's line items, a subscription as the test says it is now, charges and payment intents, and an
invoice's payments. Its answers have Stripe's shapes, its errors Stripe's error body; it can be told to
fail the next requests (503 with Stripe-Should-Retry: false, so the client's own retries do not hide it)."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

KEY = "sk_test_meters_0123456789"
_NO_RETRY = {"Stripe-Should-Retry": "false"}    # the stripe package's own retries would hide a failure


@dataclass
class FakeStripe:
    meters: dict[str, str] = field(default_factory=dict)              # event name -> meter id
    inactive_meters: dict[str, str] = field(default_factory=dict)     # event name -> id of a deactivated meter
    summaries_failing: set[str] = field(default_factory=set)          # customers whose summaries answer 500
    customers: set[str] = field(default_factory=set)
    line_items: dict[str, list[dict]] = field(default_factory=dict)    # session id -> its lines
    subscriptions: dict[str, dict] = field(default_factory=dict)       # subscription id -> the object now
    invoices: dict[str, dict] = field(default_factory=dict)            # invoice id -> the object (to expand)
    payments: dict[str, dict] = field(default_factory=dict)            # charge or payment intent id -> the object
    invoice_payments: dict[str, list[dict]] = field(default_factory=dict)  # invoice id -> its invoice_payments
    events: list[dict] = field(default_factory=list)                   # meter events accepted
    requests: list[tuple[str, dict]] = field(default_factory=list)     # (path, form) of every meter event POST
    failing: int = 0                                                   # the next requests answered 503
    lost: int = 0           # the next accepted events whose answer is lost (a 503 after Stripe recorded them)
    reused: int = 0         # the next meter events refused as a reused idempotency key (Stripe's idempotency_error)
    in_progress: int = 0    # the next meter events refused as their key's first request is still under way (409)
    unforeseen: int = 0     # the next meter events answered with an error no meter event has (a card_error, 402)
    broken: int = 0         # the next meter events failing inside Stripe (500): saved under their idempotency key
    broken_recorded: bool = False   # ...once the event was recorded (else before)
    answered: dict[str, tuple[dict, int, dict]] = field(default_factory=dict)  # idempotency key -> form, answer
    unprocessed: set[str] = field(default_factory=set)     # identifiers accepted but not in the summaries yet
    revoked: int = 0        # the next requests refused as made with a revoked key (401)
    lines_asked: int = 0    # requests for a Checkout Session's line items
    subscriptions_asked: int = 0
    pause: float = 0.0      # seconds each meter event waits before it is answered (a slow Stripe)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/billing/meter_events", self.meter_event)
        app.router.add_get("/v1/billing/meters", self.list_meters)
        app.router.add_get("/v1/billing/meters/{meter}/event_summaries", self.summaries)
        app.router.add_get("/v1/checkout/sessions/{session}/line_items", self.session_lines)
        app.router.add_get("/v1/subscriptions/{subscription}", self.subscription)
        app.router.add_get("/v1/charges/{ident}", self.payment)
        app.router.add_get("/v1/payment_intents/{ident}", self.payment)
        app.router.add_get("/v1/invoice_payments", self.list_invoice_payments)
        return app

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {KEY}" or self.revoked:
            self.revoked = max(self.revoked - 1, 0)
            return _error(401, "authentication_error", "Invalid API Key provided")
        if self.failing:
            self.failing -= 1
            return web.json_response({"error": {"type": "api_error", "message": "Stripe is down (test)"}},
                                     status=503, headers=_NO_RETRY)
        return None

    async def meter_event(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        form = dict(await request.post())
        self.requests.append((request.path, form))
        if self.pause:
            await asyncio.sleep(self.pause)
        if self.reused:
            self.reused -= 1
            return _error(400, "idempotency_error", "Keys for idempotent requests can only be used with the same "
                                                    "parameters they were first used with.")
        if self.in_progress:
            self.in_progress -= 1
            return _error(409, "idempotency_error", "There is currently another in-progress request using this "
                                                    "Idempotent Key (that probably means you submitted twice, and "
                                                    "the other request is still going through). Please try again "
                                                    "later.")
        if self.unforeseen:
            self.unforeseen -= 1
            return _error(402, "card_error", "Your card was declined.", "card_declined")
        # Stripe keeps a key's first answer once the request began to run (a 500 too) and gives it again to the
        # same key and parameters; other parameters under that key are refused.
        key = request.headers.get("Idempotency-Key")
        if key in self.answered:
            first, status, body = self.answered[key]
            if first != form:
                return _error(400, "idempotency_error", "Keys for idempotent requests can only be used with the "
                                                        "same parameters they were first used with.")
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true", **_NO_RETRY})
        status, body = self._record(form)
        if key is not None and status in (200, 500):
            self.answered[key] = (form, status, body)
        if self.lost and status == 200:
            self.lost -= 1
            return web.json_response({"error": {"type": "api_error", "message": "lost answer (test)"}},
                                     status=503, headers=_NO_RETRY)
        return web.json_response(body, status=status, headers=_NO_RETRY if status >= 500 else None)

    def _record(self, form: dict) -> tuple[int, dict]:
        """A meter event's answer: (200, the event) once recorded, else (status, Stripe's error body)."""
        failed = (500, {"error": {"type": "api_error", "message": "An unknown error occurred (test)"}})
        if self.broken and not self.broken_recorded:
            self.broken -= 1
            return failed
        name, ident = form.get("event_name"), form.get("identifier")
        customer = form.get("payload[stripe_customer_id]")
        if name not in self.meters:
            return 400, _body("invalid_request_error", f"No active meter was found for event name {name}.")
        if customer not in self.customers:
            return 400, _body("invalid_request_error", f"No such customer: '{customer}'", "resource_missing")
        if any(e["identifier"] == ident for e in self.events):
            return 400, _body("invalid_request_error", f"An event with identifier {ident} already exists.")
        timestamp = int(form.get("timestamp") or time.time())
        if timestamp < time.time() - 35 * 86400:
            return 400, _body("invalid_request_error", "Timestamp must be within the past 35 calendar days.")
        event = {"object": "billing.meter_event", "created": int(time.time()), "event_name": name,
                 "identifier": ident, "livemode": False, "timestamp": timestamp,
                 "payload": {"stripe_customer_id": customer, "value": form.get("payload[value]")}}
        self.events.append(event)
        if self.broken:
            self.broken -= 1
            return failed
        return 200, event

    async def list_meters(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        every = [{"id": ident, "object": "billing.meter", "event_name": name, "status": "active"}
                 for name, ident in self.meters.items()]
        every += [{"id": ident, "object": "billing.meter", "event_name": name, "status": "inactive"}
                  for name, ident in self.inactive_meters.items()]
        q = request.query
        if "status" in q:
            every = [m for m in every if m["status"] == q["status"]]
        after = next((i + 1 for i, m in enumerate(every) if m["id"] == q.get("starting_after")), 0)
        limit = int(q.get("limit", 10))
        data = every[after:after + limit]
        return web.json_response({"object": "list", "data": data, "has_more": after + limit < len(every),
                                  "url": "/v1/billing/meters"})

    async def summaries(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        meter = request.match_info["meter"]
        name = next((n for n, i in self.meters.items() if i == meter), None)
        q = request.query
        start, end, customer = int(q["start_time"]), int(q["end_time"]), q["customer"]
        if customer in self.summaries_failing:
            return web.json_response({"error": {"type": "api_error", "message": "trouble summing (test)"}},
                                     status=500, headers=_NO_RETRY)
        if start % 60 or end % 60:
            return _error(400, "invalid_request_error", "start_time and end_time must be aligned to minutes")
        total = sum(float(e["payload"]["value"]) for e in self.events if e["event_name"] == name
                    and e["payload"]["stripe_customer_id"] == customer and start <= e["timestamp"] < end
                    and e["identifier"] not in self.unprocessed)
        data = [{"id": "mtrsum_1", "object": "billing.meter_event_summary", "aggregated_value": total,
                 "start_time": start, "end_time": end, "livemode": False, "meter": meter}]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "url": f"/v1/billing/meters/{meter}/event_summaries"})

    async def subscription(self, request: web.Request) -> web.Response:
        self.subscriptions_asked += 1
        refused = self._auth(request)
        if refused is not None:
            return refused
        found = self.subscriptions.get(request.match_info["subscription"])
        if found is None:
            return _error(404, "invalid_request_error",
                          f"No such subscription: '{request.match_info['subscription']}'", "resource_missing")
        expand = [v for k, v in request.query.items() if k.startswith("expand")]
        if "latest_invoice" in expand and found.get("latest_invoice") in self.invoices:
            found = {**found, "latest_invoice": self.invoices[found["latest_invoice"]]}
        return web.json_response(found)

    async def payment(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        ident = request.match_info["ident"]
        if ident not in self.payments:
            return _error(404, "invalid_request_error", f"No such payment: '{ident}'", "resource_missing")
        return web.json_response(self.payments[ident])

    async def list_invoice_payments(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        invoice = request.query.get("invoice", "")
        if invoice not in self.invoice_payments:
            return _error(404, "invalid_request_error", f"No such invoice: '{invoice}'", "resource_missing")
        return web.json_response({"object": "list", "data": self.invoice_payments[invoice], "has_more": False,
                                  "url": "/v1/invoice_payments"})

    async def session_lines(self, request: web.Request) -> web.Response:
        self.lines_asked += 1
        refused = self._auth(request)
        if refused is not None:
            return refused
        session = request.match_info["session"]
        if session not in self.line_items:
            return _error(404, "invalid_request_error", f"No such checkout.session: '{session}'", "resource_missing")
        data = [{"id": f"li_{i}", "object": "item", "quantity": line["quantity"], "currency": "usd",
                 "amount_total": 1000 * line["quantity"], "description": "Credit pack",
                 "price": {"id": line["price"], "object": "price", "type": "recurring" if line.get("recurring")
                           else "one_time", "recurring": {"interval": "month"} if line.get("recurring") else None}}
                for i, line in enumerate(self.line_items[session])]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "url": f"/v1/checkout/sessions/{session}/line_items"})


def _body(kind: str, message: str, code: str | None = None) -> dict:
    body = {"type": kind, "message": message}
    if code:
        body["code"] = code
    return {"error": body}


def _error(status: int, kind: str, message: str, code: str | None = None) -> web.Response:
    return web.json_response(_body(kind, message, code), status=status)


@contextmanager
def serving(fake: FakeStripe) -> Iterator[str]:
    """`fake` served on 127.0.0.1 (a free port) from a thread of its own, for tests without an event loop (a gate
    in a process of its own); yields its base URL and stops it on leaving."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
