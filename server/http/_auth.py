"""Bearer tokens by scope: an API token for the workflow server (check, consume, usage, reading a subject), an
admin token for what changes state on a person's word (transitions, jobs) and everything else. Several tokens
of a scope may be valid at once (rotation without downtime)."""
from __future__ import annotations

import enum
import hmac

from ._input import BadRequest


class Scope(enum.Enum):
    API = "api"         # PLANGATE_API_TOKEN or PLANGATE_ADMIN_TOKEN
    ADMIN = "admin"     # PLANGATE_ADMIN_TOKEN only


class Tokens:
    """The Authorization values each scope accepts, made once: a request compares strings, nothing more."""

    def __init__(self, api: tuple[str, ...], admin: tuple[str, ...]):
        self._api = tuple(f"Bearer {t}" for t in api)
        self._admin = tuple(f"Bearer {t}" for t in admin)
        self._accepted = {Scope.API: self._api + self._admin, Scope.ADMIN: self._admin}

    def accepted(self, scope: Scope) -> tuple[str, ...]:
        return self._accepted[scope]

    def refusal(self, given: list[str] | None, scope: Scope) -> BadRequest | None:
        """Why the Authorization header(s) of a request that failed the exact comparison (matches()) are refused,
        or None when they are accepted after all: the scheme is case-insensitive and may be followed by several
        spaces (RFC 9110 11.4); the credentials are compared as they are, nothing stripped."""
        if not given:
            return _unauthorized("no Authorization header")
        if len(given) > 1:
            return _unauthorized(f"{len(given)} Authorization headers; send one")
        scheme, space, credentials = given[0].partition(" ")
        if scheme.lower() != "bearer" or not space:
            return _unauthorized("not a Bearer token")
        canonical = "Bearer " + credentials.lstrip(" ")
        if matches(canonical, self._accepted[scope]):
            return None
        if scope is Scope.ADMIN and matches(canonical, self._api):
            why = "set PLANGATE_ADMIN_TOKEN on the gate and send it" if not self._admin else \
                "send Authorization: Bearer <PLANGATE_ADMIN_TOKEN>"
            return BadRequest(403, "forbidden", f"this route changes state on a person's word and needs the admin "
                                                f"token; the API token allows check, consume, usage and reading a "
                                                f"subject: {why}")
        return _unauthorized("wrong token")


def matches(value: str, accepted: tuple[str, ...]) -> bool:
    """Is value one of accepted, compared in constant time (each of them compared, whatever the first gave)?"""
    if not value.isascii():         # compare_digest takes ASCII text only; no token is anything else
        return False
    found = False
    for expected in accepted:
        found |= hmac.compare_digest(value, expected)
    return found


def _unauthorized(why: str) -> BadRequest:
    return BadRequest(401, "unauthorized", f"{why}: send Authorization: Bearer <PLANGATE_API_TOKEN> "
                                           "(PLANGATE_ADMIN_TOKEN for transitions, erasure, credits, traits, jobs "
                                           "and plan changes)")
