"""When an MCP answer on an event stream is complete for the client.

Streamable HTTP answers a POST that carries a request with either one JSON document or a
``text/event-stream``: server requests and notifications about the request, then the JSON-RPC
response, after which the server SHOULD close the stream (MCP 2025-06-18, "Sending Messages to
the Server"). MCP clients stop reading at the response (the official SDK closes the answer
there). The proxy therefore ends the client's answer with the chunk that completes the response
event instead of waiting for Smithery's end of stream, which comes separately: the client has
its answer one upstream read sooner, and its connection is reusable at once.

``ResponseWatch`` follows the stream as the WHATWG event-stream parser does (lines end with CR,
LF or CRLF, a blank line dispatches the event, comments and unknown fields are ignored, one
leading space of a value is dropped, ``data`` lines join with LF, a BOM may open the stream)
and says, for each chunk, whether it ends exactly after the response: an event of type
``message`` whose data is a JSON-RPC response (``result`` or ``error``, no ``method``) with the
request's id (same JSON type and value). Anything else, or an event larger than the watch holds,
is a plain stream that ends when Smithery ends it. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

MAX_EVENT_BYTES: Final = 1 << 20
"""An event growing past this is no longer watched (the stream then ends when Smithery ends
it): the watch never holds more than this of a large tool result."""
_BOM: Final = b"\xef\xbb\xbf"
_BLANK: Final = (b"\n", b"\r\n", b"\r")
_RAW_MEMBERS: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ID: Final = msgspec.json.Decoder(int | str)
_STRING: Final = msgspec.json.Decoder(str)


class ResponseWatch:
    """Feed it each chunk of the answer's body, in order; ``feed`` is True for the chunk after
    which the JSON-RPC response to ``request_id`` has wholly arrived and nothing else has
    begun. After that, or once it gives up, ``feed`` is False."""

    __slots__ = (
        "_after_cr",
        "_data",
        "_done",
        "_lf_due",
        "_line",
        "_request_id",
        "_size",
        "_start",
        "_tail",
        "_type",
    )

    def __init__(self, request_id: int | str) -> None:
        self._request_id = request_id
        self._line = b""
        """The first bytes of the stream while they may still be the start of a BOM."""
        self._data: list[bytes] = []
        self._type = b""
        self._size = 0
        """Bytes held for the current event (its data and its unfinished line)."""
        self._start = True
        """Nothing read yet: a BOM may come first."""
        self._after_cr = False
        """The last chunk ended with CR: an LF opening the next one belongs to it."""
        self._lf_due = False
        """The response ended at a CR that closed its chunk: if an LF follows, it is the
        response's last byte, and the client must get it (a parser that waits to see whether
        an LF follows a CR, as the TypeScript SDK's does, would otherwise never see the event
        end)."""
        self._done = False
        self._tail = bytearray()
        """The start of a line whose end has not arrived, grown in place: a long line that
        comes in small pieces costs time in proportion to its length, not to its square."""

    def feed(self, chunk: bytes) -> bool:
        if self._done or not chunk:
            return False
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
            if self._lf_due and not chunk:
                self._done = True
                return True
        self._lf_due = False
        self._after_cr = chunk.endswith(b"\r")
        if self._start:
            if len(self._line) + len(chunk) < len(_BOM) and _BOM.startswith(self._line + chunk):
                self._line += chunk  # a BOM split across chunks: wait for the rest
                return False
            self._start = False
            text = self._line + chunk
            self._line = b""
            chunk = text.removeprefix(_BOM)
        lines = chunk.splitlines(keepends=True)
        if self._tail:
            first = lines[0]
            if not first.endswith((b"\n", b"\r")):  # still no line end: grow it in place
                self._tail += first
                self._size += len(first)
                if self._size > MAX_EVENT_BYTES:
                    self._done = True
                    self._data, self._tail = [], bytearray()
                return False
            self._size -= len(self._tail)
            lines[0] = bytes(self._tail) + first
            self._tail = bytearray()
        answered = False
        for line in lines:
            if line in _BLANK:
                answered = self._dispatch()
                continue
            answered = False
            if line.endswith((b"\n", b"\r")):
                self._field(line.rstrip(b"\r\n"))
            else:
                self._tail = bytearray(line)  # the rest comes with the next chunk
                self._size += len(line)
            if self._size > MAX_EVENT_BYTES:
                # an event too large to watch: the stream ends as Smithery ends it
                self._done = True
                self._data, self._tail = [], bytearray()
                return False
        if answered and self._after_cr:
            self._lf_due = True  # the client's answer ends with the LF, if one comes
            return False
        if answered:
            self._done = True
        return answered

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            return  # a comment
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
        elif name == b"event":
            self._type = value

    def _dispatch(self) -> bool:
        """The event just ended: is it the response?"""
        data, kind = self._data, self._type
        self._data, self._type, self._size = [], b"", 0
        if not data or kind not in (b"", b"message"):
            return False
        return self._is_response(b"\n".join(data))

    def _is_response(self, data: bytes) -> bool:
        try:
            members = _RAW_MEMBERS.decode(data)
            if "method" in members or ("result" not in members and "error" not in members):
                return False
            version, raw_id = members.get("jsonrpc"), members.get("id")
            if version is None or raw_id is None or _STRING.decode(version) != "2.0":
                return False
            answered = _ID.decode(raw_id)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        return type(answered) is type(self._request_id) and answered == self._request_id
