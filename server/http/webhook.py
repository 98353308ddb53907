"""POST /webhook/stripe: verify the raw body with Stripe's signature scheme before reading anything in it."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import stripe
from aiohttp import web

from plangate.engine import AbsurdPurchase, StripeEvent

from . import _json
from ._input import BODY_TIMEOUT, SURROGATE, BadRequest, body_timeout, decoded
from ..gate import StoreUnavailable
from ..stripe.api import StripeUnavailable
from ..stripe.ingest import Ingest
from ..logs import Throttle, log

INGEST = web.AppKey("ingest", Ingest)
# Stripe's `created` is whole Unix seconds. Anything else (1.5, NaN, Infinity, 1e300, a year past 2286 or before
# 1970) is no Stripe event: stored, it would break every later view of its subject (dates out of range).
MAX_CREATED = 9_999_999_999
# The stores hold 64-bit integers; Stripe never sends an integer beyond them. Such an event, even signed, is
# refused whole before anything is written, rather than half-stored or a 500. (Floats, infinite ones too, are
# never stored as integers: a reader that finds one out of range leaves it, as for a billing period.)
INT64 = (-(2**63), 2**63 - 1)
_throttle = Throttle(60.0)


def _signed_at(header: str) -> int | None:
    """The header's `t=` (when the signature was made), or None if it has none that parses."""
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _verify(payload: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int) -> str:
    """The body as text once a secret's signature matches; BadRequest otherwise. A signature made longer ago
    than the tolerance is refused before any HMAC is computed: the stripe package checks the time last, and
    its refusal (an exception carrying the body) is a large part of what a replayed signature costs."""
    if not header:
        raise BadRequest(400, "signature_missing", "no Stripe-Signature header: only signed events are accepted")
    if not header.isascii():    # Stripe's are hex digits and a timestamp; the stripe package compares ASCII only
        raise BadRequest(400, "signature_invalid", "the Stripe signature does not verify: the header is not ASCII")
    signed_at = _signed_at(header)
    if signed_at is not None and signed_at < time.time() - tolerance:
        raise BadRequest(400, "signature_invalid", f"the Stripe signature does not verify: it was made at "
                                                   f"{signed_at}, more than {tolerance} s ago (a replay?)")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "signature_invalid", "the body is not UTF-8 text") from None
    problem = "no signature matches"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
            return text
        except stripe.SignatureVerificationError as exc:
            problem = str(exc.user_message or exc)
    raise BadRequest(400, "signature_invalid", f"the Stripe signature does not verify: {problem}")


class _Unstorable(ValueError):
    pass


def _int64(digits: str) -> int:
    value = int(digits)
    if not INT64[0] <= value <= INT64[1]:
        raise _Unstorable(f"an integer beyond 64 bits ({digits[:24]}{'...' if len(digits) > 24 else ''}): no "
                          "Stripe event does, and the store holds 64-bit integers")
    return value


def _not_json(name: str):
    raise _Unstorable(f"{name}, which JSON does not allow: no Stripe event does")


def _unstorable_text(value) -> str | None:
    """What no store keeps that a name or string of a parsed JSON value holds (iteratively: nesting is not bounded
    here): a NUL, or half of a UTF-16 surrogate pair (the JSON parser joins a whole pair into its character); None
    when neither."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a NUL character (\\u0000): no Stripe event does, and PostgreSQL stores none"
            if SURROGATE.search(item):
                return ("half of a UTF-16 surrogate pair (a lone \\ud800-\\udfff escape), which is no Unicode text: "
                        "no Stripe event does, and no store keeps one")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _event(text: str) -> tuple[StripeEvent, str]:
    try:
        body = json.loads(text, parse_int=_int64, parse_constant=_not_json, object_pairs_hook=_json.unique_object)
    except _Unstorable as exc:
        raise BadRequest(400, "invalid_event", f"the signed body holds {exc}; nothing was written") from None
    except _json.NamedTwice as exc:     # Stripe never sends one: which one counts would be the parser's choice
        raise BadRequest(400, "invalid_event", f"the signed body names {exc.name[:64]!r} twice in one object: no "
                                               "Stripe event does; nothing was written") from None
    except (ValueError, RecursionError):
        raise BadRequest(400, "invalid_event", "the signed body is not JSON (or nested too deeply)") from None
    # The escapes are rare (a pair of \ud escapes is also how an encoder may write an emoji): only then is every
    # string looked at.
    if "\\u0000" in text or "\\ud" in text or "\\uD" in text:
        unstorable = _unstorable_text(body)
        if unstorable is not None:
            raise BadRequest(400, "invalid_event", f"the signed body holds {unstorable}; nothing was written")
    created: Any = body.get("created") if isinstance(body, dict) else None
    seconds = (isinstance(created, int) and not isinstance(created, bool)) or \
        (isinstance(created, float) and created.is_integer())          # JSON Schema's integer: 5.0 is one
    ok = isinstance(body, dict) and isinstance(body.get("id"), str) and body["id"] and \
        isinstance(body.get("type"), str) and seconds and 0 <= created <= MAX_CREATED and \
        isinstance(body.get("data"), dict) and isinstance(body["data"].get("object"), dict)
    if not ok:
        raise BadRequest(400, "invalid_event", "the body is not a Stripe event (id, type, created, data.object)")
    return StripeEvent.of(body), text


def _raised_at(exc: BaseException) -> str:
    """file:line of the innermost frame an exception went through."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb is not None else "?"


