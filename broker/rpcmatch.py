"""JavaScript-faithful, linear-time evaluation of Smithery ``rpcReqMatch`` patterns.

One responsibility: decide, exactly as Smithery's ``new RegExp(pattern).test(String(value))``
would, whether a parsed JSON-RPC message satisfies a constraint's ``rpcReqMatch`` map, and refuse
at load time (``PatternError``) every pattern whose JavaScript meaning cannot be reproduced
exactly or whose evaluation could take more than linear time on attacker-controlled input.

It must not do I/O, read the clock, log, or know about policies, users or HTTP: callers
(``policy``, ``constraints``, ``precheck``) add that context. It imports nothing of ours but
``broker.errors``.

How it works:

1. The JavaScript source is parsed here, by hand, following ECMA-262 §22.2.1 (Patterns) as
   amended by Annex B.1.2 (the web-compatibility grammar that applies without the ``u`` flag),
   into a small AST over UTF-16 code units. No Python or RE2 syntax leaks through: every escape,
   class, ``.`` and anchor becomes an explicit code-unit set or zero-width assertion.
2. Subjects are brought into the same code-unit space: an astral character becomes its two
   surrogate units, and every surrogate unit is stored as a Plane-16 private-use code point so
   both engines can hold it (RE2 only accepts valid UTF-8).
3. Each pattern is routed to the cheapest evaluator that is exact and linear:
   ``literal`` (set membership, prefix, suffix or substring tests; no regex engine),
   ``re`` (Python's backtracking engine, only for patterns proven free of ambiguous choices,
   see ``_deterministic``; it is ~20x cheaper per call than RE2's wrapper, but long subjects
   still go to RE2, whose per-character cost is lower), ``re2`` (linear-time automata, for
   everything else) and ``composite`` (``^(?!X)(?=Y)Z``: each lookahead and the rest evaluated
   separately, each routed the same way). A lookahead that fits none of these is refused, as are
   backreferences and lookbehind.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, NoReturn, TypeAlias

import re2  # type: ignore[import-untyped]

from broker.errors import PatternError

__all__ = [
    "MAX_DOT_PATH_CHARS",
    "MAX_PATTERN_CHARS",
    "MAX_REPEAT_COUNT",
    "Engine",
    "Pattern",
    "RpcDenialReason",
    "RpcEntry",
    "RpcMatcher",
    "RpcMismatch",
    "compile_pattern",
    "escape_literal",
    "js_length",
    "js_string",
    "lookup_path",
]

MAX_DOT_PATH_CHARS: Final = 200
"""Smithery's limit on an ``rpcReqMatch`` key, in UTF-16 code units (JavaScript ``length``)."""
MAX_PATTERN_CHARS: Final = 500
"""Smithery's limit on an ``rpcReqMatch`` pattern, in UTF-16 code units."""
MAX_REPEAT_COUNT: Final = 1000
"""Largest ``{n,m}`` bound accepted; RE2 refuses larger ones and no real policy needs them."""
MAX_GROUP_DEPTH: Final = 32
"""Deepest group nesting accepted; bounds the recursion of the parser and the analyses."""

_BACKTRACK_WINDOW: Final = 32
"""Longest match an unanchored pattern (or a lookahead body) may have to run on ``re``.

An unanchored search makes one attempt per start position, so its cost is the input length
times the work of one attempt; bounding the match length bounds that work.
"""
_RE_SUBJECT_MAX_ANCHORED: Final = 256
_RE_SUBJECT_MAX_UNANCHORED: Final = 64
"""Longest subject (in code units) given to ``re``; longer ones go to RE2 (see _python_test)."""
_RE2_PROGRAM_MAX: Final = 10_000
r"""Largest RE2 program accepted (instructions, as translated here: ``\s`` alone is about 20).
Past about 18,000 the automaton of a pattern such as ``\s{0,900}$`` outgrows RE2's memory and
a search falls back to a far slower mode: 20 s for 1 MiB was measured, against 33 ms at 17,000
and at most 16 ms below 12,000 for the same shapes."""
_LITERAL_SET_MAX: Final = 64
_LITERAL_CHARS_MAX: Final = 4096
_LITERAL_CLASS_MAX: Final = 4
_LITERAL_NEEDLES_MAX: Final = 8
_V8_MAX_QUANTIFIER: Final = 2**31 - 1
_MAX_UNIT: Final = 0xFFFF
_SURROGATE_MIN: Final = 0xD800
_SURROGATE_MAX: Final = 0xDFFF
_UNIT_SURROGATE_BASE: Final = 0x100000
"""Where surrogate code units live in engine space: Plane 16, Supplementary Private Use Area-B.

Subjects are rewritten so that no astral character survives (each becomes two surrogate units),
hence these code points never occur in a rewritten subject except as surrogate stand-ins.
"""

Engine: TypeAlias = Literal["literal", "re", "re2", "composite"]
RpcDenialReason: TypeAlias = Literal["rpc_field_missing", "rpc_pattern_mismatch"]

_Ranges: TypeAlias = tuple[tuple[int, int], ...]
_Test: TypeAlias = Callable[[str], bool]


# --- code units ---------------------------------------------------------------------------------


def _utf16_units(text: str) -> list[int]:
    """``text`` as JavaScript sees it: UTF-16 code units (ECMA-262 §6.1.4, the String type)."""
    data = text.encode("utf-16-le", "surrogatepass")
    return [data[i] | data[i + 1] << 8 for i in range(0, len(data), 2)]


