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
MAX_SESSIONS = 1000        # per scope, the oldest first: a flood of logins cannot grow the process without bound,
                           # and read-only logins (the API token, known to more) never push out an admin's
FAILED_LOGINS = 10         # wrong tokens an address may give per FAILED_WINDOW before it is answered 429
FAILED_WINDOW = 60.0
MAX_ADDRESSES = 10000      # addresses whose failures are remembered; the oldest is forgotten first


@dataclass(frozen=True, slots=True)
class Session:
    label: str
    admin: bool           # the admin token: may act; the API token: a read-only console
    csrf: str
    expires: float


class Sessions:
    """The console sessions of this gate process (a restart logs everyone out)."""

    def __init__(self, clock=time.time):
        # One map per scope (admin or not), each in order of opening, which is the order of expiry too.
        self._scopes: dict[bool, dict[str, Session]] = {True: {}, False: {}}
        self._clock = clock

    def open(self, label: str, admin: bool, replacing: str | None = None) -> tuple[str, Session]:
        """A new session; the one the browser presented (replacing) ends, so a login never leaves two."""
        self.close(replacing)
        scope, now = self._scopes[admin], self._clock()
        while scope and next(iter(scope.values())).expires <= now:      # the expired go first
            del scope[next(iter(scope))]
        while len(scope) >= MAX_SESSIONS:
            del scope[next(iter(scope))]
        sid = secrets.token_urlsafe(32)
        session = Session(label, admin, secrets.token_urlsafe(32), now + LIFETIME)
        scope[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        for scope in self._scopes.values():
            session = scope.get(sid)
            if session is not None:
                if session.expires <= self._clock():
                    del scope[sid]
                    return None
                return session
        return None

    def close(self, sid: str | None) -> None:
        if sid:
            for scope in self._scopes.values():
                scope.pop(sid, None)

    def __len__(self) -> int:
        return sum(len(scope) for scope in self._scopes.values())


class FailedLogins:
    """Wrong tokens counted per client address in a fixed window: past FAILED_LOGINS a minute the address waits,
    so the tokens cannot be guessed at the speed of the network. Memory is bounded by MAX_ADDRESSES."""

    def __init__(self, clock=time.monotonic):
        self._by_address: dict[str, tuple[float, int]] = {}     # address -> (window start, failures in it)
        self._clock = clock

    def wait(self, address: str) -> int:
        """Seconds the address must wait before it may try again; 0 when it may now."""
        start, count = self._by_address.get(address, (0.0, 0))
        left = start + FAILED_WINDOW - self._clock()
        return max(1, int(left + 0.999)) if count >= FAILED_LOGINS and left > 0 else 0

    def failed(self, address: str) -> None:
        now = self._clock()
        start, count = self._by_address.pop(address, (now, 0))
        if start + FAILED_WINDOW <= now:
            start, count = now, 0
        while len(self._by_address) >= MAX_ADDRESSES:
            del self._by_address[next(iter(self._by_address))]
        self._by_address[address] = (start, count + 1)      # at the end again: the most recently failed


def same(given: str | None, expected: str) -> bool:
    """A CSRF token compared in constant time; a missing or non-ASCII one is refused."""
    if not given or not given.isascii():
        return False
    return hmac.compare_digest(given, expected)
