"""Where a `/v1/check` goes, without sockets (issue 21): the gate against the check floor, each fed the same raw
HTTP requests through aiohttp's own protocol in this process.

bench.http_gate measures the gate and the floor over loopback, where the load generator, the kernel and the other
core's work move every figure from run to run. Here nothing else runs: each request's bytes go to the
application's `RequestHandler.data_received` on uvloop, and the answer goes to a transport that drops it. What
is timed is the process's CPU a request, for the floor (bench/_floor.py's check: aiohttp, orjson, a dict lookup)
and for the gate (`create_app` on the bench plan and a SQLite file, every check authorized, validated, decided
and answered as over a socket). The difference is the gate's own code a check, and the floor's figure is what
aiohttp itself costs a request, which no change to the gate removes. Both figures are the best of `--repeats`
runs of `--requests` requests, cycling through 4 subjects and through `--subjects` (the gate's cache warmed with
each first).

No goal of its own: it shows how much of a check is the gate's, for work on issue 21's ratio (0.85 of the floor
over sockets leaves the gate's code about 0.15 of the floor's whole cost, syscalls included).

    python -m bench.check_in_process [--requests 10000] [--repeats 5] [--subjects 10000]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._columns import columns  # noqa: E402
from bench._floor import check_floor_app  # noqa: E402
from bench._harness import METER, gate_env, write_plan  # noqa: E402


class _Sink(asyncio.Transport):
    """A connection that drops what is written but the last write; `written` is resolved by the first write after
    it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.written: asyncio.Future | None = None
        self.last = b""

    def write(self, data) -> None:
        self.last = data
        if self.written is not None and not self.written.done():
            self.written.set_result(None)

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _requests(subjects: int, token: str) -> list[bytes]:
    import orjson

    out = []
    for i in range(subjects):
        body = orjson.dumps({"subject": f"bench-check-{i}", "meter": METER, "amount": 1})
        out.append(b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
                   b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (token.encode(), len(body), body))
    return out


async def _cpu_per_request(app, raw: list[bytes], requests: int, repeats: int) -> tuple[float, bytes]:
    """(best µs of process CPU a request, the last answer's status line) for `app` fed `raw` in turn."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        protocol = runner.server()
        sink = _Sink()
        protocol.connection_made(sink)
        loop = asyncio.get_running_loop()

        async def one(request: bytes) -> None:
            sink.written = loop.create_future()
            protocol.data_received(request)
            await sink.written
            for _ in range(3):      # the handler's end (its metrics, the response's end) after the write
                await asyncio.sleep(0)

        for request in raw:     # each subject once: the gate's cache holds them all
            await one(request)
        gc.collect()
        best = float("inf")
        for _ in range(repeats):
            started = time.process_time()
            for i in range(requests):
                await one(raw[i % len(raw)])
            best = min(best, (time.process_time() - started) / requests * 1e6)
        return best, bytes(sink.last).split(b"\r\n", 1)[0]
    finally:
        await runner.cleanup()


async def _measure(folder: Path, subjects: int, requests: int, repeats: int) -> dict:
    from plangate.engine import compile_file
    from plangate.server.config import Config
    from plangate.server.http.app import create_app
    from plangate.server.store import open_store

    token = secrets.token_urlsafe(24)
    config = Config.from_env(gate_env(PLANGATE_API_TOKEN=token, PLANGATE_ADMIN_TOKEN=secrets.token_urlsafe(24),
                                      PLANGATE_DATABASE=str(folder / f"gate-{subjects}.sqlite3"),
                                      PLANGATE_PLANS=str(write_plan(folder)),
                                      STRIPE_WEBHOOK_SECRET="whsec_" + secrets.token_hex(16),   # no warning logged
                                      PLANGATE_CACHE_SIZE=str(max(10_000, 2 * subjects))))
    raw = _requests(subjects, token)
    floor, floor_status = await _cpu_per_request(check_floor_app(subjects), raw, requests, repeats)
    table = compile_file(config.plans)
    gate_app = create_app(config, table, open_store(config.database, **config.store_options()), run_jobs=False)
    gate, gate_status = await _cpu_per_request(gate_app, raw, requests, repeats)
    for which, status in (("floor", floor_status), ("gate", gate_status)):
        if not status.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"check_in_process: the {which} answered {status!r}, not 200")
    return {"what": f"/v1/check in-process, {subjects} subjects: gate CPU vs floor", "figure": round(gate, 2),
            "unit": "us", "baseline": round(floor, 2), "baseline_what": "the floor in-process",
            "ratio": round(floor / gate, 3), "goal": "(shown)", "met": None,
            "note": f"the gate's own code {gate - floor:.1f} us a check; aiohttp's part (the floor) {floor:.1f} us"}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.check_in_process", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="checks timed in each run")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each app; the best is reported")
    parser.add_argument("--subjects", type=int, default=10_000, help="the many subjects, besides 4")
    args = parser.parse_args([] if argv is None else argv)
    import uvloop

    rows = []
    with tempfile.TemporaryDirectory(prefix="plangate-bench-") as tmp:
        for subjects in sorted({4, args.subjects}):
            rows.append(uvloop.run(_measure(Path(tmp), subjects, args.requests, args.repeats)))
    lines = [("what", "gate", "floor", "floor/gate", "note")] + [
        (r["what"], f"{r['figure']} us", f"{r['baseline']} us", str(r["ratio"]), r["note"]) for r in rows]
    print(columns(lines))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
