"""rpcmatch: JavaScript-faithful rpcReqMatch evaluation, checked against node, and its routing.

``node`` is the oracle: one session fixture runs it once on every corpus pair
(``tests/rpcmatch_corpus/*.json``), a seeded random corpus and the number-formatting cases.
Speed is never asserted here; catastrophic patterns are checked by where they are routed, and a
subprocess with a generous timeout guards the backtracking engine against hangs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from broker import rpcmatch
from broker.errors import BrokerError, PatternError
from broker.rpcmatch import (
    Pattern,
    RpcMatcher,
    RpcMismatch,
    compile_pattern,
    escape_literal,
    js_string,
    lookup_path,
)

CORPUS_DIR = Path(__file__).parent / "rpcmatch_corpus"
CASE_FILES = sorted(path for path in CORPUS_DIR.glob("*.json") if path.name != "numbers.json")
NODE_TIMEOUT_SECONDS = 300
HANG_GUARD_TIMEOUT_SECONDS = 300

# Reads {"patterns", "pairs", "numbers"}; a pattern that throws gets valid=false and test=null.
NODE_ORACLE = r"""
'use strict';
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const compiled = new Map();
for (const source of input.patterns) {
  try { compiled.set(source, new RegExp(source)); } catch (e) { compiled.set(source, null); }
}
const valid = input.patterns.map((source) => compiled.get(source) !== null);
const tests = input.pairs.map(([source, subject]) => {
  const regex = compiled.get(source);
  return regex === null ? null : regex.test(subject);
});
const numbers = input.numbers.map((text) => String(JSON.parse(text)));
process.stdout.write(JSON.stringify({ valid, tests, numbers }));
"""


# --- corpus -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    file: str
    pattern: str
    subjects: tuple[str, ...]
    rejected: str | None
    js_error: bool
    engine: str | None


def load_cases(path: Path) -> list[Case]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return [
        Case(
            file=path.stem,
            pattern=raw["pattern"],
            subjects=tuple(raw["subjects"]),
            rejected=raw.get("rejected"),
            js_error=raw.get("js_error", False),
            engine=raw.get("engine"),
        )
        for raw in document["cases"]
    ]


CASES = [case for path in CASE_FILES for case in load_cases(path)]
NUMBER_TEXTS: list[str] = json.loads((CORPUS_DIR / "numbers.json").read_text(encoding="utf-8"))[
    "numbers"
]


# --- seeded random corpus -----------------------------------------------------------------------

FUZZ_SEED = 20250611
FUZZ_PATTERNS = 2000
WIDE_ATOMS = (
    *("a", "b", "1", "_", " ", "é", "٣", "😀", "-", "}", "]", "a{"),
    *(r"\d", r"\D", r"\w", r"\W", r"\s", r"\S", ".", r"\.", r"\/", r"\n", r"\r", r"\0"),
    *(r"\u00e9", r"\x41", r"\u2028", r"\uD83D", r"[\u2028]", r"[\ud800-\udfff]", r"[^\ud83d]"),
    *("[ab]", "[^a]", "[a-c1]", r"[^\s]", "[]", "[^]", r"[\b]", "[-a]", "[a-]"),
    *(r"\b", r"\B", "^", "$"),
)
SIMPLE_ATOMS = ("a", "b", "ab", "[ab]", r"\w", ".", r"\b", r"\B", "^", "$", r"\s", "[^a]")
ZERO_WIDTH = frozenset({"^", "$", r"\b", r"\B"})
QUANTIFIERS = ("", "", "", "*", "+", "?", "{2}", "{1,3}", "{0,}", "*?", "+?", "??", "{2,}")
WIDE_SUBJECT = (
    *("a", "a", "b", "b", "1", "_", " ", "\n", "\r", "é", "٣", "\u00a0", "\u2028", "😀"),
    *("A", "-", "\ufeff", "\ud83d", "{", "}", "\x08", "\x00"),
)
SIMPLE_SUBJECT = ("a", "a", "b", " ", "\n", "_", "é")


def fuzz_pattern(rng: random.Random, atoms: tuple[str, ...], depth: int = 0) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        if depth < 3 and rng.random() < 0.25:
            opener = rng.choice(("(?:", "(", "(?=", "(?!", "(?:", "("))
            atom = opener + fuzz_pattern(rng, atoms, depth + 1) + ")"
        else:
            atom = rng.choice(atoms)
        zero_width = atom in ZERO_WIDTH or atom.startswith(("(?=", "(?!"))
        # Quantified assertions are mostly SyntaxErrors; keep a few to check they are refused.
        if not zero_width or rng.random() < 0.05:
            atom += rng.choice(QUANTIFIERS)
        parts.append(atom)
    pattern = "".join(parts)
    if rng.random() < 0.25:
        pattern += "|" + fuzz_pattern(rng, atoms, depth + 1)
    if depth == 0 and rng.random() < 0.2:
        pattern = f"^(?{rng.choice('=!')}{fuzz_pattern(rng, atoms, 2)}){pattern}"
    return pattern


def fuzz_subject(rng: random.Random, alphabet: tuple[str, ...]) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))


def build_fuzz_pairs() -> list[tuple[str, str]]:
    rng = random.Random(FUZZ_SEED)
    pairs: list[tuple[str, str]] = []
    for index in range(FUZZ_PATTERNS):
        atoms, alphabet = (
            (WIDE_ATOMS, WIDE_SUBJECT) if index % 2 else (SIMPLE_ATOMS, SIMPLE_SUBJECT)
        )
        pattern = fuzz_pattern(rng, atoms)
        pairs.extend((pattern, fuzz_subject(rng, alphabet)) for _ in range(10))
        try:
            engine = compile_pattern(pattern).engine
        except PatternError:
            continue
        if engine == "re":
            # Long subjects cross the length at which `re` hands over to RE2. Only for patterns
            # proven unambiguous: node backtracks too, and would hang on the others.
            for _ in range(3):
                padding = "".join(fuzz_subject(rng, alphabet) for _ in range(90))
                tail = fuzz_subject(rng, alphabet)
                pairs.append((pattern, padding + tail if rng.random() < 0.5 else tail + padding))
    return pairs


FUZZ_PAIRS = build_fuzz_pairs()


def random_number_texts() -> list[str]:
    rng = random.Random(FUZZ_SEED)
    texts: list[str] = []
    while len(texts) < 300:
        (number,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if math.isfinite(number):
            texts.append(repr(number))
    for _ in range(150):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        texts.append(digits.lstrip("0") or "0")
        texts.append(f"{rng.choice('123456789')}.{digits}e{rng.choice('+-')}{rng.randint(0, 330)}")
    return texts


ALL_NUMBER_TEXTS = NUMBER_TEXTS + random_number_texts()


# --- the oracle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oracle:
    valid: dict[str, bool]
    tests: dict[tuple[str, str], bool | None]
    numbers: dict[str, str]


@pytest.fixture(scope="session")
def node_oracle() -> Oracle:
    node = shutil.which("node")
    assert node is not None, "node is required: it is the oracle for JavaScript regex semantics"
    pairs = sorted({(case.pattern, s) for case in CASES for s in case.subjects} | set(FUZZ_PAIRS))
    patterns = sorted({case.pattern for case in CASES} | {pattern for pattern, _ in pairs})
    request = json.dumps({"patterns": patterns, "pairs": pairs, "numbers": ALL_NUMBER_TEXTS})
    completed = subprocess.run(
        [node, "-e", NODE_ORACLE],
        input=request,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=NODE_TIMEOUT_SECONDS,
        check=True,
    )
    answer = json.loads(completed.stdout)
    return Oracle(
        valid=dict(zip(patterns, answer["valid"], strict=True)),
        tests=dict(zip(pairs, answer["tests"], strict=True)),
        numbers=dict(zip(ALL_NUMBER_TEXTS, answer["numbers"], strict=True)),
    )


# --- differential tests -------------------------------------------------------------------------


@pytest.mark.parametrize("case_file", CASE_FILES, ids=lambda path: path.stem)
def test_corpus_matches_node(case_file: Path, node_oracle: Oracle) -> None:
    mismatches = []
    for case in load_cases(case_file):
        if case.rejected is not None:
            continue
        compiled = compile_pattern(case.pattern)
        for subject in case.subjects:
            expected = node_oracle.tests[(case.pattern, subject)]
            if compiled.search(subject) != expected:
                mismatches.append((case.pattern, subject, compiled.engine, expected))
    assert mismatches == []


def test_corpus_declares_javascript_validity(node_oracle: Oracle) -> None:
    wrong = [case.pattern for case in CASES if node_oracle.valid[case.pattern] == case.js_error]
    assert wrong == []


def test_corpus_rejects_exactly_the_listed_patterns() -> None:
    problems = []
    for case in CASES:
        try:
            compile_pattern(case.pattern)
        except PatternError as exc:
            if case.rejected is None or case.rejected not in exc.detail:
                problems.append((case.pattern, exc.detail))
        else:
            if case.rejected is not None:
                problems.append((case.pattern, "accepted"))
    assert problems == []


def test_corpus_is_large_and_rejections_are_few() -> None:
    accepted = [case for case in CASES if case.rejected is None]
    unsupported = [case for case in CASES if case.rejected is not None and not case.js_error]
    assert sum(len(case.subjects) for case in accepted) >= 300
    # Valid JavaScript that is refused must stay the exception, each one listed in rejected.json.
    assert {case.file for case in unsupported} == {"rejected"}
    assert len(unsupported) <= 25
    assert len(unsupported) * 5 < len(accepted)


def test_corpus_engines_are_as_declared() -> None:
    wrong = [
        (case.pattern, case.engine, compile_pattern(case.pattern).engine)
        for case in CASES
        if case.engine is not None and compile_pattern(case.pattern).engine != case.engine
    ]
    assert wrong == []


def test_random_patterns_match_node(node_oracle: Oracle) -> None:
    mismatches: list[tuple[str, ...]] = []
    outcomes: Counter[tuple[str, bool]] = Counter()
    for pattern, subject in FUZZ_PAIRS:
        try:
            compiled = compile_pattern(pattern)
        except PatternError:
            continue
        if not node_oracle.valid[pattern]:
            mismatches.append((pattern, "accepted but JavaScript rejects it"))
            continue
        result = compiled.search(subject)
        outcomes[(compiled.engine, result)] += 1
        if result != node_oracle.tests[(pattern, subject)]:
            mismatches.append((pattern, subject, compiled.engine))
    assert mismatches[:20] == []
    # The random corpus must reach every engine with both answers, or it proves little.
    for engine in ("literal", "re", "re2", "composite"):
        assert outcomes[(engine, True)] >= 50, engine
        assert outcomes[(engine, False)] >= 50, engine


def test_js_string_matches_node_for_json_numbers(node_oracle: Oracle) -> None:
    mismatches = []
    for text, expected in node_oracle.numbers.items():
        if js_string(json.loads(text)) != expected:
            mismatches.append((text, "json", js_string(json.loads(text)), expected))
        try:
            decoded = msgspec.json.decode(text)
        except msgspec.DecodeError:
            continue  # msgspec refuses out-of-range floats such as 1e309
        if js_string(decoded) != expected:
            mismatches.append((text, "msgspec", js_string(decoded), expected))
    assert mismatches == []


# --- linear time --------------------------------------------------------------------------------

LONG = 100_000
CATASTROPHIC = [
    pytest.param("(a+)+$", "a" * LONG + "b", False, id="nested_plus"),
    pytest.param("^(a+)+$", "a" * LONG + "b", False, id="nested_plus_anchored"),
    pytest.param("(a|aa)*$", "a" * LONG + "b", True, id="overlapping_alternation"),
    pytest.param("^(a|aa)*$", "a" * LONG + "b", False, id="overlapping_alternation_anchored"),
    pytest.param("(a|a?)+b", "a" * LONG, False, id="optional_in_plus"),
    pytest.param(r"^(\w+\s?)*$", "word " * (LONG // 5) + "!", False, id="words_and_spaces"),
    pytest.param("a*a*a*a*a*b", "a" * LONG, False, id="polynomial_stars"),
    pytest.param("(x+x+)+y", "x" * LONG, False, id="doubled_plus"),
    pytest.param(r"^(\d+)*\d$", "1" * LONG + "x", False, id="digits_star"),
    pytest.param("(.*a){12}", "ab" * 5 + "b" * LONG, False, id="dot_star_repeated"),
    pytest.param(r"[0-9]+$", "1" * LONG + "x", False, id="unanchored_plus_at_end"),
    pytest.param("^(?:a?){30}a{30}$", "a" * 30, True, id="optional_prefix_blowup"),
]


@pytest.mark.parametrize(("source", "subject", "expected"), CATASTROPHIC)
def test_catastrophic_pattern_runs_on_linear_engine(
    source: str, subject: str, expected: bool
) -> None:
    compiled = compile_pattern(source)
    assert compiled.engine == "re2"  # asserted first: only then is the long search safe to run
    assert compiled.search(subject) is expected


# Deterministic patterns that stress the proof behind the `re` route: stars followed by what
# they cannot consume, nested loops with disjoint starts, lookaheads, unanchored short windows.
BACKTRACK_SAFE_EXTRA = [
    "^[a-z]*1",
    "^(?:a[^x]*x)*",
    "^(?:ab)*c",
    "^(?:a|b[^b]*b)*$",
    r"\bdelete\b",
    r"(?:[a-z]\.){1,10}",
    r"\B\B(?:\.){1,3}",
    r"^(?:\d{1,3}\.){3}\d{1,3}$",
    "^(?!admin_)[a-z_]+$",
    "^(?:(?!ab)[a-z])*$",
    r"^[^\s@]+@[^\s@.]+$",
]

HANG_GUARD = r"""
import json, sys
from broker import rpcmatch

