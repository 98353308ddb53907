"""What abuses /webhook/stripe over raw connections, shared by tests/e2e/test_webhook_abuse.py and
bench/webhook_abuse.py: request heads, status lines, and bodies over the limit that never end."""
from __future__ import annotations

import asyncio

# Types Stripe sends that the shipped plan neither transitions on nor keeps facts of.
UNUSED = ("charge.captured", "charge.pending", "customer.created", "customer.updated", "payment_intent.created",
          "payment_intent.succeeded", "invoice.created", "invoice.finalized", "product.updated", "price.created",
          "balance.available", "payout.paid")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def raw(url: str, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(url))
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


def head(length: int | None, signature: str = "t=1,v1=00", chunked: bool = False) -> str:
    lines = ["POST /webhook/stripe HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Stripe-Signature: {signature}"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return "\r\n".join(lines) + "\r\n\r\n"


async def status_line(reader: asyncio.StreamReader, timeout: float) -> int:
    line = await asyncio.wait_for(reader.readline(), timeout)
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


async def chunked_until_answered(url: str, chunks: int, size: int = 4096, timeout: float = 10) -> int:
    """A chunked body of up to `chunks` chunks, sent until the gate answers (or closes): its status."""
    reader, writer = await raw(url, head(None, chunked=True))
    answer = asyncio.ensure_future(status_line(reader, timeout))
    try:
        for _ in range(chunks):
            if answer.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (size, b"[" * size))
            await writer.drain()
            await asyncio.sleep(0.001)                       # drain() need not yield: let the answer in
    except (ConnectionError, OSError):
        pass                                                  # the gate closed the connection: also a refusal
    try:
        return await answer
    finally:
        writer.close()


async def declared_huge(url: str, length: int = 10_000_000, timeout: float = 10) -> int:
    """A Content-Length far over the limit and a little of the body: its status."""
    reader, writer = await raw(url, head(length))
    writer.write(b"{" * 4096)
    try:
        return await status_line(reader, timeout)
    finally:
        writer.close()
