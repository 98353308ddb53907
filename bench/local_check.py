"""Local evaluation (issue 21): a check decided in the caller's process against one over loopback, how soon a
change on the gate reaches a listening client, and what thousands of stream listeners cost the gate.

What it measures, all against a real `plangate serve` (SQLite, the bench plan) in the same run:

- local check: the median µs of `GateClient(local=True).check()` answered from the client's copy, in this
  process (time.perf_counter_ns around each call), against the median of the same check asked of the gate over
  loopback by a plain GateClient. Goal: <= 5 µs median.
- change visible: another client consumes; the time from sending that consume until the listening client's copy
  shows the new usage (the consume's own round trip included). Goal: p99 <= 50 ms.
- listeners: the gate's /v1/check and /v1/consume throughput (wrk, or the Python generator) and its CPU per
  request with `--listeners` SSE clients connected (a process of their own, reading every event) against none,
  interleaved. Each listener is named and holds copies of `--held` of the 1,000 subjects the load cycles through
  (so a count reaches about listeners x held / 1,000 of them). Goal: >= 0.8 of the throughput without listeners
  (a goal of this bench, not of the issue).

    python -m bench.local_check [--checks 20000] [--samples 200] [--listeners 1000] [--held 10] [--duration 3]

`main()` prints a table and returns its rows (the report's common keys) for the bench runner.
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._columns import columns  # noqa: E402
from bench._harness import (METER, Load, choose_generator, percentile, run_python_generator, run_wrk,  # noqa: E402
                            start_gate, write_plan)

LOCAL_GOAL_US = 5.0
VISIBLE_GOAL_MS = 50.0
LISTENERS_GOAL = 0.8


def _row(what, figure, unit, baseline, baseline_what, ratio, goal, met, note="") -> dict:
    return {"what": what, "figure": figure, "unit": unit, "baseline": baseline, "baseline_what": baseline_what,
            "ratio": ratio, "goal": goal, "met": met, "note": note}


async def _in_process(url: str, token: str, checks: int, samples: int) -> list[dict]:
    from plangate.client import GateClient

    rows = []
    async with GateClient(url, token, timeout=5.0, local=True, staleness=2.0) as here, \
            GateClient(url, token, timeout=5.0) as there:
        subject = "bench-local-0"
        await here.check(subject, METER)
        if not await here.local.ready():
            raise RuntimeError("local_check: the stream did not come up")
        first = await here.check(subject, METER)
        if not first.evaluated_here:
            raise RuntimeError(f"local_check: the copy did not decide: {first}")
        local, remote = [], []
        clock = time.perf_counter_ns
        for _ in range(checks):
            t0 = clock()
            await here.check(subject, METER)
            local.append(clock() - t0)
        for _ in range(max(200, checks // 20)):
            t0 = clock()
            await there.check(subject, METER)
            remote.append(clock() - t0)
        local_us, remote_us = statistics.median(local) / 1000, statistics.median(remote) / 1000
        decided_here = here.local.local_checks
        rows.append(_row("local check in-process (median)", round(local_us, 2), "us", round(remote_us, 1),
                         "remote check over loopback (median)", round(local_us / remote_us, 4),
                         f"<= {LOCAL_GOAL_US:g} us", local_us <= LOCAL_GOAL_US and decided_here >= checks,
                         f"p99 local {percentile(sorted(local), 99) / 1000:.1f} us, remote "
                         f"{percentile(sorted(remote), 99) / 1000:.0f} us; {decided_here} decided here"))
        # A change on the gate: someone else counts; how soon does the listening copy show it?
        seen = []
        await there.consume(subject, METER, 1, idempotency_key=f"stored-{secrets.token_hex(6)}")   # now stored
        for i in range(samples):
            if subject not in here.local.copies:
                await here.check(subject, METER)
            t0 = time.perf_counter()
            answer = await there.consume(subject, METER, 1, idempotency_key=f"visible-{secrets.token_hex(6)}-{i}")
            key = (METER, int(answer.window_start.timestamp()))
            deadline = t0 + 2.0
            # Visible: the copy shows the count, or was dropped (the next check fetches it again).
            while (copy := here.local.copies.get(subject)) is not None and copy.used.get(key, 0) < answer.used \
                    and time.perf_counter() < deadline:
                await asyncio.sleep(0.0002)
            seen.append(time.perf_counter() - t0)
        seen.sort()
        p50, p99 = percentile(seen, 50) * 1000, percentile(seen, 99) * 1000
        rows.append(_row("change on the gate visible to a listening client (p99)", round(p99, 2), "ms", None, "",
                         None, f"<= {VISIBLE_GOAL_MS:g} ms", p99 <= VISIBLE_GOAL_MS,
                         f"p50 {p50:.2f} ms over {samples} consumes by another client (its round trip included)"))
    return rows


_LISTENERS = r"""
import asyncio, random, secrets, sys, aiohttp
url, token, n, held = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
auth = {"Authorization": "Bearer " + token}
async def one(session, up):
    client = secrets.token_urlsafe(12)
    for endpoint in ("check", "consume"):      # the subjects this client holds copies of, among the load's
        for k in random.sample(range(1000), held):
            async with session.get(f"{url}/v1/subjects/bench-{endpoint}-{k}/snapshot?client={client}",
                                   headers=auth) as resp:
                await resp.read()
    while True:
        try:
            async with session.get(f"{url}/v1/stream?client={client}", headers=auth,
                                   timeout=aiohttp.ClientTimeout(total=None)) as resp:
                up.append(1)
                async for _ in resp.content.iter_any():
                    pass
        except (aiohttp.ClientError, OSError):
            await asyncio.sleep(0.1)
