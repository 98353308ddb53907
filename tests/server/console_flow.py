"""Driving the console as a browser without script would: its forms, its cookies, its CSRF tokens."""
from __future__ import annotations

import re
import time

import aiohttp

from . import stripe_events as se
from .stripe_lifecycles import DAY, Life
from .test_webhook import deliver

WEBHOOK = {"STRIPE_WEBHOOK_SECRET": se.SECRET}


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field in the page"
    return found.group(1)


async def login(url: str, session: aiohttp.ClientSession, token: str, label: str = "Ada") -> aiohttp.ClientResponse:
    async with session.get(url + "/console/login") as r:
        csrf = hidden(await r.text(), "csrf")
    r = await session.post(url + "/console/login", data={"csrf": csrf, "label": label, "token": token},
                           allow_redirects=False)
    await r.read()
    return r


def new_session() -> aiohttp.ClientSession:
    # unsafe: the test server's address is an IP, whose cookies aiohttp's jar keeps only when told to
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=30))


def lifecycle(n: int = 7) -> Life:
    """A customer who subscribes (checkout, subscription, invoice paid) a day ago."""
    life = Life(n, f"user{n}", time.time() - DAY)
    life.subscribe("A", life.start)
    return life


async def play(gate, life: Life) -> None:
    for evt in life.events:
        status, answer = await deliver(gate, evt)
        assert status == 200, answer
