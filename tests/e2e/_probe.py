"""A /v1/check latency probe in a process of its own, so that what it measures is the gate, not the test's busy
event loop: one keep-alive connection, one check every few milliseconds, until its standard input closes (at
most 120 s). Prints the latencies in milliseconds as one JSON list.

    python -m tests.e2e._probe http://127.0.0.1:PORT TOKEN
"""
from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

PAUSE = 0.002
LIMIT = 120.0


def main(url: str, token: str) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    body = json.dumps({"subject": "probe-user", "meter": "requests", "amount": 1})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    out, errors = [], 0
    started = time.monotonic()
    print("ready", file=sys.stderr, flush=True)
    while not stop.is_set() and time.monotonic() - started < LIMIT:
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/check", body, headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            ok = False
        if ok:
            out.append((time.perf_counter() - t0) * 1000)
        else:
            errors += 1
        stop.wait(PAUSE)
    print(json.dumps({"ms": out, "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
