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

The baseline is the harness's bare aiohttp JSON endpoint (bench/_harness.py: parses the body, answers
JSON), sent the same signed bodies by the same load generator, interleaved with the gate's runs. Servers,
load generators and their life cycle are the harness's (bench/_harness.py, bench/_webhooks.py): real
processes on 127.0.0.1 (port 0), stopped by the bench; `wrk` when it is on PATH (a Lua script cycles
through a file of pre-signed requests), else a Python aiohttp client in a process of its own. Every run
is bounded in time; the database, plan and request files live in a temporary folder.

    python -m bench.webhook_ingest [--duration 4] [--rounds 2] [--connections 32]
                                   [--generator auto|wrk|python] [--synchronous NORMAL[,FULL]] [--uvloop]

`main()` prints a table and returns its rows (a list of dicts) for the bench runner.
"""
from __future__ import annotations

import argparse
import math
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._columns import columns  # noqa: E402
from bench._harness import Result, Server, choose_generator, gate_troubles, load_options, start_bare  # noqa: E402
from bench._webhooks import (PATH, TOLERANCE, Shot, build_events, run_python_generator, run_wrk,  # noqa: E402
                             start_gate, stored, write_requests)

GOAL_EPS = 3000.0
BARE_PATH = "/v1/check"         # the harness's bare endpoint: parses the JSON body, answers JSON
LINK_LAG_PER_CONNECTION = 16    # a follow-up names a subject whose checkout came 16 x connections events earlier
RATE_CAP = 8000                 # events/s the request files are sized for; a run that uses them all is flagged


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
                troubles = gate_troubles(gate.url)
                gate.stop()
                g, outcomes, body_bytes, exhausted = best["gate"]
                rows.append(_row(mode, generator, g, best["bare"][0], outcomes, body_bytes, troubles,
                                 stored(folder / f"gate-{mode.lower()}.sqlite3"), exhausted))
        finally:
            for server in reversed(servers):
                server.stop()
    print_table(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
