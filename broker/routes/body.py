"""Decoding JSON request bodies into typed Structs with the broker's stable error codes."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.types import Receive, ReceiveMessage

from broker.errors import (
    CallerError,
    InvalidJSONError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from broker.jsonrpc import decode_strict
from broker.routes.responses import request_headers

T = TypeVar("T")


class UnsupportedMediaTypeError(CallerError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


def decode_json_body(body: bytes, content_type: str | None, type_: type[T], default: T) -> T:
    """``default`` for an empty body; otherwise the body decoded as ``type_``.

    Non-JSON content types are refused (415) so a form post from a browser page cannot be read as
    JSON by accident; malformed JSON is ``invalid_json``; schema violations name the JSON path.
    """
    if not body.strip():
        return default
    require_json(content_type)
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from None
    except msgspec.DecodeError:
        raise InvalidJSONError("The body is not valid JSON.") from None
    except UnicodeDecodeError:  # msgspec's own error for a string that is not UTF-8
        raise InvalidJSONError("The body is not UTF-8.") from None
    except RecursionError:  # free-form members (claims) nested some thousands deep
        raise InvalidJSONError("The body's JSON is nested too deeply.") from None


def require_json(content_type: str | None) -> None:
    """Refuse bodies not declared as JSON, or declared in another charset than UTF-8 (415).

    JSON between systems is UTF-8 (RFC 8259 §8.1) and the broker reads it so. A body declared
    ``charset=utf-16`` could be read differently by a parser upstream that honours the
    declaration, and the proxy forwards the declaration with the bytes it checked.
    """
    media, _, parameters = (content_type or "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaTypeError("Send the body as application/json.")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMediaTypeError("JSON is UTF-8: send charset=utf-8 or no charset.")


def declares_body(content_length: str | None, transfer_encoding: str | None) -> bool:
    """Whether a request has a body (RFC 9112 §6.3): a non-zero ``Content-Length`` or any
    ``Transfer-Encoding``."""
    return content_length not in (None, "0") or transfer_encoding is not None


async def read_body(request: Request[Any, Any, Any], timeout_seconds: float = 10.0) -> bytes:
    """The request body, without touching the receive channel when none was declared.

    A POST without ``Content-Length`` (or with 0) and without ``Transfer-Encoding`` has no body
    (RFC 9112 §6.3), which is how frontends usually call ``/v1/tokens``.
    """
    headers = request.headers
    if not declares_body(headers.get("content-length"), headers.get("transfer-encoding")):
        return b""
    return await read_body_within(request, timeout_seconds)


class RequestTimeoutError(CallerError):
    status = 408
    code = "request_timeout"
    title = "Request body too slow"


async def read_body_within(request: Request[Any, Any, Any], seconds: float) -> bytes:
    """The whole body, or 408 when it does not arrive in time (slow clients hold no worker)."""
    try:
        async with asyncio.timeout(seconds):
            return await request.body()
    except TimeoutError:
        raise RequestTimeoutError(
            f"The request body did not arrive within {seconds:g} s."
        ) from None


async def read_strict_json(
    request: Request[Any, Any, Any], *, timeout_seconds: float, max_bytes: int, max_depth: int
) -> tuple[bytes, Any]:
    """The raw body and its strict parse (``jsonrpc.decode_strict``): size limit (413), JSON
    content type (415), then duplicate keys, NaN and depth refused (400). Reads the raw headers
    and the ASGI channel itself (``receive_body``), not Litestar's header and body models."""
    content_type, length, encoding = request_headers(
        request.scope, b"content-type", b"content-length", b"transfer-encoding"
    )
    body = await receive_body(
        request.receive,
        content_length=length,
        transfer_encoding=encoding,
        max_bytes=max_bytes,
        timeout_seconds=timeout_seconds,
    )
    require_json(content_type)
    return body, decode_strict(body, max_depth=max_depth)


def convert_body(parsed: Any, type_: type[T]) -> T:
    """A strictly parsed body as ``type_``; schema violations name the JSON path (400)."""
    try:
        return msgspec.convert(parsed, type_, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from None


async def receive_body(
    receive: Receive,
    *,
    content_length: str | None,
    transfer_encoding: str | None,
    max_bytes: int,
    timeout_seconds: float,
) -> bytes:
    """The request body straight from the ASGI channel (routes that take raw ASGI).

    Empty when none is declared (RFC 9112 §6.3). A declared ``Content-Length`` over
    ``max_bytes`` is refused (413) before anything is read, and so is a body that grows past it
    while arriving; a body slower than ``timeout_seconds`` is 408.
    """
    if not declares_body(content_length, transfer_encoding):
        return b""
    if content_length is not None and content_length.isascii() and content_length.isdigit():
        digits = content_length.lstrip("0")  # int() refuses (ValueError) over 4300 digits
        if len(digits) > 18 or int(digits or "0") > max_bytes:
            raise PayloadTooLargeError(f"The body may be at most {max_bytes} bytes.")
    try:
        async with asyncio.timeout(timeout_seconds):
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body: bytes = message.get("body", b"")  # the usual case: one message
            else:
                body = await _receive_rest(receive, message, max_bytes)
    except TimeoutError:
        raise RequestTimeoutError(
            f"The request body did not arrive within {timeout_seconds:g} s."
        ) from None
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"The body may be at most {max_bytes} bytes.")
    return body


async def _receive_rest(receive: Receive, message: ReceiveMessage, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        if message["type"] != "http.request":
            raise ClientDisconnectedError("The client went away while sending the body.")
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > max_bytes:
            raise PayloadTooLargeError(f"The body may be at most {max_bytes} bytes.")
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)
        message = await receive()


class ClientDisconnectedError(CallerError):
    status = 400
    code = "client_disconnected"
    title = "Client disconnected"
