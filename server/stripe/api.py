"""Stripe's API, for what no event says: a subscription as it is now (reconciliation), whose a charge or payment
intent is (an event that names only its payment, such as a dispute), and which subscription's invoice a payment
paid (a customer that pays for several subjects).

One StripeClient over aiohttp (STRIPE_SECRET_KEY, STRIPE_API_BASE), made in the running loop on first use.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import stripe

from plangate.engine import Refs, stripe_refs, subscription_of

from ..config import Config
from ..logs import log

# One question's budget: the webhook's store calls share 10 s (ingest.WEBHOOK_STORE_TIMEOUT) after it.
ASK_TIMEOUT = 5.0
_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


class StripeUnavailable(Exception):
    """Stripe's API did not answer (unreachable, too slow, rate limited, a 5xx): ask again later."""


class StripeApi:
    def __init__(self, config: Config):
        self.config = config
        self._client: stripe.StripeClient | None = None
        self._http: stripe.AIOHTTPClient | None = None

    @property
    def configured(self) -> bool:
        return bool(self.config.stripe_secret_key)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()
            self._http, self._client = None, None

    def client(self) -> stripe.StripeClient:
        """The StripeClient (made in the running loop on first use)."""
        return self._stripe()

    def _stripe(self) -> stripe.StripeClient:
        if self._client is None:
            self._http = stripe.AIOHTTPClient()
            self._client = stripe.StripeClient(
                self.config.stripe_secret_key, http_client=self._http,
                base_addresses={"api": self.config.stripe_api_base}, max_network_retries=2)
        return self._client

    async def subscription(self, subscription_id: str) -> dict | None:
        """The subscription as Stripe has it now, its latest invoice expanded (the object, not its id); None when
        Stripe does not know it (logged); StripeUnavailable when Stripe did not answer (a refused key raises as it
        is: no subject can be asked about)."""
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                sub = await self._stripe().v1.subscriptions.retrieve_async(subscription_id,
                                                                          {"expand": ["latest_invoice"]})
        except stripe.InvalidRequestError as exc:
            log(logging.WARNING, "reconcile_skipped", subscription=subscription_id, error=str(exc.user_message))
            return None
        except (*_TRANSIENT, TimeoutError) as exc:
            raise StripeUnavailable(f"Stripe's API did not answer for {subscription_id}: "
                                    f"{type(exc).__name__}: {getattr(exc, 'user_message', None) or exc}") from exc
        return sub.to_dict()

    async def owner(self, refs: Refs) -> Refs:
        """The ids of `refs` with the customer (and the other payment id) Stripe's record of its charge, else
        of its payment intent, names; `refs` as it was when Stripe has no such payment, or no customer for
        it. StripeUnavailable when Stripe did not answer."""
        for kind, ident in (("charges", refs.charge), ("payment_intents", refs.payment_intent)):
            if not ident:
                continue
            found = await self._retrieve(kind, ident)
            if found is not None:
                named = stripe_refs(found)
                return Refs(named.customer, refs.subscription, refs.charge or named.charge,
                            refs.payment_intent or named.payment_intent)
        return refs

    async def paid_subscription(self, payment_intent: str) -> str | None:
        """The subscription whose invoice the payment intent paid, by Stripe's invoice payments of it (neither a
        charge nor a payment intent names its invoice since API 2025-03-31). None when it paid no invoice, one of
        no subscription (a one-off invoice), invoices of several subscriptions, or Stripe refuses the key (logged).
        StripeUnavailable when Stripe did not answer."""
        found = await self._ask("invoice_payments", payment_intent, self._stripe().v1.invoice_payments.list_async(
            {"payment": {"type": "payment_intent", "payment_intent": payment_intent}, "expand": ["data.invoice"],
             "limit": 10}))
        rows = [r for r in (found or {}).get("data") or () if isinstance(r, dict) and r.get("status") != "canceled"]
        subscriptions = {subscription_of(r["invoice"]) if isinstance(r.get("invoice"), dict) else None for r in rows}
        return subscriptions.pop() if len(subscriptions) == 1 else None

    async def _retrieve(self, kind: str, ident: str) -> dict | None:
        return await self._ask(kind, ident, getattr(self._stripe().v1, kind).retrieve_async(ident))

    async def _ask(self, kind: str, ident: str, question: Awaitable[stripe.StripeObject]) -> dict | None:
        """Stripe's answer to `question` about `ident`, as a dict; None when it knows no such object or refuses the
        key (logged); StripeUnavailable when it did not answer."""
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                found = await question
        except stripe.InvalidRequestError as exc:       # no such object (404), or a malformed id
            log(logging.INFO, "stripe_lookup_unknown", object=kind, id=ident, error=str(exc.user_message))
            return None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            log(logging.ERROR, "stripe_lookup_refused", object=kind, id=ident, error=str(exc.user_message),
                why="STRIPE_SECRET_KEY is refused: events only Stripe can place stay pending")
            return None
        except (*_TRANSIENT, TimeoutError) as exc:
            raise StripeUnavailable(f"Stripe's API did not answer for {ident}: "
                                    f"{type(exc).__name__}: {getattr(exc, 'user_message', None) or exc}") from exc
        return found.to_dict()

    async def line_items(self, session_id: str) -> dict | None:
        """A Checkout Session's line items as Stripe lists them ({"object": "list", "data": [...]}, each with its
        price and quantity): webhooks leave them out. See _bought for None and StripeUnavailable."""
        return await self._bought("checkout.session", session_id, "line items",
                                  lambda: self._stripe().v1.checkout.sessions.line_items.list_async(
                                      session_id, {"limit": 100}))

    async def invoice_payments(self, invoice_id: str) -> dict | None:
        """An invoice's payments as Stripe lists them ({"object": "list", "data": [invoice_payment, ...]}, each
        naming its payment intent): how the payment of a subscription's Checkout is known. See _bought."""
        return await self._bought("invoice", invoice_id, "payments",
                                  lambda: self._stripe().v1.invoice_payments.list_async(
                                      {"invoice": invoice_id, "limit": 10}))

    async def _bought(self, kind: str, ident: str, what: str, ask) -> dict | None:
        """What a purchase's lookup `ask()` lists. None when Stripe does not know `ident` (logged);
        StripeUnavailable when it did not answer, or refused the key: a paid purchase is answered 503 so that
        Stripe delivers it again once the key is put right (it does for three days), never recorded as granting
        nothing."""
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                found = await ask()
        except stripe.InvalidRequestError as exc:
            log(logging.WARNING, "stripe_lookup_unknown", object=kind, id=ident, error=str(exc.user_message))
            return None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            log(logging.ERROR, "stripe_lookup_refused", object=kind, id=ident, error=str(exc.user_message),
                why="STRIPE_SECRET_KEY is refused: credit packs cannot be read")
            raise StripeUnavailable(f"Stripe refused STRIPE_SECRET_KEY when asked for {ident}'s {what}: "
                                    f"{exc.user_message or exc}") from exc
        except (*_TRANSIENT, TimeoutError) as exc:
            raise StripeUnavailable(f"Stripe's API did not answer for {ident}'s {what}: "
                                    f"{type(exc).__name__}: {getattr(exc, 'user_message', None) or exc}") from exc
        return found.to_dict()
