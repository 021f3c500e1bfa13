"""The files operators point the broker at (secrets, key sets, issuers, policies, policy test
cases) are read with limits that hold whatever the path names: a FIFO, a device or a directory
is refused without waiting or reading it, nesting and alias expansion are bounded, and a
secret's ``_FILE`` path is never echoed (it may be the secret, pasted there by mistake)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from broker.config import load_issuers, load_settings
from broker.errors import ConfigError, PolicyError
from broker.files import FileRefused, read_limited
from broker.identity import load_jwks_file
from broker.policy import MAX_YAML_DEPTH, load_policy_dir
from broker.policy_testing import load_cases

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A FIFO nobody writes to: opening it for reading the usual way waits for ever."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_read_limited_reads_a_regular_file_up_to_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_limited(path, 10) == b"x" * 10
    with pytest.raises(FileRefused, match="is larger than 9 bytes"):
        read_limited(path, 9)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_read_limited_refuses_what_is_not_a_regular_file(
    kind: str, fifo: Path, tmp_path: Path
) -> None:
    path = {"fifo": fifo, "device": Path("/dev/zero"), "directory": tmp_path}[kind]
    with pytest.raises(FileRefused, match="is not a regular file"):
        read_limited(path, 1024)


@pytest.mark.parametrize("source", ["fifo", "/dev/zero"])
def test_a_secret_file_that_is_not_a_file_is_refused_at_once(source: str, fifo: Path) -> None:
    path = str(fifo) if source == "fifo" else source
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_SMITHERY_API_KEY_FILE": path})
    assert caught.value.problems == (
        "BROKER_SMITHERY_API_KEY: the file BROKER_SMITHERY_API_KEY_FILE names "
        "is not a regular file",
    )


def test_a_secret_pasted_into_the_file_variable_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BROKER_ADMIN_TOKEN_FILE": "sk-SECRET-admin-token-value"})
    text = "\n".join(caught.value.problems)
    assert "sk-SECRET" not in text
    assert text == (
        "BROKER_ADMIN_TOKEN: cannot read the file BROKER_ADMIN_TOKEN_FILE names: "
        "No such file or directory"
    )


def test_an_issuers_file_that_is_a_fifo_is_refused(fifo: Path) -> None:
    settings = load_settings({"BROKER_AUTH_CONFIG_FILE": str(fifo)})
    with pytest.raises(ConfigError) as caught:
        load_issuers(settings.auth)
    assert caught.value.problems == (f"BROKER_AUTH_CONFIG_FILE: {fifo} is not a regular file",)


@pytest.mark.parametrize("content", [None, b"[" * 100_000 + b"]" * 100_000])
def test_a_jwks_file_from_a_device_or_nested_too_deeply_is_refused(
    content: bytes | None, tmp_path: Path
) -> None:
    path = "/dev/zero"
    if content is not None:
        path = str(tmp_path / "jwks.json")
        Path(path).write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_jwks_file(path, ["RS256"])
    [problem] = caught.value.problems
    assert problem.startswith(f"JWKS file {path} ")


def test_policy_entries_that_are_not_files_are_reported_not_skipped(
    tmp_path: Path, fifo: Path
) -> None:
    shutil.copy(ROOT / "policies" / "support-readonly.yaml", tmp_path)
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "nowhere")
    (tmp_path / ".#support-readonly.yaml").symlink_to("user@host.1234")  # an editor's lock
    fifo.rename(tmp_path / "fifo.yaml")
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(tmp_path)
    reported = {(Path(p.file).name, p.message) for p in caught.value.problems}
    assert reported == {
        ("dir.yaml", "the entry is not a regular file"),
        ("fifo.yaml", "the entry is not a regular file"),
        ("dangling.yaml", "cannot read: No such file or directory"),
    }


def test_a_policy_nested_hundreds_deep_is_a_located_problem(tmp_path: Path) -> None:
    (tmp_path / "deep.yaml").write_text("rules: " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(PolicyError) as caught:  # was a RecursionError
        load_policy_dir(tmp_path)
    [problem] = caught.value.problems
    assert problem.message == f"collections nest deeper than {MAX_YAML_DEPTH} levels"
    # The top mapping is the first level, the first bracket (column 8) the second.
    assert (problem.line, problem.column) == (1, 7 + MAX_YAML_DEPTH)


def test_aliases_cannot_nest_past_the_depth_limit(tmp_path: Path) -> None:
    lines = [f"x0: &a0 {'[' * 60}1{']' * 60}"]
    lines += [f"x{i}: &a{i} {'[' * 60}*a{i - 1}{']' * 60}" for i in range(1, 25)]
    (tmp_path / "deep.yaml").write_text("\n".join(lines) + "\nrules: []\n")
    with pytest.raises(PolicyError) as caught:  # was a RecursionError
        load_policy_dir(tmp_path)
    assert [p.message for p in caught.value.problems] == [
        f"collections nest deeper than {MAX_YAML_DEPTH} levels (aliases expanded)"
    ]


def test_policy_test_files_are_read_as_strictly_as_policies(tmp_path: Path) -> None:
    anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text(
        "\n".join(anchors) + "\ncases:\n  - {name: b, claims: {}, expect: {constraints: [*a8]}}\n"
    )
    (tmp_path / "dup.yaml").write_text(
        "cases:\n  - name: one\n    name: two\n    claims: {}\n    expect: {}\n"
    )
    (tmp_path / "yes.yaml").write_text(
        "cases:\n  - {name: n, claims: {admin: yes}, expect: {allowed: true}}\n"
    )
    with pytest.raises(PolicyError) as caught:  # the bomb took 50 s and 1.6 GB, then failed
        load_cases(tmp_path)
    found = {(Path(p.file).name, p.message.split(";")[0]) for p in caught.value.problems}
    assert found == {
        ("bomb.yaml", "document expands to more than 100000 nodes"),
        ("dup.yaml", "duplicate key"),
        (
            "yes.yaml",
            "'yes' is read as a boolean by YAML 1.1 and as text by YAML 1.2: quote it (numbers: "
            "plain decimal, finite)",
        ),
    }


def test_the_shipped_policy_tests_still_load() -> None:
    assert len(load_cases(ROOT / "policies" / "tests")) >= 20
