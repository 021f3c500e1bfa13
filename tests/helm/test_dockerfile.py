"""The Dockerfile, read as Docker reads it (no engine here): a pinned slim base, the project
installed with ``pip install .``, a numeric non-root user, ``broker`` as the entrypoint, nothing
to write at run time; and a build context that leaves the repository's clutter out."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from typing import Final

import pytest

from tests.helm.chart import ROOT

pytestmark = pytest.mark.integration

DOCKERFILE: Final = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE: Final = (ROOT / ".dockerignore").read_text()
VARIABLE: Final = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def parse_instructions(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comment lines dropped, also inside them."""
    instructions = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        pending = ""
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def parse_stages(text: str) -> list[Stage]:
    """Build stages, with the global ARG defaults substituted into each FROM."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] = []
    header: tuple[str, str | None] | None = None
    for instruction in parse_instructions(text):
        if instruction.keyword == "ARG" and header is None:
            name, _, default = instruction.arguments.partition("=")
            global_args[name] = default
        elif instruction.keyword == "FROM":
            if header is not None:
                stages.append(Stage(*header, tuple(current)))
            words = VARIABLE.sub(lambda m: global_args[m[1] or m[2]], instruction.arguments).split()
            header = (words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None)
            current = []
        else:
            current.append(instruction)
    assert header is not None, "no FROM"
    stages.append(Stage(*header, tuple(current)))
    return stages


STAGES: Final = parse_stages(DOCKERFILE)
FINAL: Final = STAGES[-1]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in stage.all("ENV"):
        for word in shlex.split(arguments):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def test_multi_stage_with_the_same_pinned_slim_base() -> None:
    assert len(STAGES) >= 2
    for stage in STAGES:
        repository, _, tag = stage.image.partition(":")
        assert repository == "python"
        assert tag != "latest"
        assert re.fullmatch(r"3\.\d+\.\d+-slim-\w+", tag), stage.image
    assert len({stage.image for stage in STAGES}) == 1  # the venv links to the base's python


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    (user,) = FINAL.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) > 0
    assert int(gid) > 0
    assert uid == "10001"  # the chart's runAsUser


def test_entrypoint_is_broker_and_cmd_serves_on_8080() -> None:
    (entrypoint,) = FINAL.all("ENTRYPOINT")
    (cmd,) = FINAL.all("CMD")
    assert json.loads(entrypoint) == ["broker"]  # exec form: `docker run IMAGE check` works
    assert json.loads(cmd) == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert FINAL.all("EXPOSE") == ["8080"]


def test_project_installed_with_pip_install_dot_without_extras() -> None:
    installs = []
    for stage in STAGES:
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run):
                words = shlex.split(command)
                if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                    installs.append((stage, words[2:]))
    ((stage, arguments),) = installs
    assert stage is not FINAL
    assert [word for word in arguments if not word.startswith("-")] == ["."]
    assert "-e" not in arguments
    assert "--editable" not in arguments
    assert "--no-cache-dir" in arguments


def test_final_stage_copies_only_the_built_virtualenv() -> None:
    build = STAGES[0]
    assert build.name is not None
    (copy,) = FINAL.all("COPY")
    assert copy == f"--from={build.name} /opt/token-broker /opt/token-broker"
    assert env_of(FINAL)["PATH"].startswith("/opt/token-broker/bin:")


def test_build_stage_copies_what_the_package_build_reads() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = set()
    for copy in STAGES[0].all("COPY"):
        copied.update(shlex.split(copy)[:-1])
    assert {"pyproject.toml", project["readme"], "broker"} <= copied


def test_runtime_never_writes_outside_tmp() -> None:
    env = env_of(FINAL)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert env["BROKER_POLICIES_DIR"] == "/etc/token-broker/policies"  # the chart's mount


def test_dockerignore_keeps_clutter_out_of_the_context() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {
        ".git",
        ".venv",
        "tests",
        "**/node_modules",
        "bench/results",
        "**/__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
    assert required <= patterns
    needed = {"pyproject.toml", "README.md", "broker"}
    assert not any(pattern.split("/")[0] in needed for pattern in patterns)
    assert not any(pattern.startswith("!") for pattern in patterns)
