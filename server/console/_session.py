"""Console sessions: a token entered once in the login form becomes a random session id in an HttpOnly cookie.
The token itself is never stored, put in a URL or logged; each session carries its own CSRF token and the label
its user gave (audited as the actor of what they do)."""
from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "plangate_console"
LOGIN_COOKIE = "plangate_console_login"   # the login form's own CSRF token (double submit): no session yet
LIFETIME = 8 * 3600.0      # a working day; then the token is asked for again
MAX_SESSIONS = 1000        # the oldest goes first: a flood of logins cannot grow the process without bound


@dataclass(frozen=True, slots=True)
class Session:
    label: str
    admin: bool           # the admin token: may act; the API token: a read-only console
    csrf: str
    expires: float


class Sessions:
    """The console sessions of this gate process (a restart logs everyone out)."""

    def __init__(self, clock=time.time):
        self._by_id: dict[str, Session] = {}
        self._clock = clock

    def open(self, label: str, admin: bool) -> tuple[str, Session]:
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]
        sid = secrets.token_urlsafe(32)
        session = Session(label, admin, secrets.token_urlsafe(32), self._clock() + LIFETIME)
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid) if sid else None
        if session is not None and session.expires <= self._clock():
            del self._by_id[sid]  # type: ignore[arg-type]
            return None
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)


def same(given: str | None, expected: str) -> bool:
    """A CSRF token compared in constant time; a missing or non-ASCII one is refused."""
    if not given or not given.isascii():
        return False
    return hmac.compare_digest(given, expected)
