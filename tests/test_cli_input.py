"""The ``broker`` command given bad input: one clear line on stderr, a stable exit code (2 for
usage and settings, 3 for a socket that cannot be had), never a traceback or a hang."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import ListenError, listen

ROOT = Path(__file__).resolve().parent.parent
JWKS = Path(__file__).parent / "fixtures" / "ec-jwks.json"
BROKER = str(Path(sys.executable).parent / "broker")


@pytest.fixture
def environ() -> dict[str, str]:
    """A valid production setup, without any BROKER_* variable of the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_POLICIES_DIR=str(ROOT / "policies"),
        BROKER_SMITHERY_API_KEY="sk-cli-input-test",
        BROKER_AUTH_ISSUER="https://idp.example/",
        BROKER_AUTH_AUDIENCE="app",
        BROKER_AUTH_JWKS_FILE=str(JWKS),
    )
    return env


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BROKER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error: the one line of stderr that is not a log record (those carry a timestamp)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line[:4].isdigit()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("port", ["70000", "0", "-1", "8_080", "x"])
@pytest.mark.parametrize("command", ["serve", "dev", "emulator"])
def test_a_port_that_is_not_one_is_a_usage_error(command: str, port: str) -> None:
    result = broker(command, "--port", port)
    assert result.returncode == 2
    assert "is not a TCP port (1-65535)" in result.stderr  # 70000 listened on 4464


@pytest.mark.parametrize("fd", ["99", "0", "-5"])
def test_a_bad_inherited_socket_is_one_line(fd: str, environ: dict[str, str]) -> None:
    result = broker("serve", "--fd", fd, env=environ)
    assert result.returncode == 3
    assert one_line(result).startswith(f"broker: --fd {fd}: ")