def js_length(text: str) -> int:
    """JavaScript's ``text.length`` (UTF-16 code units: an emoji counts 2), which is what
    Smithery's length limits count (its schema is zod's, and zod compares ``length``). The
    broker's one measure for them: ``policy`` and ``constraints`` use it too."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _unit_to_engine(unit: int) -> int:
    if _SURROGATE_MIN <= unit <= _SURROGATE_MAX:
        return unit - _SURROGATE_MIN + _UNIT_SURROGATE_BASE
    return unit


_NEEDS_REMAP: Final = re.compile(r"[\ud800-\udfff\U00010000-\U0010ffff]")


def _remap(found: re.Match[str]) -> str:
    code = ord(found.group())
    if code > _MAX_UNIT:
        # The UTF-16 encoding of an astral code point (ECMA-262 §11.1.1 UTF16EncodeCodePoint).
        code -= 0x10000
        high = _UNIT_SURROGATE_BASE + (code >> 10)
        low = _UNIT_SURROGATE_BASE + 0x400 + (code & 0x3FF)
        return chr(high) + chr(low)
    return chr(code - _SURROGATE_MIN + _UNIT_SURROGATE_BASE)


def _to_unit_space(text: str) -> str:
    """Rewrite ``text`` so that one character is one UTF-16 code unit, in engine space.

    JavaScript regexes without the ``u`` flag see a string as code units, so ``.`` matches half
    of an emoji and ``^.$`` does not match one. Callers skip ASCII text (``str.isascii`` is O(1)
    in CPython), which needs no rewriting.
    """
    if _NEEDS_REMAP.search(text) is None:
        return text
    return _NEEDS_REMAP.sub(_remap, text)


# --- code-unit sets -----------------------------------------------------------------------------


def _normalize(ranges: Iterable[tuple[int, int]]) -> _Ranges:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return tuple(merged)


def _complement(ranges: _Ranges) -> _Ranges:
    out: list[tuple[int, int]] = []
    next_unit = 0
    for low, high in ranges:
        if low > next_unit:
            out.append((next_unit, low - 1))
        next_unit = high + 1
    if next_unit <= _MAX_UNIT:
        out.append((next_unit, _MAX_UNIT))
    return tuple(out)


def _intersects(left: _Ranges, right: _Ranges) -> bool:
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i][1] < right[j][0]:
            i += 1
        elif right[j][1] < left[i][0]:
            j += 1
        else:
            return True
    return False


def _union(left: _Ranges, right: _Ranges) -> _Ranges:
    return _normalize(left + right) if left and right else left or right


def _single(unit: int) -> _Ranges:
    return ((unit, unit),)


_EMPTY: Final[_Ranges] = ()
_ALL: Final[_Ranges] = ((0, _MAX_UNIT),)
# CharacterClassEscape sets (ECMA-262 §22.2.2.9, CompileToCharSet): without the u and i flags,
# \d and \w are ASCII only (WordCharacters is exactly [A-Za-z0-9_]).
_DIGIT: Final[_Ranges] = ((0x30, 0x39),)
_WORD: Final[_Ranges] = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
# \s is WhiteSpace (§12.2: TAB, VT, FF, ZWNBSP and every Unicode "Space_Separator") plus
# LineTerminator (§12.3: LF, CR, LS, PS). Space_Separator has been stable since Unicode 6.3
# moved U+180E out of it.
_SPACE: Final[_Ranges] = _normalize(
    [
        (0x09, 0x0D),
        (0x20, 0x20),
        (0xA0, 0xA0),
        (0x1680, 0x1680),
        (0x2000, 0x200A),
        (0x2028, 0x2029),
        (0x202F, 0x202F),
        (0x205F, 0x205F),
        (0x3000, 0x3000),
        (0xFEFF, 0xFEFF),
    ]
)
# `.` without the s flag is every code unit except a LineTerminator (§22.2.2.7, CompileAtom).
_LINE_TERMINATORS: Final[_Ranges] = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))
_DOT: Final[_Ranges] = _complement(_LINE_TERMINATORS)
_CLASS_ESCAPES: Final[dict[str, _Ranges]] = {
    "d": _DIGIT,
    "D": _complement(_DIGIT),
    "w": _WORD,
    "W": _complement(_WORD),
    "s": _SPACE,
    "S": _complement(_SPACE),
}
# ControlEscape (§22.2.1, Table "ControlEscape Code Point Values").
_CONTROL_ESCAPES: Final[dict[str, int]] = {"f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")
_ASCII_LETTERS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_GROUP_NAME: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


# --- syntax tree --------------------------------------------------------------------------------
# Groups leave no node: without backreferences (refused) a capture changes nothing that
# RegExp.prototype.test can observe.


@dataclass(frozen=True, slots=True)
class _Chars:
    """Exactly one code unit from ``ranges`` (possibly empty: ``[]`` never matches)."""

    ranges: _Ranges


@dataclass(frozen=True, slots=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Alt:
    branches: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Repeat:
    body: _Node
    low: int
    high: int | None
    greedy: bool


@dataclass(frozen=True, slots=True)
class _Assert:
    kind: Literal["start", "end", "word_boundary", "not_word_boundary"]


@dataclass(frozen=True, slots=True)
class _Look:
    """A lookahead. In JavaScript it is atomic, which only matters to backreferences."""

    body: _Node
    negative: bool


_Node: TypeAlias = _Chars | _Seq | _Alt | _Repeat | _Assert | _Look

_START: Final = _Assert("start")
_END: Final = _Assert("end")


def _seq(items: Iterable[_Node]) -> _Node:
    flat: list[_Node] = []
    for item in items:
        if isinstance(item, _Seq):
            flat.extend(item.items)
        else:
            flat.append(item)
    return flat[0] if len(flat) == 1 else _Seq(tuple(flat))


# --- parser -------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over ECMA-262 §22.2.1 with Annex B.1.2, ``[~UnicodeMode]``.

    Two kinds of refusal, both ``PatternError``: ``_invalid`` for what JavaScript itself rejects
    with a SyntaxError (Smithery would refuse the mint), ``_unsupported`` for valid JavaScript
    whose meaning this module does not reproduce. Offsets are in UTF-16 code units, as a
    JavaScript error would count them.
    """

    def __init__(self, source: str) -> None:
        # One Python character per UTF-16 code unit (lone surrogates included), so that an
        # astral character in the source is two atoms, as in JavaScript without the u flag.
        self._text = "".join(map(chr, _utf16_units(source)))
        self._pos = 0
        self._depth = 0
        self._names: set[str] = set()

    def parse(self) -> _Node:
        node = self._disjunction()
        if self._pos < len(self._text):
            # Only an unmatched ')' stops the top-level disjunction early.
            self._invalid(
                self._pos, "unmatched ')'", r"remove it, or write \) to match a parenthesis"
            )
        return node

    # -- errors

    def _invalid(self, offset: int, what: str, instead: str) -> NoReturn:
        raise PatternError(
            f"not a valid JavaScript regular expression: {what} at offset {offset}; {instead}"
        )

    def _unsupported(self, offset: int, what: str, instead: str) -> NoReturn:
        raise PatternError(f"{what} at offset {offset} is not supported; {instead}")

    # -- helpers

    def _peek(self, ahead: int = 0) -> str:
        index = self._pos + ahead
        return self._text[index] if index < len(self._text) else ""

    # -- grammar

    def _disjunction(self) -> _Node:
        branches = [self._alternative()]
        while self._peek() == "|":
            self._pos += 1
            branches.append(self._alternative())
        return branches[0] if len(branches) == 1 else _Alt(tuple(branches))

    def _alternative(self) -> _Node:
        items: list[_Node] = []
        while self._peek() not in ("", "|", ")"):
            items.append(self._term())
        return _seq(items)

    def _term(self) -> _Node:
        start = self._pos
        char = self._text[start]
        if char in ("^", "$"):
            self._pos += 1
            self._refuse_quantified_assertion(start)
            return _START if char == "^" else _END
        if char == "\\" and self._peek(1) in ("b", "B"):
            self._pos += 2
            self._refuse_quantified_assertion(start)
            return _Assert("word_boundary" if self._text[start + 1] == "b" else "not_word_boundary")
        atom: _Node
        if char == "(":
            atom = self._group()
        elif char == "[":
            atom = _Chars(self._class())
        elif char == ".":
            self._pos += 1
            atom = _Chars(_DOT)
        elif char in ("*", "+", "?"):
            self._invalid(
                start, f"nothing to repeat before {char!r}", f"write \\{char} to match it literally"
            )
        elif char == "{" and self._braced_quantifier(start) is not None:
            # Annex B InvalidBracedQuantifier: `{2}` with nothing before it is an early error,
            # while a `{` that does not form a quantifier is an ordinary character.
            self._invalid(start, "nothing to repeat before '{'", r"write \{ to match a brace")
        elif char == "\\":
            atom = _Chars(self._escape(in_class=False)[0])
        else:
            self._pos += 1
            atom = _Chars(_single(ord(char)))
        return self._quantified(atom)

    def _refuse_quantified_assertion(self, start: int) -> None:
        if self._peek() in ("*", "+", "?") or (
            self._peek() == "{" and self._braced_quantifier(self._pos) is not None
        ):
            what = f"nothing to repeat: '{self._text[start : self._pos]}' is an assertion"
            self._invalid(self._pos, what, "remove the quantifier, or escape the character")

    def _quantified(self, atom: _Node) -> _Node:
        start = self._pos
        char = self._peek()
        high: int | None
        if char == "*":
            low, high, end = 0, None, start + 1
        elif char == "+":
            low, high, end = 1, None, start + 1
        elif char == "?":
            low, high, end = 0, 1, start + 1
        elif char == "{" and (braced := self._braced_quantifier(start)) is not None:
            low, high, end = braced
        else:
            return atom
        self._pos = end
        greedy = True
        if self._peek() == "?":
            self._pos += 1
            greedy = False
        if high is not None and min(low, _V8_MAX_QUANTIFIER) > min(high, _V8_MAX_QUANTIFIER):
            self._invalid(
                start, "numbers out of order in {} quantifier", "write the smaller number first"
            )
        if isinstance(atom, _Look):
            # Annex B QuantifiableAssertion allows it; it is never useful.
            self._unsupported(start, "a quantifier after a lookahead", "remove the quantifier")
        if low > MAX_REPEAT_COUNT or (high is not None and high > MAX_REPEAT_COUNT):
            self._unsupported(
                start,
                f"a repetition count above {MAX_REPEAT_COUNT}",
                "use a smaller count, or * or + for no upper bound",
            )
        return _Repeat(atom, low, high, greedy)

    def _braced_quantifier(self, at: int) -> tuple[int, int | None, int] | None:
        """``{n}``, ``{n,}`` or ``{n,m}`` starting at ``at``: (low, high, end) or None."""
        text = self._text
        first_end = at + 1
        while first_end < len(text) and "0" <= text[first_end] <= "9":
            first_end += 1
        if first_end == at + 1 or first_end >= len(text):
            return None
        low = int(text[at + 1 : first_end])
        if text[first_end] == "}":
            return low, low, first_end + 1
        if text[first_end] != ",":
            return None
        second_end = first_end + 1
        while second_end < len(text) and "0" <= text[second_end] <= "9":
            second_end += 1
        if second_end >= len(text) or text[second_end] != "}":
            return None
        high = int(text[first_end + 1 : second_end]) if second_end > first_end + 1 else None
        return low, high, second_end + 1

    def _group(self) -> _Node:
        start = self._pos
        lookahead: bool | None = None
        if self._peek(1) == "?":
            kind = self._peek(2)
            if kind == ":":
                self._pos += 3
            elif kind in ("=", "!"):
                lookahead = kind == "!"
                self._pos += 3
            elif kind == "<" and self._peek(3) in ("=", "!"):
                self._unsupported(
                    start,
                    f"lookbehind '{self._text[start : start + 4]}'",
                    "anchor with ^ or $, or use a lookahead right after a leading ^",
                )
            elif kind == "<":
                self._pos += 3
                self._group_name(start)
            else:
                self._invalid(
                    start,
                    f"unknown group syntax '{self._text[start : start + 3]}'",
                    "JavaScript has no inline flags like (?i) and no (?P<name>...); "
                    "write (?:...) to group, or (?<name>...) to name a group",
                )
        else:
            self._pos += 1
        self._depth += 1
        if self._depth > MAX_GROUP_DEPTH:
            self._unsupported(
                start, f"nesting groups more than {MAX_GROUP_DEPTH} deep", "flatten the pattern"
            )
        body = self._disjunction()
        self._depth -= 1
        if self._peek() != ")":
            self._invalid(
                start, "'(' is never closed", r"add ')', or write \( to match a parenthesis"
            )
        self._pos += 1
        return body if lookahead is None else _Look(body, lookahead)

    def _group_name(self, start: int) -> None:
        close = self._text.find(">", self._pos)
        name = self._text[self._pos : close] if close != -1 else ""
        if not _GROUP_NAME.fullmatch(name):
            # JavaScript accepts any RegExpIdentifierName; non-ASCII names are refused here too.
            self._unsupported(
                start,
                "a group name that is missing, unterminated or not plain ASCII",
                "write (?<name>...) with ASCII letters, digits, '_' or '$', "
                "not starting with a digit",
            )
        if name in self._names:
            self._invalid(
                start,
                f"duplicate group name {name!r}",
                "give each group its own name, or use (?:...)",
            )
        self._names.add(name)
        self._pos = close + 1

    def _class(self) -> _Ranges:
        """ClassContents without the u/v flags (§22.2.1 and Annex B.1.2 NonemptyClassRanges)."""
        start = self._pos
        self._pos += 1
        negate = self._peek() == "^"
        if negate:
            self._pos += 1
        parts: list[tuple[int, int]] = []
        while True:
            char = self._peek()
            if char == "":
                self._invalid(
                    start, "'[' is never closed", r"add ']', or write \[ to match a bracket"
                )
            if char == "]":
                self._pos += 1
                break
            atom_start = self._pos
            first, first_is_class = self._class_atom()
            if self._peek() == "-" and self._peek(1) not in ("", "]"):
                self._pos += 1
                second, second_is_class = self._class_atom()
                if first_is_class or second_is_class:
                    # Annex B makes `[\d-z]` a union of \d, '-' and 'z'; almost always a typo.
                    self._unsupported(
                        atom_start,
                        "a range with a class escape (\\d, \\w, \\s...) as an end",
                        "put '-' first or last in the class to match a hyphen",
                    )
                low, high = first[0][0], second[0][0]
                if low > high:
                    self._invalid(
                        atom_start,
                        "range out of order in character class",
                        "write the lower character first, or put '-' last to match a hyphen",
                    )
                parts.append((low, high))
            else:
                parts.extend(first)
        ranges = _normalize(parts)
        return _complement(ranges) if negate else ranges

    def _class_atom(self) -> tuple[_Ranges, bool]:
        char = self._peek()
        if char == "\\":
            return self._escape(in_class=True)
        self._pos += 1
        return _single(ord(char)), False

    def _escape(self, *, in_class: bool) -> tuple[_Ranges, bool]:
        """AtomEscape / ClassEscape after a backslash: (code units, is a class escape)."""
        start = self._pos
        char = self._peek(1)
        if char == "":
            self._invalid(start, r"'\' at the end of the pattern", r"write \\ to match a backslash")
        self._pos += 2
        if char in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[char], True
        if in_class and char == "b":
            return _single(0x08), False  # ClassEscape :: b is U+0008 BACKSPACE.
        if char in _CONTROL_ESCAPES:
            return _single(_CONTROL_ESCAPES[char]), False
        if char == "c":
            letter = self._peek()
            if letter not in _ASCII_LETTERS:
                # Annex B reads a lone \c as a literal backslash (and, in a class, \c1 or \c_ as
                # control characters): legal but surprising.
                self._unsupported(
                    start,
                    r"'\c' not followed by an ASCII letter",
                    r"write \cA to \cZ for a control character, or \\c for a backslash and c",
                )
            self._pos += 1
            return _single(ord(letter) % 32), False
        if char == "0" and not "0" <= self._peek() <= "9":
            return _single(0), False
        if "0" <= char <= "9":
            # A backreference, or (Annex B) a legacy octal escape, or \8 / \9 meaning a digit.
            self._unsupported(
                start,
                f"'\\{char}' (a backreference or legacy octal escape)",
                r"write \xHH or \uHHHH for a character code, or the digit without a backslash",
            )
        if char == "x":
            digits = self._text[self._pos : self._pos + 2]
            if len(digits) != 2 or not set(digits) <= _HEX_DIGITS:
                self._unsupported(start, r"'\x' without two hex digits", r"write \x41 or \u0041")
            self._pos += 2
            return _single(int(digits, 16)), False
        if char == "u":
            digits = self._text[self._pos : self._pos + 4]
            if len(digits) != 4 or not set(digits) <= _HEX_DIGITS:
                self._unsupported(
                    start,
                    r"'\u' without four hex digits",
                    r"write \u0041; \u{...} needs the u flag, which Smithery does not set",
                )
            self._pos += 4
            return _single(int(digits, 16)), False
        if char == "k":
            self._unsupported(
                start,
                r"'\k' (a named backreference, or the letter k)",
                "write k to match the letter; backreferences cannot be matched in linear time",
            )
        if char in _ASCII_LETTERS:
            self._unsupported(
                start, f"'\\{char}' (not a JavaScript escape)", _letter_escape_advice(char)
            )
        # IdentityEscape (Annex B): any other character stands for itself.
        return _single(ord(char)), False


