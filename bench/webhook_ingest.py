"""Signed Stripe webhook ingest (POST /webhook/stripe), durable, in events per second, against a bare
aiohttp endpoint under the same load, in the same run.

What it measures (issue 5, "Speed"): the gate as `plangate serve` runs it (shipped plans.yaml, a
SQLite file in WAL mode, STRIPE_WEBHOOK_SECRET set) taking realistic, correctly signed events:
`checkout.session.completed` for many distinct subjects, mixed with `invoice.paid` and
`customer.subscription.updated` (active) on subjects linked at least 16 x connections events
earlier, so they are found by their Stripe ids and move paid_trial -> paid or are recorded as no-ops.
Every event is new (a distinct id); every body is signed with stripe's own helper
(`WebhookSignature.generate_signature_header`) before the timed run, with the time of signing, which
stays well within the gate's 300 s tolerance. Goal: 3,000 events/s or more.

The baseline is the bare aiohttp JSON endpoint of bench.http_gate (parses the body, answers JSON),
sent the same signed bodies by the same load generator, interleaved with the gate's runs. Servers,
load generators and their life cycle are bench.http_gate's: real processes on 127.0.0.1 (port 0),
stopped by the bench; `wrk` when it is on PATH (a Lua script cycles through a file of pre-signed
requests), else a Python aiohttp client in a process of its own. Every run is bounded in time; the
database, plan and request files live in a temporary folder.

    python -m bench.webhook_ingest [--duration 4] [--rounds 2] [--connections 32]
                                   [--generator auto|wrk|python] [--synchronous NORMAL[,FULL]] [--uvloop]

`main()` prints a table and returns its rows (a list of dicts) for the bench runner.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.http_gate import (HOST, Result, Server, _gate_argv, _gate_troubles, _percentile,  # noqa: E402
                             choose_generator, dist_of, load_options, parse_wrk_dist, start_bare, wrk_dist_lua)
from tests.server import stripe_events as se  # noqa: E402
from bench._columns import columns  # noqa: E402

GOAL_EPS = 3000.0
PATH = "/webhook/stripe"
BARE_PATH = "/v1/check"         # bench.http_gate's bare endpoint: parses the JSON body, answers JSON
TOLERANCE = 300                 # the gate's default STRIPE_WEBHOOK_TOLERANCE, in seconds
LINK_LAG_PER_CONNECTION = 16    # a follow-up names a subject whose checkout came 16 x connections events earlier
RATE_CAP = 8000                 # events/s the request files are sized for; a run that uses them all is flagged
OUTCOMES = ("applied", "noop", "stale", "pending", "ignored", "duplicate")


# --- the events ---------------------------------------------------------------------------------

def build_events(count: int, tag: str, secret: str, new_share: float, lag: int, seed: int) -> list[tuple[str, str]]:
    """`count` signed events as (Stripe-Signature header, body): checkouts of new subjects, and invoice.paid /
    customer.subscription.updated on subjects whose checkout came at least `lag` events earlier (with
    fewer requests than that in flight, it has been answered, so committed).
    `created` grows with the position, so a subject's events are in created order in the file."""
    rng = random.Random(seed)
    signed_at = int(time.time())
    base = signed_at - count - 3600
    out, linked = [], 0
    for p in range(count):
        created = base + p
        ready = max(0, linked - lag) if p >= lag else 0
        if ready == 0 or rng.random() < new_share:
            k = linked
            linked += 1
            subject, cus, sub = f"wh-{tag}-{k}", f"cus_{tag}_{k}", f"sub_{tag}_{k}"
            evt = se.event("checkout.session.completed", se.checkout(subject, cus, sub), created,
                           f"evt_{tag}_{p}")
        else:
            k = rng.randrange(ready)
            cus, sub = f"cus_{tag}_{k}", f"sub_{tag}_{k}"
            if rng.random() < 0.5:
                obj = se.invoice("paid", sub_id=sub, customer=cus, inv_id=f"in_{tag}_{p}", period_end=created + 2592000)
                evt = se.event("invoice.paid", obj, created, f"evt_{tag}_{p}")
            else:
                obj = se.subscription("active", sub_id=sub, customer=cus, start=created, end=created + 2592000)
                evt = se.event("customer.subscription.updated", obj, created, f"evt_{tag}_{p}")
        body = json.dumps(evt, separators=(",", ":"))
        out.append((se.sign(body, secret, signed_at), body))
    return out


def write_requests(path: Path, events: list[tuple[str, str]]) -> int:
    """One request a line: the signature header, a tab, the body (JSON has no raw tab or newline)."""
    with open(path, "w", encoding="utf-8") as f:
        for header, body in events:
            f.write(f"{header}\t{body}\n")
    return sum(len(body) for _, body in events) // max(1, len(events))


