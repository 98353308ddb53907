"""HTTP speed of the gate against the leanest endpoint on its own stack, under the same load, in the same run.

What it measures (issues 4 and 21):

- `/v1/check` with 4 subjects (a warm cache) and with many (`--subjects`, 10,000 by default: as many customers
  as a real deployment has, so the cache and the store are part of the figure), 32 concurrent connections.
  The main baseline is the floor (bench/_floor.py): aiohttp on uvloop, orjson, a dict lookup of the subject
  among as many, `web.Response`: the fastest thing a user could write on this stack. Goal: gate/floor >= 0.85
  and the gate's p99 under 5 ms. The old baseline (plain asyncio, the stdlib json, `web.json_response`) is a
  second column (`bare`).
- `/v1/consume` (durable: SQLite, one unique idempotency key per request) against the same two. Goal:
  gate/floor >= 0.5.

The servers are real processes on 127.0.0.1 (port 0, the bound port is read from their first line),
started and stopped (SIGTERM, then kill) by the bench; the load generator is a third process: `wrk`
when it is on PATH (Debian package `wrk`), else a Python aiohttp client. Every run is bounded in time
and in requests. The plan is the shipped plans.yaml with the initial status's quotas raised, so that
consume is never refused; it and the database live in a temporary folder.

Besides req/s, each row has the servers' CPU time per request (from /proc, all threads; steadier than
req/s when other work shares the two cores) and the latency with a single connection (no queueing: the
service time). Mind the load model: with 32 connections always busy, p50 is about 32 / throughput
(Little's law), so a p99 under 5 ms at 32 connections needs well over 6,400 req/s from one process.
The goal is held against that saturated run, as the issue states it. A paced run shows the latency a
workflow server sees below saturation: the same 32 connections, each pausing between an answer and its
next request so that both servers get about half (`--paced`) of the gate's best req/s (wrk's `delay()`;
a stalled server also slows the requests behind it, so the tail is, if anything, understated).
A gate that answered from its fail mode or had store errors during the run is reported as not met.

    python -m bench.http_gate [--duration 3] [--rounds 2] [--connections 32] [--alone 2] [--paced 0.5]
                              [--generator auto|wrk|python] [--endpoints check,consume] [--subjects 10000]
                              [--uvloop]

`main()` prints a table and returns its rows (a list of dicts) for the bench runner.
"""
from __future__ import annotations

import argparse
import json
import secrets
import urllib.request
import sys
import tempfile
from pathlib import Path

from bench._columns import columns
from bench._harness import (ENTITLED_METER, MAX_REQUESTS, SUBJECTS, Load, Result, Server, choose_generator,
                            gate_troubles, load_options, probe, run_python_generator, run_wrk, start_bare, start_floor,
                            start_gate,
                            write_plan)

# endpoint -> (minimum gate/bare ratio, maximum gate p99 in ms or None)
GOALS = {"check": (0.85, 5.0), "consume": (0.5, None), "check_entitled": (0.0, None)}
# check_entitled (issue 19): /v1/check alternating a feature (granted by the status) and a meter whose limit is
# per seat (a trait) and used up, so that the subject's credits decide: the gate's CPU a request within this
# factor of a plain check's, measured in the same run.
ENTITLED_CPU_GOAL = 1.5
SUBJECTS_MANY = 10_000      # issue 21: as many subjects as a deployment has customers, besides the warm 4
WARM_RATE = 2_000           # checks a second the gate takes at least, here: a warm-up asks every subject at it


# --- the benchmark ----------------------------------------------------------------------------------

