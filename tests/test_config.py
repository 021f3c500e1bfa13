"""Settings: mechanical BROKER_* mapping, secrets by value or file, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import (
    Secret,
    Settings,
    env_names,
    load_issuers,
    load_settings,
    production_problems,
    unknown_env_names,
)
from broker.errors import ConfigError


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.policies.dir == "policies"
    assert settings.smithery.base_url == "https://api.smithery.ai"
    assert settings.smithery.api_key is None
    assert settings.cors.origins == ()  # CORS off by default


def test_issue_named_variables_map_onto_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "BROKER_POLICIES_DIR": "/etc/broker/policies",
            "BROKER_SMITHERY_BASE_URL": "http://127.0.0.1:9",
            "BROKER_SMITHERY_API_KEY": "sk-live-123",
            "BROKER_AUTH_ISSUER": "https://idp.example/",
            "BROKER_AUTH_AUDIENCE": "app, api",
            "BROKER_AUTH_JWKS_FILE": "/keys.json",
            "BROKER_AUTH_ALGORITHMS": "RS256,EdDSA",
            "BROKER_CORS_ORIGINS": "https://app.example,https://admin.example",
            "BROKER_CACHE_MAX_ENTRIES": "5",
        }
    )
    assert settings.policies.dir == "/etc/broker/policies"
    assert settings.smithery.base_url == "http://127.0.0.1:9"
    assert settings.smithery.api_key == Secret("sk-live-123")
    assert settings.auth.issuer == "https://idp.example/"
    assert settings.auth.audience == ("app", "api")
    assert settings.auth.jwks_file == "/keys.json"
    assert settings.auth.algorithms == ("RS256", "EdDSA")
    assert settings.cors.origins == ("https://app.example", "https://admin.example")
    assert settings.cache.max_entries == 5


def test_api_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    settings = load_settings({"BROKER_SMITHERY_API_KEY_FILE": str(key_file)})
    assert settings.smithery.api_key is not None
    assert settings.smithery.api_key.reveal() == "sk-from-file"


@pytest.mark.parametrize("value", ["sk-line-one\nline-two", "sk with space", "sk-\x00", "sk-é"])
def test_a_credential_that_cannot_be_a_bearer_header_is_refused_without_its_value(
    tmp_path: Path, value: str
) -> None:
    """An HTTP library refuses such a header with an error quoting it, which a tracing
    instrumentation records: the key ended up in exported spans."""
    key_file = tmp_path / "key"
    key_file.write_text(value + "0" * 32 + "\n")  # long enough for an admin token
    for environ in (
        {"BROKER_SMITHERY_API_KEY_FILE": str(key_file)},
        {"BROKER_ADMIN_TOKEN_FILE": str(key_file)},
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(environ)
        [problem] = caught.value.problems
        assert problem.endswith("must be printable ASCII without spaces (the value is secret)")
        assert value.strip() not in problem


def test_secret_never_printed() -> None:
    settings = load_settings({"BROKER_SMITHERY_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings.smithery)


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "BROKER_SMITHERY_API_KEY": "a",
                "BROKER_SMITHERY_API_KEY_FILE": str(tmp_path / "k"),
                "BROKER_CACHE_MAX_ENTRIES": "many",
                "BROKER_AUTH_LEEWAY_SECONDS": "1.5",
                "BROKER_SMITHERY_TIMEOUT_SECONDS": "inf",
            }
        )
    problems = caught.value.problems
    assert problems == (
        "BROKER_SMITHERY_API_KEY: set either BROKER_SMITHERY_API_KEY or "
        "BROKER_SMITHERY_API_KEY_FILE, not both",
        "BROKER_SMITHERY_TIMEOUT_SECONDS: 'inf' is not a finite number",
        "BROKER_AUTH_LEEWAY_SECONDS: '1.5' is not an integer",
        "BROKER_CACHE_MAX_ENTRIES: 'many' is not an integer",
    )


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "BROKER_AUTH_ALGORITHMS": "HS256,none,RS256",
                "BROKER_SMITHERY_BASE_URL": "ftp://x",
                "BROKER_CORS_ORIGINS": "app.example",
                "BROKER_CACHE_REFRESH_MARGIN_RATIO": "1.5",
            }
        )
    text = "\n".join(caught.value.problems)
    assert "BROKER_SMITHERY_BASE_URL: must be an http(s) URL" in text
    assert "BROKER_AUTH_ALGORITHMS: unsupported HS256, none" in text
    assert "BROKER_CORS_ORIGINS: 'app.example' is not an origin" in text
    assert "BROKER_CACHE_REFRESH_MARGIN_RATIO: must be in [0, 1)" in text


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (
            {"BROKER_SMITHERY_BASE_URL": "http://"},
            "BROKER_SMITHERY_BASE_URL: must be an http(s) URL with a host",
        ),
        (
            {"BROKER_SMITHERY_BASE_URL": "https://api.example:99999"},
            "BROKER_SMITHERY_BASE_URL: must be an http(s) URL with a host",
        ),
        (
            {"BROKER_SMITHERY_MCP_TIMEOUT_SECONDS": "-5"},
            "BROKER_SMITHERY_*TIMEOUT_SECONDS: must be greater than 0",
        ),
        (
            {"BROKER_POLICIES_RELOAD_INTERVAL_SECONDS": "-5"},
            "BROKER_POLICIES_RELOAD_INTERVAL_SECONDS: must be 0 (never) or positive",
        ),
        (
            {"BROKER_ADMIN_TOKEN": "a"},
            "BROKER_ADMIN_TOKEN: must be at least 32 characters (e.g. `openssl rand -base64 32`)",
        ),
        (
            {"BROKER_TELEMETRY_METRICS_PORT": "8080"},
            "BROKER_TELEMETRY_METRICS_PORT: must differ from BROKER_SERVER_PORT",
        ),
        (
            {"BROKER_LIMITS_MCP_CALLS_PER_USER": "-1"},
            "BROKER_LIMITS_MCP_CALLS_PER_USER: must be 0 (no limit) or positive",
        ),
    ],
)
def test_settings_serve_could_not_use_fail_the_check(environ: dict[str, str], problem: str) -> None:
    """``broker check`` (the chart's init container) said ok to each; ``serve`` then crashed,
    or ran without hot reload, with an admin token one guess away, or failed to bind."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.problems == (problem,)


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (
            {"BROKER_AUTH_ISSUER": "http://idp.example/", "BROKER_AUTH_AUDIENCE": "a"},
            "BROKER_AUTH: keys are found by discovery from the issuer, which must then be https "
            "(plain http on loopback only); or set jwks_url or jwks_file",
        ),
        (
            {
                "BROKER_AUTH_ISSUER": "https://idp.example/",
                "BROKER_AUTH_AUDIENCE": "a",
                "BROKER_AUTH_JWKS_URL": "ftp://idp.example/jwks",
            },
            "BROKER_AUTH: jwks_url must be https (plain http on loopback only)",
        ),
    ],
)
def test_identity_provider_urls_the_broker_would_refuse_to_fetch_fail_at_start(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_issuers(load_settings(environ).auth)
    assert caught.value.problems == (problem,)


def test_an_http_issuer_with_a_key_file_needs_no_fetch(tmp_path: Path) -> None:
    environ = {
        "BROKER_AUTH_ISSUER": "http://idp.example/",
        "BROKER_AUTH_AUDIENCE": "a",
        "BROKER_AUTH_JWKS_FILE": str(tmp_path / "jwks.json"),
    }
    assert load_issuers(load_settings(environ).auth)[0].issuer == "http://idp.example/"


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.*",
        "https://*.example.com",
        "https://app.example/",
        "app.example",
        "https://user@app.example",
        "https://app.example/path",
        "https://App.Example",
        "https://app.example:443",
        "http://app.example:80",
    ],
)
def test_cors_origins_are_exact(origin: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_CORS_ORIGINS": f"https://ok.example,{origin}"})
    assert caught.value.problems == (
        f"BROKER_CORS_ORIGINS: {origin!r} is not an origin like https://app.example "
        "(scheme and host in lower case, no default port, no path; no wildcard but a lone *)",
    )


def test_missing_secret_file_is_a_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_SMITHERY_API_KEY_FILE": str(tmp_path / "missing")})
    assert caught.value.problems == (
        "BROKER_SMITHERY_API_KEY: cannot read the file BROKER_SMITHERY_API_KEY_FILE names: "
        "No such file or directory",
    )


def test_production_requirements_listed_together() -> None:
    assert [p.split(":")[0] for p in production_problems(Settings())] == [
        "BROKER_SMITHERY_API_KEY or BROKER_SMITHERY_API_KEY_FILE",
        "BROKER_AUTH_ISSUER",
        "BROKER_AUTH_AUDIENCE",
    ]


def test_unknown_broker_variables_are_flagged() -> None:
    assert unknown_env_names(
        {"BROKER_AUTH_ISUER": "x", "BROKER_AUTH_ISSUER": "y", "HOME": "/"}
    ) == ["BROKER_AUTH_ISUER"]


def test_env_names_cover_issue_interface() -> None:
    names = env_names()
    for name in (
        "BROKER_POLICIES_DIR",
        "BROKER_SMITHERY_BASE_URL",
        "BROKER_SMITHERY_API_KEY",
        "BROKER_SMITHERY_API_KEY_FILE",
        "BROKER_AUTH_ISSUER",
        "BROKER_AUTH_AUDIENCE",
        "BROKER_AUTH_JWKS_FILE",
        "BROKER_AUTH_ALGORITHMS",
        "BROKER_CORS_ORIGINS",
    ):
        assert name in names


def test_issuers_file_loads_several_issuers(tmp_path: Path) -> None:
    from broker.config import load_issuers

    path = tmp_path / "issuers.yaml"
    path.write_text(
        "issuers:\n"
        "  - issuer: https://a.example/\n    audiences: [api]\n    typ: at+jwt\n"
        "  - issuer: https://b.example/\n    audiences: [api, other]\n"
        "    subject_claim: oid\n    algorithms: [ES256]\n"
    )
    issuers = load_issuers(load_settings({"BROKER_AUTH_CONFIG_FILE": str(path)}).auth)
    assert [(i.issuer, i.audiences, i.subject_claim, i.typ) for i in issuers] == [
        ("https://a.example/", ("api",), "sub", "at+jwt"),
        ("https://b.example/", ("api", "other"), "oid", None),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("issuers:\n  - issuer: https://a/\n    audience: [x]\n", "unknown field `audience`"),
        ("issuers: []\n", "lists no issuers"),
        ("issuers:\n  - {issuer: https://a/, audiences: []}\n", "at least one audience"),
        (
            "issuers:\n  - {issuer: https://a/, audiences: [x], algorithms: [HS256]}\n",
            "unsupported: HS256",
        ),
        ("issuers:\n  - {issuer: ftp://a/, audiences: [x]}\n", "must be an http(s) URL"),
        (
            "issuers:\n  - {issuer: https://a/, audiences: [x]}\n"
            "  - {issuer: https://a/, audiences: [y]}\n",
            "listed twice",
        ),
        ("issuers: [", "is not valid YAML"),
    ],
)
def test_issuers_file_problems_are_clear(tmp_path: Path, content: str, message: str) -> None:
    from broker.config import load_issuers

    path = tmp_path / "issuers.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_issuers(load_settings({"BROKER_AUTH_CONFIG_FILE": str(path)}).auth)
    assert message in "\n".join(caught.value.problems)


def test_config_file_and_env_issuer_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        load_settings({"BROKER_AUTH_CONFIG_FILE": "/x.yaml", "BROKER_AUTH_ISSUER": "https://a/"})


@pytest.mark.parametrize("value", ["\u0668\u0660\u0668\u0660", "8_080", "\uff18\uff10\uff18\uff10"])
def test_numbers_are_ascii_decimal_digits(value: str) -> None:
    with pytest.raises(ConfigError) as caught:  # int() and float() take each of these
        load_settings({"BROKER_SERVER_PORT": value, "BROKER_SERVER_BODY_TIMEOUT_SECONDS": value})
    assert sorted(caught.value.problems) == [
        f"BROKER_SERVER_BODY_TIMEOUT_SECONDS: {value!r} is not a number",
        f"BROKER_SERVER_PORT: {value!r} is not an integer",
    ]


def test_a_long_bad_value_is_quoted_by_its_start_only() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_SERVER_PORT": "9" * 39 + "x" * 5000})
    [problem] = caught.value.problems
    assert problem == f"BROKER_SERVER_PORT: {'9' * 39 + 'x' + '...'!r} is not an integer"
