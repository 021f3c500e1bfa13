"""The event-stream watch that ends a proxied MCP answer with the chunk completing its response."""

from __future__ import annotations

import codecs
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from httpx2._sse import ServerSentEvent, _SSEParser
from hypothesis import given, settings
from hypothesis import strategies as st

import broker.sse
from broker.sse import ResponseWatch

BOM = b"\xef\xbb\xbf"
RESPONSE = b'{"jsonrpc":"2.0","id":1,"result":{}}'
ERROR = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found"}}'
PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
SERVER_REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}}'


def _feed(chunks: Sequence[bytes], request_id: int | str = 1) -> list[bool]:
    watch = ResponseWatch(request_id)
    return [watch.feed(chunk) for chunk in chunks]


def _message(data: bytes, end: bytes = b"\n") -> bytes:
    """One event carrying ``data`` with the default type."""
    return b"data: " + data + end + end


def _with_id(id_json: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":' + id_json + b',"result":{}}'


# --- explicit cases ---------------------------------------------------------------------------


def test_response_in_one_crlf_chunk_is_answered() -> None:
    assert _feed([b"event: message\r\ndata: " + RESPONSE + b"\r\n\r\n"]) == [True]


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_lf_and_crlf_line_endings_complete_the_response(end: bytes) -> None:
    assert _feed([b"event: message" + end + b"data: " + RESPONSE + end + end]) == [True]


def test_cr_line_endings_are_line_endings() -> None:
    # the blank line here is CR + LF: with CR-only lines before it, the event ends at its LF
    assert _feed([b"event: message\rdata: " + RESPONSE + b"\r\r\n"]) == [True]
    assert _feed([b": x\revent: message\rdata: " + RESPONSE + b"\r\r\n"]) == [True]
    assert _feed([b"event: other\rdata: " + RESPONSE + b"\r\r\n"]) == [False]


def test_response_without_event_field_is_answered() -> None:
    assert _feed([b"data: " + RESPONSE + b"\n\n"]) == [True]


def test_error_response_is_answered() -> None:
    assert _feed([b"event: message\ndata: " + ERROR + b"\n\n"]) == [True]


def test_notifications_before_response_in_same_chunk() -> None:
    stream = (
        b"event: message\ndata: " + PROGRESS + b"\n\n"
        b"data: " + SERVER_REQUEST + b"\n\n"
        b"event: message\ndata: " + RESPONSE + b"\n\n"
    )
    assert _feed([stream]) == [True]


def test_notifications_in_earlier_chunks_are_not_the_answer() -> None:
    chunks = [
        b"event: message\ndata: " + PROGRESS + b"\n\n",
        b"data: " + SERVER_REQUEST + b"\n\n",
        b": keep-alive\n\n",
        b"event: message\ndata: " + RESPONSE + b"\n\n",
    ]
    assert _feed(chunks) == [False, False, False, True]


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_response_split_at_every_offset(end: bytes) -> None:
    before = b"data: " + PROGRESS + end + end
    event = b"event: message" + end + b"data: " + RESPONSE + end + end
    for offset in range(len(event) + 1):
        first, second = before + event[:offset], event[offset:]
        whole = offset == len(event)
        assert _feed([first, second]) == [whole, not whole], offset
        # the second chunk goes on past the event: the answer has not ended with it
        for more in (b"data: x", b":", b"event: message\n", b"data: " + PROGRESS + b"\n\n"):
            assert _feed([first, second + more]) == [whole, False], (offset, more)


def test_crlf_response_cut_before_its_last_lf_ends_with_the_lf() -> None:
    # The event's last byte is the LF of its CRLF blank line: a chunk ending at the CR does not
    # end exactly after the response, and the client must get that LF too. Ending the client's
    # answer at the CR (and dropping the LF, with a "1 bytes after its JSON-RPC response"
    # warning) loses the response for the TypeScript MCP SDK: its eventsource-parser holds a CR
    # that ends a chunk until the next one shows whether an LF follows, and never flushes at the
    # end of the body.
    event = b"event: message\r\ndata: " + RESPONSE + b"\r\n\r\n"
    first, second = event[:-1], event[-1:]
    assert _feed([first, second]) == [False, True]
    assert _feed([first, b"", second]) == [False, False, True]
    assert _feed([first, second + b"data: x"]) == [False, False]
    assert _feed([first, second + b"\n"]) == [False, False]


def test_response_closed_by_a_cr_ending_its_chunk_waits_for_an_lf() -> None:
    # that CR may be half of a CRLF (above): only a chunk that is just the LF completes it
    event = b"event: message\rdata: " + RESPONSE + b"\r\r"
    assert _feed([event]) == [False]
    assert _feed([event, b"\n"]) == [False, True]
    assert _feed([event, b"", b"\n", b"\n"]) == [False, False, True, False]
    for end in (b"\n", b"\r\n"):  # a CR blank line after other line ends
        assert _feed([b"data: " + RESPONSE + end + b"\r", b"\n"]) == [False, True]
    # anything else after the CR: the stream goes on, to end as Smithery ends it
    for more in (b"\ndata: x", b"\n\n", b"\r", b"data: " + PROGRESS + b"\r\r", b": ping\n"):
        assert _feed([event, more, b"\n"]) == [False, False, False], more
    # and a later response is still watched for
    assert _feed([event, b"data: 1\n\n" + _message(RESPONSE)]) == [False, True]


def test_cr_only_response_split_at_every_offset_is_answered_by_the_lf() -> None:
    event = b"event: message\rdata: " + RESPONSE + b"\r\r"
    for offset in range(len(event) + 1):
        assert _feed([event[:offset], event[offset:], b"\n"]) == [False, False, True], offset


def test_response_fed_byte_by_byte_answers_on_its_last_byte() -> None:
    stream = b": hi\r\nevent: message\rdata: " + PROGRESS + b"\n\n" + _message(RESPONSE)
    answers = _feed([stream[i : i + 1] for i in range(len(stream))])
    assert answers == [False] * (len(stream) - 1) + [True]


def test_cr_then_lf_across_chunks_is_one_line_end() -> None:
    # read as two line ends, CR | LF would be a blank line dispatching the first data line alone,
    # which is a complete response on its own
    chunks = [b"data: " + RESPONSE + b"\r", b"\n", b"data: 2\r", b"\n", b"\n"]
    assert _feed(chunks) == [False] * 5
    # the same with an empty chunk between the CR and the LF
    assert _feed([b"data: " + RESPONSE + b"\r", b"", b"\n", b"data: 2\n\n"]) == [False] * 4
    # and with the LF opening a longer chunk
    assert _feed([b"data: " + RESPONSE + b"\r", b"\ndata: 2\n\n"]) == [False] * 2


def test_cr_then_lf_across_chunks_still_ends_the_response() -> None:
    chunks = [b'data: {"jsonrpc":"2.0",\r', b'\ndata: "id":1,"result":{}}\r', b"\n\r\n"]
    assert _feed(chunks) == [False, False, True]
    chunks = [b"data: " + RESPONSE + b"\r", b"\n", b"", b"\r\n"]
    assert _feed(chunks) == [False, False, False, True]


def test_multiline_data_is_joined_with_lf() -> None:
    stream = b'data: {"jsonrpc":"2.0",\ndata: "id":1,"result":{}}\n\n'
    assert _feed([stream]) == [True]
    # a line break inside a JSON string is not valid JSON
    assert _feed([b'data: {"jsonrpc":"2.\ndata: 0","id":1,"result":{}}\n\n']) == [False]


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = (
        b": keep-alive\n"
        b"id: 7\n"
        b"retry: 1000\n"
        b"foo: bar\n"
        b"event: message\n"
        b":" + RESPONSE + b"\n"
        b"data: " + RESPONSE + b"\n"
        b"Data: 1\n"
        b"data : 1\n"
        b": the end\n"
        b"\n"
    )
    assert _feed([stream]) == [True]


def test_data_only_in_a_comment_or_unknown_field_is_no_answer() -> None:
    assert _feed([b": data: " + RESPONSE + b"\n\n"]) == [False]
    assert _feed([b"id: " + RESPONSE + b"\n\n"]) == [False]
    assert _feed([b"DATA: " + RESPONSE + b"\n\n"]) == [False]


def test_field_without_space_after_colon() -> None:
    assert _feed([b"event:message\ndata:" + RESPONSE + b"\n\n"]) == [True]
    # only one space is dropped: a second one is JSON whitespace in data...
    assert _feed([b"data:  " + RESPONSE + b"\n\n"]) == [True]
    # ...but part of the type in event
    assert _feed([b"event:  message\ndata: " + RESPONSE + b"\n\n"]) == [False]


def test_data_field_without_colon_adds_an_empty_line() -> None:
    # "data" alone appends an empty line: the data is "\n" + the response, still valid JSON
    assert _feed([b"data\ndata: " + RESPONSE + b"\n\n"]) == [True]
    assert _feed([b"data\n\n"]) == [False]


@pytest.mark.parametrize(
    "separator",
    [b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", "\x85".encode(), "\u2028".encode(), b"\x00"],
)
def test_only_cr_and_lf_end_lines(separator: bytes) -> None:
    # str.splitlines would break here and find a data line inside the comment
    assert _feed([b": x" + separator + b"data: " + RESPONSE + b"\n\n"]) == [False]


def test_line_separators_inside_json_strings_are_data() -> None:
    data = '{"jsonrpc":"2.0","id":1,"result":{"t":"a\u2028b\x85c"}}'.encode()
    assert _feed([_message(data)]) == [True]


def test_bom_at_start_is_dropped() -> None:
    assert _feed([BOM + b"event: message\ndata: " + RESPONSE + b"\n\n"]) == [True]
    assert _feed([BOM + b"data: " + RESPONSE + b"\n\n"]) == [True]


def test_bom_split_across_chunks() -> None:
    event = b"data: " + RESPONSE + b"\n\n"
    stream = BOM + event
    for offset in range(1, len(stream)):
        assert _feed([stream[:offset], stream[offset:]]) == [False, True], offset
    assert _feed([b"\xef", b"\xbb", b"\xbf", event]) == [False, False, False, True]
    assert _feed([b"", b"\xef", b"", b"\xbb\xbf", b"", event]) == [False] * 5 + [True]


def test_bom_is_dropped_only_once_and_only_at_start() -> None:
    # U+FEFF then opens the field name: "\ufeffdata" is an unknown field
    assert _feed([BOM + BOM + b"data: " + RESPONSE + b"\n\n"]) == [False]
    assert _feed([BOM, BOM + b"data: " + RESPONSE + b"\n\n"]) == [False, False]
    assert _feed([b": hi\n", BOM + b"data: " + RESPONSE + b"\n\n"]) == [False, False]
    # a partial BOM that turns into something else is kept: "\xefdata" is unknown too
    assert _feed([b"\xef", b"data: " + RESPONSE + b"\n\n"]) == [False, False]
    assert _feed([b"\xef\xbb", b"data: " + RESPONSE + b"\n\n"]) == [False, False]


@pytest.mark.parametrize(
    ("request_id", "id_json", "answered"),
    [
        (1, b"1", True),
        ("1", b'"1"', True),
        ("abc", b'"abc"', True),
        ("\u00e9", b'"\\u00e9"', True),  # the same string, escaped
        (0, b"-0", True),
        (2**70, str(2**70).encode(), True),
        (-5, b"-5", True),
        (1, b"2", False),
        ("abc", b'"abd"', False),
        (1, b'"1"', False),  # a string is not the number
        ("1", b"1", False),
        (1, b"1.0", False),  # a float is not the integer
        (1, b"1e0", False),
        (1, b"null", False),
        (1, b"true", False),
        (0, b"false", False),
        (1, b"[1]", False),
        (1, b'{"id":1}', False),
    ],
)
def test_response_id_must_match_in_type_and_value(
    request_id: int | str, id_json: bytes, answered: bool
) -> None:
    assert _feed([_message(_with_id(id_json))], request_id) == [answered]


@pytest.mark.parametrize(
    "data",
    [
        SERVER_REQUEST,  # a server request with the request's id
        b'{"jsonrpc":"2.0","id":1,"method":"x","result":{}}',
        b'{"jsonrpc":"2.0","id":1,"result":{},"\\u006dethod":"x"}',  # "method", escaped
        b'{"jsonrpc":"2.0","id":1,"result":{},"method":null}',
        PROGRESS,  # a notification
        b'{"jsonrpc":"2.0","method":"notifications/message","params":{"id":1,"result":{}}}',
        b'{"jsonrpc":"1.0","id":1,"result":{}}',
        b'{"jsonrpc":2.0,"id":1,"result":{}}',
        b'{"jsonrpc":null,"id":1,"result":{}}',
        b'{"id":1,"result":{}}',
        b'{"jsonrpc":"2.0","result":{}}',  # no id
        b'{"jsonrpc":"2.0","id":1}',  # neither result nor error
        b'{"jsonrpc":"2.0","id":1,"result":{}',  # invalid JSON
        b'{"jsonrpc":"2.0","id":1,"result":{}} x',
        b'{"jsonrpc":"2.0","id":1,"result":{}}}',
        b"{'jsonrpc':'2.0','id':1,'result':{}}",
        b"[" + RESPONSE + b"]",  # a JSON array (a batch)
        b"[]",
        b'"' + RESPONSE.replace(b'"', b'\\"') + b'"',
        b"1",
        b"null",
        b"",
    ],
)
def test_data_that_is_no_response_is_no_answer(data: bytes) -> None:
    assert _feed([_message(data)]) == [False]


def test_response_fields_may_be_escaped_or_reordered() -> None:
    assert _feed([_message(b'{"r\\u0065sult":{},"id":1,"jsonrpc":"2\\u002e0"}')]) == [True]
    assert _feed([_message(b' { "result" : null , "jsonrpc" : "2.0" , "id" : 1 } ')]) == [True]


@pytest.mark.parametrize(
    "kind", [b"notification", b"Message", b"message ", b"messages", b"error", b"endpoint"]
)
def test_event_of_other_type_is_no_answer(kind: bytes) -> None:
    assert _feed([b"event: " + kind + b"\ndata: " + RESPONSE + b"\n\n"]) == [False]


def test_last_event_field_wins_and_type_resets_after_each_event() -> None:
    assert _feed([b"event: other\nevent: message\ndata: " + RESPONSE + b"\n\n"]) == [True]
    assert _feed([b"event: message\nevent: other\ndata: " + RESPONSE + b"\n\n"]) == [False]
    assert _feed([b"event:\ndata: " + RESPONSE + b"\n\n"]) == [True]  # empty type: message
    # an event with no data is not dispatched, but its type is reset all the same
    assert _feed([b"event: other\n\ndata: " + RESPONSE + b"\n\n"]) == [True]
    assert _feed([b"event: other\ndata: 1\n\ndata: " + RESPONSE + b"\n\n"]) == [True]


@pytest.mark.parametrize(
    "more",
    [
        b"d",
        b"data: x",
        b":",
        b": ping\n",
        b"event: message\n",
        b"id: 2\n",
        b"data: " + PROGRESS + b"\n\n",
        b"data: " + RESPONSE + b"\n",
    ],
)
def test_response_followed_in_same_chunk_by_more_is_not_the_end(more: bytes) -> None:
    assert _feed([_message(RESPONSE) + more]) == [False]


def test_after_answer_every_feed_is_false() -> None:
    watch = ResponseWatch(1)
    assert watch.feed(_message(RESPONSE)) is True
    for chunk in (_message(RESPONSE), b"\n", b"", b"data: x\n\n", _message(RESPONSE)):
        assert watch.feed(chunk) is False


def test_event_over_the_limit_gives_up_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.sse, "MAX_EVENT_BYTES", 64)
    big = b"data: " + b"x" * 70 + b"\n\n"
    assert _feed([big, _message(RESPONSE)]) == [False, False]
    # in one chunk with the response after it
    assert _feed([big + _message(RESPONSE)]) == [False]
    # over several data lines of one event
    lines = b"data: 0123456789\n" * 6 + b"\n"
    assert _feed([lines, _message(RESPONSE)]) == [False, False]
    # an unfinished line growing past the limit over several chunks
    chunks = [b"data: ", *[b"0123456789"] * 7, b"\n\n", _message(RESPONSE)]
    assert not any(_feed(chunks))
    # a response itself larger than the limit
    padded = b'{"jsonrpc":"2.0","id":1,"result":{"text":"' + b"y" * 40 + b'"}}'
    assert _feed([_message(padded)]) == [False]


def test_limit_is_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.sse, "MAX_EVENT_BYTES", 64)
    small = b"data: " + b"x" * 50 + b"\n\n"
    # many events adding up past the limit, each under it, then the response
    assert _feed([small * 5, small, _message(RESPONSE)]) == [False, False, True]
    # comments are not held, however long
    assert _feed([b": " + b"c" * 200 + b"\n" + _message(RESPONSE)]) == [True]


