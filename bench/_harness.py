"""What the benchmarks share: server processes (a `plangate serve`, the bare aiohttp endpoint every HTTP figure
is compared with), the load generators for /v1/ (wrk, or a Python aiohttp client in a process of its own),
latency percentiles, the options every HTTP bench takes, and the checks that a run measured the store.

A benchmark imports what it needs from here (or from bench/_webhooks.py for signed Stripe deliveries), never
from another benchmark's module.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
METER = "requests"
ENTITLED_METER = "tokens"        # http_gate check_entitled's meter (write_plan adds it)
SUBJECTS = 4                    # "the same few subjects": warm cache
MAX_REQUESTS = 500_000          # per measured run, whatever the duration
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
ENDPOINTS = ("check", "consume")   # the /v1/ endpoints the load generators drive
_LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")
# Percentiles of the latency distribution every run reports (for the report's chart), wrk or Python.
DIST_PCTS = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 100)


# --- the bare endpoint ------------------------------------------------------------------------------

def bare_answers(subjects: int = SUBJECTS) -> dict:
    """Decision-shaped answers for `subjects` subjects of each endpoint, so that a baseline sends as many bytes
    as the gate does and looks its subject up in a dict as large as the gate's working set."""
    answer = {"allowed": True, "reason": "within_quota", "status": "limited_free_trial", "tier": None,
              "meter": METER, "amount": 1, "limit": 1_000_000_000, "used": 1, "remaining": 999_999_999,
              "window_start": "2024-01-01T00:00:00Z", "resets_at": "2024-01-02T00:00:00Z", "retry_after": None,
              "rule": f"{tempfile.gettempdir()}/plangate-bench-01234567/plans.yaml:60 "
                      "statuses.limited_free_trial.quotas.requests"}
    answers = {}
    for kind in ENDPOINTS:
        for i in range(subjects):
            subject = f"bench-{kind}-{i}"
            answers[subject] = {"subject": subject, **answer}
    return answers


def serve_app(name: str, app, port: int, *, on_uvloop: bool = False, setup=None, cleanup=None) -> None:
    """Serve an aiohttp app the way `plangate serve` serves the gate (AppRunner, no access log), on uvloop or
    the running event loop policy, until SIGINT or SIGTERM; the first stdout line says where it listens.
    setup/cleanup: coroutine functions run before serving and after. What the baselines (the bare endpoint,
    bench/_floor.py's floors) share."""
    import asyncio

    from aiohttp import web

    async def run() -> None:
        if setup is not None:
            await setup()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, port).start()
            host, bound = runner.addresses[0][:2]
            print(f"{name}: listening on http://{host}:{bound}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
            if cleanup is not None:
                await cleanup()

    if on_uvloop:
        import uvloop
        uvloop.run(run())
    else:
        asyncio.run(run())


def serve_bare(port: int, subjects: int = SUBJECTS) -> None:
    """The old baseline: aiohttp on plain asyncio, bodies parsed and answered with the stdlib json
    (web.json_response), the answer from a dict of `subjects` subjects an endpoint."""
    from aiohttp import web

    answers = bare_answers(subjects)
    default = next(iter(answers.values()))

    async def decide(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return web.json_response(answers.get(body.get("subject"), default))

    async def count(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        answer = dict(answers.get(body.get("subject"), default), counted=True, duplicate=False)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/check", decide)
    app.router.add_post("/v1/consume", count)
    serve_app("bare", app, port)


# --- server processes -------------------------------------------------------------------------------

_UVLOOP_PRELUDE = "import sys, uvloop; uvloop.install(); "


class Server:
    """A server process whose first stdout line says where it listens; output goes to files in `folder`."""

    def __init__(self, name: str, argv: list[str], env: dict, folder: Path):
        self.name = name
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)
        self.url = self._wait_listening()

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.out_path.read_text())
            if found:
                return f"http://{found.group(1)}:{found.group(2)}"
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} before listening: "
                                   f"{self.err_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen within {START_TIMEOUT:.0f}s")

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, all threads) the process has used so far; None where /proc is missing."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_us_per_request(self, before: float | None, requests: int) -> float | None:
        """CPU microseconds a request since `before` (a cpu_seconds() reading); None when unknown."""
        after = self.cpu_seconds()
        if before is None or after is None or not requests:
            return None
        return (after - before) / requests * 1e6

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gate_argv() -> list[str]:
    """`plangate serve` under the bench's interpreter (it runs on uvloop by itself)."""
    return [sys.executable, "-m", "plangate.cli", "serve", "--env-file", "", "--create-store"]