def _row(endpoint: str, subjects: int, generator: str, got: dict[str, Result], troubles: dict[str, float],
         alone: dict[str, Result], paced: dict[str, Result]) -> dict:
    """One row: the gate against the floor (the goal's baseline) and the bare endpoint (the old one)."""
    min_ratio, max_p99 = GOALS[endpoint]
    gate, floor, bare = got["gate"], got["floor"], got["bare"]
    ratio = gate.rps / floor.rps if floor.rps else 0.0
    cpu_ratio = floor.cpu_us / gate.cpu_us if gate.cpu_us and floor.cpu_us else None
    met = (ratio >= min_ratio and (max_p99 is None or gate.p99_ms < max_p99) and gate.errors == 0
           and not any(troubles.values()))
    goal = f"ratio>={min_ratio}" + (f", p99<{max_p99:g}ms" if max_p99 is not None else "")
    return {"endpoint": f"/v1/{endpoint}", "subjects": subjects, "generator": generator,
            "gate_rps": round(gate.rps, 1), "floor_rps": round(floor.rps, 1), "bare_rps": round(bare.rps, 1),
            "ratio": round(ratio, 3), "ratio_bare": round(gate.rps / bare.rps, 3) if bare.rps else 0.0,
            **{f"{which}_{p}_ms": round(getattr(got[which], f"{p}_ms"), 3)
               for which in ("gate", "floor", "bare") for p in ("p50", "p99")},
            **{f"{which}_cpu_us": got[which].cpu_us and round(got[which].cpu_us, 1)
               for which in ("gate", "floor", "bare")},
            "cpu_ratio": cpu_ratio and round(cpu_ratio, 3),
            **{f"{which}_requests": got[which].requests for which in ("gate", "floor", "bare")},
            **{f"{which}_errors": got[which].errors for which in ("gate", "floor", "bare")},
            "gate_fail_mode_answers": int(troubles["fail_mode_answers"]),
            "gate_store_errors": int(troubles["store_errors"]),
            "goal": goal, "met": met,
            # One connection: no queueing behind other requests, so the latency is the service time.
            **{f"{which}_{p}_ms_1conn": round(getattr(alone[which], f"{p}_ms"), 3)
               for which in alone for p in ("p50", "p99")},
            # The same connections, each pausing between requests: latency at a load well below saturation.
            **{f"{which}_{p}_ms_paced": round(getattr(paced[which], f"{p}_ms"), 3)
               for which in paced for p in ("p50", "p99")},
            **{f"{which}_rps_paced": round(paced[which].rps, 1) for which in paced},
            "gate_latency_dist": gate.dist, "floor_latency_dist": floor.dist, "bare_latency_dist": bare.dist}


