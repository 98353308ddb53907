"""Erasure of a subject on both stores, by the route and by `plangate erase`: its personal data gone from the files
and tables, its usage and audit kept under a stable pseudonym, Stripe ids kept only while a subscription is live,
idempotent, and every node's cache dropped."""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from plangate.server import personal
from plangate.server.http.api import PERSONAL
from tests import postgres

from . import stripe_events as se
from .conftest import BASE_ENV, PLAN
from .personal_lifecycle import DAY, Lifecycle
from .personal_store import deliver, found, rows, store_text
from .stripe_lifecycles import resubscribe_during_dunning
from .store_locks import writes_held

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ENV = {"STRIPE_WEBHOOK_SECRET": se.SECRET}


@pytest.fixture
def database(each_database) -> str:
    """The store of the test's gates (start_gate's): each kind."""
    return each_database


def gate_personal(gate) -> personal.PersonalData:
    return gate.app[PERSONAL]


async def erase(gate, subject: str, **body) -> dict:
    status, answer = await gate.post(f"/v1/subjects/{subject}/erase", body)
    assert status == 200, answer
    return answer


async def view(gate, subject: str) -> dict:
    return (await gate.get(f"/v1/subjects/{subject}"))[1]


def stripe_ids(life: Lifecycle) -> list[str]:
    return [life.customer, life.subscription, f"in_Pii{life.n:05d}b", f"ch_Pii{life.n:05d}b"]


