"""The timer sweep (`Gate.sweep`) over a SQLite store of many subjects, a thousand of them due.

What it measures (issue 5, "Speed"): the sweep job's one batch, `Gate.sweep(1000)`: the due rows read
through the timer index (`store.due`), the engine firing each timer, and the new states and audit rows
committed (in transactions of server.gate.SWEEP_CHUNK subjects), on a gate built as server/app.py builds it
(shipped plans.yaml, a real SQLite file in WAL mode, INFO logs written as `plangate serve` writes them, here
to a file). Goal: under 50 ms with a million subjects and a thousand due.

The store is created by SQLiteStore.migrate() and then filled fast with sqlite3 executemany: most
subjects paid (no timer) or on the free trial, some in a paid trial or in grace with a timer in the
future, and `--due` of them (paid_trial and grace_period, half each) with a timer in the past. Each
run sweeps the same due rows; they are re-armed (status and timer restored) between runs. The
baseline is the same number of due rows read with one plain indexed SELECT through sqlite3, in the
same run, interleaved with the sweeps. Run at two store sizes (100k and 1M subjects by default), the
due count fixed, the runs interleaved between them: the time follows the number due, not the number of
subjects. The time of the sweep's two store calls (the due rows read, the batch committed) is shown too;
the rest is the engine, building the changes, cache and metrics, and a log line per transition.

    python -m bench.sweep [--subjects 100000,1000000] [--due 1000] [--runs 15]

`main()` prints a table and returns its rows (a list of dicts) for the bench runner.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
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

from plangate.engine import compile_file  # noqa: E402
from plangate.server.config import Config  # noqa: E402
from plangate.server.gate import Gate  # noqa: E402
from plangate.server.logs import LOGGER_NAME, configure  # noqa: E402
from plangate.server.metrics import Metrics  # noqa: E402
from plangate.server.store import SQLiteStore  # noqa: E402
from bench._columns import columns  # noqa: E402
from bench._harness import migrate_sqlite  # noqa: E402

GOAL_MS = 50.0
DAY = 86400.0
TIME_LIMIT = 600.0           # seconds for the whole bench; a run past it stops with an error
_DUE_STATUSES = ("paid_trial", "grace_period")
_COLUMNS = ("subject, status, tier, since, timer_due, period_start, period_end, plan_version, paid_through, "
            "stripe_customer, stripe_subscription, version, stripe_watermark, confirmed_at, updated_at")
_BASELINE_SQL = ("SELECT subject, status, tier, since, timer_due, period_start, period_end, plan_version, "
                 "paid_through, stripe_customer, stripe_subscription, version, stripe_watermark, confirmed_at "
                 "FROM subscriptions WHERE timer_due <= ? ORDER BY timer_due LIMIT ?")


def _rows(count: int, due: int, now: float, plan_version: str, seed: int = 5):
    """Subscriptions rows: `due` of them (spread over the table) with a timer in the past."""
    rng = random.Random(seed)
    step = count // due
    for i in range(count):
        subject = f"user-{i:08d}"
        if i % step == 0 and i // step < due:
            status = _DUE_STATUSES[(i // step) % 2]
            timer_due = now - rng.uniform(60, DAY)
            since = timer_due - (7 * DAY if status == "paid_trial" else 3 * DAY)
        else:
            pick = rng.random()
            if pick < 0.55:
                status, timer_due = "paid", None
            elif pick < 0.85:
                status, timer_due = "limited_free_trial", None
            elif pick < 0.95:
                status, timer_due = "paid_trial", now + rng.uniform(60, 7 * DAY)
            else:
                status, timer_due = "grace_period", now + rng.uniform(60, 3 * DAY)
            since = now - rng.uniform(DAY, 300 * DAY)
        stripe = status != "limited_free_trial"
        yield (subject, status, "pro" if stripe else None, since, timer_due,
               now - 10 * DAY if stripe else None, now + 20 * DAY if stripe else None, plan_version,
               now - 10 * DAY if status == "grace_period" else None,
               f"cus_{i:08d}" if stripe else None, f"sub_{i:08d}" if stripe else None, 1,
               since if stripe else None, since, since)


def populate(path: Path, count: int, due: int, now: float, plan_version: str) -> tuple[float, list[tuple]]:
    """Create the store (migrations) and bulk-insert `count` subjects; (seconds, the due rows' re-arm values)."""
    started = time.perf_counter()
    migrate_sqlite(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        marks = ", ".join("?" for _ in _COLUMNS.split(", "))
        db.executemany(f"INSERT INTO subscriptions ({_COLUMNS}) VALUES ({marks})",
                       _rows(count, due, now, plan_version))
        db.execute("COMMIT")
        db.execute("ANALYZE")
        rearm = db.execute("SELECT status, since, timer_due, subject FROM subscriptions WHERE timer_due <= ?",
                           (now,)).fetchall()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    if len(rearm) != due:
        raise RuntimeError(f"expected {due} due rows, found {len(rearm)}")
    return time.perf_counter() - started, rearm


def _check_index(db: sqlite3.Connection, now: float, due: int) -> str:
    plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + _BASELINE_SQL, (now, due)))
    if "subscriptions_by_timer" not in plan:
        raise RuntimeError(f"the due query does not use the timer index: {plan}")
    return plan