def test_empty_chunks_are_harmless() -> None:
    assert _feed([b""]) == [False]
    assert _feed([b"", b"", _message(RESPONSE), b""]) == [False, False, True, False]
    event = _message(RESPONSE)
    assert _feed([event[:10], b"", event[10:-1], b"", event[-1:]]) == [False] * 4 + [True]


# --- properties -------------------------------------------------------------------------------

_ENDS = st.sampled_from(["\n", "\r\n", "\r"])
_STYLES = list(itertools.product([":", ": "], ["\n", "\r\n", "\r"]))
"""After the field name, with or without a space; and the line's end."""
_IDS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=4),
)
# fixed texts: every character hypothesis draws costs time, and these hold what matters
_TEXT = st.sampled_from(["", "ping", " data: 1", "\ufeff", "\u00e9\u2028\x85\x0b\x1c", "\x00"])
_EXTRA = st.one_of(
    _TEXT.map(lambda text: ":" + text),
    _TEXT.map(lambda text: "id: " + text),
    st.integers(0, 9999).map(lambda ms: f"retry: {ms}"),
    st.sampled_from(["foo: 1", "Data: 1", "data : 1", "DATA: 1", "eventt: 1", "foo"]),
)
"""A line that is no data: a comment, an id, a retry, an unknown field."""
_EXTRA_OR_EVENT = _EXTRA | st.sampled_from(["event: message", "event: other", "event:"])
_CONTENT = st.sampled_from(
    [{}, {"t": "\u00e9\u2028\x85\r\n"}, {"content": [{"type": "text", "text": "x"}]}, {"": 0}]
)
_MEMBER_ORDERS = list(itertools.permutations(range(3)))
_OTHER_KINDS = st.sampled_from(["other", "Message", "message ", " message", "notification"])
_ALMOST = st.sampled_from(
    [
        ['{"jsonrpc":"1.0","id":ID,"result":{}}'],
        ['{"jsonrpc":2.0,"id":ID,"result":{}}'],
        ['{"id":ID,"result":{}}'],
        ['{"jsonrpc":"2.0","id":ID}'],
        ['{"jsonrpc":"2.0","id":ID,"method":"x","result":{}}'],
        ['[{"jsonrpc":"2.0","id":ID,"result":{}}]'],
        ['{"jsonrpc":"2.0","id":ID,"result":{}'],
        ['{"jsonrpc":"2.', '0","id":ID,"result":{}}'],  # LF inside a string: not JSON
        ['{"jsonrpc":"2.0","id":ID,"re', 'sult":{}}'],
    ]
)
"""Data lines that are nearly the response to ID, but not quite."""


