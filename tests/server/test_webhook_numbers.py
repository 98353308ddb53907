"""Absurd numbers in a signed Stripe event (an amount of 10**30, credits past 2**62, an infinite float) on each
store: a clear 400 and nothing written, or taken safely, never a 500 (SQLite and PostgreSQL hold 64-bit integers)."""
from __future__ import annotations

import time

import pytest

from plangate.server.http.api import GATE

from . import stripe_events as se
from .test_webhook import deliver
from .test_entitlements import database  # noqa: F401 (a fixture: each store)
from .test_webhook_subscriptions import outcomes, start  # noqa: F401 (start is a fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
HUGE = 10**30


def _invoice(field: str, value) -> dict:
    obj = se.invoice("paid", inv_id="in_huge")
    obj[field] = value
    return obj


@pytest.mark.parametrize("field,value", [("amount_paid", HUGE), ("amount_due", -HUGE), ("amount_paid", 2**63),
                                         ("attempt_count", HUGE)])
async def test_an_absurd_integer_is_refused_with_400_and_nothing_written(start, field, value):
    gate = await start()
    assert (await deliver(gate, se.event("checkout.session.completed", se.checkout("alice"), time.time())))[0] == 200
    before = await outcomes(gate, "alice")
    status, answer = await deliver(gate, se.event("invoice.paid", _invoice(field, value), time.time(), "evt_huge"))
    assert status == 400 and answer["error"] == "invalid_event", answer
    assert "64-bit" in answer["message"]
    assert await outcomes(gate, "alice") == before
    # the largest 64-bit integer is a number the stores hold: taken
    status, answer = await deliver(gate, se.event("invoice.paid", _invoice(field, 2**63 - 1), time.time(), "evt_max"))
    assert status == 200, answer


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_a_number_json_does_not_allow_is_refused_with_400_and_nothing_written(start, literal):
    gate = await start()
    assert (await deliver(gate, se.event("checkout.session.completed", se.checkout("alice"), time.time())))[0] == 200
    before = await outcomes(gate, "alice")
    body = se.encode(se.event("invoice.paid", _invoice("amount_paid", 1), time.time(), "evt_nan"))
    raw = body.replace(b'"amount_paid": 1,', b'"amount_paid": ' + literal + b",")
    assert literal in raw
    status, answer = await deliver(gate, {}, raw=raw)
    assert status == 400 and answer["error"] == "invalid_event", answer
    assert literal.decode().lstrip("-") in answer["message"] and "JSON does not allow" in answer["message"]
    assert await outcomes(gate, "alice") == before


async def test_an_infinite_amount_is_taken_as_no_amount(start):
    """Floats are never stored as integers: an amount of 1e999 (infinite) leaves the payment without one."""
    gate = await start()
    assert (await deliver(gate, se.event("checkout.session.completed", se.checkout("alice"), time.time())))[0] == 200
    body = se.encode(se.event("invoice.paid", _invoice("amount_paid", 1), time.time(), "evt_inf"))
    raw = body.replace(b'"amount_paid": 1,', b'"amount_paid": 1e999,')
    assert b"1e999" in raw
    status, answer = await deliver(gate, {}, raw=raw)
    assert status == 200, answer


class TestDerivedNumbers:
    """Numbers within 64 bits whose product is not: a credit pack bought 2**62 times."""

    async def test_a_pack_bought_past_64_bits_is_refused_and_nothing_written(self, start_gate, database):
        from .test_entitlements import AI, QUIET, pack_checkout, view
        gate = await start_gate(plan=AI, database=database, **QUIET)
        obj = pack_checkout("p1", "cs_pack_huge", [("price_tokens_1m", 2**62)])
        status, answer = await deliver(gate, se.event("checkout.session.completed", obj, time.time(), "evt_pack"))
        assert status == 400 and answer["error"] == "invalid_event", answer
        assert await gate.app[GATE].store.events("p1") == []
        assert (await view(gate, "p1"))["credits"][0]["balance"] == 0


@pytest.mark.parametrize("body", [{"amount": 2**63}, {"amount": 10**30}, {"amount": -(2**63) - 1}])
async def test_api_amounts_past_64_bits_are_a_400(start, body):
    gate = await start()
    status, answer = await gate.post("/v1/consume", {"subject": "s1", **body})
    assert status == 400, answer
    status, answer = await gate.post("/v1/check", {"subject": "s1", **body})
    assert status == 400, answer


