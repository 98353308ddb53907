"""Console sessions: a token entered once in the login form becomes a random session id in an HttpOnly cookie.
The token itself is never stored, put in a URL or logged; each session carries its own CSRF token and the label
its user gave (audited as the actor of what they do). Sessions live in the store (its SHA-256 of the id).

A session's row keeps a MAC of the token that opened it, keyed by the session id (which only the browser holds):
a session opens pages only while that token is still one of its scope's, so rotating a token (a leak) ends the
console sessions it opened, on every node. The cookie holds nothing but the random id, and the row nothing a
token could be tested against without it."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from ..gate import Gate, StoreUnavailable
from ..http._auth import matches
from ..store import ConsoleSession

COOKIE = "plangate_console"
LOGIN_COOKIE = "plangate_console_login"   # the login form's own CSRF token (double submit): no session yet
LIFETIME = 8 * 3600.0      # a working day; then the token is asked for again
MAX_SESSIONS = 1000        # per scope, the oldest first: a flood of logins cannot grow the store without bound,
                           # and read-only logins (the API token, known to more) never push out an admin's
FAILED_LOGINS = 10         # wrong tokens an address may give per FAILED_WINDOW before it is answered 429
FAILED_WINDOW = 60.0
MAX_ADDRESSES = 10000      # addresses whose failures are remembered; the oldest is forgotten first
REMEMBERED = 600.0         # seconds a session seen in the store still opens pages while the store cannot be read


class Sessions:
    """The console's sessions, kept in the store: every gate process on it knows them (a console behind a load
    balancer), and a restart logs nobody out. The store holds the SHA-256 of a session id, never the id. Each
    store call runs within the gate's time budget (StoreUnavailable past it). While the store cannot be read,
    a session this process saw in the store within REMEMBERED seconds still opens the pages (the health page
    says what is wrong); a logout elsewhere reaches this process once the store answers again."""

    def __init__(self, gate: Gate, api: tuple[str, ...], admin: tuple[str, ...], clock=time.time):
        """api, admin: the Authorization values (`Bearer <token>`) each scope accepts now."""
        self._gate = gate
        self._tokens = {False: api, True: admin}
        self._clock = clock
        self._seen: dict[str, tuple[float, ConsoleSession]] = {}     # id hash -> (when seen, session), oldest first

    async def open(self, label: str, admin: bool, token: str, replacing: str | None = None) \
            -> tuple[str, ConsoleSession]:
        """A new session opened by `token` (its Authorization value, one of its scope's); the one the browser
        presented (replacing) ends, so a login never leaves two. Past MAX_SESSIONS of its scope the oldest ends;
        expired ones end first."""
        sid, now = secrets.token_urlsafe(32), self._clock()
        session = ConsoleSession(_digest(sid), label, admin, secrets.token_urlsafe(32), now, now + LIFETIME,
                                 _mac(sid, token))
        ended = _hashed(replacing)
        await self._gate.timed("session", self._gate.store.open_console_session(session, MAX_SESSIONS, ended))
        if ended is not None:
            self._seen.pop(ended, None)
        return sid, session

    async def get(self, sid: str | None) -> ConsoleSession | None:
        id_hash, now = _hashed(sid), self._clock()
        if id_hash is None:
            return None
        try:
            session = await self._gate.timed("session", self._gate.store.console_session(id_hash))
        except StoreUnavailable:
            seen, session = self._seen.get(id_hash, (0.0, None))
            if session is None or now - seen > REMEMBERED:
                raise
        else:
            self._seen.pop(id_hash, None)
            if session is not None:
                while len(self._seen) >= MAX_SESSIONS:
                    del self._seen[next(iter(self._seen))]
                self._seen[id_hash] = (now, session)
        if session is None or session.expires <= now or not self._still_valid(sid or "", session):
            return None
        return session

    def _still_valid(self, sid: str, session: ConsoleSession) -> bool:
        """Was the session opened by a token its scope still accepts (each compared in constant time)?"""
        return matches(session.token_mac, tuple(_mac(sid, token) for token in self._tokens[session.admin]))

    async def close(self, sid: str | None) -> None:
        id_hash = _hashed(sid)
        if id_hash is not None:
            self._seen.pop(id_hash, None)
            await self._gate.timed("session", self._gate.store.close_console_session(id_hash))


def _hashed(sid: str | None) -> str | None:
    """What the store keys a session by; None for a cookie that cannot be one of ours (none, or too long)."""
    return _digest(sid) if sid and len(sid) <= 100 else None


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()


def _mac(sid: str, token: str) -> str:
    """HMAC-SHA256 of the token that opened a session, keyed by the session's id (hex)."""
    return hmac.new(sid.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()


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
