"""``explain`` output for the example policies is pinned by golden files.

After an intended change, regenerate them: ``.venv/bin/python tests/test_explain.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.errors import InvalidRequestError  # noqa: E402
from broker.explain import explain, format_text  # noqa: E402
from broker.policy import load_policy_dir, load_policy_sources  # noqa: E402
from broker.precheck import Target  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "explain"
ISSUER = "https://idp.example/"
CASES: dict[str, dict[str, Any]] = {
    "verified-user": {"claims": {"sub": "alice", "email_verified": True}},
    "nobody": {"claims": {"sub": "mallory"}},
    "workspace-admin": {"claims": {"sub": "ada", "org_id": "acme", "org_role": "owner"}},
    "support-denied-call": {
        "claims": {"sub": "sam", "groups": ["support"]},
        "request": {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "delete_repository"},
        },
        "target": Target("my-app", {"connectionId": "support-github"}),
    },
    "support-allowed-call": {
        "claims": {"sub": "sam", "groups": ["support"]},
        "request": {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "get_issue", "arguments": {"number": 1}},
        },
        "target": Target("my-app", {"connectionId": "support-github"}),
    },
}


def render(name: str) -> tuple[str, str]:
    case = CASES[name]
    result = explain(
        load_policy_dir(ROOT / "policies"),
        case["claims"],
        issuer=ISSUER,
        request=case.get("request"),
        target=case.get("target"),
    )
    return format_text(result), json.dumps(result.as_json(), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_explain_matches_golden(name: str) -> None:
    text, as_json = render(name)
    assert text == (GOLDEN / f"{name}.txt").read_text(), "regenerate: python tests/test_explain.py"
    assert as_json == (GOLDEN / f"{name}.json").read_text()


if __name__ == "__main__":
    for case_name in CASES:
        text_out, json_out = render(case_name)
        (GOLDEN / f"{case_name}.txt").write_text(text_out)
        (GOLDEN / f"{case_name}.json").write_text(json_out)


TENANT_RULE = (
    b"rules:\n  - id: tenant-a-admins\n"
    b"    when: {issuer: 'https://a.example/', claims: {role: admin}}\n"
    b"    grant: {namespaces: a}\n"
)


def test_the_claims_iss_is_the_issuer_when_none_is_given() -> None:
    """/v1/tokens applies issuer conditions to the token's iss; an explanation that ignored
    it reported no rule for a user the broker serves."""
    policy_set = load_policy_sources([("t.yaml", TENANT_RULE)])
    claims = {"iss": "https://a.example/", "sub": "u1", "role": "admin"}
    assert list(explain(policy_set, claims, issuer="").applied) == ["tenant-a-admins"]
    same = explain(policy_set, claims, issuer="https://a.example/")
    assert list(same.applied) == ["tenant-a-admins"]
    with pytest.raises(InvalidRequestError, match="is not the claims' iss"):
        explain(policy_set, claims, issuer="https://b.example/")


PROVISIONING_TENANT_RULE = TENANT_RULE + (
    b"    provision:\n"
    b"      namespace: a\n"
    b"      metadata: {userId: '{claims.sub}'}\n"
    b"      idPrefix: '{claims.sub}-'\n"
    b"      servers: [github]\n"
)


def test_the_claims_iss_is_the_issuer_of_provisioning_and_of_the_report() -> None:
    """Rules were rendered with the claims' iss but provision blocks with the (empty) issuer
    argument, and the report named that empty issuer: the dry run said the user could create no
    connection where /v1/connections lets them."""
    policy_set = load_policy_sources([("t.yaml", PROVISIONING_TENANT_RULE)])
    claims = {"iss": "https://a.example/", "sub": "u1", "role": "admin"}
    result = explain(policy_set, claims, issuer="")
    assert result.issuer == "https://a.example/"
    assert [(block["rule"], block["idPrefix"]) for block in result.provisioning] == [
        ("tenant-a-admins", "u1-")
    ]
    assert result.as_json()["issuer"] == "https://a.example/"
