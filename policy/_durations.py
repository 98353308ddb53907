"""Durations as product owners write them: a whole number and a unit (7d, 36h, 90m, 30s, 2w)."""
from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# The longest duration: a hundred years. Beyond it no timer, grant or window means anything, and a date that far
# on (a timer at year 273,792,727) is past what a datetime holds: views of the subject failed with a 500.
LONGEST = 36_525 * 86400
_FORM = re.compile(r"\s*(-?\d+)\s*([smhdw])\s*")


class DurationError(ValueError):
    pass


def parse_duration(text: object) -> int:
    """Seconds in a duration; DurationError says what is wrong with it."""
    if not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration: write a whole number and a unit, e.g. 7d")
    match = _FORM.fullmatch(text)
    if not match:
        raise DurationError(
            f"{text!r} is not a duration: write a whole number and a unit (s, m, h, d or w), e.g. 7d or 36h")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds <= 0:
        raise DurationError(f"{text!r} is not a positive duration: a timer must run for some time")
    if seconds > LONGEST:
        raise DurationError(f"{text!r} is longer than 100 years (36525d): write at most that")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in sorted(UNITS.items(), key=lambda kv: -kv[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
