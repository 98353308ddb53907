"""What the webhook benchmarks share: signed Stripe events as Stripe sends them, written to request files, the
load generators that deliver them (wrk with a script that cycles through a file, or a Python aiohttp client),
and the gate that takes them, with what it stored."""
from __future__ import annotations

import json
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._harness import Result, Server, dist_of, parse_wrk_dist, percentile, wrk_dist_lua  # noqa: E402
from bench._harness import start_gate as harness_start_gate  # noqa: E402
from tests.server import stripe_events as se  # noqa: E402

PATH = "/webhook/stripe"
TOLERANCE = 300                 # the gate's default STRIPE_WEBHOOK_TOLERANCE, in seconds
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
    """The harness's wrk run (one thread, same RESULT line), with a script that sends pre-signed requests."""
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
    """The fallback: an aiohttp client in a process of its own, as the harness runs its own."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from bench._webhooks import python_load_main; python_load_main()")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(shot))], capture_output=True, text=True,
                          timeout=shot.duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the Python load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(**got["result"]), got["outcomes"]


def python_load_main() -> None:
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
        return (Result(len(latencies), seconds, errors, percentile(latencies, 50) * 1000,
                       percentile(latencies, 99) * 1000, dist=dist_of(latencies)), outcomes)

    result, outcomes = asyncio.run(run())
    print(json.dumps({"result": asdict(result), "outcomes": outcomes}), flush=True)


# --- the gate -----------------------------------------------------------------------------------

def start_gate(folder: Path, secret: str, synchronous: str, token: str | None = None,
               **settings: str) -> Server:
    """`plangate serve` (the harness's process) with the shipped plan, a webhook secret, the /v1/ token (a
    random one unless given) and any other PLANGATE_ settings; its database is gate-<synchronous>.sqlite3."""
    return harness_start_gate(
        f"gate-{synchronous.lower()}", folder, PLANGATE_API_TOKEN=token or secrets.token_urlsafe(24),
        PLANGATE_PLANS=str(ROOT / "plans.yaml"), PLANGATE_DATABASE=str(folder / f"gate-{synchronous.lower()}.sqlite3"),
        PLANGATE_SQLITE_SYNCHRONOUS=synchronous, STRIPE_WEBHOOK_SECRET=secret, **settings)


def stored(database: Path) -> dict:
    """What the gate's store holds after the runs: events by outcome, and subjects by status."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        events = dict(db.execute("SELECT outcome, COUNT(*) FROM subscription_events GROUP BY outcome").fetchall())
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM subscriptions GROUP BY status").fetchall())
    finally:
        db.close()
    return {"events": events, "statuses": statuses}