# --- load generators ----------------------------------------------------------------------------

@dataclass
class Shot:
    url: str                # base URL
    path: str
    requests_file: str
    connections: int
    duration: float
    stop_after: int         # answers after which the run stops (0: cycle through the file until the time is up)


_WRK_SCRIPT = r"""
local path, file, stop_after = "%(path)s", "%(file)s", %(stop_after)d
local reqs, n, i = {}, 0, 0
answered, applied, noop, stale, pending, ignored, duplicate, refused = 0, 0, 0, 0, 0, 0, 0, 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  for line in io.lines(file) do
    local tab = line:find("\t", 1, true)
    n = n + 1
    reqs[n] = wrk.format("POST", path, {["Content-Type"] = "application/json",
                                        ["Stripe-Signature"] = line:sub(1, tab - 1)}, line:sub(tab + 1))
  end
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then refused = refused + 1 end
  local outcome = body:match('"outcome":%%s*"(%%a+)"')
  if outcome == "applied" then applied = applied + 1
  elseif outcome == "noop" then noop = noop + 1
  elseif outcome == "stale" then stale = stale + 1
  elseif outcome == "pending" then pending = pending + 1
  elseif outcome == "ignored" then ignored = ignored + 1
  elseif outcome == "duplicate" then duplicate = duplicate + 1 end
  if stop_after > 0 and answered >= stop_after then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  local counts = {answered = 0, applied = 0, noop = 0, stale = 0, pending = 0, ignored = 0, duplicate = 0}
  for _, t in ipairs(threads) do
    for name, _ in pairs(counts) do counts[name] = counts[name] + (t:get(name) or 0) end
  end
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\n", summary.requests, summary.duration,
           e.connect + e.read + e.write + e.timeout + e.status, latency:percentile(50), latency:percentile(99)))
  io.write(string.format("OUTCOMES %%d %%d %%d %%d %%d %%d %%d\n", counts.answered, counts.applied, counts.noop,
           counts.stale, counts.pending, counts.ignored, counts.duplicate))
  io.write("DIST")
  for _, p in ipairs({%(pcts)s}) do
    io.write(string.format(" %%s:%%d", p, p >= 100 and latency.max or latency:percentile(p)))
  end
  io.write("\n")
end
"""


def run_wrk(shot: Shot, folder: Path, tag: str) -> tuple[Result, dict]:
    """bench.http_gate's wrk run (one thread, same RESULT line), with a script that sends pre-signed requests."""
    script = folder / f"webhook-{tag}.lua"
    script.write_text(_WRK_SCRIPT % {"path": shot.path, "file": shot.requests_file, "stop_after": shot.stop_after,
                                     "pcts": wrk_dist_lua()})
    argv = ["wrk", "-t1", f"-c{shot.connections}", f"-d{max(1, round(shot.duration))}s", "--timeout", "2s",
            "-s", str(script), shot.url + shot.path]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=shot.duration + 60)
    found = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+)$", done.stdout, re.M)
    counted = re.search(r"^OUTCOMES (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", done.stdout, re.M)
    if done.returncode != 0 or not found or not counted:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
    requests, micros, errors, p50, p99 = map(int, found.groups())
    answered, *outcomes = map(int, counted.groups())
    return (Result(requests, micros / 1e6, errors, p50 / 1000, p99 / 1000, dist=parse_wrk_dist(done.stdout)),
            {"answered": answered, **dict(zip(OUTCOMES, outcomes))})


