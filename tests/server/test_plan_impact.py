"""plangate diff --database: what a plan change does to the subjects stored there, on both stores."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from plangate.cli import main
from tests import postgres
from tests.plan_change import V1, WITHOUT_BILLING_PROBLEM, edited, lowered_pro

from . import stripe_events as se
from .conftest import ROOT
from .test_plan_change import DAY, Rig


@pytest.fixture(params=["sqlite", "postgresql"])
def stored(request, tmp_path):
    """A store with: ann and bob on pro (4000 and 100 requests used this period), cat in billing_problem, dan in
    grace (a running timer). Yields (store address, folder)."""
    if request.param == "postgresql":
        url = asyncio.run(postgres.create_database())
    else:
        url = str(tmp_path / "gate.sqlite3")

    async def fill():
        rig = Rig(tmp_path, url)
        gate = await rig.start(V1)
        try:
            for name, used in (("ann", 4000), ("bob", 100)):
                await rig.subscribe(name)
                assert (await gate.consume(name, used))[0] == 200
            await rig.move("cat", "billing_problem")
            await rig.subscribe("dan")
            await rig.move("dan", "grace")
        finally:
            await rig.stop()

    asyncio.run(fill())
    yield url, tmp_path
    if request.param == "postgresql":
        asyncio.run(postgres.drop_database(url))


def diff(folder, new_text: str, *args) -> list[str]:
    old, new = folder / "old.yaml", folder / "new.yaml"
    old.write_text(V1)
    new.write_text(new_text)
    return [str(old), str(new), *args]


class TestImpact:
    def test_a_lowered_quota_counts_who_is_over_it_now(self, stored, capsys):
        url, folder = stored
        assert main(["diff", *diff(folder, lowered_pro("now"), "--database", url)]) == 0
        out = capsys.readouterr().out
        assert ("tier 'pro': requests quota lowered, 5000 per billing period -> 3000 per billing period; existing "
                "subscribers get it now: 3 subject(s), 1 over the new limit of 3000 right now") in out
        assert "4 stored subject(s) in all" in out

    def test_a_window_made_longer_counts_who_is_over_it_now(self, stored, capsys):
        """5000 for ever instead of 5000 each billing period: lowered, though the limit is the same."""
        url, folder = stored
        forever = edited(("requests: {limit: 5000, per: billing_period}", "requests: {limit: 5000, per: lifetime}"))
        assert main(["diff", *diff(folder, forever, "--database", url)]) == 0
        out = capsys.readouterr().out
        change = "tier 'pro': requests window 5000 per billing period -> 5000 per lifetime; existing subscribers get it now"
        assert f"[lowered] {change}\n" in out
        assert f"  {change}: 3 subject(s), 0 over the new limit of 5000 right now\n" in out

    def test_kept_subscribers_are_said_to_keep_the_old_quota(self, stored, capsys):
        url, folder = stored
        assert main(["diff", *diff(folder, lowered_pro("never"), "--database", url, "--format", "json")]) == 0
        body = json.loads(capsys.readouterr().out)
        (row,) = [i for i in body["impact"] if "over the new limit" in i["message"]]
        assert (row["subjects"], row["over_limit"]) == (3, 1) and "they keep the old quota (never)" in row["message"]
        assert row["message"].split(": ")[-1].startswith("3 subject(s), 1 over")      # the figures the text says

    def test_stranded_subjects_fail_and_an_empty_removed_status_does_not(self, stored, capsys):
        url, folder = stored
        assert main(["diff", *diff(folder, edited(*WITHOUT_BILLING_PROBLEM), "--database", url)]) == 1
        out = capsys.readouterr().out
        assert "[stranded] status 'billing_problem': 1 stored subject(s) would be stranded" in out
        # nobody is in trial: without a store the removal fails (anyone in it would be stranded), with it not
        without_trial = edited(("  trial:\n    expires_after: 7d\n    quotas:\n      requests: {limit: 500, per: day}\n",
                                ""), ("stripe:checkout.session.completed\n    to: trial", "stripe:checkout.session.completed\n    to: paid"),
                               ("[free, canceled, trial]", "[free, canceled]"), ("  - from: trial\n    on: stripe:invoice.paid\n"
                                                                                "    to: paid\n  - from: trial\n    on: timer\n"
                                                                                "    to: billing_problem\n", ""),
                               ("[trial, paid, grace, billing_problem]", "[paid, grace, billing_problem]"))
        assert main(["diff", *diff(folder, without_trial)]) == 1
        assert main(["diff", *diff(folder, without_trial, "--database", url)]) == 0

    def test_whose_timers_change(self, stored, capsys):
        url, folder = stored
        main(["diff", *diff(folder, edited(("expires_after: 3d", "expires_after: 5d")), "--database", url)])
        assert ("status 'grace': timer 3d -> 5d: 1 of 1 subject(s) have a running timer; running timers keep their "
                "due time, the new one applies to subjects entering the status") in capsys.readouterr().out
        main(["diff", *diff(folder, edited(("expires_after: 3d", "expires_after: 5d")), "--database", url,
                            "--format", "json")])
        (row,) = [i for i in json.loads(capsys.readouterr().out)["impact"] if "timer" in i["message"]]
        assert (row["subjects"], row["running_timers"]) == (1, 1) and "over_limit" not in row

    def test_a_missing_store_is_a_usage_error(self, tmp_path, capsys):
        assert main(["diff", *diff(tmp_path, V1, "--database", str(tmp_path / "nope.sqlite3"))]) == 2
        assert "no such SQLite file" in capsys.readouterr().err


def test_without_the_server_extra_database_says_what_to_install(tmp_path):
    """A core install has no store: --database says to install plangate[server] (simulated by hiding it)."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(V1)
    new.write_text(V1)
    hidden = ("aiohttp", "orjson", "stripe", "asyncpg", "aiocron", "cachetools")     # the server extra's
    code = (f"import sys; sys.modules.update(dict.fromkeys({hidden!r})); from plangate.cli import main; "
            f"sys.exit(main(['diff', {str(old)!r}, {str(new)!r}, '--database', 'x.sqlite3']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pip install 'plangate[server]'" in done.stderr


def test_a_tiers_lost_feature_reaches_only_subjects_in_statuses_that_grant_the_tiers_features():
    """examples/saas: paid and past_due grant the tier's features, free and ended do not; a subject stored
    without a tier has the default tier (pro)."""
    from plangate.policy import check_text
    from plangate.policy._diff import diff as plan_diff
    from plangate.server.plan_impact import reached
    from plangate.server.store._plans import Census

    text = (ROOT / "examples" / "saas" / "plans.yaml").read_text(encoding="utf-8")
    old = check_text(text, "old.yaml").plan
    new = check_text(text.replace("    features: [custom_domain]\n", "    features: []\n", 1), "new.yaml").plan
    (change,) = [c for c in plan_diff(old, new).changes if c.tiers == ("pro",)]
    census = Census((("paid", "pro", "v", 3), ("past_due", None, "v", 2), ("free", "pro", "v", 7),
                     ("ended", None, "v", 11), ("paid", "team", "v", 5)))
    assert reached(census, old, change) == 3 + 2


def test_a_lowered_quota_per_seat_counts_each_subjects_own_limit(tmp_path, capsys):
    """A quota per seat lowered from 5000 to 3000 a seat: ann (3 seats, 4000 used) is under her new 9000, bob
    (1 seat, 4000 used) is over his 3000. Every subject was held to the bare 3000, and ann counted as over."""
    per_seat = V1.replace("requests: {limit: 5000, per: billing_period}",
                          "requests: {limit: 5000, per: billing_period, per_unit: quantity}")
    url = str(tmp_path / "gate.sqlite3")

    async def fill():
        rig = Rig(tmp_path, url)
        gate = await rig.start(per_seat)
        try:
            for n, (name, seats) in enumerate((("ann", 3), ("bob", 1))):
                sub = se.subscription("active", name, sub_id=f"sub_seat{n}", customer=f"cus_seat{n}",
                                      start=time.time() - 10 * DAY, end=time.time() + 20 * DAY, price="price_pro")
                sub["items"]["data"][0]["quantity"] = seats
                assert (await rig.webhook("customer.subscription.created", sub))["status"] == "paid"
                assert (await gate.consume(name, 4000))[1]["counted"] is True
        finally:
            await rig.stop()

    asyncio.run(fill())
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(per_seat)
    new.write_text(per_seat.replace("limit: 5000", "limit: 3000"))
    assert main(["diff", str(old), str(new), "--database", url]) == 0
    assert "2 subject(s), 1 over the new limit of 3000 right now" in capsys.readouterr().out