def _letter_escape_advice(letter: str) -> str:
    literal = f"without the u flag it matches the letter {letter!r}"
    if letter == "A":
        return f"{literal}; write ^ for the start of the value"
    if letter in ("Z", "z"):
        return f"{literal}; write $ for the end of the value"
    if letter in ("p", "P"):
        return (
            f"{literal}; property escapes need the u flag, "
            "so list the characters in a class such as [A-Za-z]"
        )
    return f"{literal}; write {letter} without the backslash if that is meant"


# --- analyses -----------------------------------------------------------------------------------


def _nullable(node: _Node) -> bool:
    if isinstance(node, _Chars):
        return False
    if isinstance(node, _Seq):
        return all(_nullable(item) for item in node.items)
    if isinstance(node, _Alt):
        return any(_nullable(branch) for branch in node.branches)
    if isinstance(node, _Repeat):
        return node.low == 0 or _nullable(node.body)
    return True  # assertions and lookaheads consume nothing


def _first(node: _Node) -> _Ranges:
    """Code units that can be consumed first. Assertions are transparent (an over-estimate)."""
    if isinstance(node, _Chars):
        return node.ranges
    if isinstance(node, _Seq):
        out = _EMPTY
        for item in node.items:
            out = _union(out, _first(item))
            if not _nullable(item):
                break
        return out
    if isinstance(node, _Alt):
        out = _EMPTY
        for branch in node.branches:
            out = _union(out, _first(branch))
        return out
    if isinstance(node, _Repeat):
        return _EMPTY if node.high == 0 else _first(node.body)
    return _EMPTY


