"""Retention of Stripe payloads on both stores: whole while Stripe may still fold them again, then reduced to what
the gate reads, without changing a decision; the store holds no email or name after it (files, WAL included)."""
from __future__ import annotations

import json
import random
import time

import pytest


from . import stripe_events as se
from .personal_lifecycle import DAY, Lifecycle
from .personal_store import deliver, found, json_logs, rows, store_text  # noqa: F401 - json_logs is a fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
STATE = ("status", "tier", "since", "timer_due", "period_start", "period_end", "plan_version")


@pytest.fixture
def database(each_database) -> str:
    """The store of the test's gates (start_gate's): each kind."""
    return each_database


async def state(gate, subject: str) -> dict:
    _, view = await gate.get(f"/v1/subjects/{subject}")
    return {k: view[k] for k in STATE}


async def cleanup(gate) -> list[int]:
    status, answer = await gate.post("/v1/jobs/cleanup")
    assert status == 200, answer
    return answer["result"]


class TestRetention:
    async def test_a_lifecycle_past_retention_leaves_no_person_in_the_store(self, start_gate, database):
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
        life = Lifecycle("user_retained", time.time() - 80 * DAY)
        for evt in life.events():
            await deliver(gate, evt)
        before = await state(gate, "user_retained")
        assert before["status"] == "canceled"
        stored = (await rows(database, "SELECT count(*) FROM subscription_events"))[0][0]
        assert stored >= 12 and found(await store_text(database), life.person.needles())    # as Stripe sent them
        assert (await cleanup(gate))[2] == stored
        assert not found(await store_text(database), life.person.needles())
        assert (await rows(database, "SELECT count(*) FROM subscription_events WHERE reduced_at IS NULL")) == [(0,)]
        assert await state(gate, "user_retained") == before
        assert (await cleanup(gate))[2] == 0        # done once

    async def test_events_within_retention_are_kept_whole(self, start_gate, database):
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
        life = Lifecycle("user_recent", time.time() - 3 * 3600)
        recent = [e for e in life.events() if e["created"] <= life.t0 + 2]     # checkout into the trial
        for evt in recent:
            await deliver(gate, evt)
        assert (await cleanup(gate))[2] == 0
        assert life.person.email in await store_text(database)

    async def test_a_late_event_refolds_reduced_payloads_to_the_same_state(self, start_gate, database):
        """B gets every event in order; A all but a declined renewal, its payloads are reduced, and the declined
        renewal comes last: the fold of A runs again over reduced payloads and must end where B's ends."""
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
        start = time.time() - 80 * DAY
        a, b = Lifecycle("user_a", start, 1), Lifecycle("user_b", start, 2)
        held = next(i for i, e in enumerate(a.events()) if e["type"] == "invoice.payment_failed")
        events_a = a.events()
        for i, evt in enumerate(events_a):
            if i != held:
                await deliver(gate, evt)
        for evt in b.events():
            await deliver(gate, evt)
        expected = await state(gate, "user_b")
        assert (await cleanup(gate))[2] > 0
        assert not found(await store_text(database), a.person.needles() + b.person.needles())
        _, answer = await deliver(gate, events_a[held])
        assert answer["subject"] == "user_a" and answer["outcome"] in ("applied", "stale")
        got = await state(gate, "user_a")
        assert {k: v for k, v in got.items() if k != "since"} == {k: v for k, v in expected.items() if k != "since"}
        assert got["status"] == "canceled"

    async def test_any_order_with_reductions_between_deliveries_ends_where_in_order_ends(self, start_gate, database):
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS="0")
        start = time.time() - 80 * DAY
        for evt in Lifecycle("in_order", start, 10).events():
            await deliver(gate, evt)
        expected = await state(gate, "in_order")
        rng = random.Random(22)
        for n in range(3):
            events = Lifecycle(f"shuffled{n}", start, 11 + n).events()
            rng.shuffle(events)
            for i, evt in enumerate(events, 1):
                await deliver(gate, evt)
                if i % 6 == 0:
                    await cleanup(gate)     # every payload stored so far reduced (retention 0 days)
            got = await state(gate, f"shuffled{n}")
            assert (got["status"], got["tier"], got["period_end"], got["timer_due"]) == \
                (expected["status"], expected["tier"], expected["period_end"], expected["timer_due"]), n


class TestMigration:
    async def test_the_migration_reduces_what_was_stored_before_it(self, start_gate, database):
        """A store at schema 5 (raw payloads, written without secure_delete) is migrated by the next start: its
        payloads past retention reduced, and nothing of them left in the files."""
        first = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
        life = Lifecycle("user_old", time.time() - 80 * DAY)
        for evt in life.events():
            await deliver(first, evt)
        before = await state(first, "user_old")
        await first.app.shutdown()
        await first.app.cleanup()
        await _back_to_schema_5(database)
        assert found(await store_text(database), life.person.needles())
        second = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
        assert await state(second, "user_old") == before
        assert not found(await store_text(database), life.person.needles())
        assert (await rows(database, "SELECT count(*) FROM subscription_events WHERE reduced_at IS NULL")) == [(0,)]


