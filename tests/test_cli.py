"""``broker check`` / ``broker serve`` startup validation: every problem listed, non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import dev_banner, dev_namespaces, main
from broker.policy import load_policy_dir

ROOT = Path(__file__).resolve().parent.parent
JWKS = Path(__file__).parent / "fixtures" / "ec-jwks.json"
INVALID = Path(__file__).parent / "fixtures" / "policies" / "invalid"
BROKER = str(Path(sys.executable).parent / "broker")


@pytest.fixture
def valid_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(__import__("os").environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BROKER_POLICIES_DIR", str(ROOT / "policies"))
    monkeypatch.setenv("BROKER_SMITHERY_API_KEY", "sk-cli-test")
    monkeypatch.setenv("BROKER_AUTH_ISSUER", "https://idp.example/")
    monkeypatch.setenv("BROKER_AUTH_AUDIENCE", "app")
    monkeypatch.setenv("BROKER_AUTH_JWKS_FILE", str(JWKS))
    return tmp_path


def test_check_passes_on_valid_setup(valid_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "5 rule(s)" in out


def test_check_lists_every_problem(
    valid_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = valid_env / "policies"
    shutil.copytree(INVALID, policies)
    monkeypatch.setenv("BROKER_POLICIES_DIR", str(policies))
    monkeypatch.delenv("BROKER_SMITHERY_API_KEY")
    monkeypatch.setenv("BROKER_AUTH_ALGORITHMS", "HS256")
    monkeypatch.setenv("BROKER_AUTH_ISUER", "typo")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "BROKER_SMITHERY_API_KEY or BROKER_SMITHERY_API_KEY_FILE: required" in err
    assert "BROKER_AUTH_ALGORITHMS: unsupported HS256" in err
    assert "warning: BROKER_AUTH_ISUER is not a known setting" in err
    assert "grant-schema.yaml:17:12: g: $.rules[0].grant.ttl: must not exceed 24h" in err
    assert "rpc.yaml" in err
    assert "conditions.yaml" in err
    assert "sk-cli-test" not in err


def test_check_refuses_a_tracing_setting_serve_cannot_honour(
    valid_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``broker serve`` would crash setting up tracing; the check (the chart's init container)
    must fail first, through the same decision."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported; use http/protobuf" in err
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert main(["check"]) == 0


def test_serve_refuses_to_start_with_invalid_policies(valid_env: Path) -> None:
    policies = valid_env / "policies"
    shutil.copytree(INVALID, policies)
    env = {k: v for k, v in __import__("os").environ.items()}
    env["BROKER_POLICIES_DIR"] = str(policies)
    result = subprocess.run(
        [BROKER, "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "problem(s):" in result.stderr
    assert "duplicate-id.yaml:5:9: same" in result.stderr
    assert "placeholders.yaml" in result.stderr


def test_dev_banner_shows_urls_and_curl_commands() -> None:
    banner = dev_banner(
        "http://127.0.0.1:8080", "http://127.0.0.1:8081", load_policy_dir(ROOT / "policies")
    )
    assert "curl -s -X POST http://127.0.0.1:8080/dev/login" in banner
    assert "http://127.0.0.1:8080/v1/tokens" in banner
    assert "http://127.0.0.1:8081/_emulator/introspect" in banner


def test_policy_check_examples_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(ROOT / "policies"), "--strict"]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().err


def test_policy_check_errors_exit_2_in_file_line_column_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(INVALID, tmp_path / "bad")
    assert main(["policy", "check", str(tmp_path / "bad")]) == 2
    out = capsys.readouterr().out
    assert f"{tmp_path / 'bad' / 'grant-schema.yaml'}:17:12: g: $.rules[0].grant.ttl: " in out


def test_policy_check_warnings_exit_0_unless_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text("rules:\n  - {id: r, grant: {namespaces: a, ttl: 5m}}\n")
    assert main(["policy", "check", str(tmp_path)]) == 0
    assert main(["policy", "check", str(tmp_path), "--strict"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'p.yaml'}:2:5: r: $.rules[0].grant: warning: no metadata" in out


def test_policy_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "policy",
            "explain",
            "--policies",
            str(ROOT / "policies"),
            "--json",
            "--claims",
            '{"sub": "alice", "email_verified": true}',
            "--request",
            '{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',
            "--namespace",
            "my-app",
            "--metadata",
            '{"userId": "bob"}',
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rules"]["applied"] == ["own-connections"]
    assert result["decision"]["allowed"] is False
    assert result["decision"]["reasons"][0]["reason"] == "metadata"


def test_policy_explain_reads_claims_file_and_reports_bad_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text('{"sub": "sam", "groups": ["support"]}')
    assert (
        main(["policy", "explain", "--policies", str(ROOT / "policies"), "--claims", f"@{claims}"])
        == 0
    )
    assert "+ support-github-readonly" in capsys.readouterr().out
    assert main(["policy", "explain", "--claims", "{nope"]) == 2
    assert "--claims: not valid JSON" in capsys.readouterr().err


def test_policy_test_runs_shipped_cases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(ROOT / "policies")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("0 failed")
    assert "PASS support-readonly.yaml: support cannot delete a repository" in out


def test_policy_test_reports_failures_and_missing_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ROOT / "policies", tmp_path / "p", ignore=shutil.ignore_patterns("tests"))
    (tmp_path / "p" / "tests").mkdir()
    assert main(["policy", "test", str(tmp_path / "p")]) == 2
    assert "no policy test cases found" in capsys.readouterr().err
    (tmp_path / "p" / "tests" / "t.yaml").write_text(
        "cases:\n"
        "  - name: wrong expectation\n"
        "    claims: {sub: a, email_verified: true}\n"
        "    expect: {rules: [support-github-readonly]}\n"
        "  - name: right expectation\n"
        "    claims: {sub: a, email_verified: true}\n"
        "    expect: {rules: [own-connections]}\n"
        "  - name: decision without request\n"
        "    claims: {sub: a}\n"
        "    expect: {allowed: true}\n"
    )
    assert main(["policy", "test", str(tmp_path / "p")]) == 1
    out = capsys.readouterr().out
    assert "FAIL t.yaml: wrong expectation" in out
    assert "rules: expected ['support-github-readonly'], got ['own-connections']" in out
    assert "expects a decision but the case has no request" in out
    assert out.rstrip().endswith("1 passed, 2 failed")
    (tmp_path / "p" / "tests" / "t.yaml").write_text("cases:\n  - {name: x, claims: {}}\n")
    assert main(["policy", "test", str(tmp_path / "p")]) == 2
    assert "invalid test file" in capsys.readouterr().err


def test_the_dev_emulator_owns_the_namespaces_the_policies_name(tmp_path: Path) -> None:
    """``broker dev --policies`` with another namespace than the example's: connection writes
    there were Smithery's 404 (a 502 from the broker)."""
    policies = tmp_path / "policies"
    policies.mkdir()
    text = (ROOT / "policies" / "per-user-connections.yaml").read_text()
    (policies / "acme.yaml").write_text(text.replace("my-app", "acme"))
    policy_set = load_policy_dir(policies)
    assert dev_namespaces(policy_set) == ("acme", "my-app")
    assert dev_namespaces(policy_set, ["extra"]) == ("acme", "extra", "my-app")