async def main():
    up = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.ensure_future(one(session, up)) for _ in range(n)]
        while len(up) < n:
            await asyncio.sleep(0.05)
        print("listening", flush=True)
        await asyncio.gather(*tasks)
asyncio.run(main())
"""


def _listeners(url: str, token: str, n: int, held: int) -> subprocess.Popen:
    """n SSE listeners in a process of their own, each named and holding `held` of the load's subjects."""
    proc = subprocess.Popen([sys.executable, "-c", _LISTENERS, url, token, str(n), str(held)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "listening" not in line:
        proc.kill()
        raise RuntimeError(f"local_check: {n} listeners did not connect")
    return proc


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.local_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=20_000, help="local checks timed")
    parser.add_argument("--samples", type=int, default=200, help="changes timed until a listener sees them")
    parser.add_argument("--listeners", type=int, default=1000, help="SSE listeners for the cost rows (0: skip)")
    parser.add_argument("--held", type=int, default=10,
                        help="subjects of the load (of 1,000 an endpoint) each listener holds a copy of")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args([] if argv is None else argv)
    token = secrets.token_urlsafe(24)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as tmp:
        folder = Path(tmp)
        gate = start_gate("gate", folder, PLANGATE_API_TOKEN=token, PLANGATE_DATABASE=str(folder / "gate.sqlite3"),
                          PLANGATE_PLANS=str(write_plan(folder)), PLANGATE_CACHE_SIZE="100000")
        try:
            rows += asyncio.run(_in_process(gate.url, token, args.checks, args.samples))
            if args.listeners > 0:
                generator = choose_generator(args.generator)
                for endpoint in ("check", "consume"):
                    got = {}
                    for which in ("none", "listening", "none", "listening"):
                        crowd = _listeners(gate.url, token, args.listeners, args.held) if which == "listening" else None
                        try:
                            load = Load(gate.url, endpoint, token, args.connections, args.duration, 10**6,
                                        f"{which}-{secrets.token_hex(4)}", subjects=1000)
                            before = gate.cpu_seconds()
                            result = run_wrk(load, folder) if generator == "wrk" else run_python_generator(load)
                            result.cpu_us = gate.cpu_us_per_request(before, result.requests)
                        finally:
                            if crowd is not None:
                                crowd.kill()
                                crowd.wait()
                        if which not in got or result.rps > got[which].rps:
                            got[which] = result
                    ratio = got["listening"].rps / got["none"].rps if got["none"].rps else 0.0
                    rows.append(_row(f"/v1/{endpoint} with {args.listeners} SSE listeners", round(got["listening"].rps),
                                     "req/s", round(got["none"].rps), "no listener", round(ratio, 3),
                                     f">= {LISTENERS_GOAL}", ratio >= LISTENERS_GOAL and not got["listening"].errors,
                                     f"gate cpu us/req {got['listening'].cpu_us and round(got['listening'].cpu_us)} vs "
                                     f"{got['none'].cpu_us and round(got['none'].cpu_us)}; p99 "
                                     f"{got['listening'].p99_ms:.2f} vs {got['none'].p99_ms:.2f} ms"))
        finally:
            gate.stop()
    lines = [("what", "figure", "baseline", "ratio", "goal", "", "note")] + [
        (r["what"], f"{r['figure']} {r['unit']}", f"{r['baseline']} {r['unit']}" if r["baseline"] is not None else "-",
         str(r["ratio"]), r["goal"], "met" if r["met"] else "NOT met", r["note"]) for r in rows]
    print(columns(lines))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
