"""The README's settings table is generated from the settings' declarations in config.py.

Regenerate it after changing a setting: ``.venv/bin/python tests/test_readme.py``.
"""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path
from typing import Any, get_args, get_type_hints

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.config import Secret, Settings  # noqa: E402

START = "| variable | default | meaning |"
EMPTY_DEFAULTS = {
    "BROKER_AUTH_ISSUER": "(required)",
    "BROKER_AUTH_AUDIENCE": "(required)",
    "BROKER_CORS_ORIGINS": "(empty: CORS off)",
}


def field_docs() -> dict[tuple[str, str], str]:
    """(Struct name, field) → the docstring written under the field in config.py."""
    tree = ast.parse((ROOT / "broker" / "config.py").read_text())
    docs: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for current, following in itertools.pairwise(node.body):
            if (
                isinstance(current, ast.AnnAssign)
                and isinstance(current.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[(node.name, current.target.id)] = " ".join(following.value.value.split())
    return docs


def _default(env: str, field_type: Any, value: Any) -> str:
    if field_type is Secret or Secret in get_args(field_type):
        return "(required)"
    if value is None or value == ():
        return EMPTY_DEFAULTS.get(env, "(empty)")
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{','.join(value) if isinstance(value, tuple) else value}`"


def render_table() -> str:
    docs = field_docs()
    defaults = Settings()
    rows = [START, "|---|---|---|"]
    for section, section_type in get_type_hints(Settings).items():
        for name, field_type in get_type_hints(section_type).items():
            env = f"BROKER_{section.upper()}_{name.upper()}"
            secret = field_type is Secret or Secret in get_args(field_type)
            label = f"`{env}` / `_FILE`" if secret else f"`{env}`"
            value = getattr(getattr(defaults, section), name)
            meaning = docs[(section_type.__name__, name)].replace("``", "`")
            rows.append(f"| {label} | {_default(env, field_type, value)} | {meaning} |")
    return "\n".join(rows)


def readme_table(text: str) -> tuple[int, int]:
    start = text.index(START)
    return start, text.index("\n\n", start)


def test_settings_table_matches_config() -> None:
    text = (ROOT / "README.md").read_text()
    start, end = readme_table(text)
    assert text[start:end] == render_table(), "run: .venv/bin/python tests/test_readme.py"


if __name__ == "__main__":
    readme = ROOT / "README.md"
    content = readme.read_text()
    begin, finish = readme_table(content)
    readme.write_text(content[:begin] + render_table() + content[finish:])