async def receive(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    config = ingest.gate.config
    metrics = ingest.gate.metrics
    if not config.webhook_secrets:
        if _throttle.ready("no-secret"):
            log(logging.ERROR, "webhook_refused", why="STRIPE_WEBHOOK_SECRET is not set: no event can be verified")
        metrics.webhooks.labels("no_secret").inc()
        raise BadRequest(503, "webhook_not_configured", "STRIPE_WEBHOOK_SECRET is not set on the gate")
    if request.content_length is not None and request.content_length > config.webhook_max_bytes:
        metrics.webhooks.labels("too_large").inc()
        raise BadRequest(413, "body_too_large", f"the body is larger than {config.webhook_max_bytes} bytes")
    try:
        if request.content.is_eof():        # all of it in already (mostly): no timer to arm and cancel
            payload = await request.read()
        else:
            # Stripe sends an event's body at once: one trickled in is cut off (not wait_for: a task a read).
            async with asyncio.timeout(BODY_TIMEOUT):
                payload = await request.read()
    except TimeoutError:
        metrics.webhooks.labels("body_timeout").inc()
        raise body_timeout() from None
    except web.HTTPRequestEntityTooLarge:
        payload = None            # sent without Content-Length (chunked): read up to the app's limit, no further
    if payload is None or len(payload) > config.webhook_max_bytes:
        metrics.webhooks.labels("too_large").inc()
        raise BadRequest(413, "body_too_large", f"the body is larger than {config.webhook_max_bytes} bytes")
    try:
        payload = decoded(request, payload, config.webhook_max_bytes)
        text = _verify(payload, request.headers.get("Stripe-Signature"), config.webhook_secrets,
                       config.webhook_tolerance)
        event, text = _event(text)
    except BadRequest as exc:
        metrics.webhooks.labels(exc.code).inc()
        raise
    try:
        received = await ingest.receive(event, text)
    except StoreUnavailable:
        metrics.webhooks.labels("store_error").inc()
        raise BadRequest(500, "store_unavailable", "the event could not be stored; nothing was applied; "
                                                   "Stripe will deliver it again") from None
    except AbsurdPurchase as exc:
        metrics.webhooks.labels("invalid_event").inc()
        raise BadRequest(400, "invalid_event", f"the signed event cannot be a payment: {exc}; nothing was "
                                               "written") from None
    except StripeUnavailable as exc:
        metrics.webhooks.labels("stripe_unavailable").inc()
        log(logging.WARNING, "webhook_retry", event_id=event.id, why=str(exc))
        raise BadRequest(503, "stripe_unavailable", f"the event needs Stripe's API, which did not answer it ({exc}); "
                                                    "nothing was stored; Stripe will deliver it again") from None
    except Exception as exc:    # noqa: BLE001 - answered 500: Stripe delivers again
        # The message of an error raised on an event's content may quote it (a name, an email, an address):
        # the log says the error's kind and where it was raised, never its message.
        metrics.webhooks.labels("error").inc()
        log(logging.ERROR, "webhook_failed", event_id=event.id, type=event.type, error=type(exc).__name__,
            at=_raised_at(exc))
        raise BadRequest(500, "internal", "the event could not be handled whole; it was logged; Stripe will deliver "
                                          "it again, and nothing of it is applied twice") from None
    metrics.webhooks.labels(received.outcome).inc()
    return _json.response(received.to_dict())
