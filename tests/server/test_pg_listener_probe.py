"""A listener whose connection goes silent (a failover that drops packets, a cable pulled: no reset, no close)
notices within its probe's time and drops the cache, instead of waiting for TCP to give up (minutes) while the
node answers from a cache nobody keeps current. A TCP relay on 127.0.0.1 between the listener and PostgreSQL
stops forwarding without closing anything."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit, urlunsplit

from plangate.server.store._pg_listener import Listener
from tests import postgres


class SilentRelay:
    """Forwards TCP both ways to (host, port) while `flowing` is set; cleared, it holds what it reads."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(a, b))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_listener_whose_connection_goes_silent_drops_the_cache_and_comes_back(pg_dsn, caplog):
    caplog.set_level(logging.INFO, logger="plangate")
    parts = urlsplit(pg_dsn)
    relay = SilentRelay(parts.hostname or "127.0.0.1", parts.port or 5432)
    await relay.start()
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    dsn = urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{relay.port}"))
    resets: list[float] = []
    listener = Listener(dsn, lambda s: None, lambda: resets.append(asyncio.get_running_loop().time()),
                        connect_timeout=0.5)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        before = len(resets)
        relay.flowing.clear()           # silent: nothing arrives, nothing is closed
        silent_at = asyncio.get_running_loop().time()

        async def reset_again() -> bool:
            return len(resets) > before
        assert await postgres.await_until(reset_again, timeout=5)
        assert resets[before] - silent_at < 3.0          # the probe (every second) gave up after its timeout
        assert not listener.connected.is_set()
        assert any(r.getMessage() == "pg_listener_lost" for r in caplog.records)
        relay.flowing.set()
        await asyncio.wait_for(listener.connected.wait(), 15)
    finally:
        await listener.stop()
        await relay.close()
