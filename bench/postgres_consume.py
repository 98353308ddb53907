"""`/v1/consume` on PostgreSQL on one, two and three gate nodes, against the one-upsert floor, SQLite and a bare
aiohttp endpoint in the same run; `/v1/check` on PostgreSQL; and how long a transition made on one node takes
to show on the other.

What it measures (issues 6 and 18):

- Durable consume throughput (one unique idempotency key per request, many subjects, the shipped plan with
  the initial status's quotas raised out of reach) on: the harness's bare aiohttp endpoint (bench/_harness.py); the
  one-upsert floor (bench/_floor.py: aiohttp + uvloop + orjson + asyncpg, one durable INSERT ... ON CONFLICT
  DO UPDATE ... RETURNING per request, the least a gate counting in PostgreSQL can do on this stack); one gate
  on SQLite; and one, two and three gates (each a `plangate serve` process of its own) on the same PostgreSQL
  database, the load split evenly across them (one load generator per node, at once). Consume on one
  PostgreSQL node is held to the floor (>= 1.0), two and three nodes to one node (>= 1.0: on two cores the
  machine is the limit, so the CPU per request says what more cores would give). Warm-up, then measured runs
  interleaved, the best of each counts.
- `/v1/check` on one PostgreSQL node, warm cache (the harness's few subjects), against the bare endpoint's
  check (>= 0.7): the node answers from the usage it holds (every count is pushed to it), with no fail-mode
  answer and no store error.
- Where the time goes, for each run: the CPU time per request of the gate process(es) and of PostgreSQL (the
  backends of the bench's database and the server's shared processes, not other databases' backends: other
  tests share the server), from /proc; how busy the whole machine was; and, on PostgreSQL, the store round
  trips (statements sent by asyncpg, BEGIN/COMMIT included) and transactions per request (every backend's,
  the listeners' deliveries of notifications included). The round trips are counted inside the gate
  processes by asyncpg's public query logger on each of their connections (`_COUNTING_PRELUDE`), written
  to a file four times a second.
- The cross-node invalidation delay: for N fresh subjects, node B reads the subject (now in its cache,
  whose TTL is PLANGATE_CACHE_TTL, 5 s by default), node A moves it with an admin transition (POST
  /v1/subjects/{s}/transition), and B's /v1/check is polled back to back until it shows the new status.
  The delay counts from A's answer (the transition committed) to B's first answer with the new status.

Servers, load generators and their life cycle are the harness's (real processes on 127.0.0.1, wrk when
on PATH, else a Python aiohttp client). The PostgreSQL database is a fresh one on the server named by
PLANGATE_BENCH_POSTGRES (an admin DSN; default postgresql://postgres@127.0.0.1:5432/postgres), dropped at
the end. Without a reachable server the PostgreSQL rows say so and are not met.

    python -m bench.postgres_consume [--duration 3] [--rounds 2] [--connections 32] [--subjects 2000]
                                     [--samples 200] [--nodes 3] [--generator auto|wrk|python]
                                     [--no-push-usage] [--only bare,floor,postgresql-1,...]

`main()` prints a table and returns its rows (a list of dicts) for the bench runner.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._columns import columns  # noqa: E402
from bench._harness import MAX_REQUESTS, Load, Result, Server, choose_generator, gate_env, gate_troubles  # noqa: E402
from bench._harness import SUBJECTS as WARM_SUBJECTS  # noqa: E402
from bench._harness import percentile, probe, run_python_generator, run_wrk, start_bare, write_plan  # noqa: E402

ADMIN_DSN = os.environ.get("PLANGATE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SUBJECTS = 2000                  # many subjects: consume is not one hot row
SQLITE_RATIO_GOAL = 0.5          # issue 4's consume goal against bare aiohttp
FLOOR_RATIO_GOAL = 1.0           # issue 18: consume on one PostgreSQL node at least as fast as the one-upsert floor
SCALING_GOAL = 1.0               # issue 18: 2 and 3 nodes at least as fast as one
CHECK_RATIO_GOAL = 0.7           # issue 18: check on PostgreSQL against bare aiohttp
INVALIDATION_TIMEOUT = 10.0      # seconds one sample may take before it counts as lost

# asyncpg, counted: every statement a gate process sends, through asyncpg's public query logger (added to each
# connection as it is made: the pool's and the listener's both come from asyncpg.connection.connect).
_COUNTING_PRELUDE = r"""
import sys, threading, time, os
import asyncpg, asyncpg.connection as _c
_n = [0]
def _count(record):
    _n[0] += 1
