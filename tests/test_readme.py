"""The README's settings table is checked against the settings' declarations in config.py."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import get_type_hints

from broker.config import Secret, Settings

ROOT = Path(__file__).resolve().parent.parent


def field_docs() -> dict[tuple[str, str], str]:
    """(Struct name, field) → the docstring written under the field in config.py."""
    tree = ast.parse((ROOT / "broker" / "config.py").read_text())
    docs: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for current, following in itertools.pairwise(body):
            if (
                isinstance(current, ast.AnnAssign)
                and isinstance(current.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[(node.name, current.target.id)] = " ".join(following.value.value.split())
    return docs


def readme_rows() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- settings-table", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.match(r"`(BROKER_[A-Z_]+)`", cells[0]) if cells else None
        if found and len(cells) == 3:
            rows[found.group(1)] = (cells[1], cells[2])
    return rows


def test_every_setting_is_documented_with_its_default_and_docstring() -> None:
    docs = field_docs()
    rows = readme_rows()
    expected_names = set()
    defaults = Settings()
    for section, section_type in get_type_hints(Settings).items():
        for name, field_type in get_type_hints(section_type).items():
            env = f"BROKER_{section.upper()}_{name.upper()}"
            expected_names.add(env)
            assert env in rows, f"{env} missing from the README settings table"
            default_cell, meaning = rows[env]
            doc = docs[(section_type.__name__, name)].replace("``", "`")
            assert meaning == doc, env
            value = getattr(getattr(defaults, section), name)
            if value is None or value == () or field_type is Secret:
                assert default_cell.startswith("("), env
            else:
                shown = ",".join(value) if isinstance(value, tuple) else str(value)
                assert default_cell == f"`{shown}`", env
    assert set(rows) == expected_names
