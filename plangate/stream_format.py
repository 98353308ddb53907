"""What GET /v1/stream says beyond Server-Sent Events' own syntax, written by the gate (server/changes.py,
server/http/stream_api.py) and read by GateClient(local=True) (local_decisions.py): one definition for both."""
from __future__ import annotations

# A stream's answer header (and HEAD /v1/stream's): "<epoch> <seconds>", the gate process's monotonic clock as the
# stream starts, the clock its stamps are in.
CLOCK_HEADER = "X-Plangate-Clock"
_STAMP = b": at "
STAMP_SIZE = 32      # bytes a stamp takes at most (a monotonic clock of up to 18 digits before the point)


def stamp(at: float) -> bytes:
    """The comment that ends a write to a stream: every event the gate published before `at` (its monotonic clock)
    has been written to it."""
    return _STAMP + b"%.6f\n\n" % at


def stamped(line: bytes) -> float | None:
    """The time of a stamp's line (without its line break), or None when the line is no stamp. ValueError when it
    is one whose time is not a number."""
    return float(line[len(_STAMP):]) if line.startswith(_STAMP) else None