def run_python_generator(shot: Shot) -> tuple[Result, dict]:
    """The fallback: an aiohttp client in a process of its own, as bench.http_gate runs its own."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from bench.webhook_ingest import _python_load_main; _python_load_main()")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(shot))], capture_output=True, text=True,
                          timeout=shot.duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the Python load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(**got["result"]), got["outcomes"]


def _python_load_main() -> None:
    import asyncio

    import aiohttp

    shot = Shot(**json.loads(sys.argv[1]))
    with open(shot.requests_file, encoding="utf-8") as f:
        requests = [(line[:line.index("\t")], line[line.index("\t") + 1:].rstrip("\n").encode()) for line in f]

    async def run() -> tuple[Result, dict]:
        url = shot.url + shot.path
        latencies: list[float] = []
        outcomes = dict.fromkeys(("answered",) + OUTCOMES, 0)
        errors = 0
        issued = 0
        connector = aiohttp.TCPConnector(limit=shot.connections)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as session:
            started = time.perf_counter()
            deadline = started + shot.duration

            async def worker() -> None:
                nonlocal errors, issued
                while time.perf_counter() < deadline and not (shot.stop_after and issued >= shot.stop_after):
                    header, body = requests[issued % len(requests)]
                    issued += 1
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                                         "Stripe-Signature": header}) as resp:
                            answer = await resp.read()
                            ok = resp.status == 200
                        outcomes["answered"] += 1
                        found = re.search(rb'"outcome":\s*"(\w+)"', answer)
                        if found and found.group(1).decode() in outcomes:
                            outcomes[found.group(1).decode()] += 1
                    except (TimeoutError, aiohttp.ClientError):
                        ok = False
                    latencies.append(time.perf_counter() - t0)
                    errors += not ok

            await asyncio.gather(*(worker() for _ in range(shot.connections)))
            seconds = time.perf_counter() - started
        latencies.sort()
        return (Result(len(latencies), seconds, errors, _percentile(latencies, 50) * 1000,
                       _percentile(latencies, 99) * 1000, dist=dist_of(latencies)), outcomes)

    result, outcomes = asyncio.run(run())
    print(json.dumps({"result": asdict(result), "outcomes": outcomes}), flush=True)


# --- the gate -----------------------------------------------------------------------------------

def start_gate(folder: Path, secret: str, synchronous: str, token: str | None = None,
               **settings: str) -> Server:
    """`plangate serve` (bench.http_gate's process) with the shipped plan, a webhook secret, the /v1/ token
    (a random one unless given) and any other PLANGATE_ settings; its database is gate-<synchronous>.sqlite3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "SUBSCRIPTION_", "STRIPE_"))}
    env.update({"SUBSCRIPTION_ENABLED": "true", "PLANGATE_API_TOKEN": token or secrets.token_urlsafe(24),
                "PLANGATE_HOST": HOST, "PLANGATE_PORT": "0", "PLANGATE_PLANS": str(ROOT / "plans.yaml"),
                "PLANGATE_DATABASE": str(folder / f"gate-{synchronous.lower()}.sqlite3"),
                "PLANGATE_SQLITE_SYNCHRONOUS": synchronous, "STRIPE_WEBHOOK_SECRET": secret, **settings})
    return Server(f"gate-{synchronous.lower()}", _gate_argv(), env, folder)