class TestErasure:
    async def test_a_live_subscriber_keeps_usage_audit_and_stripe_ids_until_the_subscription_ends(
            self, start_gate, database):
        gate = await start_gate(**ENV)
        life = Lifecycle("user_live", time.time() - 80 * DAY)
        for evt in life.until_live():
            await deliver(gate, evt)
        assert (await gate.consume("user_live", 3, key="job-1"))[1]["counted"] is True
        before = await view(gate, "user_live")
        assert before["status"] == "paid"

        erased = await erase(gate, "user_live", actor="privacy-desk")
        pseudonym = erased["pseudonym"]
        assert erased == {"subject": "user_live", "pseudonym": pseudonym, "erased": True, "already_erased": False,
                          "known": True, "events": erased["events"], "stripe_ids_kept": True}
        assert erased["events"] >= 10 and pseudonym.startswith("erased_")
        text = await store_text(database)
        assert not found(text, life.person.needles() + ["user_live"])
        assert life.customer in text and life.subscription in text          # its events must still find it
        kept = await view(gate, pseudonym)
        assert {k: kept[k] for k in ("status", "tier", "period_end")} == \
            {k: before[k] for k in ("status", "tier", "period_end")}
        assert kept["usage"][0]["used"] == 3 and kept["stripe_subscription"] == life.subscription
        assert [t["trigger"] for t in kept["transitions"]][0] == "erasure"
        assert kept["transitions"][0]["actor"] == "privacy-desk"
        assert len(kept["transitions"]) == len(before["transitions"]) + 1
        fresh = await view(gate, "user_live")
        assert fresh["known"] is False and fresh["status"] == "limited_free_trial" and fresh["usage"][0]["used"] == 0

        again = await erase(gate, "user_live")
        assert again["already_erased"] is True and again["pseudonym"] == pseudonym
        assert len((await view(gate, pseudonym))["transitions"]) == len(kept["transitions"])

        # Stripe ends the subscription: its event names the subject, and lands on the pseudonym.
        deleted = next(e for e in life.events() if e["type"] == "customer.subscription.deleted")
        _, answer = await deliver(gate, deleted)
        assert (answer["subject"], answer["status"]) == (pseudonym, "canceled")
        assert (await view(gate, "user_live"))["known"] is False
        assert (await gate.post("/v1/jobs/cleanup"))[1]["result"][3] == 1
        text = await store_text(database)
        assert not found(text, life.person.needles() + stripe_ids(life) + ["user_live"])
        assert (await view(gate, pseudonym))["status"] == "canceled"
        assert (await rows(database, "SELECT count(*) FROM erasures WHERE stripe_ids_dropped_at IS NOT NULL")) == [(1,)]
        assert (await gate.post("/v1/jobs/cleanup"))[1]["result"][3] == 0

    async def test_erased_subscribers_still_live_do_not_hide_those_whose_subscription_ended(
            self, start_gate, database, monkeypatch):
        """Retention visits erasures a page at a time (here a page of one, standing for 500): those whose
        subscription is still live stay on the first page forever, and kept the ones after them from ever losing
        their Stripe ids."""
        monkeypatch.setattr(personal, "RETENTION_BATCH", 1)
        gate = await start_gate(**ENV)
        lives = [Lifecycle(f"user_page{n}", time.time() - 80 * DAY, 10 + n) for n in range(3)]
        for life in lives:
            for evt in life.until_live():
                await deliver(gate, evt)
            assert (await erase(gate, life.subject))["stripe_ids_kept"] is True
        ended = lives[1]
        _, answer = await deliver(gate, next(e for e in ended.events() if e["type"] == "customer.subscription.deleted"))
        assert answer["status"] == "canceled"
        assert (await gate.post("/v1/jobs/cleanup"))[1]["result"][3] == 1
        text = await store_text(database)
        assert not found(text, stripe_ids(ended))
        assert all(life.customer in text for life in lives if life is not ended)

    @pytest.mark.parametrize("names_the_subject", [True, False])
    async def test_an_event_after_the_erasure_keeps_nothing_of_the_person(self, start_gate, database,
                                                                          names_the_subject):
        """An invoice after the erasure, naming the subject or found only through the Stripe ids the erasure kept
        (the subscription is live): stored reduced at once, under the pseudonym. Found through the ids, it kept
        the customer's email and name until the retention job ran."""
        gate = await start_gate(**ENV)
        life = Lifecycle("user_after", time.time() - 80 * DAY, 21)
        for evt in life.until_live():
            await deliver(gate, evt)
        pseudonym = (await erase(gate, "user_after"))["pseudonym"]
        invoice = se.invoice("paid", sub_id=life.subscription, customer=life.customer, inv_id="in_PiiAfter")
        invoice.update(customer_email=life.person.email, customer_name=life.person.name)
        if names_the_subject:
            invoice["parent"]["subscription_details"]["metadata"] = {"plangate_subject": "user_after"}
        _, answer = await deliver(gate, se.event("invoice.paid", invoice, time.time() - 5))
        assert answer["subject"] == pseudonym
        assert not found(await store_text(database), life.person.needles() + ["user_after"])

    async def test_an_ended_subscriber_loses_stripe_ids_at_once_and_an_admins_words_about_them(
            self, start_gate, database):
        gate = await start_gate(**ENV)
        life = Lifecycle("user_ended", time.time() - 80 * DAY, 3)
        for evt in life.events():
            await deliver(gate, evt)
        status, _ = await gate.post("/v1/subjects/user_ended/transition",
                                    {"action": "close_account", "reason": f"{life.person.name} asked by phone"})
        assert status == 200
        erased = await erase(gate, "user_ended")
        assert erased["stripe_ids_kept"] is False
        text = await store_text(database)
        assert not found(text, life.person.needles() + stripe_ids(life) + ["user_ended"])
        kept = await view(gate, erased["pseudonym"])
        assert kept["status"] == "closed" and kept["stripe_customer"] is None
        assert [t["trigger"] for t in kept["transitions"][:2]] == ["erasure", "admin:close_account"]
        assert "erased" in kept["transitions"][1]["reason"]

    async def test_a_subject_used_again_after_erasure_is_new_and_a_second_erasure_adds_its_usage(
            self, start_gate, database):
        gate = await start_gate(**ENV)
        await gate.consume("user_back", 2, key="a-1")
        first = await erase(gate, "user_back")
        await gate.consume("user_back", 5, key="a-1")       # the old key was dropped with the subject
        assert (await view(gate, "user_back"))["usage"][0]["used"] == 5
        second = await erase(gate, "user_back")
        assert second["already_erased"] is False and second["pseudonym"] == first["pseudonym"]
        assert (await view(gate, first["pseudonym"]))["usage"][0]["used"] == 7
        assert not found(await store_text(database), ["user_back"])

    async def test_credits_granted_after_the_erasure_go_with_a_second_one(self, start_gate, database,
                                                                           entitled_plan):
        """An admin's grant makes no subject row: a second erasure answered `already_erased` and left the grant,
        its reason naming the person, under the erased id."""
        gate = await start_gate(plan=entitled_plan, **ENV)
        await erase(gate, "jane.doe@example.com")
        status, _ = await gate.post("/v1/subjects/jane.doe@example.com/credits",
                                    {"meter": "requests", "amount": 5, "reason": "goodwill for Jane Doe"})
        assert status == 200
        second = await erase(gate, "jane.doe@example.com")
        assert second["already_erased"] is False
        assert not found(await store_text(database), ["jane.doe@example.com", "Jane Doe"])
        (meter,) = (await view(gate, second["pseudonym"]))["credits"]
        assert meter["balance"] == 5

    async def test_the_gates_words_about_an_event_lose_the_stripe_ids_with_the_payload(self, start_gate, database):
        """An event's reason may quote Stripe ids ("about subscription sub_A7, but the subject's status follows
        sub_B7"); once the erasure drops the ids, its reason names their pseudonyms, as its payload does."""
        gate = await start_gate(**ENV)
        start = time.time() - 90 * DAY
        life = resubscribe_during_dunning(7, start)
        renewal = start + 30 * DAY
        life.status("B", "canceled", renewal + 40 * DAY, (renewal + DAY, renewal + 31 * DAY), renewal + DAY,
                    canceled_at=int(renewal + 40 * DAY), ended_at=int(renewal + 40 * DAY))
        for evt in life.events:
            await deliver(gate, evt)
        ids = [life.sub_id("A"), life.sub_id("B")]
        quoted = await rows(database, "SELECT reason FROM subscription_events WHERE reason LIKE '%' || ? || '%'",
                            ids[0])
        assert quoted, "no reason quoted the subscription: the test proves nothing"
        erased = await erase(gate, "user7")
        assert erased["stripe_ids_kept"] is False
        assert not found(await store_text(database), ids + ["user7"])

    async def test_a_reason_loses_the_subject_and_the_dropped_ids_and_keeps_the_plans_names(self, start_gate):
        personal = gate_personal(await start_gate(**ENV))
        ids = personal.pseudonyms.stripe_id
        said = ("no transition from 'in_trial' on customer.subscription.updated (about sub_A7, the subject follows "
                "sub_B7); asked by jane@x.com. Again: jane@x.com, not jane@x.community nor sub_A77")
        assert personal._reason(said, "jane@x.com", "erased_1", ("sub_A7", "sub_B7", None)) == (
            f"no transition from 'in_trial' on customer.subscription.updated (about {ids('sub_A7')}, the subject "
            f"follows {ids('sub_B7')}); asked by erased_1. Again: erased_1, not jane@x.community nor sub_A77")

    async def test_an_unknown_subject_is_remembered_once(self, start_gate, database):
        gate = await start_gate(**ENV)
        first = await erase(gate, "never-seen")
        assert (first["known"], first["already_erased"], first["events"]) == (False, False, 0)
        assert (await erase(gate, "never-seen"))["already_erased"] is True
        assert await rows(database, "SELECT count(*) FROM erasures") == [(1,)]

    async def test_without_a_pseudonym_secret_nothing_is_erased(self, start_gate, database):
        gate = await start_gate(**ENV, PLANGATE_PSEUDONYM_SECRET="")
        await gate.consume("kept", 1, key="k-1")
        status, answer = await gate.post("/v1/subjects/kept/erase", {})
        assert (status, answer["error"]) == (503, "erasure_not_configured")
        assert (await view(gate, "kept"))["known"] is True