def gate_env(**settings: str) -> dict:
    """The environment of a bench's `plangate serve`: the bench's own environment without any PLANGATE_,
    SUBSCRIPTION_ or STRIPE_ setting of the shell, enforcement on, 127.0.0.1 on a free port, a dummy Stripe key,
    then `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "SUBSCRIPTION_", "STRIPE_"))}
    # write_plan's plan sells a credit pack, which needs a Stripe key: a dummy one, whose API address nothing
    # listens on (no bench buys a pack), and the jobs that would ask Stripe never scheduled within a bench.
    env.update({"SUBSCRIPTION_ENABLED": "true", "PLANGATE_HOST": HOST, "PLANGATE_PORT": "0",
                "STRIPE_SECRET_KEY": "sk_test_bench_0123456789", "STRIPE_API_BASE": f"http://{HOST}:9",
                "PLANGATE_RECONCILE_SCHEDULE": "0 0 1 1 *", "PLANGATE_OVERAGE_REPORT_SCHEDULE": "0 0 1 1 *",
                **settings})
    return env


def start_gate(name: str, folder: Path, argv: list[str] | None = None, **settings: str) -> Server:
    """`plangate serve` (or `argv`) with gate_env(**settings), its output in `folder`."""
    return Server(name, argv or gate_argv(), gate_env(**settings), folder)


def start_bare(folder: Path, uvloop: bool, subjects: int = SUBJECTS) -> Server:
    """The old baseline (plain asyncio unless `uvloop`, stdlib json) in a process of its own."""
    code = (f"{_UVLOOP_PRELUDE if uvloop else 'import sys; '}sys.path.insert(0, {str(ROOT)!r}); "
            f"from bench._harness import serve_bare; serve_bare(0, {int(subjects)})")
    return Server("bare", [sys.executable, "-c", code], dict(os.environ), folder)


def start_floor(folder: Path, subjects: int = SUBJECTS) -> Server:
    """The check/consume floor on the gate's own stack (bench/_floor.py: uvloop, orjson, web.Response)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"from bench._floor import serve_check_floor; serve_check_floor(0, {int(subjects)})")
    return Server("floor", [sys.executable, "-c", code], dict(os.environ), folder)


def migrate_sqlite(path: Path) -> None:
    """A SQLite store at `path` with every migration applied (for benches that fill it in bulk afterwards)."""
    import asyncio

    from plangate.server.store import SQLiteStore

    async def migrate() -> None:
        store = SQLiteStore(str(path))
        await store.open()
        try:
            await store.migrate()
        finally:
            await store.close()
    asyncio.run(migrate())


def write_plan(folder: Path) -> Path:
    """The shipped plan with every quota of the initial status raised out of reach."""
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML 1.2 booleans: `on:` (a transition's trigger) stays a key, not True."""

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in found if tag != bool_tag]
                                      for first, found in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    plan = yaml.load((ROOT / "plans.yaml").read_text(encoding="utf-8"), Loader=Loader)
    initial = [s for s in plan["statuses"].values() if s.get("initial")]
    if len(initial) != 1:
        raise RuntimeError("plans.yaml: expected exactly one initial status")
    initial[0]["quotas"] = {meter: {"limit": 10**12, "per": "day"} for meter in plan["meters"]}
    # What http_gate's check_entitled asks (issue 19): a feature, and a meter per seat whose credits decide once
    # its limit is used up. Plain checks and consumes never meet them.
    plan["meters"][ENTITLED_METER] = {"description": "check_entitled's meter", "fail_mode": "open"}
    plan["features"] = {"sso": {"description": "check_entitled's feature"}}
    plan["credits"] = {ENTITLED_METER: {"packs": {"price_bench_pack": 1000}}}
    initial[0]["features"] = ["sso"]
    initial[0]["quotas"][ENTITLED_METER] = {"limit": 10, "per": "day", "per_unit": {"trait": "seats"}}
    path = folder / "plans.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


# --- load generators --------------------------------------------------------------------------------

