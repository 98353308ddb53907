"""The one-upsert floor: what a gate that counts in PostgreSQL costs at the least, on the gate's own stack.

An aiohttp app on uvloop, bodies parsed and answered with orjson, and one durable
`INSERT ... ON CONFLICT DO UPDATE ... RETURNING` per request through an asyncpg pool of the gate's default
size: no idempotency key, no subject state, no quota, no batching. `/v1/consume` counts; the answer is
decision-shaped, as many bytes as the gate's. Run by bench.postgres_consume as a process of its own:

    python -c 'from bench._floor import serve_floor; serve_floor(0, DSN)'
"""
from __future__ import annotations

import asyncio
import signal

HOST = "127.0.0.1"
POOL_SIZE = 10          # the gate's default PLANGATE_PG_POOL_MAX
TABLE = ("CREATE TABLE IF NOT EXISTS floor_usage (subject TEXT NOT NULL, window_start BIGINT NOT NULL, "
         "used BIGINT NOT NULL, PRIMARY KEY (subject, window_start))")
UPSERT = ("INSERT INTO floor_usage AS f (subject, window_start, used) VALUES ($1, $2, $3) "
          "ON CONFLICT (subject, window_start) DO UPDATE SET used = f.used + EXCLUDED.used RETURNING f.used")


def serve_floor(port: int, dsn: str) -> None:
    import asyncpg
    import orjson
    import uvloop
    from aiohttp import web

    from bench._harness import METER, bare_answers

    template = next(iter(bare_answers().values()))

    async def consume(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        subject, amount = body["subject"], body.get("amount", 1)
        used = await pool.fetchval(UPSERT, subject, 0, amount)
        answer = {**template, "subject": subject, "meter": body.get("meter", METER), "used": used,
                  "counted": True, "duplicate": False}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def run() -> None:
        nonlocal pool
        pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        await pool.execute(TABLE)
        app = web.Application()
        app.router.add_post("/v1/consume", consume)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, port).start()
            host, bound = runner.addresses[0][:2]
            print(f"floor: listening on http://{host}:{bound}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
            await pool.close()

    pool = None
    uvloop.run(run())