class TestAcrossNodes:
    async def test_every_node_drops_the_erased_subject_from_its_cache(self, start_gate, pg_dsn):
        one = await start_gate(database=pg_dsn, PLANGATE_CACHE_TTL="300", **ENV)
        two = await start_gate(database=pg_dsn, PLANGATE_CACHE_TTL="300", **ENV)
        await one.consume("shared", 4, key="s-1")
        assert (await two.check("shared"))[1]["used"] == 4      # usage is read from the database on every check
        await one.post("/v1/subjects/shared/transition", {"to": "billing_problem", "reason": "test"})
        await postgres.await_until(lambda: _status(two, "shared", "billing_problem"), timeout=5)
        await erase(one, "shared")
        assert await postgres.await_until(lambda: _status(two, "shared", "limited_free_trial"), timeout=2)


async def _status(gate, subject: str, status: str) -> bool:
    return (await gate.check(subject))[1]["status"] == status


class TestCommand:
    async def test_plangate_erase_on_the_store_a_gate_serves(self, start_gate, database, tmp_path):
        gate = await start_gate(PLANGATE_CACHE_TTL="300", **ENV)
        life = Lifecycle("user_cli", time.time() - 80 * DAY, 4)
        for evt in life.events():
            await deliver(gate, evt)
        assert (await gate.check("user_cli"))[1]["status"] == "canceled"      # cached by the serving gate
        env = {**BASE_ENV, "PLANGATE_DATABASE": database, "PLANGATE_PLANS": str(PLAN)}
        done = await _plangate(["erase", "user_cli", "--actor", "dpo", "--env-file", ""], env, tmp_path)
        assert done.returncode == 0, done.stderr
        assert '"already_erased": false' in done.stdout and '"stripe_ids_kept": false' in done.stdout
        again = await _plangate(["erase", "user_cli", "--env-file", ""], env, tmp_path)
        assert again.returncode == 0 and '"already_erased": true' in again.stdout
        assert not found(await store_text(database), life.person.needles() + stripe_ids(life) + ["user_cli"])
        if database.startswith("postgresql://"):       # the serving gate heard of it
            assert await postgres.await_until(lambda: _status(gate, "user_cli", "limited_free_trial"), timeout=2)
        refused = await _plangate(["erase", "x", "--env-file", ""], {**env, "PLANGATE_PSEUDONYM_SECRET": ""}, tmp_path)
        assert refused.returncode == 2 and "PLANGATE_PSEUDONYM_SECRET" in refused.stderr