def _deterministic(node: _Node, follow: _Ranges) -> bool:
    """True when every choice in ``node`` is decided by the next code unit alone.

    A choice is an alternation, or a quantifier deciding between one more iteration and leaving.
    When the sets of code units each option can consume first (through what follows it) are
    disjoint, a backtracking engine can only make progress along one path: every other option
    fails before consuming anything. One match attempt is then linear in the subject, whatever
    order the engine tries options in. ``(a+)+``, ``(a|aa)*``, ``a*a*b``, ``(\\w+\\s?)*`` and
    ``.*x`` all fail this test and go to RE2 instead. Assertions are transparent here, which only
    makes the sets larger, so the test stays sound.
    """
    if isinstance(node, _Look):
        return _deterministic(node.body, _EMPTY)
    if isinstance(node, _Seq):
        after = follow
        for item in reversed(node.items):
            if not _deterministic(item, after):
                return False
            after = _union(_first(item), after) if _nullable(item) else _first(item)
        return True
    if isinstance(node, _Alt):
        seen = _EMPTY
        for branch in node.branches:
            starts = _union(_first(branch), follow) if _nullable(branch) else _first(branch)
            if _intersects(seen, starts):
                return False
            seen = _union(seen, starts)
            if not _deterministic(branch, follow):
                return False
        return True
    if isinstance(node, _Repeat):
        if node.high == 0:
            return True
        starts = _first(node.body)
        if node.high is None or node.high > node.low:
            # An empty iteration and leaving the loop would be two ways to the same place.
            if _nullable(node.body) or _intersects(starts, follow):
                return False
            return _deterministic(node.body, _union(starts, follow))
        return _deterministic(node.body, _union(starts, follow) if node.high > 1 else follow)
    return True