# Keep subjects of any length on Python's engine, so this tests the safety proof itself and not
# the hand-over of long subjects to RE2.
rpcmatch._RE_SUBJECT_MAX_ANCHORED = rpcmatch._RE_SUBJECT_MAX_UNANCHORED = 10**9
checked = 0
for source in json.load(sys.stdin):
    compiled = rpcmatch.compile_pattern(source)
    if compiled.engine not in ("re", "composite"):
        continue
    alphabet = sorted(set(source) | set("a1 _-x@.\n"))
    for first in alphabet:
        for second in alphabet[:8]:
            compiled.search((first * 3 + second) * 25_000)
            checked += 1
print(checked)
"""


def test_backtracking_engine_stays_linear_on_adversarial_input() -> None:
    sources = [
        case.pattern
        for case in CASES
        if case.rejected is None and compile_pattern(case.pattern).engine in ("re", "composite")
    ]
    sources += BACKTRACK_SAFE_EXTRA
    assert all(compile_pattern(source).engine in ("re", "composite") for source in sources)
    completed = subprocess.run(
        [sys.executable, "-c", HANG_GUARD],
        input=json.dumps(sources),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_TIMEOUT_SECONDS,  # a quadratic pattern takes minutes here, not seconds
        check=True,
    )
    assert int(completed.stdout) > 1000


def test_long_subject_on_backtracking_route_is_exact() -> None:
    compiled = compile_pattern("^[a-z]+$")
    assert compiled.engine == "re"
    assert compiled.search("a" * 5000)
    assert not compiled.search("a" * 5000 + "\n")
    unanchored = compile_pattern(r"\bdelete\b")
    assert unanchored.search("x " * 3000 + "delete")
    assert not unanchored.search("x " * 3000 + "undelete")


# --- routing decision table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "engine"),
    [
        ("^tools/(list|call)$", "literal"),
        ("^(search_issues|get_issue)$", "literal"),
        ("^tools/", "literal"),
        ("_issue$", "literal"),
        ("issue", "literal"),
        ("", "literal"),
        ("^(ab|ac)$", "literal"),
        ("^[ab]c$", "literal"),
        ("^(?:a|b){2}$", "literal"),
        ("^a$|b", "re"),
        ("^[a-z]+$", "re"),
        ("^[a-z]*[0-9]$", "re"),
        (r"\d{3}-\d{4}", "re"),
        ("^(?!admin_)", "re"),
        ("^[a-z]*[a-z]$", "re2"),
        ("^(?:ab|ac)d+$", "re2"),
        ("[0-9]+$", "re2"),
        ("^(?:a?)*$", "re2"),
        ("^.*x$", "re2"),
        (r"[a-z]{40}", "re2"),
        ("^(?!.*delete)", "composite"),
        ("^(?=.*a)(?=.*b)", "composite"),
    ],
)
def test_engine_routing(source: str, engine: str) -> None:
    assert compile_pattern(source).engine == engine


# --- rejection messages -------------------------------------------------------------------------

INVALID = "not a valid JavaScript regular expression: "


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "a**",
            INVALID + r"nothing to repeat before '*' at offset 2; write \* to match it literally",
        ),
        (
            "?",
            INVALID + r"nothing to repeat before '?' at offset 0; write \? to match it literally",
        ),
        ("{2}", INVALID + r"nothing to repeat before '{' at offset 0; write \{ to match a brace"),
        (
            "$+",
            INVALID + "nothing to repeat: '$' is an assertion at offset 1; "
            "remove the quantifier, or escape the character",
        ),
        (
            r"x\B{2}",
            INVALID + r"nothing to repeat: '\B' is an assertion at offset 3; "
            "remove the quantifier, or escape the character",
        ),
        (
            "a{3,2}",
            INVALID
            + "numbers out of order in {} quantifier at offset 1; write the smaller number first",
        ),
        (
            "a)",
            INVALID + r"unmatched ')' at offset 1; remove it, or write \) to match a parenthesis",
        ),
        (
            "(a|b",
            INVALID
            + r"'(' is never closed at offset 0; add ')', or write \( to match a parenthesis",
        ),
        (
            "[ab",
            INVALID + r"'[' is never closed at offset 0; add ']', or write \[ to match a bracket",
        ),
        (
            "[a-",
            INVALID + r"'[' is never closed at offset 0; add ']', or write \[ to match a bracket",
        ),
        (
            "ab\\",
            INVALID + r"'\' at the end of the pattern at offset 2; write \\ to match a backslash",
        ),
        (
            "[b-a]",
            INVALID + "range out of order in character class at offset 1; "
            "write the lower character first, or put '-' last to match a hyphen",
        ),
        (
            "(?i)x",
            INVALID + "unknown group syntax '(?i' at offset 0; JavaScript has no inline flags like "
            "(?i) and no (?P<name>...); write (?:...) to group, or (?<name>...) to name a group",
        ),
        (
            "(?<a>x)(?<a>y)",
            INVALID
            + "duplicate group name 'a' at offset 7; give each group its own name, or use (?:...)",
        ),
        (
            "(?<2x>y)",
            "a group name that is missing, unterminated or not plain ASCII at offset 0 is not "
            "supported; write (?<name>...) with ASCII letters, digits, '_' or '$', not starting "
            "with a digit",
        ),
        (
            "(?<=a)b",
            "lookbehind '(?<=' at offset 0 is not supported; anchor with ^ or $, or use a "
            "lookahead right after a leading ^",
        ),
        (
            "(?!a)+",
            "a quantifier after a lookahead at offset 5 is not supported; remove the quantifier",
        ),
        (
            "a{1001}",
            "a repetition count above 1000 at offset 1 is not supported; use a smaller count, "
            "or * or + for no upper bound",
        ),
        (
            "(" * 33 + ")" * 33,
            "nesting groups more than 32 deep at offset 32 is not supported; flatten the pattern",
        ),
        (
            "[a\\s-z]",
            "a range with a class escape (\\d, \\w, \\s...) as an end at offset 2 is not "
            "supported; put '-' first or last in the class to match a hyphen",
        ),
        (
            r"\cé",
            r"'\c' not followed by an ASCII letter at offset 0 is not supported; write \cA to \cZ "
            r"for a control character, or \\c for a backslash and c",
        ),
        (
            r"(a)\1",
            r"'\1' (a backreference or legacy octal escape) at offset 3 is not supported; "
            r"write \xHH or \uHHHH for a character code, or the digit without a backslash",
        ),
        (
            r"\012",
            r"'\0' (a backreference or legacy octal escape) at offset 0 is not supported; "
            r"write \xHH or \uHHHH for a character code, or the digit without a backslash",
        ),
        (
            r"\xg0",
            r"'\x' without two hex digits at offset 0 is not supported; write \x41 or \u0041",
        ),
        (
            r"\u{1F600}",
            r"'\u' without four hex digits at offset 0 is not supported; write \u0041; \u{...} "
            "needs the u flag, which Smithery does not set",
        ),
        (
            r"\k<n>",
            r"'\k' (a named backreference, or the letter k) at offset 0 is not supported; "
            "write k to match the letter; backreferences cannot be matched in linear time",
        ),
        (
            r"\Aabc",
            r"'\A' (not a JavaScript escape) at offset 0 is not supported; without the u flag it "
            "matches the letter 'A'; write ^ for the start of the value",
        ),
        (
            r"abc\Z",
            r"'\Z' (not a JavaScript escape) at offset 3 is not supported; without the u flag it "
            "matches the letter 'Z'; write $ for the end of the value",
        ),
        (
            r"\p{Lu}",
            r"'\p' (not a JavaScript escape) at offset 0 is not supported; without the u flag it "
            "matches the letter 'p'; property escapes need the u flag, so list the characters in "
            "a class such as [A-Za-z]",
        ),
        (
            r"[\e]",
            r"'\e' (not a JavaScript escape) at offset 1 is not supported; without the u flag it "
            "matches the letter 'e'; write e without the backslash if that is meant",
        ),
        (
            "a(?=.*b)",
            "this lookahead cannot be evaluated in linear time; put lookaheads right after a "
            "leading ^ (for example ^(?!admin_)), or keep them to at most 32 characters inside a "
            "pattern without ambiguous repetitions",
        ),
        (
            "(?:(?:a|ab){100}){20}",
            "the pattern is too large to compile for linear-time matching (invalid repetition "
            "size: {20}); use smaller repetition counts, especially in nested repetitions",
        ),
        (
            # RE2's automaton for it outgrows its memory: 20 s per MiB was measured
            "\\s{0,900}$",
            "the pattern is too large for linear-time matching (18009 automaton instructions, at "
            "most 10000); use smaller repetition counts, especially on \\s, \\S, \\w or .",
        ),
        ("x" * 501, "the pattern is 501 characters long; Smithery accepts at most 500"),
        ("😀" * 251, "the pattern is 502 characters long; Smithery accepts at most 500"),
    ],
)
def test_rejection_message(source: str, message: str) -> None:
    with pytest.raises(PatternError) as raised:
        compile_pattern(source)
    assert raised.value.detail == message
    assert raised.value.code == "pattern_invalid"
    assert isinstance(raised.value, BrokerError)


def test_pattern_must_be_a_string() -> None:
    with pytest.raises(PatternError, match="the pattern must be a string"):
        compile_pattern(42)  # type: ignore[arg-type]


def test_pattern_at_length_limit_is_accepted() -> None:
    assert compile_pattern("x" * 500).search("x" * 500)
    assert compile_pattern("😀" * 250).engine == "literal"


# --- semantics pinned by name (each also in the corpus) -----------------------------------------


def test_trailing_newline_is_not_end_of_value() -> None:
    assert not compile_pattern("^get_issue$").search("get_issue\n")
    assert not compile_pattern("^[a-z_]+$").search("get_issue\n")


def test_not_word_boundary_matches_empty_subject() -> None:
    # Python's re before 3.14 says no here; JavaScript says yes.
    assert compile_pattern(r"\B").search("")
    assert compile_pattern(r"^\B$").search("")


def test_re2_match_cannot_start_inside_multibyte_character() -> None:
    # RE2 sees UTF-8 bytes; between two bytes of one character \B would hold.
    compiled = compile_pattern(r"\Bé*?")
    assert compiled.engine == "re2"
    assert not compiled.search("b\ufeff_")


def test_unicode_digits_are_not_digits() -> None:
    assert not compile_pattern(r"^\d+$").search("\u0663")  # ARABIC-INDIC DIGIT THREE
    assert not compile_pattern(r"^\d+$").search("\uff13")  # FULLWIDTH DIGIT THREE


def test_astral_character_is_two_code_units() -> None:
    assert not compile_pattern("^.$").search("😀")
    assert compile_pattern("^..$").search("😀")
    assert compile_pattern(r"^\uD83D\uDE00$").search("😀")
    assert compile_pattern(r"^\uD83D\uDE00$").search("\ud83d\ude00")


# --- escape_literal -----------------------------------------------------------------------------

LITERAL_VALUES = [
    "",
    "alice",
    "a.b|c",
    r"^$\.*+?()[]{}|/",
    "a-b,c:d=e!f<g>h'i\"j`k~l@m#n%o&p;q",
    "line\nbreak\r\u2028\u2029",
    "\x00\x01\x1f\x7f\x08",
    "tab\there",
    "café ß Ж",
    "😀 and \U00010400",
    "\ud83d lone",
    "\\d\\w\\s\\b",
    "{1,2}",
    "]",
    "(?<n>x)",
]


@pytest.mark.parametrize("value", LITERAL_VALUES)
def test_escape_literal_round_trips(value: str) -> None:
    compiled = compile_pattern("^" + escape_literal(value) + "$")
    assert compiled.search(value)
    assert compiled.engine == "literal"
    for other in (value + "x", "x" + value, value + "\n", value[:-1], value.upper() + "!"):
        if other != value:
            assert not compiled.search(other), other


def test_escaped_subject_cannot_widen_pattern() -> None:
    compiled = compile_pattern("^user:" + escape_literal("a.b|c") + "$")
    assert compiled.search("user:a.b|c")
    for other in ("c", "user:axb|c", "user:a.b", "user:a.bxc", "user:aXb|c", "a.b|c"):
        assert not compiled.search(other), other
    assert escape_literal("a.b|c") == r"a\.b\|c"


def test_escape_literal_output_is_printable() -> None:
    assert escape_literal("a\nb\x00\u2028\ud800") == r"a\u000Ab\u0000\u2028\uD800"
    assert escape_literal("😀") == "😀"


# --- js_string ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        ("", ""),
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-0.0, "0"),
        (42, "42"),
        (-7, "-7"),
        (1.5, "1.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (12345678901234567890, "12345678901234567000"),
        (2**53 + 1, "9007199254740992"),
        (-(2**53) - 1, "-9007199254740992"),
        (10**400, "Infinity"),
        (-(10**400), "-Infinity"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (123456789.125, "123456789.125"),
    ],
)
def test_js_string_scalars(value: object, expected: str) -> None:
    assert js_string(value) == expected


@pytest.mark.parametrize("value", [{}, {"a": 1}, [], [1], (1,), b"x", object()])
def test_js_string_refuses_non_scalars(value: object) -> None:
    assert js_string(value) is None


# --- lookup_path --------------------------------------------------------------------------------

MESSAGE = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {
        "name": "get_issue",
        "arguments": {"owner": "acme", "labels": ["bug", "p1"], "0": "zero-key", "n": None},
        "items": [{"id": "first"}, {"id": "second"}],
    },
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("method", (True, "tools/call")),
        ("id", (True, 7)),
        ("params.name", (True, "get_issue")),
        ("params.arguments.labels.0", (True, "bug")),
        ("params.arguments.labels.1", (True, "p1")),
        ("params.items.1.id", (True, "second")),
        ("params.arguments.0", (True, "zero-key")),
        ("params.arguments.n", (True, None)),
        ("params.arguments.labels", (True, ["bug", "p1"])),
        ("params.arguments.labels.2", (False, None)),
        ("params.arguments.labels.01", (False, None)),
        ("params.arguments.labels.-1", (False, None)),
        ("params.arguments.labels.length", (False, None)),
        ("params.arguments.labels.\u0660", (False, None)),  # ARABIC-INDIC DIGIT ZERO
        ("params.missing", (False, None)),
        ("params.name.length", (False, None)),
        ("method.0", (False, None)),
        ("params.arguments.n.x", (False, None)),
        ("", (False, None)),
    ],
)
def test_lookup_path(path: str, expected: tuple[bool, object]) -> None:
    assert lookup_path(MESSAGE, path) == expected


def test_lookup_path_on_scalar_message() -> None:
    assert lookup_path("text", "a") == (False, None)
    assert lookup_path([["x"]], "0.0") == (True, "x")


# --- RpcMatcher ---------------------------------------------------------------------------------

GITHUB_RULE = {
    "method": "^tools/(list|call)$",
    "params.name": "^(search_issues|get_issue)$",
    "params.arguments.owner": "^acme$",
}


def call(name: object, owner: object = "acme") -> dict[str, object]:
    arguments: dict[str, object] = {"owner": owner}
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def test_rpc_matcher_allowed() -> None:
    matcher = RpcMatcher.from_mapping(GITHUB_RULE)
    assert matcher.first_mismatch(call("get_issue")) is None
    assert matcher.matches(call("search_issues"))


def test_rpc_matcher_denied_on_pattern_mismatch() -> None:
    matcher = RpcMatcher.from_mapping(GITHUB_RULE)
    assert matcher.first_mismatch(call("delete_repo")) == RpcMismatch(
        "rpc_pattern_mismatch", "params.name", "^(search_issues|get_issue)$"
    )
    assert not matcher.matches(call("delete_repo"))


def test_rpc_matcher_reports_first_failing_entry_in_declaration_order() -> None:
    matcher = RpcMatcher.from_mapping(GITHUB_RULE)
    mismatch = matcher.first_mismatch(call("delete_repo", owner="evil"))
    assert mismatch is not None
    assert mismatch.field == "params.name"


def test_rpc_matcher_denied_on_missing_field() -> None:
    matcher = RpcMatcher.from_mapping(GITHUB_RULE)
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert matcher.first_mismatch(listing) == RpcMismatch(
        "rpc_field_missing", "params.name", "^(search_issues|get_issue)$"
    )


@pytest.mark.parametrize("value", [{"x": 1}, ["get_issue"], []])
def test_rpc_matcher_object_or_array_value_is_missing(value: object) -> None:
    matcher = RpcMatcher.from_mapping({"params.name": ".*"})
    mismatch = matcher.first_mismatch(call(value))
    assert mismatch is not None
    assert mismatch.reason == "rpc_field_missing"


@pytest.mark.parametrize(
    ("value", "pattern"),
    [(42, "^42$"), (1.5, r"^1\.5$"), (True, "^true$"), (None, "^null$"), (10**21, r"^1e\+21$")],
)
def test_rpc_matcher_matches_scalars_as_javascript_strings(value: object, pattern: str) -> None:
    assert RpcMatcher.from_mapping({"params.name": pattern}).matches(call(value))


def test_rpc_matcher_without_entries_allows_everything() -> None:
    assert RpcMatcher.from_mapping({}).matches({"anything": 1})


def test_rpc_matcher_non_ascii_subject() -> None:
    matcher = RpcMatcher.from_mapping({"params.name": r"^\w+$"})
    assert not matcher.matches(call("café"))
    assert matcher.matches(call("cafe"))


def test_rpc_matcher_length_limits() -> None:
    at_limit = "a" * 200
    RpcMatcher.from_mapping({at_limit: "x" * 500})
    RpcMatcher.from_mapping({"😀" * 100: "x"})  # 200 UTF-16 code units
    with pytest.raises(PatternError) as raised:
        RpcMatcher.from_mapping({"a" * 201: "x"})
    assert raised.value.detail == (
        f"'{'a' * 201}': the dot path is 201 characters long; Smithery accepts at most 200"
    )
    with pytest.raises(PatternError) as raised:
        RpcMatcher.from_mapping({"😀" * 100 + "a": "x"})
    assert "the dot path is 201 characters long" in raised.value.detail
    with pytest.raises(PatternError) as raised:
        RpcMatcher.from_mapping({"method": "x" * 501})
    assert raised.value.detail == (
        "'method': the pattern is 501 characters long; Smithery accepts at most 500"
    )


def test_rpc_matcher_lists_every_problem() -> None:
    with pytest.raises(PatternError) as raised:
        RpcMatcher.from_mapping({"a..b": "x", "method": "(a", "ok": "^x$", 7: "y"})  # type: ignore[dict-item]
    assert raised.value.detail == (
        "'a..b': the dot path has an empty segment; write a path such as params.name; "
        "'method': not a valid JavaScript regular expression: '(' is never closed at offset 0; "
        "add ')', or write \\( to match a parenthesis; "
        "7: the dot path must be a string"
    )


def test_rpc_matcher_and_pattern_are_frozen() -> None:
    matcher = RpcMatcher.from_mapping(GITHUB_RULE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        matcher.entries = ()  # type: ignore[misc]
    pattern = compile_pattern("^x$")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pattern.source = "y"  # type: ignore[misc]
    assert isinstance(pattern, Pattern)
    assert pattern == compile_pattern("^x$")
    assert "_test" not in repr(pattern)
    assert matcher == RpcMatcher.from_mapping(dict(GITHUB_RULE))


def test_module_constants_match_smithery_limits() -> None:
    assert rpcmatch.MAX_DOT_PATH_CHARS == 200
    assert rpcmatch.MAX_PATTERN_CHARS == 500