async def test_plangate_erase_makes_no_store_where_there_is_none(tmp_path):
    """Opening a missing SQLite file would make an empty store, on which `plangate serve` then starts with every
    subject new: erase says there is none, and leaves none."""
    missing = tmp_path / "gone" / "plangate.sqlite3"
    env = {**BASE_ENV, "PLANGATE_DATABASE": str(missing), "PLANGATE_PLANS": str(PLAN), **ENV}
    done = await _plangate(["erase", "u1", "--env-file", ""], env, tmp_path)
    assert done.returncode == 2 and f"no store at {missing}" in done.stderr, done.stderr
    assert not missing.exists() and not missing.parent.exists()


async def test_an_event_folded_while_its_subject_is_erased_lands_on_the_pseudonym(start_gate, database):
    """Erasing an account while its subscription is canceled (one click of the product's "delete my account"):
    the event, read before the erasure and written after it, met its subject's row gone, and wrote it again under
    the person's own id (their status, customer and subscription kept under the id they were erased from). The
    interleaving is made with the database's own locks: another connection holds them while the erasure, then
    the event, queue their writes behind it."""
    gate = await start_gate(**ENV)
    life = Lifecycle("user_race", time.time() - 80 * DAY, 31)
    for evt in life.until_live():
        await deliver(gate, evt)
    deleted = life.events()[-1]
    assert deleted["type"] == "customer.subscription.deleted"
    async with writes_held(database, "SELECT 1 FROM subscriptions WHERE subject = $1 FOR UPDATE",
                           "user_race") as queued:
        erasing = asyncio.ensure_future(erase(gate, "user_race", actor="privacy-desk"))
        await queued(1)         # the erasure has read the subject and waits to write
        delivering = asyncio.ensure_future(deliver(gate, deleted))
        await queued(2)         # the event has read the subject (not erased yet) and waits to write
        assert not erasing.done() and not delivering.done()
    pseudonym = (await erasing)["pseudonym"]
    _, answer = await delivering
    assert answer["subject"] == pseudonym, answer
    assert await rows(database, "SELECT subject FROM subscriptions WHERE subject = ?", "user_race") == []
    assert not found(await store_text(database), life.person.needles() + ["user_race"])
    assert (await view(gate, pseudonym))["status"] == "canceled"