def _stored(database: Path) -> dict:
    """What the gate's store holds after the runs: events by outcome, and subjects by status."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        events = dict(db.execute("SELECT outcome, COUNT(*) FROM subscription_events GROUP BY outcome").fetchall())
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM subscriptions GROUP BY status").fetchall())
    finally:
        db.close()
    return {"events": events, "statuses": statuses}


# --- the benchmark --------------------------------------------------------------------------------

def _row(synchronous: str, generator: str, gate: Result, bare: Result, outcomes: dict, body_bytes: int,
         troubles: dict, stored: dict, exhausted: bool) -> dict:
    ratio = gate.rps / bare.rps if bare.rps else 0.0
    # Pending (a follow-up whose checkout was not committed yet) and stale (two events of one subject handled
    # out of order) are answers Stripe's real deliveries also get; a duplicate would mean an event sent twice.
    clean = gate.errors == 0 and not outcomes["duplicate"] and not any(troubles.values()) and not exhausted
    return {"endpoint": PATH, "synchronous": synchronous, "generator": generator,
            "events_per_s": round(gate.rps, 1), "bare_rps": round(bare.rps, 1), "ratio": round(ratio, 3),
            "p50_ms": round(gate.p50_ms, 3), "p99_ms": round(gate.p99_ms, 3),
            "bare_p50_ms": round(bare.p50_ms, 3), "bare_p99_ms": round(bare.p99_ms, 3),
            "cpu_us_per_event": gate.cpu_us and round(gate.cpu_us, 1),
            "bare_cpu_us": bare.cpu_us and round(bare.cpu_us, 1),
            "events": gate.requests, "bare_requests": bare.requests, "body_bytes": body_bytes,
            "errors": gate.errors, "bare_errors": bare.errors,
            "outcomes": {k: v for k, v in outcomes.items() if k != "answered"},
            "stored_events": stored["events"], "subjects_by_status": stored["statuses"],
            "store_errors": int(troubles["store_errors"]), "requests_exhausted": exhausted,
            "goal": f">= {GOAL_EPS:.0f} events/s", "met": clean and gate.rps >= GOAL_EPS, "clean": clean,
            "latency_dist": gate.dist, "bare_latency_dist": bare.dist}


def print_table(rows: list[dict], out=sys.stdout) -> None:
    head = ("endpoint", "sync", "events/s", "bare req/s", "ratio", "p50/p99 ms", "bare p50/p99 ms", "goal", "",
            "cpu us/req gate/bare")
    lines = [head] + [(r["endpoint"], r["synchronous"], f"{r['events_per_s']:.0f}", f"{r['bare_rps']:.0f}",
                       f"{r['ratio']:.2f}", f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f}",
                       f"{r['bare_p50_ms']:.2f}/{r['bare_p99_ms']:.2f}", r["goal"], "met" if r["met"] else "NOT met",
                       f"{r['cpu_us_per_event']:.0f}/{r['bare_cpu_us']:.0f}"
                       if r["cpu_us_per_event"] and r["bare_cpu_us"] else "-")
                      for r in rows]
    print(columns(lines), file=out)
    for r in rows:
        print(f"  {r['synchronous']}: {r['events']} events of {r['body_bytes']} bytes on average; answers "
              + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items() if v)
              + f"; subjects {r['subjects_by_status']}", file=out)
        if not r["clean"]:
            print(f"  {r['synchronous']}: NOT clean: errors {r['errors']}, store errors {r['store_errors']}, "
                  f"duplicate {r['outcomes']['duplicate']}, request file used up: {r['requests_exhausted']}", file=out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_ingest", description=__doc__.split("\n\n")[0])
    load_options(parser, duration=4.0)
    parser.add_argument("--synchronous", default="NORMAL",
                        help="PLANGATE_SQLITE_SYNCHRONOUS values to run, comma-separated (NORMAL, FULL)")
    parser.add_argument("--new-share", type=float, default=0.5,
                        help="share of checkouts of new subjects once follow-ups can start (default 0.5)")
    parser.add_argument("--rate-cap", type=int, default=RATE_CAP,
                        help=f"events/s the pre-signed files are sized for (default {RATE_CAP})")
    args = parser.parse_args([] if argv is None else argv)
    modes = [m.strip().upper() for m in args.synchronous.split(",") if m.strip()]
    if not modes or any(m not in ("NORMAL", "FULL") for m in modes):
        parser.error("--synchronous takes NORMAL and/or FULL")
    if args.duration + args.warmup > TOLERANCE / 3:
        parser.error(f"a run must end well within the signature tolerance ({TOLERANCE}s)")

    generator = choose_generator(args.generator)
    print(f"webhook_ingest: load generator: {generator}; {args.connections} connections, "
          f"{args.duration:g}s x {args.rounds} per server" + (", bare baseline on uvloop" if args.uvloop else ""),
          flush=True)
    secret = "whsec_" + secrets.token_hex(16)
    rows = []
    with tempfile.TemporaryDirectory(prefix="plangate-bench-webhook-") as tmp:
        folder = Path(tmp)
        servers: list[Server] = []
        try:
            bare = start_bare(folder, args.uvloop)
            servers.append(bare)
            for mode in modes:
                gate = start_gate(folder, secret, mode)
                servers.append(gate)
                runs = 0

                def measure(which: str, duration: float, mode: str = mode,
                            gate: Server = gate) -> tuple[Result, dict, int, bool]:
                    """One run on fresh subjects, its events signed just before it."""
                    nonlocal runs
                    runs += 1
                    tag = f"{mode.lower()[0]}{runs}{which[0]}{secrets.token_hex(3)}"
                    lag = LINK_LAG_PER_CONNECTION * args.connections
                    count = max(lag * 4, math.ceil(duration * args.rate_cap))
                    events = build_events(count, tag, secret, args.new_share, lag, seed=runs)
                    requests_file = folder / f"{tag}.requests"
                    body_bytes = write_requests(requests_file, events)
                    server = gate if which == "gate" else bare
                    # The gate must never see an event twice: stop before the file runs out.
                    stop_after = count - args.connections if which == "gate" else 0
                    shot = Shot(server.url, PATH if which == "gate" else BARE_PATH, str(requests_file),
                                args.connections, duration, stop_after)
                    before = server.cpu_seconds()
                    got, outcomes = (run_wrk(shot, folder, tag) if generator == "wrk"
                                     else run_python_generator(shot))
                    got.cpu_us = server.cpu_us_per_request(before, got.requests)
                    requests_file.unlink()
                    return got, outcomes, body_bytes, bool(stop_after and outcomes["answered"] >= stop_after)

                if args.warmup > 0:
                    measure("gate", args.warmup)
                    measure("bare", args.warmup)
                best: dict[str, tuple] = {}
                for _ in range(max(1, args.rounds)):
                    for which in ("gate", "bare"):
                        got = measure(which, args.duration)
                        if which not in best or got[0].rps > best[which][0].rps:
                            best[which] = got
                troubles = _gate_troubles(gate.url)
                gate.stop()
                g, outcomes, body_bytes, exhausted = best["gate"]
                rows.append(_row(mode, generator, g, best["bare"][0], outcomes, body_bytes, troubles,
                                 _stored(folder / f"gate-{mode.lower()}.sqlite3"), exhausted))
        finally:
            for server in reversed(servers):
                server.stop()
    print_table(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