@dataclass
class Load:
    url: str                # base URL
    endpoint: str           # "check" or "consume"
    token: str
    connections: int
    duration: float
    max_requests: int
    key_prefix: str         # unique per run: consume's idempotency keys never repeat
    subjects: int = SUBJECTS    # distinct subjects the requests cycle through
    pause_ms: int = 0       # paced runs: each connection waits this long after an answer before its next request

    @property
    def path(self) -> str:
        return "/v1/check" if self.endpoint == "check_entitled" else f"/v1/{self.endpoint}"


@dataclass
class Result:
    requests: int
    seconds: float
    errors: int             # non-200 answers, timeouts, connection errors
    p50_ms: float
    p99_ms: float
    cpu_us: float | None = None     # the server's CPU time per request, in microseconds
    dist: list | None = None        # [[percentile, ms], ...] at DIST_PCTS: the latency distribution

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_WRK_SCRIPT = r"""
local endpoint, token, prefix = "%(endpoint)s", "%(token)s", "%(prefix)s"
local subjects, max_per_thread = %(subjects)d, %(max)d
local counter, answered = 0, 0
local threads = {}
local tid = 0
function setup(thread)
  tid = tid + 1
  thread:set("thread_id", tid)
end
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
function request()
  counter = counter + 1
  local subject = string.format("bench-%%s-%%d", endpoint, counter %% subjects)
  local body
  if endpoint == "check_entitled" and counter %% 2 == 0 then
    body = string.format('{"subject":"%%s","feature":"sso"}', subject)
  elseif endpoint == "check_entitled" then
    body = string.format('{"subject":"%%s","meter":"%(entitled_meter)s","amount":1}', subject)
  elseif endpoint == "consume" then
    body = string.format('{"subject":"%%s","meter":"%(meter)s","amount":1,"idempotency_key":"%%s-%%d-%%d"}',
                         subject, prefix, thread_id, counter)
  else
    body = string.format('{"subject":"%%s","meter":"%(meter)s","amount":1}', subject)
  end
  return wrk.format("POST", "%(path)s", headers, body)
end
function delay()
  return %(pause)d
end
function response(status, headers, body)
  answered = answered + 1
  if answered >= max_per_thread then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\n", summary.requests, summary.duration,
           e.connect + e.read + e.write + e.timeout + e.status, latency:percentile(50), latency:percentile(99)))
  io.write("DIST")
  for _, p in ipairs({%(pcts)s}) do
    io.write(string.format(" %%s:%%d", p, p >= 100 and latency.max or latency:percentile(p)))
  end
  io.write("\n")
end
"""


def parse_wrk_dist(stdout: str) -> list | None:
    """The DIST line a bench's wrk script writes: `DIST pct:micros ...` -> [[pct, ms], ...]."""
    found = re.search(r"^DIST (.*)$", stdout, re.M)
    if not found:
        return None
    return [[float(p), int(us) / 1000] for p, us in (item.split(":") for item in found.group(1).split())]


def wrk_dist_lua() -> str:
    """DIST_PCTS as a Lua list, for a wrk script's done()."""
    return ", ".join(f"{p:g}" for p in DIST_PCTS)


def dist_of(ordered: list[float]) -> list:
    """[[pct, ms], ...] at DIST_PCTS from sorted latencies in seconds."""
    return [[p, round(percentile(ordered, p) * 1000, 3)] for p in DIST_PCTS] if ordered else []


def run_wrk(load: Load, folder: Path, threads: int = 1) -> Result:
    script = folder / f"{load.endpoint}-{load.key_prefix}.lua"
    script.write_text(_WRK_SCRIPT % {"endpoint": load.endpoint, "token": load.token, "prefix": load.key_prefix,
                                     "subjects": load.subjects, "max": max(1, load.max_requests // threads),
                                     "meter": METER, "pcts": wrk_dist_lua(), "pause": load.pause_ms,
                                     "entitled_meter": ENTITLED_METER, "path": load.path})
    argv = ["wrk", f"-t{threads}", f"-c{load.connections}", f"-d{max(1, round(load.duration))}s",
            "--timeout", "2s", "-s", str(script), load.url + load.path]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=load.duration + 30)
    found = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
    requests, micros, errors, p50, p99 = map(int, found.groups())
    return Result(requests, micros / 1e6, errors, p50 / 1000, p99 / 1000, dist=parse_wrk_dist(done.stdout))