_connect = _c.connect
async def _counting_connect(*args, **kwargs):
    connection = await _connect(*args, **kwargs)
    connection.add_query_logger(_count)
    return connection
_c.connect = asyncpg.connect = _counting_connect
_path = os.environ["PLANGATE_BENCH_COUNT_FILE"]
def _dump():
    while True:
        with open(_path + ".tmp", "w") as f:
            f.write(str(_n[0]))
        os.replace(_path + ".tmp", _path)
        time.sleep(0.25)
threading.Thread(target=_dump, daemon=True).start()
from plangate.cli import main
sys.exit(main(sys.argv[1:]))
"""


# --- PostgreSQL ----------------------------------------------------------------------------------

async def _pg(sql: str, *args, dsn: str = ADMIN_DSN, fetch: bool = False):
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetch(sql, *args) if fetch else await conn.execute(sql, *args)
    finally:
        await conn.close()


def create_database() -> str:
    name = f"plangate_bench_{secrets.token_hex(6)}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


def drop_database(dsn: str) -> None:
    try:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[-1]}" WITH (FORCE)'))
    except Exception as exc:  # noqa: BLE001 - cleanup: say so, do not hide the figures
        print(f"postgres_consume: could not drop {dsn.rsplit('/', 1)[-1]}: {exc}", file=sys.stderr)


def pg_xacts(dsn: str) -> int:
    time.sleep(1.1)     # backends flush their statistics at most once a second (PostgreSQL 15+)
    rows = asyncio.run(_pg("SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1",
                           dsn.rsplit("/", 1)[-1], fetch=True))
    return int(rows[0]["n"]) if rows else 0


# --- CPU from /proc --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def postgres_cpu(database: str | None = None) -> dict[int, float]:
    """CPU seconds so far of the PostgreSQL server processes on this machine: with `database`, its backends and
    the cluster's shared ones (WAL writer, checkpointer, ...), not the backends of other databases (other
    tests and benches on a shared machine use the same server)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
            except OSError:
                continue
            # A backend's title: "postgres: [cluster:] user database host(port) state"; shared ones have no host.
            backend = any("(" in word and word.startswith(("127.", "[", "::", "/")) for word in title) or \
                "[local]" in title
            if database and backend and database not in title:
                continue
            cpu = _proc_cpu(int(entry.name))
            if cpu is not None:
                found[int(entry.name)] = cpu
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class Meter:
    """CPU of the gate processes and of PostgreSQL, machine load, round trips and transactions over one run."""

    def __init__(self, gates: list[Server], count_files: list[Path], dsn: str | None):
        self.gates, self.count_files, self.dsn = gates, count_files, dsn

    def _round_trips(self) -> int | None:
        if not self.count_files:
            return None
        time.sleep(0.3)                 # the counters are written every 0.25 s
        return sum(int(p.read_text() or 0) for p in self.count_files)

    def __enter__(self):
        self.rt0 = self._round_trips()
        self.x0 = pg_xacts(self.dsn) if self.dsn else None
        self.gate0 = [g.cpu_seconds() for g in self.gates]
        self.database = self.dsn.rsplit("/", 1)[-1] if self.dsn else None
        self.pg0 = postgres_cpu(self.database)
        self.busy0 = machine_busy()
        return self

    def __exit__(self, *exc):
        self.busy1 = machine_busy()
        self.pg1 = postgres_cpu(self.database)
        self.gate1 = [g.cpu_seconds() for g in self.gates]
        self.x1 = pg_xacts(self.dsn) if self.dsn else None
        self.rt1 = self._round_trips()

    def figures(self, requests: int) -> dict:
        n = max(1, requests)
        gate = sum((b or 0) - (a or 0) for a, b in zip(self.gate0, self.gate1))
        pg = sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in self.pg1.items())
        busy, total = (self.busy1[0] - self.busy0[0]), (self.busy1[1] - self.busy0[1])
        out = {"gate_cpu_us": round(gate / n * 1e6, 1), "postgres_cpu_us": round(pg / n * 1e6, 1),
               "machine_busy_pct": round(100 * busy / total, 1) if total else None}
        if self.rt0 is not None and self.rt1 is not None:
            out["round_trips_per_request"] = round((self.rt1 - self.rt0) / n, 2)
        if self.x0 is not None:
            out["pg_xacts_per_request"] = round((self.x1 - self.x0) / n, 2)
        return out


