"""The console with a million subjects: the subject page and the subjects-per-status count, against the bare
aiohttp JSON endpoint in the same run.

What it measures (issue 20, "the console stays fast with a million subjects"): a real `plangate serve` over a
SQLite file of `--subjects` subjects (each with a transition and a Stripe event, so that the per-subject indexes
of those tables hold a million rows too), read one request at a time over one kept-alive connection:
`GET /console/subjects/{id}` (the page: the subject, its usage, its last 50 events and transitions), the same
data as JSON (`GET /v1/subjects/{id}`), the lookup of a Stripe customer id (`GET /v1/find`), a page of the
webhook log (`GET /v1/events`), and the subjects per status (`GET /v1/statuses`, and the console's plan page,
which draws them). The baseline is `POST /v1/check` on the bare aiohttp endpoint (bench/_harness.py), timed the
same way and interleaved with the others. Ratios are median / baseline median: lower is better.

    python -m bench.console [--subjects 1000000] [--runs 200]

`main()` prints a table and returns its rows (a list of dicts) for the bench runner.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench._harness import migrate_sqlite, start_bare, start_gate  # noqa: E402
from plangate.engine import compile_file  # noqa: E402

DAY = 86400.0
TOKEN, ADMIN = "bench-api-token-0123456789", "bench-admin-token-0123456789"
QUIET = {f"PLANGATE_{job}_SCHEDULE": "0 0 1 1 *" for job in ("SWEEP", "RECONCILE", "CLEANUP", "OVERAGE_REPORT")}
# Goals: a page a person waits for. The subject page within 20 ms (median); the counts, a read of every
# subject, within 1 s at a million.
GOALS_MS = {"subject page": 20.0, "census read (every subject)": 1000.0}


def populate(path: Path, count: int, plan_version: str, seed: int = 20) -> float:
    started = time.perf_counter()

    migrate_sqlite(path)
    rng, now = random.Random(seed), time.time()
    statuses = ("paid", "limited_free_trial", "paid_trial", "grace_period", "canceled")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        rows = []
        for i in range(count):
            status = statuses[min(int(rng.random() ** 2 * len(statuses)), len(statuses) - 1)]
            since = now - rng.uniform(DAY, 300 * DAY)
            stripe = status != "limited_free_trial"
            rows.append((f"user-{i:08d}", status, "pro" if stripe else None, since, None,
                         now - 10 * DAY if stripe else None, now + 20 * DAY if stripe else None, plan_version,
                         f"cus_{i:08d}" if stripe else None, f"sub_{i:08d}" if stripe else None, 1, since))
            if len(rows) == 50_000 or i == count - 1:
                db.executemany("INSERT INTO subscriptions (subject, status, tier, since, timer_due, period_start, "
                               "period_end, plan_version, stripe_customer, stripe_subscription, version, "
                               "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.executemany("INSERT INTO transitions (subject, from_status, to_status, trigger, reason, at, "
                               "plan_version) VALUES (?, 'limited_free_trial', ?, 'stripe:checkout.session."
                               "completed', 'bench', ?, ?)", [(r[0], r[1], r[3], plan_version) for r in rows])
                db.executemany("INSERT INTO subscription_events (event_id, type, created, subject, payload, outcome, "
                               "received_at, stripe_customer, stripe_subscription) VALUES (?, 'customer."
                               "subscription.created', ?, ?, '{}', 'applied', ?, ?, ?)",
                               [(f"evt_{r[0]}", r[3], r[0], r[3], r[8], r[9]) for r in rows])
                db.executemany("INSERT INTO stripe_links (stripe_id, subject) VALUES (?, ?)",
                               [(r[9], r[0]) for r in rows if r[9]])
                rows.clear()
        db.execute("COMMIT")
        db.execute("ANALYZE")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return time.perf_counter() - started


async def _login(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url + "/console/login") as r:
        page = await r.text()
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    async with session.post(url + "/console/login", data={"csrf": csrf, "label": "bench", "token": ADMIN},
                            allow_redirects=False) as r:
        if r.status != 303:
            raise RuntimeError(f"console login answered {r.status}")


async def _measure(gate_url: str, bare_url: str, count: int, runs: int) -> dict[str, list[float]]:
    rng = random.Random(7)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    check = json.dumps({"subject": "bench-check-0", "meter": "requests"}).encode()
    samples: dict[str, list[float]] = {}
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        await _login(session, gate_url)

        async def timed(name: str, method: str, url: str, **kw) -> None:
            started = time.perf_counter()
            async with session.request(method, url, allow_redirects=False, **kw) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{name}: {r.status} {await r.text()}")
            samples.setdefault(name, []).append((time.perf_counter() - started) * 1000)

        for i in range(runs):
            n = rng.randrange(count)
            subject, customer = f"user-{n:08d}", f"cus_{rng.randrange(count):08d}"
            await timed("baseline: bare POST /v1/check", "POST", bare_url + "/v1/check", data=check)
            await timed("subject page", "GET", f"{gate_url}/console/subjects/{subject}")
            await timed("GET /v1/subjects/{id}", "GET", f"{gate_url}/v1/subjects/{subject}", headers=auth)
            await timed("GET /v1/events (a page of 50)", "GET", f"{gate_url}/v1/events?limit=50", headers=auth)
            try:
                await timed("GET /v1/find (a customer id)", "GET", f"{gate_url}/v1/find?stripe_id={customer}",
                            headers=auth)
            except RuntimeError:
                pass    # a free-trial subject has no customer: a 404, not timed
            if i % 10 == 0:     # answered from a census read at most every few seconds, shared by every caller
                await timed("status counts (shared read)", "GET", f"{gate_url}/v1/statuses", headers=auth)
                await timed("plan page (draws the counts)", "GET", f"{gate_url}/console/plan")
    return samples


async def _census_reads(database: Path, reads: int) -> list[float]:
    """The read behind the counts, cold each time (the routes share one every few seconds, so they seldom show
    it): the store's census on the same file, in this process."""
    from plangate.server.store import SQLiteStore

    store = SQLiteStore(str(database))
    await store.open()
    try:
        times = []
        for _ in range(reads):
            started = time.perf_counter()
            await store.census()
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        await store.close()


