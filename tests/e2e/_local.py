"""What the fault, abuse and soak tests share: a real gate app served on 127.0.0.1 over a store of the test's
choosing, with jobs run only on demand, signed Stripe deliveries, and metrics read back from /metrics."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.server import stripe_events as se
from tests.server.conftest import ROOT, TOKEN, ServedGate

# Jobs run when a test asks, never by the clock in the middle of one.
QUIET = {"PLANGATE_SWEEP_SCHEDULE": "0 0 1 1 *", "PLANGATE_RECONCILE_SCHEDULE": "0 0 1 1 *",
         "PLANGATE_CLEANUP_SCHEDULE": "0 0 1 1 *", "STRIPE_WEBHOOK_SECRET": se.SECRET}


async def deliver(session: aiohttp.ClientSession, url: str, evt: dict, *, timestamp: int | None = None,
                  secret: str = se.SECRET) -> tuple[int, dict]:
    body = se.encode(evt)
    headers = {"Stripe-Signature": se.sign(body, secret, timestamp), "Content-Type": "application/json"}
    async with session.post(url + "/webhook/stripe", data=body, headers=headers) as r:
        return r.status, json.loads(await r.text())


async def metrics(gate: ServedGate) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    status, text = await gate.get("/metrics", token=None)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def q(database: str, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(database) as db:
        return db.execute(sql, args).fetchall()


def sample(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> dict[str, int]:
    """The process's open descriptors by kind: socket, pipe, file, other."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = "socket" if target.startswith("socket:") else "pipe" if target.startswith("pipe:") else \
            "file" if target.startswith("/") else "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def now() -> float:
    return time.time()


class CheckLatency:
    """`async with CheckLatency(url) as probe:` measures /v1/check from a process of its own (tests/e2e/_probe.py)
    for as long as the block runs; then probe.ms holds the latencies (milliseconds) and probe.errors the failures."""

    def __init__(self, url: str, what: str):
        self.url, self.what = url, what
        self.ms: list[float] = []
        self.errors = 0

    async def __aenter__(self) -> CheckLatency:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e._probe", self.url, TOKEN, cwd=str(ROOT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self._proc.stderr.readline(), 20)
        assert line.strip() == b"ready", line
        await asyncio.sleep(0.3)            # the probe's first checks warm the gate's cache
        return self

    async def __aexit__(self, *exc) -> None:
        self._proc.stdin.close()
        out, err = await asyncio.wait_for(self._proc.communicate(), 30)
        assert self._proc.returncode == 0, err.decode()
        found = json.loads(out)
        self.ms, self.errors = found["ms"], found["errors"]

    def summary(self) -> str:
        ms = self.ms
        return (f"/v1/check latency {self.what}: n={len(ms)} p50={percentile(ms, 50):.2f} ms "
                f"p99={percentile(ms, 99):.2f} ms max={max(ms):.2f} ms errors={self.errors}")

    def p99(self) -> float:
        return percentile(self.ms, 99)