# --- servers -------------------------------------------------------------------------------------

def admin_token(token: str) -> str:
    """The bench gates' admin token (transitions need it), derived from their API token."""
    return f"{token}-admin"


def start_gate(name: str, folder: Path, token: str, database: str, count_file: Path | None = None,
               **settings: str) -> Server:
    """`plangate serve` on `database` (a SQLite path or a PostgreSQL DSN); counted when count_file is given;
    `settings` are more PLANGATE_ variables."""
    env = gate_env(PLANGATE_API_TOKEN=token, PLANGATE_ADMIN_TOKEN=admin_token(token), PLANGATE_DATABASE=database,
                   PLANGATE_PLANS=str(folder / "plans.yaml"), **settings)
    if count_file is not None:
        env["PLANGATE_BENCH_COUNT_FILE"] = str(count_file)
        argv = [sys.executable, "-c", _COUNTING_PRELUDE, "serve", "--env-file", "", "--create-store"]
    else:
        argv = [sys.executable, "-m", "plangate.cli", "serve", "--env-file", "", "--create-store"]
    return Server(name, argv, env, folder)


# --- load ----------------------------------------------------------------------------------------

def _combine(parts: list[Result]) -> Result:
    """Two load generators run at once (one per node): requests add up over the longer run; the latency
    percentiles are the per-node figures averaged, percentile by percentile (the nodes share the load evenly)."""
    if len(parts) == 1:
        return parts[0]
    dist = None
    if all(p.dist for p in parts):
        dist = [[pct, round(statistics.fmean(p.dist[i][1] for p in parts), 3)]
                for i, (pct, _) in enumerate(parts[0].dist)]
    return Result(sum(p.requests for p in parts), max(p.seconds for p in parts), sum(p.errors for p in parts),
                  statistics.fmean(p.p50_ms for p in parts), max(p.p99_ms for p in parts), dist=dist)


# --- the invalidation delay ----------------------------------------------------------------------

async def invalidation_delay(url_a: str, url_b: str, token: str, samples: int) -> dict:
    import aiohttp

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    tag = secrets.token_hex(3)
    delays, lost, polls = [], 0, []
    async with aiohttp.ClientSession(headers=headers) as session:
        async def check(url: str, subject: str) -> str:
            async with session.post(f"{url}/v1/check", json={"subject": subject, "meter": "requests"}) as resp:
                return (await resp.json())["status"]

        for i in range(samples):
            subject = f"inv-{tag}-{i}"
            before = await check(url_b, subject)            # B has it cached now
            before = await check(url_b, subject)
            if before == "canceled":
                raise RuntimeError(f"{subject}: already canceled before the transition")
            async with session.post(f"{url_a}/v1/subjects/{subject}/transition",
                                    json={"to": "canceled", "reason": "bench: invalidation delay"},
                                    headers={"Authorization": f"Bearer {admin_token(token)}"}) as resp:
                moved = await resp.json()
                if resp.status != 200 or moved.get("to") != "canceled":
                    raise RuntimeError(f"node A did not move {subject}: {resp.status} {moved}")
            committed = time.perf_counter()
            n = 0
            while True:
                n += 1
                if await check(url_b, subject) == "canceled":
                    delays.append(time.perf_counter() - committed)
                    polls.append(n)
                    break
                if time.perf_counter() - committed > INVALIDATION_TIMEOUT:
                    lost += 1
                    break
    delays.sort()
    return {"samples": samples, "seen": len(delays), "lost": lost,
            "p50_ms": round(percentile(delays, 50) * 1000, 3), "p99_ms": round(percentile(delays, 99) * 1000, 3),
            "max_ms": round(delays[-1] * 1000, 3) if delays else None,
            "polls_median": statistics.median(polls) if polls else None,
            "delays_ms": [round(d * 1000, 3) for d in delays]}


# --- the benchmark -------------------------------------------------------------------------------

