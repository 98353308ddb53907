"""The read routes the console added to the API, on each store (a SQLite file, a real PostgreSQL): the webhook
log a keyset page at a time with its filters, subjects per status, the subject of a Stripe id; and the
console's webhook and jobs pages on top of them."""
from __future__ import annotations

import asyncio

import pytest

from . import stripe_events as se
from .conftest import ADMIN_TOKEN, TOKEN
from .console_flow import WEBHOOK, hidden, lifecycle, login, new_session, play
from .test_webhook import deliver


@pytest.fixture
async def gate(start_gate, each_database):
    return await start_gate(database=each_database, **WEBHOOK)


async def all_pages(gate, query: str = "", limit: int = 3) -> list[dict]:
    seen, before = [], None
    for _ in range(100):
        path = f"/v1/events?limit={limit}{query}" + (f"&before={before}" if before else "")
        status, body = await gate.get(path, token=TOKEN)
        assert status == 200, body
        assert len(body["events"]) <= limit
        seen.extend(body["events"])
        before = body["next"]
        if before is None:
            return seen
    raise AssertionError("the pages did not end")


class TestEventLog:
    async def test_pages_walk_every_event_once_newest_first(self, gate):
        life = lifecycle()
        await play(gate, life)
        # One event no subject is linked to yet: pending.
        await deliver(gate, se.event("customer.subscription.updated", se.subscription(
            "active", sub_id="sub_orphan", customer="cus_orphan"), life.start + 5, "evt_orphan"))
        seen = await all_pages(gate)
        ids = [e["id"] for e in seen]
        one_page = (await gate.get("/v1/events?limit=200", token=TOKEN))[1]
        assert one_page["next"] is None and [e["id"] for e in one_page["events"]] == ids
        assert len(set(ids)) == len(ids) >= 6
        assert set(ids) <= {e["id"] for e in life.events} | {"evt_orphan"}
        assert {"evt_orphan", "evt_7_000", "evt_7_001"} <= set(ids)
        keys = [(e["created"], e["id"]) for e in seen]
        assert keys == sorted(keys, reverse=True)
        assert "payload" not in seen[0]

    async def test_filters_by_outcome_and_type(self, gate):
        life = lifecycle()
        await play(gate, life)
        await deliver(gate, se.event("customer.subscription.updated", se.subscription(
            "active", sub_id="sub_orphan", customer="cus_orphan"), life.start + 5, "evt_orphan"))
        pending = await all_pages(gate, "&outcome=pending")
        assert [e["id"] for e in pending] == ["evt_orphan"] and pending[0]["subject"] is None
        assert pending[0]["stripe_customer"] == "cus_orphan"
        created = await all_pages(gate, "&type=customer.subscription.created")
        assert [e["outcome"] for e in created] == ["applied"]
        assert await all_pages(gate, "&outcome=applied&type=charge.refunded") == []

    @pytest.mark.parametrize("query", ["outcome=done", "limit=0", "limit=201", "limit=x", "limit=%C2%B2", "before=nope",
                                       "before=", "type=", "before=1%7C%00", "before=1%7Ca%0Ab"])
    async def test_bad_queries_are_400(self, gate, query):
        status, body = await gate.get(f"/v1/events?{query}", token=TOKEN)
        assert status == 400 and body["error"] in ("invalid_field", "missing_field"), body