def test_a_taken_metrics_port_is_one_line_before_serving(
    environ: dict[str, str], taken_port: int
) -> None:
    environ["BROKER_TELEMETRY_METRICS_PORT"] = str(taken_port)
    with socket.create_server(("127.0.0.1", 0)) as main_socket:  # the main port: inherited
        fd = str(main_socket.fileno())
        result = subprocess.run(
            [BROKER, "serve", "--fd", fd],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            pass_fds=(main_socket.fileno(),),
        )
    assert result.returncode == 3  # was 97 lines of tracebacks
    assert one_line(result) == (
        f"broker: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    )


def test_a_taken_dev_port_is_one_line(taken_port: int, environ: dict[str, str]) -> None:
    result = broker("dev", "--mcp-port", str(taken_port), env=environ)
    assert result.returncode == 3  # was 128 lines of tracebacks
    assert one_line(result) == (
        f"broker: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    )


def test_the_emulator_binds_to_loopback_only_and_needs_a_key() -> None:
    outside = broker("emulator", "--host", "0.0.0.0")
    assert outside.returncode == 2
    assert one_line(outside) == "broker emulator binds to loopback only"
    keyless = broker("emulator", "--api-key", "")
    assert keyless.returncode == 2
    assert one_line(keyless) == "broker emulator: --api-key must be printable ASCII without spaces"


def test_claims_from_a_fifo_are_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "claims"
    os.mkfifo(fifo)
    result = broker("policy", "explain", "--claims", f"@{fifo}", "--policies", "policies")
    assert result.returncode == 2
    assert f"--claims: {fifo} is not a regular file" in result.stderr


def test_claims_nested_thousands_deep_are_refused(tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
    result = broker("policy", "explain", "--claims", f"@{claims}")
    assert result.returncode == 2
    assert "--claims: the JSON is nested too deeply" in result.stderr
    assert "Traceback" not in result.stderr


def test_metadata_needs_a_namespace() -> None:
    result = broker("policy", "explain", "--claims", "{}", "--metadata", '{"userId": "a"}')
    assert result.returncode == 2
    assert "--namespace: required with --metadata" in result.stderr


@pytest.mark.parametrize("command", ["explain", "test"])
def test_a_bad_exempt_lifecycle_value_is_an_error_not_false(
    command: str, environ: dict[str, str]
) -> None:
    environ["BROKER_PRECHECK_EXEMPT_LIFECYCLE"] = "maybe"
    environ["BROKER_SERVER_PORT"] = "abc"  # unrelated to a dry run: not read
    args = ["--claims", "{}", "--policies", "policies"] if command == "explain" else ["policies"]
    result = broker("policy", command, *args, env=environ)
    assert result.returncode == 2
    assert "BROKER_PRECHECK_EXEMPT_LIFECYCLE: 'maybe' is not a boolean" in result.stderr
    assert "BROKER_SERVER_PORT" not in result.stderr


def test_the_exempt_lifecycle_setting_applies_despite_other_bad_settings(
    environ: dict[str, str],
) -> None:
    environ["BROKER_PRECHECK_EXEMPT_LIFECYCLE"] = "true"
    environ["BROKER_SERVER_PORT"] = "abc"
    request = '{"jsonrpc": "2.0", "method": "notifications/cancelled"}'
    result = broker(
        "policy",
        "explain",
        "--claims",
        '{"sub": "sam", "groups": ["support"]}',
        "--namespace",
        "my-app",
        "--metadata",
        '{"connectionId": "support-github"}',
        "--request",
        request,
        "--json",
        env=environ,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"]["allowed"] is True  # was denied


def test_output_cut_short_by_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``broker policy test ... | head -1``: 3,000 result lines overflow the pipe, so the
    command is still writing when the reader goes away."""
    cases = tmp_path / "tests"
    cases.mkdir()
    case = "  - {name: case %d, claims: {sub: a}, expect: {rules: []}}"
    (cases / "many.yaml").write_text("cases:\n" + "\n".join(case % i for i in range(3000)) + "\n")
    with subprocess.Popen(
        [BROKER, "policy", "test", "policies", "--tests", str(cases)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.readline()
        process.stdout.close()  # as `| head -1` does
        errors = process.stderr.read().decode()
        assert process.wait(timeout=60) == 1
    assert "Traceback" not in errors
    assert "BrokenPipeError" not in errors


def test_listen_binds_every_address_a_name_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name with an IPv4 and an IPv6 address was served on IPv4 only; here two loopback
    addresses stand for the two families (IPv6 may be missing in the test's container)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    resolved = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: resolved)
    sockets = listen("dual-host", port)
    try:
        assert sorted(sock.getsockname() for sock in sockets) == [
            ("127.0.0.1", port),
            ("127.0.0.2", port),
        ]
    finally:
        for sock in sockets:
            sock.close()


def test_a_name_that_does_not_resolve_says_why() -> None:
    with pytest.raises(ListenError) as caught:
        listen("nosuch.invalid", 8080)
    message = str(caught.value)
    assert message.startswith("cannot listen on nosuch.invalid:8080: ")
    assert "Unknown error" not in message  # was "Unknown error -2"


def test_check_reports_a_bad_key_file_next_to_a_bad_setting(environ: dict[str, str]) -> None:
    environ["BROKER_SERVER_PORT"] = "abc"
    environ["BROKER_AUTH_JWKS_FILE"] = "/nonexistent/jwks.json"
    result = broker("check", env=environ)
    assert result.returncode == 2
    assert "BROKER_SERVER_PORT: 'abc' is not an integer" in result.stderr
    assert "JWKS file /nonexistent/jwks.json: cannot read" in result.stderr  # was hidden


@pytest.fixture
def taken_ipv6_port() -> Iterator[int]:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as sock:
        yield sock.getsockname()[1]


def test_dev_on_the_ipv6_loopback_builds_its_urls_with_brackets(
    taken_ipv6_port: int, environ: dict[str, str]
) -> None:
    # Everything up to listening runs (the broker's Smithery URL, the dev issuer, the seeded
    # mcpUrl); "http://::1:8081" was a traceback from the broker's HTTP client.
    result = broker("dev", "--host", "::1", "--mcp-port", str(taken_ipv6_port), env=environ)
    assert result.returncode == 3
    assert (
        one_line(result)
        == f"broker: cannot listen on ::1:{taken_ipv6_port}: Address already in use"
    )


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        (
            {
                "BROKER_CACHE_BACKEND": "redis",
                "BROKER_REDIS_URL": "redis://127.0.0.1:1/0",
                "BROKER_CACHE_ENCRYPTION_KEY": "active: a\nkeys: {a: notbase64}\nnaming_key: x",
            },
            "BROKER_CACHE_ENCRYPTION_KEY: key 'a' must be base64 of 32 bytes",
        ),
        ({"OTEL_TRACES_EXPORTER": "bogus"}, "OTEL_TRACES_EXPORTER: 'bogus' is not supported"),
    ],
    ids=["keyring", "trace-exporter"],
)
def test_dev_lists_the_problems_serve_would(
    variables: dict[str, str], problem: str, environ: dict[str, str]
) -> None:
    result = broker("dev", env={**environ, **variables})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr  # was a ConfigError raised from create_app
    assert "problem(s):" in result.stderr
    assert problem in result.stderr
