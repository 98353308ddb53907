"""The floors: what a gate costs at the least, on the gate's own stack (aiohttp on uvloop, bodies parsed and
answered with orjson, `web.Response`), each run by a bench as a process of its own.

- serve_check_floor: `/v1/check` and `/v1/consume` answered from a dict of decision-shaped answers, one per
  subject (as many as the bench's load cycles through): no token, no input checks, no store, no metrics. The
  main baseline of bench.http_gate (issue 21).
- serve_floor: the one-upsert floor of bench.postgres_consume: one durable
  `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` per `/v1/consume` through an asyncpg pool of the gate's
  default size: no idempotency key, no subject state, no quota, no batching; the answer is decision-shaped.

    python -c 'from bench._floor import serve_check_floor; serve_check_floor(0, 10000)'
    python -c 'from bench._floor import serve_floor; serve_floor(0, DSN)'
"""
from __future__ import annotations

HOST = "127.0.0.1"
POOL_SIZE = 10          # the gate's default PLANGATE_PG_POOL_MAX
TABLE = ("CREATE TABLE IF NOT EXISTS floor_usage (subject TEXT NOT NULL, window_start BIGINT NOT NULL, "
         "used BIGINT NOT NULL, PRIMARY KEY (subject, window_start))")
UPSERT = ("INSERT INTO floor_usage AS f (subject, window_start, used) VALUES ($1, $2, $3) "
          "ON CONFLICT (subject, window_start) DO UPDATE SET used = f.used + EXCLUDED.used RETURNING f.used")


def serve_check_floor(port: int, subjects: int) -> None:
    from bench._harness import serve_app

    serve_app("floor", check_floor_app(subjects), port, on_uvloop=True)


def check_floor_app(subjects: int):
    """serve_check_floor's application (bench.check_in_process feeds it requests without a socket)."""
    import orjson
    from aiohttp import web

    from bench._harness import bare_answers

    answers = {subject: orjson.dumps(answer) for subject, answer in bare_answers(subjects).items()}
    counted = {subject: orjson.dumps({**orjson.loads(raw), "counted": True, "duplicate": False})
               for subject, raw in answers.items()}
    default = next(iter(answers))

    async def check(request: web.Request) -> web.Response:
        subject = orjson.loads(await request.read()).get("subject")
        return web.Response(body=answers.get(subject) or answers[default], content_type="application/json")

    async def consume(request: web.Request) -> web.Response:
        subject = orjson.loads(await request.read()).get("subject")
        return web.Response(body=counted.get(subject) or counted[default], content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/check", check)
    app.router.add_post("/v1/consume", consume)
    return app


def serve_floor(port: int, dsn: str) -> None:
    import asyncpg
    import orjson
    from aiohttp import web

    from bench._harness import METER, bare_answers, serve_app

    template = next(iter(bare_answers().values()))
    pool = None

    async def consume(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        subject, amount = body["subject"], body.get("amount", 1)
        used = await pool.fetchval(UPSERT, subject, 0, amount)
        answer = {**template, "subject": subject, "meter": body.get("meter", METER), "used": used,
                  "counted": True, "duplicate": False}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def setup() -> None:
        nonlocal pool
        pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        await pool.execute(TABLE)

    async def cleanup() -> None:
        await pool.close()

    app = web.Application()
    app.router.add_post("/v1/consume", consume)
    serve_app("floor", app, port, on_uvloop=True, setup=setup, cleanup=cleanup)
