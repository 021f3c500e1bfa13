"""Schemathesis against the broker's own OpenAPI document, on the real broker process: every
route, with and without a valid bearer. No 5xx, no response violating the documented schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Keys, Process

pytestmark = pytest.mark.integration
SCHEMATHESIS = str(Path(sys.executable).parent / "st")


@pytest.mark.parametrize("authenticated", [True, False], ids=["valid-bearer", "no-bearer"])
def test_openapi_fuzzing_finds_no_server_error(
    broker: Process, keys: Keys, tmp_path: Path, authenticated: bool
) -> None:
    args = [
        SCHEMATHESIS,
        "run",
        f"{broker.url}/schema/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        "40",
        "--seed",
        "20261121",
        "--no-color",
    ]
    if authenticated:
        args += ["-H", f"Authorization: Bearer {keys.jwt('fuzzer', email_verified=True)}"]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
