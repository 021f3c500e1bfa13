"""Settings: mechanical BROKER_* mapping, secrets by value or file, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import (
    Secret,
    Settings,
    env_names,
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
    key_file.write_text(value + "\n")
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


@pytest.mark.parametrize("value", ["0", "-1", "100001"])
def test_in_flight_limit_must_be_positive_and_bounded(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_SERVER_MAX_IN_FLIGHT": value})
    assert caught.value.problems == ("BROKER_SERVER_MAX_IN_FLIGHT: must be between 1 and 100000",)


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.*",
        "https://*.example.com",
        "https://app.example/",
        "app.example",
        "https://user@app.example",
        "https://app.example/path",
    ],
)
def test_cors_origins_are_exact(origin: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_CORS_ORIGINS": f"https://ok.example,{origin}"})
    assert caught.value.problems == (
        f"BROKER_CORS_ORIGINS: {origin!r} is not an origin like https://app.example "
        "(scheme and host, no path; no wildcard but a lone *)",
    )


def test_missing_secret_file_is_a_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_SMITHERY_API_KEY_FILE": str(tmp_path / "missing")})
    assert caught.value.problems == (
        f"BROKER_SMITHERY_API_KEY: cannot read {tmp_path / 'missing'}: No such file or directory",
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
