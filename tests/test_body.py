"""``routes.body.receive_body``: the raw-ASGI body reader of the proxy route, against scripted
ASGI ``receive`` channels (the in-process test client always sends a body in one message)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker.errors import PayloadTooLargeError
from broker.routes.body import (
    ClientDisconnectedError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    receive_body,
    require_json,
)


def channel(*messages: dict[str, Any]) -> tuple[Callable[[], Awaitable[Any]], list[int]]:
    """A ``receive`` that hands out ``messages`` in order, and how many it handed out."""
    taken = [0]

    async def receive() -> Any:
        taken[0] += 1
        return messages[taken[0] - 1]

    return receive, taken


def part(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def read(receive: Any, length: str | None = "5", encoding: str | None = None) -> bytes:
    return await receive_body(
        receive,
        content_length=length,
        transfer_encoding=encoding,
        max_bytes=10,
        timeout_seconds=5,
    )


async def test_one_message() -> None:
    receive, taken = channel(part(b"hello", False))
    assert await read(receive) == b"hello"
    assert taken == [1]


async def test_several_messages_are_joined() -> None:
    receive, taken = channel(part(b"he", True), part(b"", True), part(b"llo", False))
    assert await read(receive, None, "chunked") == b"hello"
    assert taken == [3]


@pytest.mark.parametrize(("length", "encoding"), [(None, None), ("0", None)])
async def test_no_declared_body_reads_nothing(length: str | None, encoding: str | None) -> None:
    receive, taken = channel()
    assert await read(receive, length, encoding) == b""
    assert taken == [0]


@pytest.mark.parametrize("length", ["11", "9" * 19, "9" * 5000])
async def test_declared_length_over_the_limit_is_refused_unread(length: str) -> None:
    receive, taken = channel(part(b"x" * 11, False))
    with pytest.raises(PayloadTooLargeError):
        await read(receive, length)
    assert taken == [0]


async def test_a_length_with_thousands_of_leading_zeros_is_its_value() -> None:
    receive, taken = channel(part(b"hello", False))
    assert await read(receive, "0" * 5000 + "5") == b"hello"
    assert taken == [1]


async def test_a_length_that_is_no_ascii_number_is_not_trusted() -> None:
    """``str.isdigit`` takes "²" for a digit, ``int()`` does not: the body is read and counted."""
    receive, taken = channel(part(b"hello", False))
    assert await read(receive, "\u00b2") == b"hello"
    assert taken == [1]


async def test_body_growing_past_the_limit_stops_reading() -> None:
    receive, taken = channel(part(b"x" * 6, True), part(b"x" * 6, True), part(b"x", False))
    with pytest.raises(PayloadTooLargeError):
        await read(receive, None, "chunked")
    assert taken == [2]


async def test_one_message_over_the_limit_despite_its_length_header() -> None:
    receive, _ = channel(part(b"x" * 11, False))
    with pytest.raises(PayloadTooLargeError):
        await read(receive, "5")


async def test_disconnect_mid_body() -> None:
    receive, _ = channel(part(b"he", True), {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnectedError):
        await read(receive, None, "chunked")


async def test_disconnect_before_the_body() -> None:
    receive, _ = channel({"type": "http.disconnect"})
    with pytest.raises(ClientDisconnectedError):
        await read(receive)


async def test_slow_body_is_408() -> None:
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def receive() -> Any:
        return await never

    with pytest.raises(RequestTimeoutError) as caught:
        await receive_body(
            receive,
            content_length="5",
            transfer_encoding=None,
            max_bytes=10,
            timeout_seconds=0.01,
        )
    assert caught.value.status == 408


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON; charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json;charset=utf8",
        "application/vnd.api+json",
        "application/json; profile=x",
    ],
)
def test_json_in_utf8_is_accepted(content_type: str) -> None:
    require_json(content_type)


@pytest.mark.parametrize(
    ("content_type", "detail"),
    [
        (None, "application/json"),
        ("text/plain", "application/json"),
        ("application/x-www-form-urlencoded", "application/json"),
        ("application/jsonp", "application/json"),
        ("application/json; charset=utf-16", "UTF-8"),
        ('application/json; charset="UTF-16LE"', "UTF-8"),
        ("application/json; charset=latin-1", "UTF-8"),
        ("application/json; charset=", "UTF-8"),
    ],
)
def test_other_media_types_and_charsets_are_415(content_type: str | None, detail: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        require_json(content_type)
    assert caught.value.status == 415
    assert detail in str(caught.value)