@dataclass(frozen=True)
class _Event:
    raw: bytes


def _event(
    draw: st.DrawFn, data: list[str], kind: str | None, *, extra_events: bool = False
) -> _Event:
    fields = [("data", value) for value in data]
    if kind is not None:
        fields.insert(draw(st.integers(0, len(fields))), ("event", kind))
    lines = []
    # one draw for every line's style: base-6 digits, and the blank line's end
    styles = draw(st.integers(0, 6 ** len(fields) * 3 - 1))
    for name, value in fields:
        styles, style = divmod(styles, 6)
        colon, line_end = _STYLES[style]
        if name == "event" and value.startswith(" "):
            colon = ": "  # ":" + " message" would be the type "message"
        lines.append(name + colon + value + line_end)
    for _ in range(draw(st.integers(0 if lines else 1, 2))):
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(_EXTRA_OR_EVENT if extra_events else _EXTRA) + draw(_ENDS))
    end = ["\n", "\r\n", "\r"][styles]
    if end == "\n" and lines[-1].endswith("\r"):
        end = "\r\n"  # the LF would only complete the last line's CRLF
    return _Event(("".join(lines) + end).encode())


def _response_data(draw: st.DrawFn, id_json: str) -> list[str]:
    """A JSON-RPC response, members in any order, over one or more data lines."""
    content = draw(_CONTENT)
    if draw(st.booleans()):
        body = '"result":' + json.dumps(content, ensure_ascii=False)
    else:
        body = '"error":{"code":-1,"message":' + json.dumps(str(content)) + "}"
    members = ['"jsonrpc":"2.0"', '"id":' + id_json, body]
    first, second, third = (members[i] for i in _MEMBER_ORDERS[draw(st.integers(0, 5))])
    breaks, spaces = draw(st.integers(0, 2**6 - 1)), draw(st.integers(0, 2**7 - 1))
    values = ["{"]
    for bit, token in enumerate([first, ",", second, ",", third, "}"]):
        if breaks >> bit & 1:
            values.append(token)  # a new data line: LF is JSON whitespace between tokens
        else:
            values[-1] += token
    return [" " * (spaces >> bit & 1) + value for bit, value in enumerate(values)]


