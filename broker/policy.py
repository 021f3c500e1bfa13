"""Policy files: the model, loading, validation, revision and rule selection.

A policy set is every ``*.yaml``/``*.yml`` file directly in one directory. Each file holds
``rules:``; each rule has an ``id``, optional ``description``, conditions under ``when``, one
Smithery ``Constraint`` under ``grant`` (Smithery's own field names, so its docs apply) and
optionally a ``provision`` block: which connections its users may create through the broker,
with the metadata the broker enforces on them. Loading
either yields an immutable ``PolicySet`` with a content-hash ``revision``, or raises
``PolicyError`` listing every problem in every file (file, line, rule id, field path, message).

This module is pure apart from ``load_policy_dir`` reading files: no network, no clock. It does not
render constraints (``constraints.py``) and does not evaluate JSON-RPC requests (``precheck.py``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import yaml

from broker import rpcmatch
from broker.errors import PatternError, PolicyError, PolicyProblem
from broker.files import FileRefused, read_limited

RESOURCES: Final = ("connections", "servers", "namespaces", "skills")
OPERATIONS: Final = ("read", "write", "execute")
GRANT_FIELDS: Final = ("namespaces", "resources", "operations", "metadata", "rpcReqMatch", "ttl")
RULE_FIELDS: Final = ("id", "description", "when", "grant", "provision")
PROVISION_FIELDS: Final = (
    "namespace",
    "metadata",
    "idPrefix",
    "servers",
    "mcpUrl",
    "maxConnections",
    "clientMetadata",
)
MAX_CONNECTIONS_LIMIT: Final = 1000
"""Largest ``maxConnections``: counting a user's connections pages through Smithery's list."""
ID_SEPARATORS: Final = "-_.~"
"""Characters that may follow a placeholder in ``idPrefix`` (connection-id characters)."""
SERVER_NAME_PATTERN: Final = re.compile(r"(@[a-z0-9][a-z0-9._-]{0,63}/)?[a-z0-9][a-z0-9._-]{0,63}")
WHEN_FIELDS: Final = ("claims", "issuer")
CONDITION_OPS: Final = ("equals", "in", "contains", "present", "type")
CLAIM_TYPES: Final = ("string", "number", "boolean", "array", "object")
MAX_TTL_SECONDS: Final = 24 * 3600
MAX_RPC_KEY_CHARS: Final = 200
"""Smithery's limit on an ``rpcReqMatch`` key, counted as JavaScript does (``js_length``)."""
MAX_RPC_PATTERN_CHARS: Final = 500
"""Smithery's limit on an ``rpcReqMatch`` pattern (and on a provision ``mcpUrl`` pattern), counted
as JavaScript does (``js_length``)."""
MAX_POLICY_FILE_BYTES: Final = 1024 * 1024
MAX_YAML_NODES: Final = 100_000
MAX_YAML_DEPTH: Final = 64
"""Collections inside collections; PyYAML composes a document recursively, so a few hundred
brackets (``[[[[...``) would end in a RecursionError."""
RULE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_TTL_PATTERN: Final = re.compile(r"([0-9]{1,9})([smhd]?)")
_TTL_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# ``{claims.<path>}``: the only placeholder. Other braces stay literal, because regex quantifiers
# such as ``a{2,3}`` are legitimate inside rpcReqMatch patterns.
_PLACEHOLDER: Final = re.compile(r"\{claims\.([^{}\s]+)\}")
_BRACED: Final = re.compile(r"\{[^{}]*\}")

ClaimScalar = str | int | float | bool
Operator = Literal["equals", "in", "contains", "present", "type"]


# --- the model (frozen) -------------------------------------------------------------------------


class ClaimRef(msgspec.Struct, frozen=True):
    """A ``{claims.<path>}`` placeholder inside a template."""

    path: str


class Template(msgspec.Struct, frozen=True):
    """A string with placeholders, parsed once at load: literal text and ``ClaimRef`` parts."""

    source: str
    parts: tuple[str | ClaimRef, ...]

    @property
    def is_literal(self) -> bool:
        return all(isinstance(part, str) for part in self.parts)


class ClaimTest(msgspec.Struct, frozen=True):
    """One condition on one verified claim."""

    claim: str
    op: Operator
    operand: ClaimScalar | tuple[ClaimScalar, ...] | bool


class Grant(msgspec.Struct, frozen=True):
    """A Smithery Constraint with templated strings. ``None`` means the field is omitted."""

    namespaces: Template | tuple[Template, ...] | None = None
    resources: str | tuple[str, ...] | None = None
    operations: str | tuple[str, ...] | None = None
    metadata: tuple[tuple[tuple[str, Template], ...], ...] | None = None
    metadata_is_list: bool = False
    rpc_req_match: tuple[tuple[str, Template], ...] | None = None
    ttl: int | str | None = None
    """As written (Smithery accepts a number of seconds or ``"15m"``)."""
    ttl_seconds: int | None = None


class Provision(msgspec.Struct, frozen=True):
    """Which connections a rule's users may create through the broker (``provision:``).

    The broker writes ``metadata`` itself on every connection it creates, so tokens scoped by
    that metadata (the rule's ``grant``) stay exactly as safe as the policy says.
    """

    namespace: Template
    metadata: tuple[tuple[str, Template], ...]
    """The enforced metadata: always written, always required to match on read and delete."""
    id_prefix: Template
    """Every connection id of a user starts with this (``{claims.sub}-``)."""
    servers: tuple[str, ...] = ()
    """Smithery registry server names the user may connect to."""
    mcp_url: tuple[str, ...] = ()
    """Anchored JavaScript regexes (linear-time, ``rpcmatch``) a custom ``mcpUrl`` must match."""
    max_connections: int | None = None
    """Per-user limit on connections carrying the enforced metadata; None: no limit."""
    client_metadata: tuple[str, ...] = ()
    """Metadata keys a client may set (default none). No rule may grant by or enforce one of
    them: a user could otherwise tag a connection into that rule's reach."""