def _max_length(node: _Node) -> int | None:
    """Longest match in code units, or None when unbounded."""
    if isinstance(node, _Chars):
        return 1
    if isinstance(node, (_Seq, _Alt)):
        parts = node.items if isinstance(node, _Seq) else node.branches
        lengths = [_max_length(part) for part in parts]
        if any(length is None for length in lengths):
            return None
        known = [length for length in lengths if length is not None]
        if isinstance(node, _Seq):
            return sum(known)
        return max(known, default=0)
    if isinstance(node, _Repeat):
        if node.high == 0:
            return 0
        body = _max_length(node.body)
        if body == 0:
            return 0
        if node.high is None or body is None:
            return None
        return body * node.high
    return 0


def _anchored(node: _Node) -> bool:
    """True when every match must start at offset 0 (each path begins with ``^``)."""
    if isinstance(node, _Assert):
        return node.kind == "start"
    if isinstance(node, _Seq):
        return bool(node.items) and _anchored(node.items[0])
    if isinstance(node, _Alt):
        return all(_anchored(branch) for branch in node.branches)
    if isinstance(node, _Repeat):
        return node.low >= 1 and _anchored(node.body)
    return False


def _lookaheads(node: _Node) -> Iterator[_Look]:
    if isinstance(node, _Look):
        yield node
        yield from _lookaheads(node.body)
    elif isinstance(node, _Seq):
        for item in node.items:
            yield from _lookaheads(item)
    elif isinstance(node, _Alt):
        for branch in node.branches:
            yield from _lookaheads(branch)
    elif isinstance(node, _Repeat):
        yield from _lookaheads(node.body)


def _backtrack_safe(node: _Node) -> bool:
    """True when Python's ``re`` evaluates ``node`` in time linear in the subject.

    One attempt is linear when the pattern is deterministic (``_deterministic``). A search makes
    one attempt per start offset, so unanchored patterns also need a short bounded match.
    A lookahead can be re-evaluated each time the engine backs up to it, so its body must be
    short too (a long one at the start of an anchored pattern is handled by ``_split``).
    """
    if not _deterministic(node, _EMPTY):
        return False
    for look in _lookaheads(node):
        length = _max_length(look.body)
        if length is None or length > _BACKTRACK_WINDOW:
            return False
    if _anchored(node):
        return True
    length = _max_length(node)
    return length is not None and length <= _BACKTRACK_WINDOW


def _literal_strings(node: _Node) -> list[str] | None:
    """The finite set of engine-space strings ``node`` matches, if small and assertion-free."""
    out: list[str]
    if isinstance(node, _Chars):
        size = sum(high - low + 1 for low, high in node.ranges)
        if size == 0 or size > _LITERAL_CLASS_MAX:
            return None
        return [
            chr(_unit_to_engine(unit)) for low, high in node.ranges for unit in range(low, high + 1)
        ]
    if isinstance(node, _Alt):
        out = []
        for branch in node.branches:
            strings = _literal_strings(branch)
            if strings is None:
                return None
            out.extend(text for text in strings if text not in out)
        return out if _small(out) else None
    if isinstance(node, _Seq):
        parts: list[_Node] = list(node.items)
    elif isinstance(node, _Repeat) and node.low == node.high:
        parts = [node.body] * node.low
    else:
        return None
    out = [""]
    for part in parts:
        strings = _literal_strings(part)
        if strings is None:
            return None
        out = [head + tail for head in out for tail in strings]
        if not _small(out):
            return None
    return out