def _response_event(draw: st.DrawFn, request_id: int | str, *, extras: bool = False) -> _Event:
    id_json = json.dumps(request_id, ensure_ascii=draw(st.booleans()))
    kind = "message" if draw(st.booleans()) else None
    return _event(draw, _response_data(draw, id_json), kind, extra_events=extras)


def _wrong_ids(request_id: int | str) -> list[str]:
    """Ids of other requests: other values or other JSON types."""
    wrong = ["null", "true", json.dumps([request_id])]
    if isinstance(request_id, int):
        return [*wrong, json.dumps(request_id + 1), json.dumps(str(request_id)), f"{request_id}.0"]
    return [*wrong, json.dumps(request_id + "x"), str(len(request_id))]


def _other_event(draw: st.DrawFn, request_id: int | str, *, extras: bool = False) -> _Event:
    """An event that is not the response to ``request_id``."""
    kind = "message" if draw(st.booleans()) else None
    choice = draw(st.integers(0, 5))
    if choice == 0:
        progress = {"progressToken": request_id, "progress": draw(st.integers(0, 100))}
        notification = {"jsonrpc": "2.0", "method": "notifications/progress", "params": progress}
        data = [json.dumps(notification, ensure_ascii=False)]
    elif choice == 1:  # a server request, with the same id
        server_request = {"jsonrpc": "2.0", "id": request_id, "method": "roots/list"}
        data = [json.dumps(server_request, ensure_ascii=False)]
    elif choice == 2:  # the response itself, as an event of another type
        data = _response_data(draw, json.dumps(request_id))
        kind = draw(_OTHER_KINDS)
    elif choice == 3:  # a response to another request
        wrong = _wrong_ids(request_id)
        data = _response_data(draw, wrong[draw(st.integers(0, len(wrong) - 1))])
    elif choice == 4:
        data = [line.replace("ID", json.dumps(request_id)) for line in draw(_ALMOST)]
    else:  # comments and other fields only
        data, kind = [], None
    return _event(draw, data, kind, extra_events=extras)