def measure(count: int, runs: int) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="plangate-bench-console-"))
    table = compile_file(str(ROOT / "plans.yaml"))
    database = folder / "console.sqlite3"
    fill = populate(database, count, table.version)
    gate = start_gate("gate", folder, PLANGATE_DATABASE=str(database), PLANGATE_API_TOKEN=TOKEN,
                      PLANGATE_ADMIN_TOKEN=ADMIN, PLANGATE_PLANS=str(ROOT / "plans.yaml"), **QUIET)
    bare = start_bare(folder, uvloop=True)
    try:
        samples = asyncio.run(_measure(gate.url, bare.url, count, runs))
    finally:
        gate.stop()
        bare.stop()
    samples["census read (every subject)"] = asyncio.run(_census_reads(database, 5))
    base = statistics.median(samples.pop("baseline: bare POST /v1/check"))
    rows = []
    for name, values in samples.items():
        ordered = sorted(values)
        median = statistics.median(ordered)
        goal = GOALS_MS.get(name)
        rows.append({"bench": "console", "what": name, "subjects": count, "runs": len(values),
                     "median_ms": round(median, 2), "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
                     "baseline_ms": round(base, 3), "ratio": round(median / base, 1),
                     "goal_ms": goal, "ok": None if goal is None else median < goal, "fill_s": round(fill, 1)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=1_000_000, help="subjects in the store (default 1M)")
    parser.add_argument("--runs", type=int, default=200, help="subject pages read (default 200)")
    args = parser.parse_args([] if argv is None else argv)
    rows = measure(max(10, args.subjects), max(10, args.runs))
    print(f"{'':<36}{'median ms':>10}{'p90 ms':>10}{'x bare':>8}  goal")
    for r in rows:
        goal = f"< {r['goal_ms']:g} ms {'met' if r['ok'] else 'NOT met'}" if r["goal_ms"] else ""
        print(f"{r['what']:<36}{r['median_ms']:>10.2f}{r['p90_ms']:>10.2f}{r['ratio']:>8.1f}  {goal}")
    print(f"baseline (bare POST /v1/check): {rows[0]['baseline_ms']} ms median; {rows[0]['subjects']} subjects, "
          f"filled in {rows[0]['fill_s']} s")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