def _small(strings: list[str]) -> bool:
    return len(strings) <= _LITERAL_SET_MAX and sum(map(len, strings)) <= _LITERAL_CHARS_MAX


# --- emitters -----------------------------------------------------------------------------------


def _emit(node: _Node, dialect: Literal["re", "re2"]) -> str:
    """The pattern in the target engine's syntax, using only explicit sets and assertions."""
    if isinstance(node, _Chars):
        return _emit_set(node.ranges, dialect)
    if isinstance(node, _Seq):
        return "".join(_emit(item, dialect) for item in node.items)
    if isinstance(node, _Alt):
        return "(?:" + "|".join(_emit(branch, dialect) for branch in node.branches) + ")"
    if isinstance(node, _Repeat):
        if node.high is None:
            count = {0: "*", 1: "+"}.get(node.low, f"{{{node.low},}}")
        elif node.low == node.high:
            count = f"{{{node.low}}}"
        else:
            count = "?" if (node.low, node.high) == (0, 1) else f"{{{node.low},{node.high}}}"
        return f"(?:{_emit(node.body, dialect)}){count}{'' if node.greedy else '?'}"
    if isinstance(node, _Look):
        # Only ever emitted for ``re``: _route never sends a lookahead to RE2.
        return f"(?{'!' if node.negative else '='}{_emit(node.body, dialect)})"
    if node.kind == "start":
        return r"\A"
    if node.kind == "end":
        return r"\Z" if dialect == "re" else r"\z"  # Python's \Z is RE2's \z: the very end.
    if node.kind == "word_boundary":
        return r"\b"  # ASCII in RE2; compiled with re.ASCII for Python (§22.2.2.4.1 IsWordChar).
    # Python before 3.14 never matches \B in an empty string, where JavaScript does: _python_test
    # answers the empty subject from _matches_empty instead.
    return r"\B"


def _emit_set(ranges: _Ranges, dialect: Literal["re", "re2"]) -> str:
    if not ranges:
        return "(?!)" if dialect == "re" else r"[^\x00-\x{10ffff}]"
    spans: list[tuple[int, int]] = []
    for low, high in ranges:
        # Surrogate units live in Plane 16 in engine space (see _to_unit_space).
        if high < _SURROGATE_MIN or low > _SURROGATE_MAX:
            spans.append((low, high))
            continue
        if low < _SURROGATE_MIN:
            spans.append((low, _SURROGATE_MIN - 1))
        spans.append(
            (_unit_to_engine(max(low, _SURROGATE_MIN)), _unit_to_engine(min(high, _SURROGATE_MAX)))
        )
        if high > _SURROGATE_MAX:
            spans.append((_SURROGATE_MAX + 1, high))
    if len(spans) == 1 and spans[0][0] == spans[0][1]:
        return _emit_char(spans[0][0], dialect)
    body = "".join(
        _emit_char(low, dialect)
        if low == high
        else f"{_emit_char(low, dialect)}-{_emit_char(high, dialect)}"
        for low, high in spans
    )
    return f"[{body}]"


def _emit_char(code: int, dialect: Literal["re", "re2"]) -> str:
    if code < 0x80 and (chr(code).isalnum() or code == 0x5F):
        return chr(code)
    if dialect == "re2":
        return f"\\x{{{code:x}}}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= _MAX_UNIT:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


# --- routing ------------------------------------------------------------------------------------


def _always(_text: str) -> bool:
    return True


def _literal_test(node: _Node) -> _Test | None:
    """A test without a regex engine for ``^?(lit|lit...)$?`` shapes, else None."""
    branches = node.branches if isinstance(node, _Alt) else (node,)
    shapes: set[tuple[bool, bool]] = set()
    strings: list[str] = []
    for branch in branches:
        items = list(branch.items) if isinstance(branch, _Seq) else [branch]
        at_start = bool(items) and items[0] == _START
        if at_start:
            items.pop(0)
        at_end = bool(items) and items[-1] == _END
        if at_end:
            items.pop()
        found = _literal_strings(_seq(items))
        if found is None:
            return None
        shapes.add((at_start, at_end))
        strings.extend(found)
    if len(shapes) != 1 or not _small(strings):
        return None
    at_start, at_end = shapes.pop()
    if at_start and at_end:
        return frozenset(strings).__contains__
    if "" in strings:
        return _always
    if at_start:
        prefixes = tuple(strings)
        return lambda text: text.startswith(prefixes)
    if at_end:
        suffixes = tuple(strings)
        return lambda text: text.endswith(suffixes)
    if len(strings) == 1:
        needle = strings[0]
        return lambda text: needle in text
    if len(strings) > _LITERAL_NEEDLES_MAX:
        return None  # one pass per needle over a long subject would cost more than RE2's one
    needles = tuple(strings)
    return lambda text: any(needle in text for needle in needles)


def _matches_empty(node: _Node) -> bool:
    """Exactly whether ``node`` matches the empty string, where every assertion is decidable."""
    if isinstance(node, _Chars):
        return False
    if isinstance(node, _Seq):
        return all(_matches_empty(item) for item in node.items)
    if isinstance(node, _Alt):
        return any(_matches_empty(branch) for branch in node.branches)
    if isinstance(node, _Repeat):
        return node.low == 0 or _matches_empty(node.body)
    if isinstance(node, _Look):
        return _matches_empty(node.body) != node.negative
    # ^ and $ hold at offset 0 of "", \b does not (no word character on either side), \B does.
    return node.kind != "word_boundary"