@st.composite
def _chunks(draw: st.DrawFn, stream: bytes, parts: Sequence[bytes]) -> list[bytes]:
    """``stream``, made of ``parts``, cut anywhere, often at or next to the end of a part or
    right after a CR; empty chunks included."""
    ends = list(itertools.accumulate(len(part) for part in parts))
    near = {max(0, min(len(stream), end + step)) for end in ends for step in (-1, 0, 1)}
    near |= {at + 1 for at, byte in enumerate(stream) if byte == ord("\r")}
    places = sorted(near) or [0]
    # odd draws pick one of those places, even ones any (fixed strategies draw faster)
    picks = draw(st.lists(st.integers(0, 2**16), max_size=8))
    cuts = sorted(
        places[n // 2 % len(places)] if n % 2 else n // 2 % (len(stream) + 1) for n in picks
    )
    return [stream[start:stop] for start, stop in itertools.pairwise([0, *cuts, len(stream)])]


@st.composite
def _answered_streams(draw: st.DrawFn) -> tuple[int | str, list[bytes]]:
    request_id = draw(_IDS)
    events = [_other_event(draw, request_id) for _ in range(draw(st.integers(0, 3)))]
    response = _response_event(draw, request_id)
    parts = [BOM if draw(st.booleans()) else b"", *(event.raw for event in events), response.raw]
    return request_id, draw(_chunks(b"".join(parts), parts))


@settings(max_examples=200, deadline=None)
@given(_answered_streams())
def test_response_after_other_events_is_answered_by_its_last_chunk(
    case: tuple[int | str, list[bytes]],
) -> None:
    request_id, chunks = case
    watch = ResponseWatch(request_id)
    answers = [watch.feed(chunk) for chunk in chunks]
    if b"".join(chunks).endswith(b"\r"):
        # the response's blank line is a CR ending the stream: no answer unless an LF follows
        assert not any(answers)
        chunks, answers = [*chunks, b"\n"], [*answers, watch.feed(b"\n")]
    assert answers.count(True) == 1
    last = max(i for i, chunk in enumerate(chunks) if chunk)  # empty chunks may follow it
    assert answers[last] is True


# The reference: the stream parser of the official MCP client (httpx2's _SSEParser, which mcp's
# streamable HTTP transport reads through EventSource), fed each prefix as that client decodes
# it (UTF-8, errors replaced); whether an event it yields is the response is decided here by
# json.loads and the rule of the watch (the client itself completes at any response, whatever
# its id). The watch must answer with the chunk after which the reference has just yielded the
# response as its latest event, when that chunk ends exactly where the response's bytes end.
# Where the reference differs from WHATWG:
# - a CR ending a feed is held until the next feed shows whether an LF follows, where WHATWG
#   ends the line at once; the watch does the same with a response closed by such a CR, so
#   this is compared as it is;
# - it decodes with plain "utf-8", which keeps a BOM, and then reads "\ufeffdata" as an unknown
#   field: the compared streams have no BOM (test_bom_* cover it against WHATWG);
# - it yields an event with fields but no data (with data ""), where WHATWG dispatches
#   nothing: such an event is never a response; _yields says which generated events it yields.


def _yields(event: _Event) -> bool:
    """The reference yields an event for this one (each generated event ends the one before)."""
    parser = _SSEParser()
    return bool([*parser.decode(event.raw.decode("utf-8", "replace")), *parser.flush()])


def _is_the_response(event: ServerSentEvent, request_id: int | str) -> bool:
    if event.event != "message":
        return False
    try:
        message = json.loads(event.data)
    except ValueError:
        return False
    return (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and "method" not in message
        and ("result" in message or "error" in message)
        and type(message.get("id")) is type(request_id)
        and message["id"] == request_id
    )


@st.composite
def _mixed_streams(draw: st.DrawFn) -> tuple[int | str, list[_Event], list[bytes]]:
    request_id = draw(_IDS)
    events = [
        _response_event(draw, request_id, extras=True)
        if draw(st.booleans())
        else _other_event(draw, request_id, extras=True)
        for _ in range(draw(st.integers(0, 6)))
    ]
    parts = [event.raw for event in events]
    return request_id, events, draw(_chunks(b"".join(parts), parts))


@settings(max_examples=200, deadline=None)
@given(_mixed_streams())
def test_answer_agrees_with_the_mcp_client_parser(
    case: tuple[int | str, list[_Event], list[bytes]],
) -> None:
    request_id, events, chunks = case
    ends = list(itertools.accumulate(len(event.raw) for event in events))
    # where the generated event behind each of the reference's events ends
    owners = [ends[i] for i, event in enumerate(events) if _yields(event)]
    watch = ResponseWatch(request_id)
    parser = _SSEParser()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parsed: list[ServerSentEvent] = []
    offset, answered = 0, False
    for chunk in chunks:
        offset += len(chunk)
        seen = len(parsed)
        parsed.extend(parser.decode(decoder.decode(chunk)))
        expected = (
            not answered
            and len(parsed) > seen
            and _is_the_response(parsed[-1], request_id)
            and owners[len(parsed) - 1] == offset
        )
        assert watch.feed(chunk) is expected, (offset, parsed[seen:])
        answered = answered or expected


def test_a_long_line_in_small_pieces_is_read_in_one_pass() -> None:
    # 256 KiB of one data line in 16-byte chunks: copying the line so far for each piece would
    # move 2 GiB (seconds of a blocked event loop); growing it in place moves 256 KiB.
    text = b"x" * (256 * 1024)
    event = b'data: {"jsonrpc":"2.0","id":1,"result":{"text":"' + text + b'"}}\n\n'
    chunks = [event[i : i + 16] for i in range(0, len(event), 16)]
    answers = _feed(chunks)
    assert answers == [False] * (len(chunks) - 1) + [True]