@pytest.mark.parametrize("each_database", ["sqlite"], indirect=True)     # PostgreSQL has nothing to scrub
async def test_a_scrub_out_of_time_after_the_erasure_committed_is_logged_not_a_503(start_gate, database, monkeypatch,
                                                                                   caplog):
    """SQLite's scrub (a WAL checkpoint) runs after the erasure committed; a reader holding an old snapshot keeps
    it busy past the budget. The erasure stands: the route answered 503 "nothing was erased" all the same."""
    monkeypatch.setattr(personal, "ERASURE_TIMEOUT", 0.3)
    caplog.set_level(logging.WARNING, logger="plangate")
    gate = await start_gate(**ENV)
    life = Lifecycle("user_scrub", time.time() - 80 * DAY, 41)
    for evt in life.until_live():
        await deliver(gate, evt)
    reader = sqlite3.connect(database, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM subscriptions").fetchall()     # a snapshot from before the erasure
        erased = await erase(gate, "user_scrub", actor="privacy-desk")
    finally:
        reader.close()
    assert erased["erased"] is True and erased["already_erased"] is False
    assert [r for r in caplog.records if r.getMessage() == "scrub_incomplete"]
    assert (await erase(gate, "user_scrub"))["already_erased"] is True
    assert await rows(database, "SELECT subject FROM subscriptions WHERE subject = ?", "user_scrub") == []


async def _plangate(argv: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "plangate", *argv], env=full, cwd=cwd,
                                   capture_output=True, text=True, timeout=120)


class TestCreditGrants:
    async def test_the_checkout_sessions_of_bought_credits_are_pseudonymised(self, start_gate, database):
        """A subject with no subscription buys credit packs through Checkout, then is erased: its credits stay
        with the pseudonym, spendable, but the Checkout session's id (and its customer's) is nowhere in the
        store; the session's id in the grant is the one its rewritten event names (a refold finds it)."""
        from .test_entitlements import AI, pack_checkout
        gate = await start_gate(plan=AI, **ENV)
        session, customer = "cs_live_PackBuyer0001", "cus_PackBuyer0001"
        obj = pack_checkout("pack_buyer", session, [("price_tokens_1m", 2)], customer=customer)
        await deliver(gate, se.event("checkout.session.completed", obj, time.time() - 60, "evt_pack_buyer"))
        assert (await view(gate, "pack_buyer"))["credits"][0]["balance"] == 2_000_000
        assert session in await store_text(database)

        erased = await erase(gate, "pack_buyer", actor="privacy-desk")
        pseudonym = erased["pseudonym"]
        text = await store_text(database)
        assert session not in text and customer not in text
        (grant_id,) = [r[0] for r in await rows(database, "SELECT grant_id FROM credit_grants WHERE subject = ?",
                                                  pseudonym)]
        assert grant_id.startswith("cs_erased") and grant_id.endswith(":0")
        (payload,) = [r[0] for r in await rows(database, "SELECT payload FROM subscription_events")]
        assert grant_id.split(":")[0] in payload
        assert (await view(gate, pseudonym))["credits"][0]["balance"] == 2_000_000