def _python_test(node: _Node) -> _Test:
    compiled = re.compile(_emit(node, "re"), re.ASCII)
    anchored = _anchored(node)
    # An anchored pattern can only match at offset 0; `match` makes that the only attempt.
    probe = compiled.match if anchored else compiled.search
    empty = _matches_empty(node)
    # Linear is not enough on a 1 MiB subject: past a short length RE2's automaton is faster
    # than Python's per-offset attempts (measured crossover: ~64 units unanchored, ~256 anchored).
    # RE2 has no lookahead, so such patterns stay on `re`, which is still linear for them.
    limit = _RE_SUBJECT_MAX_ANCHORED if anchored else _RE_SUBJECT_MAX_UNANCHORED
    long_test: _Test | None = None
    if next(_lookaheads(node), None) is None:
        # If RE2 refuses (large nested repetitions), `re` keeps long subjects: still linear.
        with contextlib.suppress(PatternError):
            long_test = _re2_test(node)

    def test(text: str) -> bool:
        if not text:
            return empty
        if long_test is not None and len(text) > limit:
            return long_test(text)
        return probe(text) is not None

    return test


def _re2_test(node: _Node) -> _Test:
    options = re2.Options()
    options.never_capture = True
    options.log_errors = False
    # RE2 searches byte by byte, so an unanchored match could start inside a multi-byte
    # character, where \B holds (both neighbouring bytes are non-word). Consuming whole
    # characters up to the start keeps every candidate start on a code-unit boundary.
    source = rf"\A[\x00-\x{{10ffff}}]*?(?:{_emit(node, 're2')})"
    try:
        compiled = re2.compile(source, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"the pattern is too large to compile for linear-time matching ({reason}); "
            "use smaller repetition counts, especially in nested repetitions"
        ) from exc
    if compiled.programsize > _RE2_PROGRAM_MAX:
        raise PatternError(
            f"the pattern is too large for linear-time matching ({compiled.programsize} "
            f"automaton instructions, at most {_RE2_PROGRAM_MAX}); use smaller repetition "
            "counts, especially on \\s, \\S, \\w or ."
        )
    search = compiled.search
    # Bytes skip the wrapper's offset bookkeeping for str (about 3x faster per call).
    return lambda text: search(text.encode("utf-8")) is not None


def _split(node: _Node) -> tuple[tuple[_Look, ...], _Node] | None:
    """``^(?=X)(?!Y)Z`` as its leading lookaheads and ``^Z``, or None for other shapes.

    At offset 0 the pattern holds exactly when X matches at 0, Y does not, and Z matches at 0
    (§22.2.2.4: a lookahead only tests; with no backreferences its captures are unobservable).
    """
    if not isinstance(node, _Seq) or len(node.items) < 2 or node.items[0] != _START:
        return None
    looks: list[_Look] = []
    for item in node.items[1:]:
        if not isinstance(item, _Look):
            break
        looks.append(item)
    if not looks:
        return None
    return tuple(looks), _seq((_START, *node.items[1 + len(looks) :]))


def _route(node: _Node) -> tuple[Engine, _Test]:
    literal = _literal_test(node)
    if literal is not None:
        return "literal", literal
    if _backtrack_safe(node):
        return "re", _python_test(node)
    split = _split(node)
    if split is not None:
        looks, rest = split
        checks = tuple((_route(_seq((_START, look.body)))[1], look.negative) for look in looks)
        rest_test = _route(rest)[1]

        def composite(text: str) -> bool:
            for check, negative in checks:
                if check(text) == negative:
                    return False
            return rest_test(text)

        return "composite", composite
    if next(_lookaheads(node), None) is not None:
        raise PatternError(
            "this lookahead cannot be evaluated in linear time; put lookaheads right after a "
            f"leading ^ (for example ^(?!admin_)), or keep them to at most {_BACKTRACK_WINDOW} "
            "characters inside a pattern without ambiguous repetitions"
        )
    return "re2", _re2_test(node)


# --- public API ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled ``rpcReqMatch`` pattern. Build it with ``compile_pattern``.

    ``engine`` says how it is evaluated: ``literal`` (no regex engine), ``re`` (proven
    backtrack-safe), ``re2`` (linear-time automata) or ``composite`` (leading lookaheads split
    off, each part routed the same way).
    """

    source: str
    engine: Engine
    _test: _Test = field(repr=False, compare=False)

    def search(self, text: str) -> bool:
        """JavaScript ``new RegExp(self.source).test(text)``: a search, not a full match."""
        if not text.isascii():
            text = _to_unit_space(text)
        return self._test(text)

    @property
    def ascii_search(self) -> Callable[[str], bool]:
        """``search`` for a subject known to be ASCII (``str.isascii``), one call less: a
        hot loop that checks that itself calls this, and ``search`` for any other subject."""
        return self._test


def compile_pattern(source: str) -> Pattern:
    """Parse JavaScript regex ``source`` (no flags) and prepare a linear-time evaluator.

    Raises ``PatternError`` when JavaScript would reject the pattern, or when its meaning cannot
    be reproduced exactly in linear time; the message says what to write instead. Results are
    cached, so compiling the same rendered pattern per request is cheap.
    """
    if not isinstance(source, str):
        raise PatternError("the pattern must be a string")
    return _compile_cached(source)


@functools.lru_cache(maxsize=1024)
def _compile_cached(source: str) -> Pattern:
    length = js_length(source)
    if length > MAX_PATTERN_CHARS:
        raise PatternError(
            f"the pattern is {length} characters long; Smithery accepts at most {MAX_PATTERN_CHARS}"
        )
    engine, test = _route(_Parser(source).parse())
    return Pattern(source, engine, test)


_ESCAPED: Final = frozenset("^$\\.*+?()[]{}|/")


def escape_literal(value: str) -> str:
    """JavaScript regex source matching ``value`` literally, and nothing else.

    Every SyntaxCharacter (§22.2.1) and ``/`` gets an identity escape, valid with or without the
    ``u`` flag. Control characters, line terminators and lone surrogates become ``\\uHHHH`` so the
    result is printable and encodable as UTF-8; other characters stay as they are.
    """
    out: list[str] = []
    for char in value:
        if char in _ESCAPED:
            out.append("\\" + char)
        elif (
            char < " "
            or char == "\x7f"
            or char in ("\u2028", "\u2029")
            or "\ud800" <= char <= "\udfff"
        ):
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return "".join(out)


def js_string(value: object) -> str | None:
    """JavaScript ``String(value)`` for a JSON scalar; None for objects and arrays.

    Numbers follow Number::toString (ECMA-262 §6.1.6.1.20). JSON numbers are IEEE doubles in
    JavaScript, so an integer beyond 2**53 prints rounded (12345678901234567890 prints as
    12345678901234567000) and one beyond the double range prints Infinity.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if -(2**53) <= value <= 2**53:
            return str(value)
        try:
            return _js_number(float(value))
        except OverflowError:
            return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, float):
        return _js_number(value)
    return None