class Rule(msgspec.Struct, frozen=True):
    id: str
    grant: Grant
    provision: Provision | None = None
    description: str = ""
    claims: tuple[ClaimTest, ...] = ()
    issuers: tuple[str, ...] = ()
    """Accepted ``iss`` values; empty means any configured issuer."""
    file: str = ""
    path: str = ""
    """Where the rule is in its file (``$.rules[2]``) and on which line, for tooling."""
    line: int = 0
    column: int = 0


class PolicySet(msgspec.Struct, frozen=True):
    rules: tuple[Rule, ...]
    revision: str
    """First 16 hex digits of a SHA-256 over the files' names and bytes."""

    def rule(self, rule_id: str) -> Rule | None:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None


@dataclass(frozen=True, slots=True)
class RuleSkip:
    """Why one rule did not apply to a principal (for explanations and audit, never for callers
    of the token endpoint)."""

    rule_id: str
    reason: str


# --- selection (pure) ---------------------------------------------------------------------------

_MISSING: Final = object()


def lookup_claim(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path``, or ``_MISSING``.

    A claim named exactly ``path`` wins (namespaced claims such as ``https://example.com/roles``
    contain dots); otherwise the path is followed through nested objects, dot by dot.
    """
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def is_missing(value: Any) -> bool:
    return value is _MISSING


def same_scalar(left: Any, right: Any) -> bool:
    """JSON equality without Python's ``True == 1``: booleans only equal booleans."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    return isinstance(left, str) and isinstance(right, str) and left == right


def evaluate_test(test: ClaimTest, claims: Mapping[str, Any]) -> str | None:
    """``None`` when the test holds, else a short reason."""
    value = lookup_claim(claims, test.claim)
    if test.op == "present":
        if (value is not _MISSING) is test.operand:
            return None
        return f"claim {test.claim} is {'missing' if test.operand else 'present'}"
    if value is _MISSING:
        return f"claim {test.claim} is missing"
    if test.op == "type":
        if json_type(value) == test.operand:
            return None
        return f"claim {test.claim} is not a {test.operand}"
    if test.op == "equals":
        if same_scalar(value, test.operand):
            return None
        return f"claim {test.claim} does not equal {test.operand!r}"
    if test.op == "in":
        assert isinstance(test.operand, tuple)
        if any(same_scalar(value, option) for option in test.operand):
            return None
        return f"claim {test.claim} is not one of {list(test.operand)!r}"
    # contains: an array claim holding the value, or a space-delimited string such as the OAuth
    # ``scope`` claim (RFC 8693 §4.2) holding it as one word.
    if isinstance(value, list):
        held = any(same_scalar(item, test.operand) for item in value)
    else:
        held = isinstance(value, str) and isinstance(test.operand, str)
        held = held and test.operand in value.split(" ")
    if held:
        return None
    return f"claim {test.claim} does not contain {test.operand!r}"


def json_type(value: Any) -> str:
    """The JSON type name of a decoded claim value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "null"


def match_rule(rule: Rule, issuer: str, claims: Mapping[str, Any]) -> str | None:
    """``None`` when every condition of ``rule`` holds for this principal, else the first reason."""
    if rule.issuers and issuer not in rule.issuers:
        return "issuer not accepted by this rule"
    for test in rule.claims:
        reason = evaluate_test(test, claims)
        if reason is not None:
            return reason
    return None


# --- loading ------------------------------------------------------------------------------------


def load_policy_dir(directory: str | Path) -> PolicySet:
    """Read and validate every policy file in ``directory``; raise PolicyError with all problems."""
    sources, problems = read_policy_dir(directory)
    if not sources and problems:  # no directory, or nothing in it to read
        raise PolicyError(problems)
    try:
        policy_set = load_policy_sources(sources)
    except PolicyError as exc:
        problems.extend(exc.problems)
    if problems:
        raise PolicyError(problems)
    return policy_set


def policy_dir_revision(directory: str | Path) -> str | None:
    """The revision the files in ``directory`` would load as, without validating them (cheap:
    they are read and hashed, not parsed); None when any cannot be read."""
    sources, problems = read_policy_dir(directory)
    return None if problems else revision_of(sources)


def read_policy_dir(directory: str | Path) -> tuple[list[tuple[str, bytes]], list[PolicyProblem]]:
    """The policy files of ``directory`` as (path, bytes) in a stable order, and the problems
    met reading them."""
    root = Path(directory)
    if not root.is_dir():
        return [], [
            PolicyProblem(str(root), "$", "policy directory does not exist or is not a directory")
        ]
    # Every *.yaml entry is read or reported: a directory, a FIFO or a dangling link named like a
    # policy file must not make its rules vanish without a word. Hidden entries are not policy
    # files: editors' lock links (.#name.yaml), and Kubernetes' ..data links in a mounted
    # ConfigMap.
    files = sorted(
        p for p in root.iterdir() if p.suffix in {".yaml", ".yml"} and not p.name.startswith(".")
    )
    sources: list[tuple[str, bytes]] = []
    problems: list[PolicyProblem] = []
    for path in files:
        try:
            sources.append((str(path), read_limited(path, MAX_POLICY_FILE_BYTES)))
        except FileRefused as exc:
            problems.append(PolicyProblem(str(path), "$", f"the entry {exc}"))
        except OSError as exc:
            problems.append(PolicyProblem(str(path), "$", f"cannot read: {exc.strerror}"))
    if not files:
        problems.append(PolicyProblem(str(root), "$", "no policy files (*.yaml, *.yml) found"))
    return sources, problems


def load_policy_sources(sources: Sequence[tuple[str, bytes]]) -> PolicySet:
    """Validate already-read files, given as (name, bytes) in a stable order."""
    problems: list[PolicyProblem] = []
    rules: list[Rule] = []
    first_seen: dict[str, str] = {}
    checkers: list[_FileChecker] = []
    for name, data in sources:
        checker = _FileChecker(name, first_seen)
        rules.extend(checker.check(data))
        problems.extend(sorted(checker.problems, key=lambda p: (p.line or 0, p.column or 0)))
        checkers.append(checker)
    problems.extend(_client_metadata_conflicts(rules, checkers))
    if not problems and not rules:
        problems.append(PolicyProblem("-", "$", "the policy set defines no rules"))
    if problems:
        raise PolicyError(problems)
    return PolicySet(rules=tuple(rules), revision=revision_of(sources))


def revision_of(sources: Sequence[tuple[str, bytes]]) -> str:
    """A policy set's revision: a hash of its files' names and contents."""
    digest = hashlib.sha256()
    for name, data in sources:
        digest.update(Path(name).name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def _client_metadata_conflicts(
    rules: Sequence[Rule], checkers: Sequence[_FileChecker]
) -> list[PolicyProblem]:
    """Keys clients may set (``clientMetadata``) that a rule grants access by or a provision
    block enforces, in any file: a user could tag a connection of theirs (their credentials,
    their server) into that rule's reach, and its users' agents would call it."""
    reserved: dict[str, tuple[str, str]] = {}
    for rule in rules:
        for block in rule.grant.metadata or ():
            for key, _ in block:
                reserved.setdefault(key, (rule.id, "grants access by"))
        for key, _ in rule.provision.metadata if rule.provision else ():
            reserved.setdefault(key, (rule.id, "enforces"))
    return [
        PolicyProblem(
            file=checker.file,
            path=path,
            message=f"clients may not set {key!r}: rule {reserved[key][0]!r} "
            f"{reserved[key][1]} it, so a user could tag a connection into that rule's reach",
            rule_id=rule_id,
            line=at.line,
            column=at.column,
        )
        for checker in checkers
        for rule_id, path, key, at in checker.client_metadata_keys
        if key in reserved
    ]


@dataclass(slots=True)
class _Located:
    """A YAML value together with the position of its node (1-based line and column)."""

    value: Any
    line: int
    column: int
    key_line: int | None = None
    """Where the mapping key of this value is, for errors about the key itself."""
    key_column: int | None = None

    @property
    def key(self) -> _Located:
        if self.key_line is None or self.key_column is None:
            return self
        return _Located(None, self.key_line, self.key_column)


@dataclass(slots=True)
class _FileChecker:
    """Validates one file, collecting every problem instead of stopping at the first."""

    file: str
    first_seen: dict[str, str]
    """Rule id → file that defined it first, shared across the set's files."""
    problems: list[PolicyProblem] = field(default_factory=list)
    client_metadata_keys: list[tuple[str | None, str, str, _Located]] = field(default_factory=list)
    """Each ``clientMetadata`` key: (rule id, path, key, where), checked against the whole set."""
    _rule_id: str | None = None
    _nodes: int = 0

    # -- reporting

    def problem(self, path: str, message: str, at: _Located | None = None) -> None:
        self.problems.append(
            PolicyProblem(
                file=self.file,
                path=path,
                message=message,
                rule_id=self._rule_id,
                line=at.line if at else None,
                column=at.column if at else None,
            )
        )

    # -- YAML with positions

    def _parse(self, data: bytes, expected: str = "a mapping with 'rules'") -> _Located | None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem("$", f"file is not UTF-8 (byte {exc.start})")
            return None
        try:
            deep = _nesting_beyond(text, MAX_YAML_DEPTH)
            node = None if deep is not None else yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = _Located(None, mark.line + 1, mark.column + 1) if mark is not None else None
            reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.problem("$", f"invalid YAML: {reason}", where)
            return None
        if deep is not None:
            at = _Located(None, deep.line + 1, deep.column + 1)
            self.problem("$", f"collections nest deeper than {MAX_YAML_DEPTH} levels", at)
            return None
        if node is None:
            self.problem("$", f"file is empty; expected {expected}")
            return None
        try:
            return self._convert(node, "$")
        except _TooLarge as exc:
            self.problem("$", str(exc))
            return None

    def _convert(self, node: yaml.Node, path: str, depth: int = 1) -> _Located | None:
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:  # aliases can expand exponentially ("billion laughs")
            raise _TooLarge(f"document expands to more than {MAX_YAML_NODES} nodes")
        if depth > MAX_YAML_DEPTH:  # aliases inside aliases nest deeper than the text shows
            raise _TooLarge(
                f"collections nest deeper than {MAX_YAML_DEPTH} levels (aliases expanded)"
            )
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.MappingNode):
            mapping: dict[str, _Located] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                key_at = _Located(key, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if not isinstance(key, str) or key_node.tag == "tag:yaml.org,2002:merge":
                    self.problem(path, "mapping keys must be plain strings", key_at)
                    continue
                if key in mapping:
                    # PyYAML would silently keep the last value; two readers must never disagree.
                    self.problem(f"{path}.{key}", "duplicate key", key_at)
                    continue
                converted = self._convert(value_node, f"{path}.{key}", depth + 1)
                if converted is not None:
                    converted.key_line, converted.key_column = key_at.line, key_at.column
                    mapping[key] = converted
            return _Located(mapping, line, column)
        if isinstance(node, yaml.SequenceNode):
            items = [
                self._convert(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node.value)
            ]
            return _Located([i for i in items if i is not None], line, column)
        assert isinstance(node, yaml.ScalarNode)
        value, problem = _scalar(node)
        if problem is not None:
            self.problem(path, problem, _Located(None, line, column))
            return None
        return _Located(value, line, column)

    # -- schema

    def check(self, data: bytes) -> Iterator[Rule]:
        doc = self._parse(data)
        if doc is None:
            return
        if not isinstance(doc.value, dict):
            self.problem("$", "expected a mapping with 'rules'", doc)
            return
        for key in doc.value:
            if key != "rules":
                self.problem(
                    f"$.{key}",
                    "unknown field; a policy file holds only 'rules'",
                    doc.value[key].key,
                )
        rules = doc.value.get("rules")
        if rules is None:
            self.problem("$.rules", "required: a list of rules", doc)
            return
        if not isinstance(rules.value, list):
            self.problem("$.rules", "must be a list of rules", rules)
            return
        for index, item in enumerate(rules.value):
            rule = self._check_rule(item, f"$.rules[{index}]")
            if rule is not None:
                yield rule
        self._rule_id = None

    def _check_rule(self, item: _Located, path: str) -> Rule | None:
        self._rule_id = None
        if not isinstance(item.value, dict):
            self.problem(path, "each rule must be a mapping with id, when and grant", item)
            return None
        body: dict[str, _Located] = item.value
        before = len(self.problems)
        rule_id_at = body.get("id")
        if rule_id_at is None:
            self.problem(f"{path}.id", "required: a stable rule id such as own-connections", item)
            rule_id = f"<rule {path}>"
        elif not isinstance(rule_id_at.value, str) or not RULE_ID_PATTERN.fullmatch(
            rule_id_at.value
        ):
            self.problem(
                f"{path}.id",
                "must be 1-128 characters of letters, digits, '_', '.', ':', '-', "
                "starting with a letter or digit",
                rule_id_at,
            )
            rule_id = f"<rule {path}>"
        else:
            rule_id = rule_id_at.value
            self._rule_id = rule_id
            if rule_id in self.first_seen:
                self.problem(
                    f"{path}.id",
                    f"duplicate rule id (first defined in {self.first_seen[rule_id]})",
                    rule_id_at,
                )
            else:
                self.first_seen[rule_id] = self.file
        for key, value in body.items():
            if key not in RULE_FIELDS:
                self.problem(
                    f"{path}.{key}", f"unknown field; allowed: {', '.join(RULE_FIELDS)}", value.key
                )
        description = ""
        if "description" in body:
            if isinstance(body["description"].value, str):
                description = body["description"].value
            else:
                self.problem(f"{path}.description", "must be a string", body["description"])
        claims: tuple[ClaimTest, ...] = ()
        issuers: tuple[str, ...] = ()
        if "when" in body:
            claims, issuers = self._check_when(body["when"], f"{path}.when")
        grant_at = body.get("grant")
        grant = None
        if grant_at is None:
            self.problem(
                f"{path}.grant", "required: the Smithery Constraint this rule grants", item
            )
        else:
            grant = self._check_grant(grant_at, f"{path}.grant")
        provision = None
        if "provision" in body:
            provision = self._check_provision(body["provision"], f"{path}.provision")
        if grant is None or len(self.problems) != before:
            return None
        return Rule(
            id=rule_id,
            provision=provision,
            description=description,
            claims=claims,
            issuers=issuers,
            grant=grant,
            file=self.file,
            path=path,
            line=item.line,
            column=item.column,
        )

    def _check_when(
        self, when: _Located, path: str
    ) -> tuple[tuple[ClaimTest, ...], tuple[str, ...]]:
        if not isinstance(when.value, dict):
            self.problem(path, "must be a mapping with 'claims' and/or 'issuer'", when)
            return (), ()
        for key, value in when.value.items():
            if key not in WHEN_FIELDS:
                self.problem(
                    f"{path}.{key}", f"unknown field; allowed: {', '.join(WHEN_FIELDS)}", value.key
                )
        issuers: tuple[str, ...] = ()
        if "issuer" in when.value:
            issuers = self._string_or_list(when.value["issuer"], f"{path}.issuer") or ()
        tests: list[ClaimTest] = []
        claims_at = when.value.get("claims")
        if claims_at is not None:
            if not isinstance(claims_at.value, dict):
                self.problem(f"{path}.claims", "must map claim names to conditions", claims_at)
            else:
                for claim, condition in claims_at.value.items():
                    tests.extend(self._check_condition(claim, condition, f"{path}.claims.{claim}"))
        return tuple(tests), issuers

    def _check_condition(self, claim: str, condition: _Located, path: str) -> list[ClaimTest]:
        value = condition.value
        if _is_scalar(value):
            return [ClaimTest(claim=claim, op="equals", operand=value)]
        if value is None:
            self.problem(path, "null is not a condition; use {present: false}", condition)
            return []
        if isinstance(value, list):
            self.problem(
                path,
                "a list is ambiguous; use {in: [...]} (claim is one of) or {contains: x} "
                "(array claim holds x)",
                condition,
            )
            return []
        if not isinstance(value, dict):
            self.problem(path, "must be a string, number, boolean or {operator: value}", condition)
            return []
        if not value:
            self.problem(path, f"empty condition; use one of {', '.join(CONDITION_OPS)}", condition)
            return []
        tests: list[ClaimTest] = []
        for op, operand in value.items():
            op_path = f"{path}.{op}"
            if op == "equals" or op == "contains":
                if not _is_scalar(operand.value):
                    self.problem(op_path, "must be a string, number or boolean", operand)
                    continue
                tests.append(ClaimTest(claim=claim, op=op, operand=operand.value))
            elif op == "in":
                options = operand.value
                if not isinstance(options, list) or not options:
                    self.problem(op_path, "must be a non-empty list of values", operand)
                    continue
                if not all(_is_scalar(o.value) for o in options):
                    self.problem(op_path, "values must be strings, numbers or booleans", operand)
                    continue
                tests.append(
                    ClaimTest(claim=claim, op="in", operand=tuple(o.value for o in options))
                )
            elif op == "present":
                if not isinstance(operand.value, bool):
                    self.problem(op_path, "must be true or false", operand)
                    continue
                tests.append(ClaimTest(claim=claim, op="present", operand=operand.value))
            elif op == "type":
                if operand.value not in CLAIM_TYPES:
                    self.problem(op_path, f"must be one of {', '.join(CLAIM_TYPES)}", operand)
                    continue
                tests.append(ClaimTest(claim=claim, op="type", operand=operand.value))
            else:
                self.problem(
                    op_path, f"unknown operator; use one of {', '.join(CONDITION_OPS)}", operand.key
                )
        if any(t.op == "present" and t.operand is False for t in tests) and len(tests) > 1:
            self.problem(path, "present: false cannot be combined with other operators", condition)
            return []
        return tests

    def _check_grant(self, grant: _Located, path: str) -> Grant | None:
        if not isinstance(grant.value, dict):
            self.problem(path, "must be a mapping with Smithery Constraint fields", grant)
            return None
        body: dict[str, _Located] = grant.value
        before = len(self.problems)
        for key, value in body.items():
            if key not in GRANT_FIELDS:
                self.problem(
                    f"{path}.{key}",
                    f"unknown Constraint field; allowed: {', '.join(GRANT_FIELDS)}",
                    value.key,
                )
        if not any(key in body for key in GRANT_FIELDS if key != "ttl"):
            # An empty Constraint restricts nothing: the token would carry the API key's power.
            # A ttl alone shortens the token's life, and restricts nothing either.
            self.problem(
                path,
                "a grant that restricts nothing (empty, or only a ttl) would carry the API key's "
                "full power; name at least namespaces",
                grant,
            )
        namespaces: Template | tuple[Template, ...] | None = None
        if "namespaces" in body:
            namespaces = self._check_namespaces(body["namespaces"], f"{path}.namespaces")
        resources = self._check_enum(body.get("resources"), f"{path}.resources", RESOURCES)
        operations = self._check_enum(body.get("operations"), f"{path}.operations", OPERATIONS)
        metadata, metadata_is_list = None, False
        if "metadata" in body:
            metadata, metadata_is_list = self._check_metadata(body["metadata"], f"{path}.metadata")
        rpc = None
        if "rpcReqMatch" in body:
            rpc = self._check_rpc(body["rpcReqMatch"], f"{path}.rpcReqMatch")
        ttl, ttl_seconds = None, None
        if "ttl" in body:
            ttl_seconds = self._check_ttl(body["ttl"], f"{path}.ttl")
            ttl = body["ttl"].value
        if len(self.problems) != before:
            return None
        return Grant(
            namespaces=namespaces,
            resources=resources,
            operations=operations,
            metadata=metadata,
            metadata_is_list=metadata_is_list,
            rpc_req_match=rpc,
            ttl=ttl,
            ttl_seconds=ttl_seconds,
        )

    def _check_provision(self, at: _Located, path: str) -> Provision | None:
        if not isinstance(at.value, dict):
            self.problem(
                path, "must be a mapping with namespace, metadata, idPrefix and allowed targets", at
            )
            return None
        body: dict[str, _Located] = at.value
        before = len(self.problems)
        for key, value in body.items():
            if key not in PROVISION_FIELDS:
                self.problem(
                    f"{path}.{key}",
                    f"unknown field; allowed: {', '.join(PROVISION_FIELDS)}",
                    value.key,
                )
        namespace = None
        if "namespace" not in body:
            self.problem(f"{path}.namespace", "required: the namespace connections live in", at)
        elif not isinstance(body["namespace"].value, str) or not body["namespace"].value:
            self.problem(f"{path}.namespace", "must be a non-empty string", body["namespace"])
        else:
            namespace = self._template(
                body["namespace"].value, f"{path}.namespace", body["namespace"], regex=False
            )
        metadata = None
        if "metadata" not in body:
            self.problem(
                f"{path}.metadata",
                'required: the metadata the broker enforces, e.g. {userId: "{claims.sub}"}',
                at,
            )
        else:
            metadata = self._metadata_object(body["metadata"], f"{path}.metadata")
            if metadata is not None and all(t.is_literal for _, t in metadata):
                # Literal metadata would give every user the same connections.
                self.problem(
                    f"{path}.metadata",
                    "must interpolate at least one claim (e.g. {claims.sub}) so users' "
                    "connections stay apart",
                    body["metadata"],
                )
        id_prefix = None
        if "idPrefix" not in body:
            self.problem(f"{path}.idPrefix", 'required: e.g. "{claims.sub}-"', at)
        else:
            id_prefix = self._check_id_prefix(body["idPrefix"], f"{path}.idPrefix")
        servers: tuple[str, ...] = ()
        if "servers" in body:
            servers = self._string_or_list(body["servers"], f"{path}.servers") or ()
            bad = [s for s in servers if not SERVER_NAME_PATTERN.fullmatch(s)]
            if bad:
                self.problem(
                    f"{path}.servers",
                    f"{', '.join(map(repr, bad))} is not a Smithery server name "
                    "(lowercase, e.g. github or @acme/tools)",
                    body["servers"],
                )
        mcp_url: tuple[str, ...] = ()
        if "mcpUrl" in body:
            mcp_url = self._check_url_patterns(body["mcpUrl"], f"{path}.mcpUrl")
        if "servers" not in body and "mcpUrl" not in body:
            self.problem(path, "name the allowed targets: servers and/or mcpUrl (default deny)", at)
        max_connections = None
        if "maxConnections" in body:
            limit_at = body["maxConnections"]
            limit = limit_at.value
            if isinstance(limit, bool) or not isinstance(limit, int):
                self.problem(f"{path}.maxConnections", "must be a whole number", limit_at)
            elif not 1 <= limit <= MAX_CONNECTIONS_LIMIT:
                self.problem(
                    f"{path}.maxConnections",
                    f"must be from 1 to {MAX_CONNECTIONS_LIMIT}",
                    limit_at,
                )
            else:
                max_connections = limit
        client_metadata: tuple[str, ...] = ()
        if "clientMetadata" in body:
            client_metadata = self._check_client_metadata(
                body["clientMetadata"], f"{path}.clientMetadata"
            )
        if len(self.problems) != before or namespace is None or metadata is None:
            return None
        if id_prefix is None:
            return None
        return Provision(
            namespace=namespace,
            metadata=metadata,
            id_prefix=id_prefix,
            servers=servers,
            mcp_url=mcp_url,
            max_connections=max_connections,
            client_metadata=client_metadata,
        )

    def _check_client_metadata(self, at: _Located, path: str) -> tuple[str, ...]:
        if not isinstance(at.value, list):
            self.problem(path, "must be a list of metadata keys clients may set", at)
            return ()
        keys: list[str] = []
        for index, item in enumerate(at.value):
            item_path = f"{path}[{index}]"
            if not isinstance(item.value, str) or not 1 <= len(item.value) <= 128:
                self.problem(item_path, "must be a metadata key (1-128 characters)", item)
            elif item.value in keys:
                self.problem(item_path, f"{item.value!r} is listed twice", item)
            else:
                keys.append(item.value)
                self.client_metadata_keys.append((self._rule_id, item_path, item.value, item))
        return tuple(keys)

    def _check_id_prefix(self, at: _Located, path: str) -> Template | None:
        if not isinstance(at.value, str) or not at.value:
            self.problem(path, "must be a non-empty string", at)
            return None
        template = self._template(at.value, path, at, regex=False)
        if template is None:
            return None
        parts = template.parts
        if template.is_literal:
            self.problem(
                path, "must interpolate a claim (e.g. {claims.sub}-) so users' ids differ", at
            )
            return None
        for index, part in enumerate(parts):
            if isinstance(part, ClaimRef):
                after = parts[index + 1] if index + 1 < len(parts) else None
                if not isinstance(after, str) or after[0] not in ID_SEPARATORS:
                    # The claim value is then refused when it holds that separator, so two
                    # users' prefixes can never be prefixes of each other.
                    self.problem(
                        path,
                        f"each placeholder must be followed by one of {ID_SEPARATORS!r} "
                        "so ids of two users cannot collide",
                        at,
                    )
                    return None
            elif any(not (c.isascii() and (c.isalnum() or c in ID_SEPARATORS)) for c in part):
                self.problem(
                    path, f"literal text may hold only letters, digits and {ID_SEPARATORS!r}", at
                )
                return None
        return template

    def _check_url_patterns(self, at: _Located, path: str) -> tuple[str, ...]:
        patterns = self._string_or_list(at, path)
        if patterns is None:
            return ()
        accepted = []
        for index, pattern in enumerate(patterns):
            item_path = path if isinstance(at.value, str) else f"{path}[{index}]"
            where = at if isinstance(at.value, str) else at.value[index]
            if rpcmatch.js_length(pattern) > MAX_RPC_PATTERN_CHARS:
                self.problem(
                    item_path, f"pattern is longer than {MAX_RPC_PATTERN_CHARS} characters", where
                )
                continue
            if (
                not pattern.startswith("^")
                or not pattern.endswith("$")
                or _escaped(pattern, len(pattern) - 1)
                or _top_level_alternation(pattern)
            ):
                self.problem(
                    item_path,
                    "must be anchored (^...$) so it cannot match a URL that merely contains it",
                    where,
                )
                continue
            try:
                rpcmatch.compile_pattern(pattern)
            except PatternError as exc:
                self.problem(item_path, f"invalid pattern {pattern!r}: {exc.detail}", where)
                continue
            accepted.append(pattern)
        return tuple(accepted)

    def _check_namespaces(self, at: _Located, path: str) -> Template | tuple[Template, ...] | None:
        values = self._string_or_list(at, path)
        if values is None:
            return None
        templates = []
        for index, text in enumerate(values):
            item_path = path if isinstance(at.value, str) else f"{path}[{index}]"
            if not text:
                self.problem(item_path, "must not be empty", at)
                continue
            template = self._template(text, item_path, at, regex=False)
            if template is not None:
                templates.append(template)
        if isinstance(at.value, str):
            return templates[0] if templates else None
        return tuple(templates)

    def _check_enum(
        self, at: _Located | None, path: str, allowed: tuple[str, ...]
    ) -> str | tuple[str, ...] | None:
        if at is None:
            return None
        values = self._string_or_list(at, path)
        if values is None:
            return None
        bad = [v for v in values if v not in allowed]
        if bad:
            self.problem(
                path, f"{', '.join(map(repr, bad))} not allowed; use {', '.join(allowed)}", at
            )
            return None
        if len(set(values)) != len(values):
            self.problem(path, "lists a value twice", at)
            return None
        return values[0] if isinstance(at.value, str) else values

    def _check_metadata(
        self, at: _Located, path: str
    ) -> tuple[tuple[tuple[tuple[str, Template], ...], ...] | None, bool]:
        if isinstance(at.value, dict):
            pairs = self._metadata_object(at, path)
            return ((pairs,) if pairs is not None else None), False
        if isinstance(at.value, list):
            if not at.value:
                self.problem(
                    path, "an empty list matches no connection; remove it or add objects", at
                )
                return None, True
            objects = [self._metadata_object(o, f"{path}[{i}]") for i, o in enumerate(at.value)]
            if any(o is None for o in objects):
                return None, True
            return tuple(o for o in objects if o is not None), True
        self.problem(path, "must be an object of string values, or a list of such objects", at)
        return None, False

    def _metadata_object(self, at: _Located, path: str) -> tuple[tuple[str, Template], ...] | None:
        if not isinstance(at.value, dict):
            self.problem(path, "must be an object of string values", at)
            return None
        if not at.value:
            self.problem(path, "an empty object restricts nothing; remove it or add keys", at)
            return None
        pairs = []
        ok = True
        for key, value in at.value.items():
            if not isinstance(value.value, str):
                self.problem(
                    f"{path}.{key}", "must be a string (quote numbers and booleans)", value
                )
                ok = False
                continue
            template = self._template(value.value, f"{path}.{key}", value, regex=False)
            if template is None:
                ok = False
                continue
            pairs.append((key, template))
        return tuple(pairs) if ok else None

    def _check_rpc(self, at: _Located, path: str) -> tuple[tuple[str, Template], ...] | None:
        if not isinstance(at.value, dict) or not at.value:
            self.problem(
                path, "must map JSON-RPC dot paths (e.g. params.name) to regex patterns", at
            )
            return None
        entries = []
        for key, value in at.value.items():
            entry_path = f"{path}.{key}"
            if rpcmatch.js_length(key) > MAX_RPC_KEY_CHARS:
                self.problem(
                    entry_path, f"key is longer than {MAX_RPC_KEY_CHARS} characters", value.key
                )
                continue
            if not key or any(not part for part in key.split(".")):
                self.problem(entry_path, "must be a dot path such as params.name", value.key)
                continue
            if not isinstance(value.value, str):
                self.problem(entry_path, "pattern must be a string (quote it)", value)
                continue
            if rpcmatch.js_length(value.value) > MAX_RPC_PATTERN_CHARS:
                self.problem(
                    entry_path, f"pattern is longer than {MAX_RPC_PATTERN_CHARS} characters", value
                )
                continue
            template = self._template(value.value, entry_path, value, regex=True)
            if template is None:
                continue
            probe = render_probe(template)
            try:
                rpcmatch.compile_pattern(probe)
            except PatternError as exc:
                self.problem(entry_path, f"invalid pattern {value.value!r}: {exc.detail}", value)
                continue
            entries.append((key, template))
        if len(entries) != len(at.value):
            return None
        return tuple(entries)

    def _check_ttl(self, at: _Located, path: str) -> int | None:
        seconds = parse_ttl(at.value)
        if seconds is None:
            self.problem(
                path, "must be whole seconds (a number) or a string like 90, 30s, 15m, 2h, 1d", at
            )
            return None
        if seconds <= 0:
            self.problem(path, "must be greater than 0", at)
            return None
        if seconds > MAX_TTL_SECONDS:
            self.problem(path, "must not exceed 24h (Smithery's maximum)", at)
            return None
        return seconds

    def _string_or_list(self, at: _Located, path: str) -> tuple[str, ...] | None:
        if isinstance(at.value, str):
            return (at.value,)
        if (
            isinstance(at.value, list)
            and at.value
            and all(isinstance(i.value, str) for i in at.value)
        ):
            return tuple(item.value for item in at.value)
        self.problem(path, "must be a string or a non-empty list of strings", at)
        return None

    def _template(self, text: str, path: str, at: _Located, *, regex: bool) -> Template | None:
        parts: list[str | ClaimRef] = []
        position = 0
        for found in _PLACEHOLDER.finditer(text):
            if regex and _escaped(text, found.start()):
                self.problem(path, "a {claims...} placeholder cannot follow a backslash", at)
                return None
            if found.start() > position:
                parts.append(text[position : found.start()])
            claim_path = found.group(1)
            if any(not part for part in claim_path.split(".")):
                self.problem(path, f"placeholder {found.group(0)} has an empty path segment", at)
                return None
            parts.append(ClaimRef(claim_path))
            position = found.end()
        if position < len(text):
            parts.append(text[position:])
        if regex and not _placeholders_stand_as_text(parts):
            self.problem(
                path,
                "a {claims...} placeholder must stand where its value reads as plain text: "
                "not inside [...], a {n,m} repeat, a group's (? or (?<name>, or after an "
                "escape that takes more characters (\\x, \\u, \\c, \\k, \\p, a backreference)",
                at,
            )
            return None
        if not regex:
            for literal in (p for p in parts if isinstance(p, str)):
                stray = _BRACED.search(literal)
                if stray is not None:
                    self.problem(
                        path, f"unknown placeholder {stray.group(0)}; write {{claims.<name>}}", at
                    )
                    return None
        elif any(isinstance(p, str) and "{claims." in p for p in parts):
            self.problem(path, "malformed placeholder; write {claims.<name>}", at)
            return None
        return Template(source=text, parts=tuple(parts))


class _TooLarge(Exception):
    pass


def _nesting_beyond(text: str, limit: int) -> Any:
    """The mark (``line``, ``column``) where the document first opens a collection more than
    ``limit`` deep, or None. Read from PyYAML's event stream, whose parser keeps a stack of states
    instead of recursing."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > limit:
                return event.start_mark
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def load_yaml_values(file: str, data: bytes, expected: str) -> Any:
    """A YAML document as plain values (dicts, lists, scalars), read exactly as strictly as a
    policy file: YAML 1.2 scalars, plain string keys, no duplicate keys, nesting and alias
    expansion bounded. For the other YAML files operators write (policy test cases); PolicyError
    lists every problem with its position. ``expected`` names what the file should hold."""
    checker = _FileChecker(file, {})
    document = checker._parse(data, expected)
    if checker.problems:
        raise PolicyError(checker.problems)
    return _plain(document)


def _plain(at: _Located | None) -> Any:
    if at is None:
        return None
    if isinstance(at.value, dict):
        return {key: _plain(value) for key, value in at.value.items()}
    if isinstance(at.value, list):
        return [_plain(item) for item in at.value]
    return at.value


def parse_ttl(value: Any) -> int | None:
    """Smithery ttl syntax: a number of seconds, or digits with an optional s/m/h/d unit.
    Returns seconds, or None when the value is not in that syntax."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        found = _TTL_PATTERN.fullmatch(value.strip())
        if found is None:
            return None
        return int(found.group(1)) * _TTL_UNIT_SECONDS[found.group(2)]
    return None


def render_probe(template: Template) -> str:
    """The pattern with each placeholder replaced by an escaped sample value, for validation."""
    return "".join(
        part if isinstance(part, str) else rpcmatch.escape_literal("x") for part in template.parts
    )


_YAML: Final = "tag:yaml.org,2002:"
_INTEGER: Final = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,30})")
_FLOAT: Final = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_YAML_12_NUMBER: Final = re.compile(
    r"[-+]?(?:[0-9]+|\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
"""Plain text YAML 1.2's core schema reads as a number (its int and float forms)."""
_YAML_11_KINDS: Final = {
    "bool": "a boolean",
    "int": "a number",
    "float": "a number",
    "null": "null",
    "timestamp": "a date",
}


def _scalar(node: yaml.ScalarNode) -> tuple[Any, str | None]:
    """A scalar as YAML 1.2's core schema reads it: quoted text is a string; plain text is
    ``true``/``false``, ``null``/``~``/empty, a decimal integer or float, or else a string.

    PyYAML reads YAML 1.1, where ``on``, ``yes``, ``010`` (octal 8), ``0x1F``, ``1:30`` (90)
    and ``2024-01-01`` (a date) are not the text they look like, and ``1e3``, ``+.5`` and
    ``0o17``, numbers in YAML 1.2, are text: such a value is refused with a request to quote
    it, never silently converted. Tags other than the core ones
    (``!!binary``, ``!!python/...``, ``!!set``) are refused too."""
    tag, text = node.tag, node.value
    if not tag.startswith(_YAML):
        return None, f"the tag {tag!r} is not supported; write plain values"
    kind = tag.removeprefix(_YAML)
    if kind == "str":
        if node.style is None and _YAML_12_NUMBER.fullmatch(text):  # 1e3, +.5, 0o17
            return None, (
                f"{text!r} is read as text by YAML 1.1 and as a number by YAML 1.2: quote it "
                "(numbers: plain decimal, finite)"
            )
        return text, None
    if kind not in _YAML_11_KINDS or node.style is not None:  # !!binary, or !!int "8"
        return None, f"the tag !!{kind} is not supported; write plain values"
    lowered = text.lower()
    if lowered in ("true", "false") and text in ("true", "false", "True", "False", "TRUE", "FALSE"):
        return lowered == "true", None
    if text in ("", "~", "null", "Null", "NULL"):
        return None, None
    if _INTEGER.fullmatch(text):
        return int(text), None
    if _FLOAT.fullmatch(text) and math.isfinite(float(text)):
        return float(text), None
    if _FLOAT.fullmatch(text) or text.lstrip("+-").lower() in (".inf", ".nan"):
        return None, f"{text!r} is not a finite number: quote it to mean the text"
    return None, (
        f"{text!r} is read as {_YAML_11_KINDS[kind]} by YAML 1.1 and as text by YAML 1.2: "
        "quote it (numbers: plain decimal, finite)"
    )


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _top_level_alternation(pattern: str) -> bool:
    """Whether ``pattern`` has a ``|`` outside groups and classes (``^a|b$`` is not anchored)."""
    depth, in_class, index = 0, False, 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        index += 1
    return False


_HEX: Final = frozenset("0123456789abcdefABCDEF")


def _escape_end(part: str, index: int) -> tuple[int, bool]:
    r"""Where the escape at ``part[index]`` (a backslash) ends, and whether it is still open:
    whether a character right after it could continue it (``\x4`` + ``1``, ``\1`` + ``0``,
    ``\u{4`` + ``1}``), as a claim's value would if a placeholder came next."""
    kind = part[index + 1]
    at = index + 2
    if kind.isdigit():  # a backreference or octal escape reads every digit that follows
        while at < len(part) and part[at].isdigit():
            at += 1
        return at, True
    if kind == "u" and at < len(part) and part[at] == "{":
        close = part.find("}", at)
        return (len(part), True) if close < 0 else (close + 1, False)
    if kind in "xu":
        wanted = 2 if kind == "x" else 4
        taken = 0
        while at < len(part) and taken < wanted and part[at] in _HEX:
            at, taken = at + 1, taken + 1
        return at, taken < wanted
    if kind == "c":
        if at < len(part) and part[at].isalpha():
            return at + 1, False
        return at, True
    opener, closer = {"p": ("{", "}"), "P": ("{", "}"), "k": ("<", ">")}.get(kind, ("", ""))
    if opener and at < len(part) and part[at] == opener:
        close = part.find(closer, at)
        return (len(part), True) if close < 0 else (close + 1, False)
    return at, bool(opener) and at == len(part)


def _placeholders_stand_as_text(parts: list[str | ClaimRef]) -> bool:
    r"""Whether each placeholder of a regex template sits where a literal reads as itself.

    A claim's value is escaped (``rpcmatch.escape_literal``), but digits, ``,`` and ``-`` need
    no escaping as text and are syntax in three places: inside a class (``[{claims.x}]`` with
    ``a-z`` is a range), inside a repeat (``x{{claims.n}}`` with ``1,`` is ``x{1,}``), and right
    after an escape that reads on (``\x4{claims.h}``, ``\1{claims.n}``). Nor is any character
    text where a group's kind or name is read: ``(?{claims.x}`` with ``=`` is a lookahead,
    ``(?<{claims.x}>`` with ``!`` a lookbehind, and a name (there or in ``\k<...>``) is not a
    literal at all. Such a placeholder is refused at load."""
    in_class = False
    in_repeat = False  # after an unescaped "{", while digits and "," follow
    open_escape = False  # the text so far ends inside an escape that reads on
    text = ""  # the template so far, each placeholder as one letter
    for part in parts:
        if isinstance(part, ClaimRef):
            if in_class or in_repeat or open_escape or _in_group_head(text):
                return False
            text += "x"
            continue
        text += part
        index = 0
        while index < len(part):
            char = part[index]
            if char == "\\" and index + 1 < len(part):
                index, open_escape = _escape_end(part, index)
                in_repeat = False
                continue
            open_escape = False
            if in_class:
                in_class = char != "]"
            elif char == "[":
                in_class = True
            elif char == "{":
                in_repeat = True
            elif not (in_repeat and (char.isdigit() or char == ",")):
                in_repeat = False
            index += 1
    return True


_GROUP_HEAD: Final = re.compile(r"(?:\(\?|\(\?<[^>]*|\\k<[^>]*)\Z")
r"""Text ending where a group's kind or name is read: ``(?``, ``(?<name`` or ``\k<name``."""


def _in_group_head(text: str) -> bool:
    found = _GROUP_HEAD.search(text)
    return found is not None and not _escaped(text, found.start())


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index > 0 and text[index - 1] == "\\":
        backslashes += 1
        index -= 1
    return backslashes % 2 == 1
