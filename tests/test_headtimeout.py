"""``headtimeout``: uvicorn with a deadline for each request's head, against raw loopback sockets
(silent connections, trickled headers, idle keep-alive, slow bodies)."""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractAsyncContextManager

from litestar.types import Receive, Scope, Send

from broker.headtimeout import head_timeout_protocol
from tests.loopback_server import uvicorn_on_loopback

HEAD_TIMEOUT = 0.2
REQUEST = b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello"


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with the request body (read whole)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    length = str(len(body)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
    )
    await send({"type": "http.response.body", "body": body})


def serving() -> AbstractAsyncContextManager[int]:
    """uvicorn with the protocol on a loopback socket: its port."""
    return uvicorn_on_loopback(echo, head_timeout_protocol(HEAD_TIMEOUT))


async def answer_of(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def test_a_silent_connection_gets_408_and_is_closed() -> None:
    async with serving() as port, asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, body = await answer_of(reader)
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"content-type: application/problem+json" in head
        assert json.loads(body)["code"] == "request_timeout"
        assert await reader.read() == b""  # closed by the server
        writer.close()
        await writer.wait_closed()


async def test_a_head_trickling_in_gets_408_and_is_closed() -> None:
    async with serving() as port, asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n")

        async def trickle() -> None:
            while True:  # one header line every 20 ms, until the server closes
                writer.write(b"X-Slow: a\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)

        trickling = asyncio.ensure_future(trickle())
        try:
            head, body = await answer_of(reader)
        finally:
            trickling.cancel()
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["status"] == 408
        writer.close()
        await writer.wait_closed()


async def test_idle_keep_alive_and_slow_bodies_are_not_the_heads_business() -> None:
    async with serving() as port, asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        head, body = await answer_of(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b"hello"
        await asyncio.sleep(HEAD_TIMEOUT * 2)  # idle between requests: keep-alive's business
        writer.write(REQUEST[:-5])  # a complete head; its body comes late
        await writer.drain()
        await asyncio.sleep(HEAD_TIMEOUT * 2)
        writer.write(b"hello")
        head, body = await answer_of(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b"hello"
        writer.close()
        await writer.wait_closed()


async def test_a_request_that_is_not_http_gets_problem_details_and_is_closed() -> None:
    async with serving() as port, asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n")
        await writer.drain()
        head, body = await answer_of(reader)
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"content-type: application/problem+json" in head
        assert b"\r\ndate: " in head  # uvicorn's default headers kept
        assert b"\r\ncache-control: no-store\r\n" in head
        problem = json.loads(body)
        assert problem["code"] == "invalid_http"
        assert problem["status"] == 400
        assert await reader.read() == b""  # closed by the server
        writer.close()
        await writer.wait_closed()