def run_python_generator(load: Load) -> Result:
    """The fallback: an aiohttp client in a process of its own (so it does not share the servers' loop)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from bench._harness import python_load_main; python_load_main()")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(load))], capture_output=True, text=True,
                          timeout=load.duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the Python load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return Result(**json.loads(done.stdout.strip().splitlines()[-1]))


def python_load_main() -> None:
    import asyncio

    import aiohttp

    load = Load(**json.loads(sys.argv[1]))

    async def run() -> Result:
        url = load.url + load.path
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {load.token}"}
        latencies: list[float] = []
        errors = 0
        issued = 0
        connector = aiohttp.TCPConnector(limit=load.connections)
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.perf_counter()
            deadline = started + load.duration

            async def worker(wid: int) -> None:
                nonlocal errors, issued
                n = 0
                while issued < load.max_requests and time.perf_counter() < deadline:
                    issued += 1
                    n += 1
                    subject = f"bench-{load.endpoint}-{(wid * 7919 + n) % load.subjects}"
                    body = {"subject": subject, "meter": METER, "amount": 1}
                    if load.endpoint == "check_entitled":
                        body = ({"subject": subject, "feature": "sso"} if n % 2 == 0 else
                                {**body, "meter": ENTITLED_METER})
                    if load.endpoint == "consume":
                        body["idempotency_key"] = f"{load.key_prefix}-{wid}-{n}"
                    data = json.dumps(body).encode()
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=data, headers=headers) as resp:
                            await resp.read()
                            ok = resp.status == 200
                    except (TimeoutError, aiohttp.ClientError):
                        ok = False
                    latencies.append(time.perf_counter() - t0)
                    errors += not ok
                    if load.pause_ms:
                        await asyncio.sleep(load.pause_ms / 1000)

            await asyncio.gather(*(worker(i) for i in range(load.connections)))
            seconds = time.perf_counter() - started
        latencies.sort()
        return Result(len(latencies), seconds, errors, percentile(latencies, 50) * 1000,
                      percentile(latencies, 99) * 1000, dist=dist_of(latencies))

    print(json.dumps(asdict(asyncio.run(run()))), flush=True)


def percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def choose_generator(wanted: str) -> str:
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit("bench: --generator wrk, but wrk is not on PATH (Debian: apt-get install wrk)")
    return wanted


# --- checks of a run -------------------------------------------------------------------------------

def probe(url: str, endpoint: str, token: str) -> dict:
    """One request before the load: the endpoint answers 200 and allows (else the figures mean nothing)."""
    if endpoint == "check_entitled":       # its subjects are set up and checked by http_gate
        return {}
    body = {"subject": f"bench-{endpoint}-0", "meter": METER, "amount": 1}
    if endpoint == "consume":
        body["idempotency_key"] = f"probe-{secrets.token_hex(8)}"
    req = urllib.request.Request(f"{url}/v1/{endpoint}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer = json.loads(resp.read())
    if not answer.get("allowed") or answer.get("reason") in _NOT_DECIDED or answer.get("counted") is False:
        raise RuntimeError(f"{url}/v1/{endpoint}: the probe was not decided and counted normally: {answer}")
    return answer


_NOT_DECIDED = ("fail_open", "fail_closed", "disabled", "kill_switch")


def gate_troubles(url: str) -> dict[str, float]:
    """Answers the gate gave without its store (fail mode) and store errors, from /metrics: a run where
    these are not zero measured the fallback, not the store."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = {"fail_mode_answers": 0.0, "store_errors": 0.0}
    for line in text.splitlines():
        for name in found:
            if line.startswith(f"plangate_{name}_total"):
                found[name] += float(line.rsplit(" ", 1)[1])
    return found


def load_options(parser: argparse.ArgumentParser, duration: float) -> None:
    """The options every HTTP bench takes: run lengths, rounds, connections, load generator, event loop."""
    parser.add_argument("--duration", type=float, default=duration,
                        help=f"seconds per measured run (default {duration:g})")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per server")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measured runs per server, gate and bare interleaved; the best (most req/s) of each "
                             "is reported (default 2)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--uvloop", action="store_true",
                        help="run the bare baseline on uvloop too (the gate always runs on it, as `plangate serve` "
                             "does): a stricter baseline than the plain aiohttp endpoint the goals are set against")