def _verdict(row: dict) -> str:
    """Where the time of one request goes, in words."""
    if row.get("skipped"):
        return row["skipped"]
    gate, pg = row.get("gate_cpu_us") or 0, row.get("postgres_cpu_us") or 0
    busy, what = row.get("machine_busy_pct") or 0, row["endpoint"]
    parts = [f"gate {gate:.0f} us CPU/{what}, PostgreSQL {pg:.0f} us" if row["store"] == "postgresql"
             else f"gate {gate:.0f} us CPU/{what}"]
    if "round_trips_per_request" in row:
        parts.append(f"{row['round_trips_per_request']:.2f} store round trips and "
                     f"{row.get('pg_xacts_per_request', 0):.2f} transactions per {what}")
    parts.append(f"machine {busy:.0f}% busy")
    if row.get("fail_mode_answers") or row.get("store_errors"):
        parts.append(f"{row['store_errors']} store errors and {row['fail_mode_answers']} fail-mode answers over the "
                     "node's life (store calls past PLANGATE_STORE_TIMEOUT, 0.25 s by default, when overloaded)")
    if busy >= 85:
        who = "the gate process" if gate >= pg else "PostgreSQL"
        parts.append(f"CPU-bound on a shared machine; the largest share is {who}'s")
    elif row["nodes"] == 1 and row["store"] == "postgresql":
        parts.append("not CPU-bound: waiting on round trips to PostgreSQL")
    return "; ".join(parts)