@pytest.mark.parametrize("where", ["event id", "customer", "subscription"])
async def test_a_nul_in_a_signed_event_is_refused_with_400_on_every_store(start, where):
    """PostgreSQL stores no NUL in text: an id holding one failed as a store error, a 500 on every delivery
    (SQLite took it). No Stripe event holds one: refused whole, as an integer past 64 bits is."""
    gate = await start()
    assert (await deliver(gate, se.event("checkout.session.completed", se.checkout("alice"), time.time())))[0] == 200
    before = await outcomes(gate, "alice")
    obj = se.subscription("active", "alice", customer="cus_1\x00" if where == "customer" else "cus_1",
                          sub_id="sub_1\x00" if where == "subscription" else "sub_1")
    evt = se.event("customer.subscription.created", obj, time.time(), "evt_\x00" if where == "event id" else None)
    status, answer = await deliver(gate, evt)
    assert status == 400 and answer["error"] == "invalid_event", answer
    assert "NUL" in answer["message"]
    assert await outcomes(gate, "alice") == before


def _half_pair(evt: dict, where: str) -> dict:
    """The event with half a UTF-16 surrogate pair (U+D800 alone, which json.dumps writes as the escape \\ud800)
    in one of its strings or names."""
    obj = evt["data"]["object"]
    if where == "event id":
        evt["id"] += "\ud800"
    elif where == "a name":
        obj["metadata"]["note\udc00"] = "x"
    else:
        obj[where] += "\ud800"
    return evt


@pytest.mark.parametrize("where", ["event id", "customer", "status", "a name"])
async def test_half_a_surrogate_pair_in_a_signed_event_is_refused_with_400_on_every_store(start, where):
    """JSON may escape half of a UTF-16 pair alone, which is no Unicode text: SQLite's driver and orjson refuse to
    encode it, so the event failed as a 500 on every delivery. No Stripe event holds one: refused whole."""
    gate = await start()
    assert (await deliver(gate, se.event("checkout.session.completed", se.checkout("alice"), time.time())))[0] == 200
    before = await outcomes(gate, "alice")
    evt = _half_pair(se.event("customer.subscription.created", se.subscription("active", "alice"), time.time()),
                     where)
    assert b"\\ud800" in se.encode(evt) or b"\\udc00" in se.encode(evt)
    status, answer = await deliver(gate, evt)
    assert status == 400 and answer["error"] == "invalid_event", answer
    assert "surrogate" in answer["message"] and "nothing was written" in answer["message"]
    assert await outcomes(gate, "alice") == before


async def test_an_event_waiting_for_its_subject_is_never_kept_with_half_a_pair(start):
    """Kept `pending` (its customer not linked yet), such an event answered 200, and then failed the adoption of every
    later event linking its customer: those answered 500 while their own fold had committed."""
    gate = await start()
    waiting = _half_pair(se.event("customer.subscription.updated", se.subscription("active", customer="cus_q1",
                                                                                   sub_id="sub_q1"), time.time()),
                         "status")
    status, answer = await deliver(gate, waiting)
    assert status == 400 and answer["error"] == "invalid_event", answer
    linking = se.event("customer.subscription.created", se.subscription("active", "q1", customer="cus_q1",
                                                                        sub_id="sub_q1"), time.time())
    status, answer = await deliver(gate, linking)
    assert status == 200, answer
    assert list((await outcomes(gate, "q1")).values()) == [("customer.subscription.created", "applied")]


async def test_a_whole_pair_written_as_two_escapes_is_text_like_any(start):
    """An encoder that writes only ASCII escapes a character beyond the BMP as a pair: the parser joins the pair, and
    the event is taken."""
    gate = await start()
    obj = se.subscription("active", "alice")
    obj["metadata"]["team"] = "rocket \U0001f680"
    evt = se.event("customer.subscription.created", obj, time.time())
    assert b"\\ud83d\\ude80" in se.encode(evt)
    status, answer = await deliver(gate, evt)
    assert status == 200 and answer["outcome"] == "applied", answer