class TestCountsAndFind:
    async def test_statuses_name_every_status_of_the_plan(self, gate):
        await play(gate, lifecycle())
        status, body = await gate.get("/v1/statuses", token=TOKEN)
        assert status == 200
        assert body["statuses"]["paid"] == 1 and body["statuses"]["closed"] == 0 and body["total"] == 1
        assert body["tiers"] == {"pro": 1}

    async def test_counts_asked_together_or_in_a_loop_are_read_once_per_few_seconds(self, gate, monkeypatch):
        """A census visits every subject: callers in a loop share one read, not one each (review finding)."""
        from plangate.server.http import console_api
        await play(gate, lifecycle())
        answers = await asyncio.gather(*(gate.get("/v1/statuses", token=TOKEN) for _ in range(5)))
        assert {a[1]["total"] for a in answers} == {1}
        assert (await gate.consume("another-subject", 1))[0] == 200      # stored now: a second subject
        assert (await gate.get("/v1/statuses", token=TOKEN))[1]["total"] == 1     # the shared read, still fresh
        monkeypatch.setattr(console_api, "CENSUS_FRESH", 0.0)
        assert (await gate.get("/v1/statuses", token=TOKEN))[1]["total"] == 2

    async def test_find_by_customer_or_subscription(self, gate):
        life = lifecycle()
        await play(gate, life)
        for stripe_id in (life.customer, life.sub_id("A")):
            assert await gate.get(f"/v1/find?stripe_id={stripe_id}", token=TOKEN) == (200, {"subject": life.subject})
        status, body = await gate.get("/v1/find?stripe_id=cus_nobody", token=TOKEN)
        assert status == 404 and body["error"] == "not_found"
        assert (await gate.get("/v1/find", token=TOKEN))[0] == 400
        assert (await gate.get("/v1/find?stripe_id=cus_1", token=None))[0] == 401


class TestConsolePages:
    async def test_the_webhook_page_filters_and_pages_on(self, gate):
        life = lifecycle()
        await play(gate, life)
        async with new_session() as session:
            await login(gate.url, session, TOKEN)
            async with session.get(gate.url + "/console/events", params={"outcome": "applied"}) as r:
                page = await r.text()
            assert r.status == 200 and "checkout.session.completed" in page and "charge.succeeded" not in page
            assert f'href="/console/subjects/{life.subject}"' in page
            async with session.get(gate.url + "/console/events", params={"outcome": "nope"}) as r:
                assert r.status == 400
            async with session.get(gate.url + "/console/events", params={"before": "x"}) as r:
                assert r.status == 400

    async def test_the_jobs_page_shows_the_last_run_and_the_next(self, gate):
        assert (await gate.post("/v1/jobs/sweep", token=ADMIN_TOKEN))[0] == 200
        assert (await gate.post("/v1/jobs/report", token=ADMIN_TOKEN))[0] == 200
        async with new_session() as session:
            await login(gate.url, session, ADMIN_TOKEN)
            async with session.get(gate.url + "/console/jobs") as r:
                page = await r.text()
                hidden(page, "csrf")
        row = page.split('data-job="sweep"')[1].split("</tr>")[0]
        assert 'class="ok"' in row and "0 0 1 1 *" in row and "-01-01T00:00:00Z" in row and "0 moved" in row
        row = page.split('data-job="report"')[1].split("</tr>")[0]
        assert "0 sent, 0 left for a retry, 0 refused" in row        # in words, not (0, 0, 0)
        # No Stripe key here: the jobs that ask Stripe say they do nothing (their runs only said "0").
        assert "sends nothing: STRIPE_SECRET_KEY is not set" in row
        assert "asks Stripe nothing" in page.split('data-job="reconcile"')[1].split("</tr>")[0]
        assert "STRIPE_SECRET_KEY" not in page.split('data-job="sweep"')[1].split("</tr>")[0]

    async def test_the_jobs_page_says_nothing_of_a_key_the_gate_has(self, start_gate, each_database):
        gate = await start_gate(database=each_database, STRIPE_SECRET_KEY="sk_test_" + "k" * 24,
                                STRIPE_API_BASE="http://127.0.0.1:9", **WEBHOOK)     # nothing listens there
        async with new_session() as session:
            await login(gate.url, session, ADMIN_TOKEN)
            async with session.get(gate.url + "/console/jobs") as r:
                page = await r.text()
        assert r.status == 200 and 'data-job="report"' in page and "STRIPE_SECRET_KEY" not in page