# name -> (what it is measured against, the goal on the ratio): every row of the table, in order. A goal of
# None: shown, not held to anything (the floor's own ratio to bare aiohttp says what the database costs).
ROWS = {
    "floor": ("bare", None),
    "sqlite-1": ("bare", SQLITE_RATIO_GOAL),
    "postgresql-1": ("floor", FLOOR_RATIO_GOAL),
    "postgresql-2": ("postgresql-1", SCALING_GOAL),
    "postgresql-3": ("postgresql-1", SCALING_GOAL),
    "postgresql-1-check": ("bare-check", CHECK_RATIO_GOAL),
}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres_consume", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured run (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per setup")
    parser.add_argument("--rounds", type=int, default=2, help="measured runs per setup, interleaved; best counts")
    parser.add_argument("--connections", type=int, default=32, help="in all, split across nodes")
    parser.add_argument("--subjects", type=int, default=SUBJECTS)
    parser.add_argument("--samples", type=int, default=200, help="invalidation delay samples")
    parser.add_argument("--nodes", type=int, default=3, help="most PostgreSQL nodes to measure consume on")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-push-usage", action="store_true",
                        help="PostgreSQL nodes with PLANGATE_PG_PUSH_USAGE=false: counts are not announced, and "
                             "checks read usage from the database (what pushing usage costs a consume)")
    parser.add_argument("--gate-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a PLANGATE_ setting for every PostgreSQL node (repeatable), e.g. PLANGATE_CACHE_TTL=60")
    parser.add_argument("--only", default="", help="comma-separated setups to measure (default all): "
                        "bare, floor, sqlite-1, postgresql-N, bare-check, postgresql-1-check")
    args = parser.parse_args([] if argv is None else argv)
    generator = choose_generator(args.generator)
    print(f"postgres_consume: load generator: {generator}; {args.connections} connections in all, "
          f"{args.subjects} subjects, {args.duration:g}s x {args.rounds} per setup", flush=True)

    token = secrets.token_urlsafe(24)
    rows: list[dict] = []
    dsn, pg_error = None, None
    try:
        dsn = create_database()
    except Exception as exc:  # noqa: BLE001 - no server: the SQLite and bare figures still count
        pg_error = f"PostgreSQL not reachable at {ADMIN_DSN.split('@')[-1]}: {type(exc).__name__}: {exc}"
        print(f"postgres_consume: {pg_error}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="plangate-bench-pg-") as tmp:
        folder = Path(tmp)
        write_plan(folder)
        servers: list[Server] = []
        try:
            setups = _start(folder, token, dsn, args, servers)
            wanted = [n for n in setups if not args.only or n in args.only.split(",")]
            best = _measure(setups, wanted, folder, token, generator, args)
            troubles = {name: _troubles(nodes) for name, (nodes, *_) in setups.items()
                        if name in best and not name.startswith(("bare", "floor"))}
            nodes = setups.get(f"postgresql-{min(2, args.nodes)}", ([],))[0]
            invalidation = (asyncio.run(invalidation_delay(nodes[0].url, nodes[1].url, token, args.samples))
                            if dsn and len(nodes) > 1 and args.samples else None)
        finally:
            for server in reversed(servers):
                server.stop()
            if dsn:
                drop_database(dsn)

    for name, (base, goal) in ROWS.items():
        if name in wanted or name.startswith("postgresql-") and not dsn:
            rows.append(_row(name, base, goal, best, troubles, pg_error, generator, args))
    if invalidation is not None or pg_error:
        rows.append({"what": "cross-node invalidation delay (PostgreSQL NOTIFY)", "store": "postgresql",
                     "nodes": 2, **(invalidation or {"skipped": pg_error}),
                     "goal": "seen on the other node, well under the cache TTL (5 s)",
                     "met": bool(invalidation and not invalidation["lost"] and invalidation["p99_ms"] < 1000)})
    print_table(rows)
    return rows


def _start(folder: Path, token: str, dsn: str | None, args, servers: list[Server]) -> dict:
    """Every server, each a process of its own; name -> (its nodes, their round-trip count files, the
    database its CPU is read from, the endpoint driven)."""
    bare = start_bare(folder, False)
    servers.append(bare)
    sqlite = start_gate("gate-sqlite", folder, token, str(folder / "gate.sqlite3"))
    servers.append(sqlite)
    setups: dict[str, tuple[list[Server], list[Path], str | None, str]] = {
        "bare": ([bare], [], None, "consume"), "sqlite-1": ([sqlite], [], None, "consume")}
    if dsn:
        floor = start_floor(folder, dsn)
        servers.append(floor)
        setups["floor"] = ([floor], [], dsn, "consume")
        counts = [folder / f"count-{i}" for i in range(args.nodes)]
        nodes = []
        for i, count in enumerate(counts):
            settings = dict(pair.split("=", 1) for pair in args.gate_env)
            settings.setdefault("PLANGATE_PG_PUSH_USAGE", "false" if args.no_push_usage else "true")
            nodes.append(start_gate(f"gate-pg-{i}", folder, token, dsn, count, **settings))
            servers.append(nodes[-1])
            setups[f"postgresql-{i + 1}"] = (nodes[:i + 1], counts[:i + 1], dsn, "consume")
        setups["bare-check"] = ([bare], [], None, "check")
        setups["postgresql-1-check"] = ([nodes[0]], counts[:1], dsn, "check")
    for nodes, _, _, endpoint in setups.values():
        for node in nodes:
            probe(node.url, endpoint, token)
    return setups


def _measure(setups: dict, wanted: list[str], folder: Path, token: str, generator: str, args) -> dict:
    """Warm-up, then rounds of measured runs, setups interleaved; the best run (most req/s) of each setup."""
    def measure(name: str, duration: float, tag: str, metered: bool) -> tuple[Result, dict]:
        nodes, count_files, db, endpoint = setups[name]
        shares = [args.connections // len(nodes) + (i < args.connections % len(nodes)) for i in range(len(nodes))]
        loads = [Load(n.url, endpoint, token, share, duration, MAX_REQUESTS // len(nodes),
                      f"{name}-{tag}-{i}-{secrets.token_hex(4)}", _subjects(endpoint, args))
                 for i, (n, share) in enumerate(zip(nodes, shares))]
        run = (lambda load: run_wrk(load, folder)) if generator == "wrk" else run_python_generator
        with Meter(nodes, count_files, db if metered else None) as meter:
            with ThreadPoolExecutor(len(loads)) as pool:
                parts = list(pool.map(run, loads))
        got = _combine(parts)
        return got, meter.figures(got.requests)

    if args.warmup > 0:
        for name in wanted:
            measure(name, args.warmup, "warm", False)
    best: dict[str, tuple[Result, dict]] = {}
    for n in range(max(1, args.rounds)):
        for name in wanted:
            got = measure(name, args.duration, str(n), True)
            print(f"  {name} round {n}: {got[0].rps:.0f} req/s, gate {got[1]['gate_cpu_us']} us, "
                  f"pg {got[1]['postgres_cpu_us']} us, busy {got[1]['machine_busy_pct']}%", flush=True)
            if name not in best or got[0].rps > best[name][0].rps:
                best[name] = got
    return best


def _troubles(nodes: list[Server]) -> dict[str, float]:
    found = [gate_troubles(node.url) for node in nodes]
    return {k: sum(f[k] for f in found) for k in found[0]}


def start_floor(folder: Path, dsn: str) -> Server:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench._floor import serve_floor; "
            f"serve_floor(0, {dsn!r})")
    return Server("floor", [sys.executable, "-c", code], dict(os.environ), folder)


def _subjects(endpoint: str, args) -> int:
    """Consume spreads over many subjects (no hot row); check drives a warm cache, as bench.http_gate's does."""
    return args.subjects if endpoint == "consume" else WARM_SUBJECTS


_NAMES = {"bare": "bare aiohttp", "bare-check": "bare aiohttp", "floor": "the one-upsert floor"}


def _what(name: str) -> str:
    if name == "floor":
        return "/v1/consume, one-upsert floor (aiohttp+uvloop+orjson+asyncpg, one durable upsert a request)"
    store, nodes = name.split("-")[:2]
    endpoint = "check" if name.endswith("-check") else "consume"
    return (f"/v1/{endpoint} on {'SQLite' if store == 'sqlite' else 'PostgreSQL'}, {nodes} node"
            + ("s" if nodes != "1" else ""))


def _row(name: str, base: str, goal: float | None, best: dict, troubles: dict, pg_error: str | None,
         generator: str, args) -> dict:
    """One setup's row against its baseline of the same run. Every held row also needs a clean run (no errors,
    no fail-mode answers, no store errors)."""
    endpoint = "check" if name.endswith("-check") else "consume"
    store, nodes = ("postgresql", "1") if name == "floor" else name.split("-")[:2]
    row = {"what": _what(name), "endpoint": endpoint, "store": store, "nodes": int(nodes), "generator": generator,
           "connections": args.connections, "subjects": _subjects(endpoint, args), "baseline": base,
           "baseline_what": _NAMES.get(base) or _what(base),
           "goal": f"ratio>={goal}" if goal is not None else "-"}
    if name not in best or base not in best:
        return {**row, "skipped": pg_error or "not run", "met": False if goal is not None else None}
    (got, fig), (ref, ref_fig) = best[name], best[base]
    trouble = troubles.get(name, {})
    ratio = got.rps / ref.rps if ref.rps else 0.0
    row.update({"bare_rps": round(ref.rps, 1), "bare_p50_ms": round(ref.p50_ms, 3), "bare_p99_ms": round(ref.p99_ms, 3),
                "bare_cpu_us": ref_fig["gate_cpu_us"], "bare_postgres_cpu_us": ref_fig["postgres_cpu_us"],
                "bare_latency_dist": ref.dist, "rps": round(got.rps, 1), "ratio": round(ratio, 3),
                "p50_ms": round(got.p50_ms, 3), "p99_ms": round(got.p99_ms, 3), "requests": got.requests,
                "errors": got.errors, "fail_mode_answers": int(trouble.get("fail_mode_answers", 0)),
                "store_errors": int(trouble.get("store_errors", 0)), **fig, "latency_dist": got.dist})
    if "floor" in best and name.startswith("postgresql-") and endpoint == "consume":
        row["floor_ratio"] = round(got.rps / best["floor"][0].rps, 3) if best["floor"][0].rps else 0.0
    clean = got.errors == 0 and not any(trouble.values())
    row["met"] = None if goal is None else (ratio >= goal and clean)
    row["bottleneck"] = _verdict(row)
    return row


def print_table(rows: list[dict], out=sys.stdout) -> None:
    head = ("setup", "req/s", "against", "req/s", "ratio", "goal", "p50/p99 ms", "gate/pg CPU us", "rt/req", "busy",
            "")
    lines = [head]
    for r in rows:
        if "rps" not in r:
            continue
        lines.append((r["what"], f"{r['rps']:.0f}", r["baseline_what"], f"{r['bare_rps']:.0f}", f"{r['ratio']:.2f}",
                      r["goal"], f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f}",
                      f"{r['gate_cpu_us']:.0f}/{r['postgres_cpu_us']:.0f}",
                      f"{r['round_trips_per_request']:.2f}" if "round_trips_per_request" in r else "-",
                      f"{r['machine_busy_pct']:.0f}%", {True: "met", False: "NOT met", None: ""}[r["met"]]))
    print(columns(lines), file=out)
    for r in rows:
        if r.get("skipped"):
            print(f"  {r['what']}: skipped: {r['skipped']}", file=out)
        elif "bottleneck" in r:
            print(f"  {r['what']}: {r['bottleneck']}", file=out)
        elif "p50_ms" in r:
            print(f"  {r['what']}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms "
                  f"over {r['seen']}/{r['samples']} samples ({r['lost']} lost), median {r['polls_median']} polls",
                  file=out)


if __name__ == "__main__":
    main(sys.argv[1:])
