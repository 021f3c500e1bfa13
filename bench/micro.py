"""MICRO: µs per JSON-RPC message for the precheck decision, in process, in a fresh process.

Run by the harness as ``python -m bench.micro --repeats N``; prints one JSON object. Five rules,
each with an ``rpcReqMatch`` (``method``, ``params.name`` and ``params.arguments.*`` patterns, the
shape of real tool allowlists), are compiled once with ``broker.precheck.compile_constraints``;
then ``broker.precheck.decide`` is timed with ``timeit`` for two already-parsed messages:

- allowed: a ``tools/call`` that only the LAST rule allows, so the first four are each checked
  and refused (on ``method`` or ``params.name``) before the fifth matches all four of its entries;
- denied: a ``tools/call`` of a tool no rule names, so all five rules are checked and the
  decision carries five reasons.

Each repeat runs the statement ``number`` times (calibrated to about ``REPEAT_SECONDS``); the
report gives the median and the best repeat per message. Parsing the message is not included
(the broker parses it once for the precheck and the forward alike).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from typing import Any, Final

from broker.constraints import AppliedRule
from broker.precheck import Target, compile_constraints, decide

REPEAT_SECONDS: Final = 0.2
NAMESPACE: Final = "my-app"
METADATA: Final = {"connectionId": "support-github"}
GRANT: Final = {
    "namespaces": NAMESPACE,
    "resources": "connections",
    "operations": ["read", "execute"],
    "metadata": METADATA,
}
RULES: Final[tuple[tuple[str, dict[str, str]], ...]] = (
    ("session", {"method": "^(initialize|notifications/initialized|ping|tools/list)$"}),
    (
        "search",
        {
            "method": "^tools/call$",
            "params.name": "^search_issues$",
            "params.arguments.query": "^[A-Za-z0-9 _-]{1,64}$",
        },
    ),
    (
        "read-issue",
        {
            "method": "^tools/call$",
            "params.name": "^get_issue$",
            "params.arguments.number": "^[0-9]{1,6}$",
            "params.arguments.repo": "^acme/(widgets|gadgets)$",
        },
    ),
    (
        "comment",
        {
            "method": "^tools/call$",
            "params.name": "^add_comment$",
            "params.arguments.repo": "^acme/",
            "params.arguments.body": "^[^<>]{1,1000}$",
        },
    ),
    (
        "pull-requests",
        {
            "method": "^tools/call$",
            "params.name": "^(list_pull_requests|get_pull_request)$",
            "params.arguments.repo": "^acme/[a-z0-9-]+$",
            "params.arguments.state": "^(open|closed|all)$",
        },
    ),
)
ALLOWED: Final = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {
        "name": "get_pull_request",
        "arguments": {"repo": "acme/widgets", "state": "open", "number": 42},
    },
}
DENIED: Final = {
    "jsonrpc": "2.0",
    "id": 8,
    "method": "tools/call",
    "params": {"name": "delete_repository", "arguments": {"repo": "acme/widgets"}},
}


def time_per_call(function: Any, repeats: int) -> dict[str, float | int]:
    timer = timeit.Timer(function)
    number, seconds = timer.autorange()  # the first count that takes at least 0.2 s
    number = max(1, int(number * REPEAT_SECONDS / max(seconds, 1e-9)))
    runs = [seconds / number * 1e6 for seconds in timer.repeat(repeat=repeats, number=number)]
    return {"median_us": statistics.median(runs), "best_us": min(runs), "number": number}


def measure(repeats: int) -> dict[str, Any]:
    applied = [
        AppliedRule(f"rule-{index}-{name}", {**GRANT, "rpcReqMatch": patterns}, None)
        for index, (name, patterns) in enumerate(RULES, start=1)
    ]
    constraints = compile_constraints(applied)
    target = Target(NAMESPACE, dict(METADATA))
    allowed = decide(constraints, target, ALLOWED)
    denied = decide(constraints, target, DENIED)
    return {
        "rules": len(constraints),
        "rpc_entries": sum(len(patterns) for _, patterns in RULES),
        "allowed": {
            "allowed": allowed.allowed,
            "rule": allowed.rule,
            **time_per_call(lambda: decide(constraints, target, ALLOWED), repeats),
        },
        "denied": {
            "allowed": denied.allowed,
            "reasons": len(denied.reasons),
            **time_per_call(lambda: decide(constraints, target, DENIED), repeats),
        },
        "repeats": repeats,
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(measure(args.repeats)))


if __name__ == "__main__":
    main()