class TestPendingEvents:
    async def test_a_dispute_adopted_after_the_erasure_keeps_nothing_of_the_person(self, start_gate, database):
        """The dispute of a charge the gate has not seen waits (no STRIPE_SECRET_KEY), linked to no one: the
        erasure cannot know it is the subject's. The charge arrives after the erasure (its customer kept: the
        subscription is live) and lands on the pseudonym, concealed; the dispute it links is adopted there, and
        reduced as the erasure reduced the subject's other events: its evidence (name, email) goes."""
        gate = await start_gate(**ENV)
        life = Lifecycle("user_late", time.time() - 80 * DAY, 42)
        events = life.until_live()
        charge = next(e for e in events if e["type"] == "charge.succeeded" and e["data"]["object"]["id"].endswith("d"))
        disputed = next(e for e in events if e["type"] == "charge.dispute.created")
        for evt in events:
            if evt is not charge and evt is not disputed:
                await deliver(gate, evt)
        _, answer = await deliver(gate, disputed)
        assert (answer["outcome"], answer["subject"]) == ("pending", None)
        erased = await erase(gate, "user_late")
        assert erased["stripe_ids_kept"] is True
        _, answer = await deliver(gate, charge)
        assert answer["subject"] == erased["pseudonym"]
        (adopted,) = await rows(database, "SELECT subject, outcome FROM subscription_events WHERE event_id = ?",
                                disputed["id"])
        assert adopted[0] == erased["pseudonym"] and adopted[1] != "pending"
        assert not found(await store_text(database), life.person.needles() + ["user_late"])

    @pytest.mark.parametrize("ended", [True, False])
    async def test_a_dispute_of_the_subjects_stale_charge_keeps_nothing_of_the_person(self, start_gate, database,
                                                                                     ended):
        """The subject's charge.succeeded came after an admin's change: recorded stale, its charge is linked to the
        subject all the same, so the dispute of that charge (which names nothing else) is the subject's, and the
        erasure reduces it with the subject's other events: its evidence (the person's name and email) goes, and
        its charge and payment intent after the subscription has ended. While the subscription is live the ids
        stay, until retention drops them once it ends."""
        gate = await start_gate(**ENV)
        life = Lifecycle("user_dispute", time.time() - 80 * DAY, 41)
        events = life.events() if ended else life.until_live()
        charge = next(e for e in events if e["type"] == "charge.succeeded" and e["data"]["object"]["id"].endswith("d"))
        disputed = next(e for e in events if e["type"] == "charge.dispute.created")
        for evt in events:
            if evt is not charge and evt is not disputed:
                await deliver(gate, evt)
        change = {"action": "close_account", "reason": "x"} if ended else {"to": "billing_problem", "reason": "x"}
        assert (await gate.post("/v1/subjects/user_dispute/transition", change))[0] == 200
        assert (await deliver(gate, charge))[1]["outcome"] == "stale"
        _, answer = await deliver(gate, disputed)
        assert (answer["outcome"], answer["subject"]) == ("stale", "user_dispute")
        ids = [life.customer, life.subscription, f"ch_Pii{life.n:05d}d", f"pi_Pii{life.n:05d}d", f"dp_Pii{life.n:05d}"]
        assert found(await store_text(database), ids) == ids

        erased = await erase(gate, "user_dispute")
        assert erased["stripe_ids_kept"] is not ended
        text = await store_text(database)
        assert not found(text, life.person.needles() + ["user_dispute"])
        assert found(text, ids) == ([] if ended else ids)
        assert await rows(database, "SELECT subject FROM subscription_events WHERE event_id = ?", disputed["id"]) == \
            [(erased["pseudonym"],)]
        if not ended:       # the subscription ends: retention drops the ids, the waiting dispute's with the others
            await deliver(gate, life.events()[-1])
            assert (await gate.post("/v1/jobs/cleanup"))[1]["result"][3] == 1
            assert not found(await store_text(database), ids)