def _js_number(number: float) -> str:
    """Number::toString(number, 10), ECMA-262 §6.1.6.1.20."""
    if math.isnan(number):
        return "NaN"
    if number == 0:
        return "0"  # both +0 and -0 (step 2)
    if number < 0:
        return "-" + _js_number(-number)
    if math.isinf(number):
        return "Infinity"
    # repr gives the shortest digit string that round-trips, nearest to the value when several
    # qualify: the s and k of step 5.
    mantissa, _, exponent = repr(number).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + (int(exponent) if exponent else 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    sign = "+" if n - 1 >= 0 else "-"
    head = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{head}e{sign}{abs(n - 1)}"


_MISSING: Final = object()


def _is_array_index(segment: str) -> bool:
    # Only canonical indices address array elements: `[1, 2]["01"]` is undefined in JavaScript
    # (§6.1.7 array index, §7.1.21 CanonicalNumericIndexString).
    return segment.isascii() and segment.isdigit() and (segment == "0" or segment[0] != "0")


def lookup_segments(message: object, segments: tuple[str, ...]) -> object:
    """The value at a split dot path, or a private missing marker (``js_string`` of it is None,
    as for objects and arrays: the three cases Smithery treats alike)."""
    value = message
    for segment in segments:
        if isinstance(value, dict):
            value = value.get(segment, _MISSING)  # _MISSING then fails the next step or the caller
        elif isinstance(value, list) and _is_array_index(segment):
            index = int(segment)
            if index >= len(value):
                return _MISSING
            value = value[index]
        else:
            return _MISSING
    return value


def lookup_path(message: object, dot_path: str) -> tuple[bool, object]:
    """(found, value) at ``dot_path`` in a parsed JSON message.

    Segments are object keys (an all-digit key works on objects too); an all-digit segment in
    canonical form indexes an array. Anything else, including a key on a scalar, is not found.
    """
    value = lookup_segments(message, tuple(dot_path.split(".")))
    if value is _MISSING:
        return False, None
    return True, value


@dataclass(frozen=True, slots=True)
class RpcMismatch:
    """Why a message fails an ``rpcReqMatch`` map: the first failing entry.

    ``reason`` is ``rpc_field_missing`` when the path is absent or holds an object or array, and
    ``rpc_pattern_mismatch`` when the value's ``String()`` form does not match.
    """

    reason: RpcDenialReason
    field: str
    pattern: str


@dataclass(frozen=True, slots=True)
class RpcEntry:
    """One ``dotPath: pattern`` entry, ready to evaluate."""

    field: str
    segments: tuple[str, ...]
    pattern: Pattern


@dataclass(frozen=True, slots=True)
class RpcMatcher:
    """A compiled ``rpcReqMatch`` map: every entry must match (AND), in declaration order."""

    entries: tuple[RpcEntry, ...]

    @classmethod
    def from_mapping(cls, rpc_req_match: Mapping[str, str]) -> RpcMatcher:
        """Validate and compile ``{dotPath: pattern}``.

        Raises one ``PatternError`` listing every bad entry (``'key': problem; ...``).
        """
        entries: list[RpcEntry] = []
        problems: list[str] = []
        for key, source in rpc_req_match.items():
            try:
                entries.append(RpcEntry(key, _check_dot_path(key), compile_pattern(source)))
            except PatternError as exc:
                problems.append(f"{key!r}: {exc.detail}")
        if problems:
            raise PatternError("; ".join(problems))
        return cls(tuple(entries))

    def first_mismatch(self, message: object) -> RpcMismatch | None:
        """The first entry ``message`` fails, or None when every entry matches."""
        for entry in self.entries:
            value = lookup_segments(message, entry.segments)
            # js_string(_MISSING) is None too: an absent path, an object and an array alike.
            text = value if type(value) is str else js_string(value)
            if text is None:
                return RpcMismatch("rpc_field_missing", entry.field, entry.pattern.source)
            if not entry.pattern.search(text):
                return RpcMismatch("rpc_pattern_mismatch", entry.field, entry.pattern.source)
        return None

    def matches(self, message: object) -> bool:
        """``first_mismatch(message) is None``, without building the explanation (hot path)."""
        for entry in self.entries:
            value = lookup_segments(message, entry.segments)
            if value is _MISSING:
                return False
            text = value if isinstance(value, str) else js_string(value)
            if text is None or not entry.pattern.search(text):
                return False
        return True


def _check_dot_path(key: object) -> tuple[str, ...]:
    if not isinstance(key, str):
        raise PatternError("the dot path must be a string")
    length = js_length(key)
    if length > MAX_DOT_PATH_CHARS:
        raise PatternError(
            f"the dot path is {length} characters long; "
            f"Smithery accepts at most {MAX_DOT_PATH_CHARS}"
        )
    segments = tuple(key.split("."))
    if not all(segments):
        raise PatternError("the dot path has an empty segment; write a path such as params.name")
    return segments