def _post(url: str, path: str, token: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def entitle(url: str, token: str, admin: str) -> None:
    """check_entitled's subjects: 3 seats (a limit of 30), the day's allowance used up, credits to spend (traits
    and credits are admin routes)."""
    for i in range(SUBJECTS):
        subject = f"bench-check_entitled-{i}"
        _post(url, f"/v1/subjects/{subject}/traits", admin, {"traits": {"seats": 3}})
        _post(url, "/v1/consume", token, {"subject": subject, "meter": ENTITLED_METER, "amount": 30})
        _post(url, f"/v1/subjects/{subject}/credits", admin,
              {"meter": ENTITLED_METER, "amount": 10**6, "reason": "bench"})
    answer = _post(url, "/v1/check", token, {"subject": "bench-check_entitled-0", "meter": ENTITLED_METER})
    if not (answer.get("allowed") and answer.get("credits") and answer.get("limit") == 30):
        raise RuntimeError(f"check_entitled: the subject is not decided by its credits: {answer}")


def entitled_goal(rows: list[dict]) -> None:
    """check_entitled's goal: its gate CPU a request within ENTITLED_CPU_GOAL of the plain check's."""
    plain = next((r for r in rows if r["endpoint"] == "/v1/check" and r["subjects"] == SUBJECTS), None)
    for r in rows:
        if r["endpoint"] == "/v1/check_entitled":
            r["endpoint"] = "/v1/check (features, seats, credits)"
            vs = r["gate_cpu_us"] / plain["gate_cpu_us"] if plain and plain["gate_cpu_us"] and r["gate_cpu_us"] \
                else None
            r["cpu_vs_check"] = vs and round(vs, 3)
            r["goal"] = f"gate cpu <= {ENTITLED_CPU_GOAL}x plain check"
            r["met"] = vs is not None and vs <= ENTITLED_CPU_GOAL and r["gate_errors"] == 0


def print_table(rows: list[dict], out=sys.stdout) -> None:
    head = ("endpoint", "subjects", "gate req/s", "floor req/s", "gate/floor", "bare req/s", "gate/bare",
            "gate p50/p99 ms", "floor p50/p99 ms", "goal", "", "cpu us/req gate/floor")
    lines = [head] + [(r["endpoint"], str(r["subjects"]), f"{r['gate_rps']:.0f}", f"{r['floor_rps']:.0f}",
                       f"{r['ratio']:.2f}", f"{r['bare_rps']:.0f}", f"{r['ratio_bare']:.2f}",
                       f"{r['gate_p50_ms']:.2f}/{r['gate_p99_ms']:.2f}",
                       f"{r['floor_p50_ms']:.2f}/{r['floor_p99_ms']:.2f}",
                       r["goal"], "met" if r["met"] else "NOT met",
                       f"{r['gate_cpu_us']:.0f}/{r['floor_cpu_us']:.0f} ({r['cpu_ratio']:.2f})"
                       if r["cpu_ratio"] else "-")
                      for r in rows]
    print(columns(lines), file=out)
    alone = [r for r in rows if "gate_p99_ms_1conn" in r]
    if alone:
        print("latency with 1 connection (no queueing): " + "; ".join(
            f"{r['endpoint']} ({r['subjects']} subjects) gate p50/p99 {r['gate_p50_ms_1conn']:.2f}/"
            f"{r['gate_p99_ms_1conn']:.2f} ms, floor {r['floor_p50_ms_1conn']:.2f}/{r['floor_p99_ms_1conn']:.2f} ms"
            for r in alone), file=out)
    paced = [r for r in rows if "gate_p99_ms_paced" in r]
    if paced:
        print("latency below saturation (the same connections, paced): " + "; ".join(
            f"{r['endpoint']} ({r['subjects']} subjects) gate p50/p99 {r['gate_p50_ms_paced']:.2f}/"
            f"{r['gate_p99_ms_paced']:.2f} ms at {r['gate_rps_paced']:.0f} req/s, floor "
            f"{r['floor_p50_ms_paced']:.2f}/{r['floor_p99_ms_paced']:.2f} ms at {r['floor_rps_paced']:.0f} req/s"
            for r in paced), file=out)
    for r in rows:
        if r["gate_errors"] or r["floor_errors"] or r["bare_errors"]:
            print(f"  {r['endpoint']}: errors gate {r['gate_errors']}, floor {r['floor_errors']}, bare "
                  f"{r['bare_errors']} (non-200 answers, timeouts or connection errors)", file=out)
        if r["gate_fail_mode_answers"] or r["gate_store_errors"]:
            print(f"  {r['endpoint']}: the gate answered {r['gate_fail_mode_answers']} times by its fail mode and had "
                  f"{r['gate_store_errors']} store errors so far: these figures are not the store's", file=out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.http_gate", description=__doc__.split("\n\n")[0])
    load_options(parser, duration=3.0)
    parser.add_argument("--alone", type=float, default=2.0,
                        help="seconds of a 1-connection run per server and endpoint, for latency without "
                             "queueing (0: skip)")
    parser.add_argument("--paced", type=float, default=0.5,
                        help="a run per server and endpoint at about this share of the gate's best req/s, "
                             "the connections pausing between requests, for latency below saturation (0: skip)")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS, help="per measured run")
    parser.add_argument("--subjects", type=int, default=SUBJECTS_MANY,
                        help=f"the many subjects check and consume are also measured with (default {SUBJECTS_MANY}; "
                             f"they are always measured with {SUBJECTS} too)")
    parser.add_argument("--endpoints", default="check,consume,check_entitled",
                        help="comma-separated: check, consume, check_entitled")
    args = parser.parse_args([] if argv is None else argv)
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    for e in endpoints:
        if e not in GOALS:
            parser.error(f"unknown endpoint {e!r}; known: {', '.join(GOALS)}")

    generator = choose_generator(args.generator)
    print(f"http_gate: load generator: {generator}"
          + ("" if generator == "wrk" else f" ({'wrk not found; ' if args.generator == 'auto' else ''}the Python "
                                           "client may itself be the limit, which pulls the ratio towards 1)")
          + f"; {args.connections} connections, {args.duration:g}s x {args.rounds} per server and endpoint"
          + f"; {SUBJECTS} and {args.subjects} subjects"
          + (", bare baseline on uvloop" if args.uvloop else ""), flush=True)

    counts = sorted({SUBJECTS, args.subjects})
    token, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    rows = []
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as tmp:
        folder = Path(tmp)
        servers: dict[str, Server] = {}
        try:
            # The cache holds every subject the load cycles through (check's and consume's), as an operator with
            # that many active customers would size PLANGATE_CACHE_SIZE; PLANGATE_CACHE_TTL stays the default,
            # so that busy subjects are read again (in the background) within the figures.
            servers["gate"] = start_gate("gate", folder, PLANGATE_API_TOKEN=token, PLANGATE_ADMIN_TOKEN=admin,
                                         PLANGATE_DATABASE=str(folder / "gate.sqlite3"),
                                         PLANGATE_PLANS=str(write_plan(folder)),
                                         PLANGATE_CACHE_SIZE=str(max(10_000, 2 * args.subjects + 1_000)))
            servers["floor"] = start_floor(folder, args.subjects)
            servers["bare"] = start_bare(folder, args.uvloop, args.subjects)
            urls = {which: server.url for which, server in servers.items()}
            if "check_entitled" in endpoints:
                entitle(urls["gate"], token, admin)
            for endpoint in endpoints:
                for url in urls.values():
                    probe(url, endpoint, token)
                for subjects in (counts if endpoint != "check_entitled" else [SUBJECTS]):

                    def measure(which: str, duration: float, tag: str, connections: int = args.connections,
                                pause_ms: int = 0, endpoint: str = endpoint, subjects: int = subjects) -> Result:
                        load = Load(urls[which], endpoint, token, connections, duration, args.max_requests,
                                    f"{which}-{tag}-{secrets.token_hex(4)}", subjects=subjects, pause_ms=pause_ms)
                        server = servers[which]
                        before = server.cpu_seconds()
                        got = run_wrk(load, folder) if generator == "wrk" else run_python_generator(load)
                        got.cpu_us = server.cpu_us_per_request(before, got.requests)
                        return got

                    # Each measured run right after a warm-up of its own server: the others' runs leave it idle
                    # for longer than PLANGATE_CACHE_TTL, and a deployment's active subjects are not all cold
                    # at once. The steady state's cost stays in: entries expire or are read again as they would.
                    # With many subjects the warm-up lasts long enough to ask each of them (at WARM_RATE): a second
                    # reached some 4,000 of 10,000, and the measured run read the rest from the store, every one a
                    # cache miss (248-317 µs a check, against 211 µs once every subject had been asked).
                    def warmed(which: str, duration: float, tag: str, subjects: int = subjects, **load) -> Result:
                        if args.warmup > 0:
                            measure(which, max(args.warmup, subjects / WARM_RATE), f"warm-{tag}")
                        return measure(which, duration, tag, **load)

                    best: dict[str, Result] = {}
                    for n in range(max(1, args.rounds)):
                        for which in urls:
                            got = warmed(which, args.duration, str(n))
                            if which not in best or got.rps > best[which].rps:
                                best[which] = got
                    # Latency alone and paced: the gate and its floor, with the most subjects only.
                    detail = ("gate", "floor") if subjects == counts[-1] else ()
                    alone = {which: warmed(which, args.alone, "alone", connections=1) for which in detail} \
                        if args.alone > 0 else {}
                    paced = {}
                    if args.paced > 0 and detail:   # both at the same rate: a connection's request every `pause` ms
                        pause = max(1, round(args.connections / (args.paced * best["gate"].rps) * 1000))
                        paced = {which: warmed(which, args.duration, "paced", pause_ms=pause) for which in detail}
                    rows.append(_row(endpoint, subjects, generator, best, gate_troubles(urls["gate"]), alone,
                                     paced))
        finally:
            for server in reversed(list(servers.values())):
                server.stop()
    entitled_goal(rows)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
