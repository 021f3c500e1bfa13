"""Policy test files: named cases with claims (and optionally a request and a target) and the
expected rules, constraints or allow/deny, run against a policy set like unit tests.

A file (``policies/tests/*.yaml``) holds ``cases:``; each case::

    - name: support cannot delete repositories
      claims: {sub: sam, groups: [support]}
      issuer: https://idp.example/          # optional
      request: {jsonrpc: "2.0", id: 1, method: tools/call, params: {name: delete_repository}}
      target: {namespace: my-app, metadata: {connectionId: support-github}}
      expect:
        rules: [support-github-session, support-github-readonly]   # optional
        constraints: [...]                                          # optional, exact JSON
        allowed: false                                              # optional
        rule: null                                                  # optional: allowing rule
        reasons: [rpc_pattern_mismatch, rpc_pattern_mismatch]       # optional: reason codes

Reading the files is the only I/O; evaluation goes through ``explain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from broker.errors import BrokerError, PolicyError, PolicyProblem
from broker.explain import explain
from broker.files import FileRefused, read_limited
from broker.policy import MAX_POLICY_FILE_BYTES, PolicySet, load_yaml_values
from broker.precheck import Target

DEFAULT_ISSUER: Final = "https://issuer.test/"
_UNSET: Final = msgspec.UNSET
MAX_CASE_FILE_BYTES: Final = MAX_POLICY_FILE_BYTES
_CASES: Final = "a mapping with 'cases'"


class CaseTarget(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    namespace: str
    metadata: dict[str, str] | None = None


class Expect(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    rules: list[str] | msgspec.UnsetType = _UNSET
    constraints: list[dict[str, Any]] | msgspec.UnsetType = _UNSET
    allowed: bool | msgspec.UnsetType = _UNSET
    rule: str | msgspec.UnsetType | None = _UNSET
    reasons: list[str] | msgspec.UnsetType = _UNSET


class Case(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    claims: dict[str, Any]
    expect: Expect
    issuer: str = DEFAULT_ISSUER
    request: dict[str, Any] | None = None
    target: CaseTarget | None = None


class CaseFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    cases: list[Case]


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: str
    name: str
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def load_cases(directory: Path) -> list[tuple[str, Case]]:
    """Every case in ``directory``'s ``*.yaml``/``*.yml`` files; PolicyError lists bad files."""
    files = sorted(
        p
        for p in directory.glob("*.y*ml")
        if p.suffix in {".yaml", ".yml"} and not p.name.startswith(".")
    )
    cases: list[tuple[str, Case]] = []
    problems: list[PolicyProblem] = []
    for path in files:
        # Read as strictly as the policies they test: bounded size, nesting and alias expansion,
        # no duplicate keys, YAML 1.2 scalars.
        try:
            document = load_yaml_values(str(path), read_limited(path, MAX_CASE_FILE_BYTES), _CASES)
            parsed = msgspec.convert(document, type=CaseFile)
        except PolicyError as exc:
            problems.extend(exc.problems)
            continue
        except msgspec.ValidationError as exc:
            problems.append(PolicyProblem(str(path), "$", f"invalid test file: {exc}"))
            continue
        except FileRefused as exc:
            problems.append(PolicyProblem(str(path), "$", f"the entry {exc}"))
            continue
        except OSError as exc:
            problems.append(PolicyProblem(str(path), "$", f"cannot read: {exc.strerror}"))
            continue
        cases.extend((path.name, case) for case in parsed.cases)
    if problems:
        raise PolicyError(problems)
    return cases


def run_case(policy_set: PolicySet, file: str, case: Case, *, exempt_lifecycle: bool) -> CaseResult:
    target = None
    if case.target is not None:
        target = Target(case.target.namespace, case.target.metadata)
    try:
        result = explain(
            policy_set,
            case.claims,
            issuer=case.issuer,
            request=case.request,
            target=target,
            exempt_lifecycle=exempt_lifecycle,
        )
    except BrokerError as exc:
        return CaseResult(file, case.name, (f"the case's request is invalid: {exc.detail}",))
    failures: list[str] = []
    expect = case.expect

    def check(what: str, expected: Any, actual: Any) -> None:
        if expected is not _UNSET and expected != actual:
            failures.append(f"{what}: expected {expected!r}, got {actual!r}")

    check("rules", expect.rules, list(result.applied))
    check("constraints", expect.constraints, list(result.constraints))
    wants_decision = any(
        value is not _UNSET for value in (expect.allowed, expect.rule, expect.reasons)
    )
    if wants_decision and result.decision is None:
        failures.append("expects a decision but the case has no request")
    elif result.decision is not None:
        decision = result.decision
        check("allowed", expect.allowed, decision.allowed)
        check("rule", expect.rule, decision.rule)
        check("reasons", expect.reasons, [d.reason for d in decision.reasons])
    return CaseResult(file, case.name, tuple(failures))


def run_cases(
    policy_set: PolicySet, cases: list[tuple[str, Case]], *, exempt_lifecycle: bool = False
) -> list[CaseResult]:
    return [run_case(policy_set, f, c, exempt_lifecycle=exempt_lifecycle) for f, c in cases]
