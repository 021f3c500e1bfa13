"""scripts/helm-install-policies.sh: the repository's policies/*.yaml reach a release intact, file
name for file name and byte for byte, through the real helm, and the real ``broker check``
accepts what the release would mount."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest
import yaml

from tests.helm.chart import (
    FULLNAME,
    ROOT,
    Helm,
    Rendered,
    materialize,
    parse_manifests,
    run_broker_check,
)

pytestmark = pytest.mark.integration

SCRIPT: Final = ROOT / "scripts" / "helm-install-policies.sh"
POLICIES: Final = ROOT / "policies"
#: Everything else a release needs, so that the policies come from the script alone.
RELEASE_SETTINGS: Final = (
    "--set",
    "smithery.apiKey=sk-script-test",
    "--set",
    "auth.issuer=https://idp.example.com/",
    "--set",
    "auth.audiences={https://broker.example.com}",
)


def run_script(helm: Helm, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HELM": str(helm.binary)},
        timeout=60,
        check=False,
    )


def render_through_script(helm: Helm, extra: Sequence[str] = ()) -> Rendered:
    result = run_script(helm, *extra, "--template", "tb", "--namespace", "apps", *RELEASE_SETTINGS)
    assert result.returncode == 0, result.stderr
    return parse_manifests(result.stdout)


def policy_data(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.one("ConfigMap", f"{FULLNAME}-policies")["data"]
    return data


def test_repository_policies_reach_the_release_intact(helm: Helm) -> None:
    data = policy_data(render_through_script(helm))
    files = sorted(POLICIES.glob("*.yaml")) + sorted(POLICIES.glob("*.yml"))
    assert files
    assert data == {path.name: path.read_text() for path in files}


def test_broker_check_accepts_the_released_policies(helm: Helm, tmp_path: Path) -> None:
    rendered = render_through_script(helm)
    result = run_broker_check(materialize(rendered, "check", tmp_path / "pod"), tmp_path)
    assert result.returncode == 0, result.stderr
    rules = sum(len(yaml.safe_load(path.read_text())["rules"]) for path in POLICIES.glob("*.yaml"))
    assert result.stdout.startswith(f"broker: ok: {rules} rule(s)")


def test_dots_spaces_and_commas_survive_helm_syntax(helm: Helm, tmp_path: Path) -> None:
    policies = tmp_path / "team policies, v2"
    policies.mkdir()
    contents = {
        "team.v2.yaml": "rules:\n  - id: team-v2\n    grant:\n      namespaces: a,b\n",
        "ops.yml": "rules:\n  - id: ops\n    grant:\n      namespaces: ops\n",
    }
    for name, text in contents.items():
        (policies / name).write_text(text)
    (policies / "README.md").write_text("not a policy")
    data = policy_data(render_through_script(helm, ["--policies", str(policies)]))
    assert data == contents


def test_print_args_escapes_dots_for_set_file(helm: Helm) -> None:
    result = run_script(helm, "--print-args")
    assert result.returncode == 0, result.stderr
    args = shlex.split(result.stdout)
    files = sorted(POLICIES.glob("*.yaml"))
    expected: list[str] = []
    for path in files:
        escaped = path.name.replace(".", "\\.")
        expected += ["--set-file", f"policies.{escaped}={path}"]
    assert args == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad name.yaml", "may only hold letters"),
        (None, "no *.yaml or *.yml policy files"),
    ],
    ids=["space-in-file-name", "no-policy-files"],
)
def test_unusable_policy_directory_refused(
    helm: Helm, tmp_path: Path, name: str | None, message: str
) -> None:
    if name is not None:
        (tmp_path / name).write_text("rules: []\n")
    result = run_script(helm, "--policies", str(tmp_path), "--template", "tb")
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_install_mode_runs_helm_upgrade_install(tmp_path: Path) -> None:
    """Without a cluster, a stand-in helm records the command the script would run."""
    recorder = tmp_path / "helm"
    log = tmp_path / "argv"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(log))}\n')
    recorder.chmod(0o755)
    result = subprocess.run(
        [str(SCRIPT), "tb", "--namespace", "apps"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HELM": str(recorder)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    argv = log.read_text().splitlines()
    assert argv[:4] == ["upgrade", "--install", "tb", str(ROOT / "helm" / "token-broker")]
    assert argv[-2:] == ["--namespace", "apps"]
    assert argv.count("--set-file") == len(list(POLICIES.glob("*.yaml")))