class _Store:
    """One store size: its gate (as server/app.py builds it), a plain connection for the baseline, figures."""

    def __init__(self, path: Path, table, due: int, rearm: list[tuple]):
        self.path, self.table, self.due, self.rearm = path, table, due, rearm
        self.sweeps: list[float] = []
        self.baselines: list[float] = []
        self.parts: list[tuple[float, float, float]] = []
        self.phases: dict[str, float] = {}

    async def open(self) -> None:
        config = Config(enabled=True, database=str(self.path))
        self.store = SQLiteStore(config.database, config.sqlite_synchronous)
        await self.store.open()
        self.gate = Gate(config, self.table, self.store, Metrics())
        for name in ("due", "commit_batch"):            # where a sweep's time goes: its two store calls
            setattr(self.store, name, _timed_call(getattr(self.store, name), name, self.phases))
        self.plain = sqlite3.connect(self.path, isolation_level=None)
        self.plan = _check_index(self.plain, time.time(), self.due)

    async def close(self) -> None:
        self.plain.close()
        await self.store.close()

    async def run(self, counted: bool) -> None:
        """The baseline SELECT, one sweep, checks, and the timers re-armed."""
        due, plain = self.due, self.plain
        started = time.perf_counter()
        found = plain.execute(_BASELINE_SQL, (time.time(), due)).fetchall()
        baseline = time.perf_counter() - started
        if len(found) != due:
            raise RuntimeError(f"baseline: {len(found)} due rows, expected {due}")

        self.phases.clear()
        started = time.perf_counter()
        swept, moved = await self.gate.sweep(due)
        elapsed = time.perf_counter() - started
        if (swept, moved) != (due, due):
            raise RuntimeError(f"sweep: found {swept} due and moved {moved}, expected {due} and {due}")
        left = plain.execute("SELECT COUNT(*) FROM subscriptions WHERE timer_due <= ?", (time.time(),)).fetchone()
        if left[0]:
            raise RuntimeError(f"sweep: {left[0]} timers still due after the sweep")

        plain.execute("BEGIN IMMEDIATE")                     # re-arm the same timers for the next run
        plain.executemany("UPDATE subscriptions SET status = ?, since = ?, timer_due = ? WHERE subject = ?",
                          self.rearm)
        plain.execute("COMMIT")
        if counted:
            self.sweeps.append(elapsed * 1000)
            self.baselines.append(baseline * 1000)
            self.parts.append((self.phases["due"] * 1000, self.phases["commit_batch"] * 1000,
                               (elapsed - self.phases["due"] - self.phases["commit_batch"]) * 1000))

    def figures(self) -> dict:
        sweeps, baselines, parts = self.sweeps, self.baselines, self.parts
        return {"sweep_best_ms": round(min(sweeps), 2), "sweep_median_ms": round(statistics.median(sweeps), 2),
                "baseline_best_ms": round(min(baselines), 2),
                "baseline_median_ms": round(statistics.median(baselines), 2),
                "ratio": round(statistics.median(sweeps) / statistics.median(baselines), 1),
                "due_median_ms": round(statistics.median(p[0] for p in parts), 2),
                "commit_batch_median_ms": round(statistics.median(p[1] for p in parts), 2),
                "engine_and_logs_median_ms": round(statistics.median(p[2] for p in parts), 2), "index": self.plan}


