"""``broker/static/client.d.ts`` against the real TypeScript compiler (``tests/client/types/``):
the declarations compile under ``--strict``, a consumer program using the documented API
type-checks while its marked misuses do not, and ``client.js`` exports exactly the names and
kinds (class, function, constant) the declarations promise."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TYPES = ROOT / "tests" / "client" / "types"
TSC = ROOT / "tests" / "client" / "node_modules" / ".bin" / "tsc"
TIMEOUT_SECONDS = 120


def test_the_declarations_type_check_a_consumer_program() -> None:
    assert TSC.exists(), "run make test-deps (npm ci --prefix tests/client)"
    result = subprocess.run(
        [str(TSC), "-p", str(TYPES / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    # Unused `@ts-expect-error` directives fail too: each marked misuse must be a type error.
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "@ts-expect-error" in (TYPES / "usage.ts").read_text()


def test_client_js_exports_what_the_declarations_declare() -> None:
    node = shutil.which("node")
    assert node is not None, "node is required (see .ci/run)"
    result = subprocess.run(
        [node, str(TYPES / "exports.mjs")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout)
    assert found["js"] == found["dts"]
    assert found["js"]["createBrokerClient"] == "function"
    assert found["js"]["BrokerDeniedError"] == "class"
    assert found["js"]["DENIED_RPC_CODE"] == "const"