async def _back_to_schema_5(database: str) -> None:
    """Undo migrations 6 and later, with a connection that does not zero what it frees (as the gate did before
    it)."""
    undo = ["DROP INDEX subscription_events_unreduced", "ALTER TABLE subscription_events DROP COLUMN reduced_at",
            "DROP TABLE erasures",
            # 7: the subscription's dates
            "ALTER TABLE subscriptions DROP COLUMN trial_end", "ALTER TABLE subscriptions DROP COLUMN cancel_at",
            # 8: plan versions
            "DROP TABLE plan_deploys", "DROP TABLE plan_versions",
            # 9: subscriptions and links
            "DROP INDEX subscription_events_pending_by_payment",
            "ALTER TABLE subscription_events DROP COLUMN stripe_payment", "DROP TABLE stripe_links",
            "ALTER TABLE subscriptions DROP COLUMN stripe_subscriptions",
            # 11: entitlements (10 adds a function on PostgreSQL only, replaced when it runs again)
            "DROP TABLE overage_reports", "DROP TABLE credit_grants",
            "ALTER TABLE usage_keys DROP COLUMN credits_used", "ALTER TABLE usage_keys DROP COLUMN overage",
            "ALTER TABLE subscriptions DROP COLUMN quantity", "ALTER TABLE subscriptions DROP COLUMN addons",
            "ALTER TABLE subscriptions DROP COLUMN traits",
            # 14: the fold's order of tied updates
            "ALTER TABLE subscription_events DROP COLUMN fold_rank",
            # 15: pending events by their payment intent
            "DROP INDEX subscription_events_pending_by_payment_intent",
            "ALTER TABLE subscription_events DROP COLUMN stripe_payment_intent",
            # 16: credits taken back (its columns of credit_grants went with the table, at 11)
            "DROP TABLE credit_reversals",
            # 17: when the subject entered its tier
            "ALTER TABLE subscriptions DROP COLUMN tier_since",
            # 18: the overage a window has billed (its plangate_spend is replaced when 11 and 18 run again)
            "ALTER TABLE quota_usage DROP COLUMN billed",
            # 20: the console session's token MAC (its table, of 13, is made only if missing)
            "ALTER TABLE console_sessions DROP COLUMN token_mac"]
    if database.startswith("postgresql://"):
        import asyncpg
        conn = await asyncpg.connect(database)
        try:
            for sql in undo + ["DELETE FROM plangate_schema WHERE version > 5"]:
                await conn.execute(sql)
        finally:
            await conn.close()
        return
    import sqlite3
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA secure_delete = OFF")
        for sql in undo:
            db.execute(sql)
        # Rows rewritten before secure_delete was on leave their old copies in free pages (here: each payload
        # grown onto overflow pages, then cut back, freeing them unzeroed).
        db.execute("UPDATE subscription_events SET payload = payload || printf('%6000s', '')")
        db.execute("UPDATE subscription_events SET payload = rtrim(payload)")
        db.execute("PRAGMA user_version = 5")


class TestRetentionFollowsThePlan:
    async def test_after_a_reload_payloads_keep_what_the_reloaded_plan_reads(self, start_gate, database, tmp_path):
        """Started on the shipped plan (which reads no `metadata.campaign`), reloaded to one whose trial starts
        only for a campaign's sign-ups: the payloads reduced after the reload keep the campaign, and only it."""
        from .conftest import PLAN
        from .test_reduction import plan_reading_more
        (tmp_path / "next").mkdir()
        reading_more = plan_reading_more(tmp_path / "next")
        live = tmp_path / "live.yaml"
        live.write_text(PLAN.read_text(), encoding="utf-8")
        gate = await start_gate(plan=live, STRIPE_WEBHOOK_SECRET=se.SECRET)
        life = Lifecycle("user_campaign", time.time() - 80 * DAY)
        for evt in life.events():
            obj = evt["data"]["object"]
            if isinstance(obj.get("metadata"), dict):
                obj["metadata"].update(campaign="spring", support_note=f"{life.person.name} prefers phone")
            await deliver(gate, evt)
        live.write_text(reading_more.read_text(), encoding="utf-8")
        status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
        assert status == 200 and answer["outcome"] == "applied", answer
        assert (await cleanup(gate))[2] > 0
        metadata = [json.loads(p)["data"]["object"].get("metadata") for (p,) in await rows(
            database, "SELECT payload FROM subscription_events WHERE reduced_at IS NOT NULL")]
        kept = [m for m in metadata if m]
        assert any(m.get("campaign") == "spring" for m in kept), kept      # what the trial's condition reads
        assert not any("support_note" in m for m in kept), kept
        assert "prefers phone" not in await store_text(database)