async def _measure(stores: list[_Store], runs: int, deadline: float) -> None:
    """Runs interleaved between the store sizes, so that the machine's other work weighs on each alike."""
    try:
        for s in stores:
            await s.open()
        for n in range(runs + 1):                            # run 0 warms the caches and is not counted
            for s in stores:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench.sweep: over its time limit of {TIME_LIMIT:.0f}s")
                await s.run(counted=n > 0)
    finally:
        for s in stores:
            if hasattr(s, "plain"):
                await s.close()


def _timed_call(method, name: str, into: dict):
    async def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:    # summed: a sweep commits its batch in chunks (Gate.sweep, SWEEP_CHUNK)
            into[name] = into.get(name, 0.0) + time.perf_counter() - started
    return timed


def measure(sizes: list[int], due: int, runs: int) -> list[dict]:
    table = compile_file(ROOT / "plans.yaml")
    deadline = time.monotonic() + TIME_LIMIT
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    with tempfile.TemporaryDirectory(prefix="plangate-bench-sweep-") as tmp:
        folder = Path(tmp)
        stores = []
        for count in sizes:
            path = folder / f"gate-{count}.sqlite3"
            seconds, rearm = populate(path, count, due, time.time(), table.version)
            print(f"sweep: {count:,} subjects ({due:,} due) stored in {seconds:.1f}s "
                  f"({path.stat().st_size / 1e6:.0f} MB)", flush=True)
            stores.append(_Store(path, table, due, rearm))
        os.sync()                   # the bulk load's dirty pages on disk before timing, not during
        with open(folder / "gate.log", "w") as log_file:
            configure("INFO", stream=log_file)              # the server's logging, to a file
            try:
                asyncio.run(_measure(stores, runs, deadline))
            finally:
                logger.handlers[:] = saved[0]
                logger.setLevel(saved[1])
                logger.propagate = saved[2]
    return [{"subjects": count, "due": due, "runs": runs, **s.figures(), "goal_ms": GOAL_MS,
             "met": s.figures()["sweep_median_ms"] < GOAL_MS} for count, s in zip(sizes, stores)]


def print_table(rows: list[dict], out=sys.stdout) -> None:
    head = ("subjects", "due", "sweep best/median ms", "SELECT best/median ms", "ratio", "goal", "")
    lines = [head] + [(f"{r['subjects']:,}", f"{r['due']:,}", f"{r['sweep_best_ms']:.1f}/{r['sweep_median_ms']:.1f}",
                       f"{r['baseline_best_ms']:.2f}/{r['baseline_median_ms']:.2f}", f"{r['ratio']:.0f}x",
                       f"<{r['goal_ms']:g}ms", "met" if r["met"] else "NOT met") for r in rows]
    print(columns(lines), file=out)
    for r in rows:
        print(f"{r['subjects']:,} subjects, medians: due rows read {r['due_median_ms']:.1f} ms, commit_batch "
              f"{r['commit_batch_median_ms']:.1f} ms, "
              f"engine, logs and the rest {r['engine_and_logs_median_ms']:.1f} ms",
              file=out)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"{b['subjects'] / a['subjects']:.0f}x the subjects, same number due: sweep median "
              f"x{b['sweep_median_ms'] / a['sweep_median_ms']:.2f}", file=out)
    if rows:
        print(f"due rows read through: {rows[0]['index']}", file=out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", default=os.environ.get("PLANGATE_BENCH_SWEEP_SUBJECTS", "100000,1000000"),
                        help="store sizes, comma-separated (default: $PLANGATE_BENCH_SWEEP_SUBJECTS, else "
                             "100000,1000000)")
    parser.add_argument("--due", type=int, default=1000, help="due timers (and the sweep's batch size)")
    parser.add_argument("--runs", type=int, default=15, help="measured sweeps per store size (after one warm-up)")
    args = parser.parse_args([] if argv is None else argv)
    sizes = [int(s.replace("_", "")) for s in args.subjects.split(",") if s.strip()]
    if any(s < args.due * 2 for s in sizes):
        parser.error("every store size needs at least twice as many subjects as are due")
    rows = measure(sizes, args.due, max(1, args.runs))
    print_table(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
