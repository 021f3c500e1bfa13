"""The browser client (``broker/static/client.js``): its node unit tests (``tests/client/``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT_TESTS = sorted((ROOT / "tests" / "client").glob("*.test.mjs"))
NODE_TIMEOUT_SECONDS = 120
MIN_NODE_TESTS = 41
"""The node suite's size when written: fewer means tests were lost, not that they passed."""


def test_client_unit_tests_pass_under_node() -> None:
    node = shutil.which("node")
    assert node is not None, "node is required (see .ci/run)"
    assert CLIENT_TESTS
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *map(str, CLIENT_TESTS)],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    counts = dict(re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", result.stdout, re.M))
    assert set(counts) == {"pass", "fail", "skipped", "todo", "cancelled"}, result.stdout
    assert int(counts["pass"]) >= MIN_NODE_TESTS
    assert counts["fail"] == counts["skipped"] == counts["todo"] == counts["cancelled"] == "0"
