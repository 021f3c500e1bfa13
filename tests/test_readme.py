"""The README's settings table is generated from the settings' declarations in config.py, and
the README's examples and tables are checked against the code they describe.

Regenerate the table after changing a setting: ``.venv/bin/python tests/test_readme.py``.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_type_hints

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.config import Secret, Settings, load_settings  # noqa: E402
from broker.demo.seed import DEV_CONNECTIONS  # noqa: E402
from broker.errors import ConfigError  # noqa: E402
from broker.explain import explain  # noqa: E402
from broker.policy import CLAIM_TYPES, CONDITION_OPS, load_policy_dir  # noqa: E402
from broker.precheck import Target  # noqa: E402

START = "| variable | default | meaning |"
REQUIRED = "(required)"
REQUIRED_WITH_REDIS = "(required with `redis`)"
#: What an unset setting means, where "(empty)" would not say it. "(required)" must match what
#: ``load_settings(production=True)`` refuses to run without (test_required_settings_...).
EMPTY_DEFAULTS = {
    "BROKER_SMITHERY_API_KEY": REQUIRED,
    "BROKER_AUTH_ISSUER": REQUIRED,
    "BROKER_AUTH_AUDIENCE": REQUIRED,
    "BROKER_CORS_ORIGINS": "(empty: CORS off)",
    "BROKER_CACHE_ENCRYPTION_KEY": REQUIRED_WITH_REDIS,
    "BROKER_REDIS_URL": REQUIRED_WITH_REDIS,
    "BROKER_TELEMETRY_HASH_KEY": "(empty: a random key per process)",
    "BROKER_ADMIN_TOKEN": "(empty: admin endpoints off)",
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


def _default(env: str, value: Any) -> str:
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
            rows.append(f"| {label} | {_default(env, value)} | {meaning} |")
    return "\n".join(rows)


def readme_table(text: str) -> tuple[int, int]:
    start = text.index(START)
    return start, text.index("\n\n", start)


def test_settings_table_matches_config() -> None:
    text = (ROOT / "README.md").read_text()
    start, end = readme_table(text)
    assert text[start:end] == render_table(), "run: .venv/bin/python tests/test_readme.py"


def _table_defaults() -> dict[str, str]:
    """The README settings table's default column, by variable."""
    text = (ROOT / "README.md").read_text()
    start, end = readme_table(text)
    row = re.compile(r"^\| `(BROKER_[A-Z0-9_]+)`(?: / `_FILE`)? \| ([^|]+) \|")
    return {m[1]: m[2].strip() for line in text[start:end].splitlines() if (m := row.match(line))}


def _refused(environ: Mapping[str, str]) -> set[str]:
    """The variables ``broker serve`` refuses to start without, in this environment."""
    try:
        load_settings(environ, production=True)
    except ConfigError as exc:
        return {problem.split(" ", 1)[0].removesuffix(":") for problem in exc.problems}
    return set()


def test_settings_marked_required_are_the_ones_serve_requires() -> None:
    defaults = _table_defaults()
    required = {name for name, default in defaults.items() if default == REQUIRED}
    assert required == _refused({})
    with_redis = {name for name, default in defaults.items() if default == REQUIRED_WITH_REDIS}
    assert with_redis == _refused({"BROKER_CACHE_BACKEND": "redis"}) - required


def test_when_table_lists_every_condition_operator() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("**`when`**", 1)[1].split("\n\n", 2)[1]
    operators = set(re.findall(r"^\| `claim: \{(\w+):", table, re.MULTILINE))
    assert operators == set(CONDITION_OPS) - {"equals"}
    assert "`claim: value` or `claim: {equals: value}`" in table
    (type_row,) = [line for line in table.splitlines() if "{type:" in line]
    assert re.findall(r"\w+", type_row.split("`")[1].split(":", 2)[2]) == list(CLAIM_TYPES)


def test_precheck_example_shows_what_its_user_gets() -> None:
    """The precheck example's output is the decision for the user whose JWT it sends (a user
    signed in through ``/dev/login`` in the quick start), on the dev connection it names."""
    text = (ROOT / "README.md").read_text()
    logins = {
        variable: json.loads(claims)
        for variable, claims in re.findall(
            r"^(\w+)=\$\(curl -s -X POST \S+/dev/login .*?-d '(\{.*?\})'",
            text,
            re.MULTILINE | re.DOTALL,
        )
    }
    (example,) = [b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "/v1/precheck" in b]
    (variable,) = re.findall(r"Bearer \$(\w+)", example)
    (body,) = re.findall(r"-d '(.*?)'", example, re.DOTALL)
    shown = " ".join(line.removeprefix("# ") for line in example.splitlines() if line[:1] == "#")
    request = json.loads(body)
    result = explain(
        load_policy_dir(ROOT / "policies"),
        logins[variable],
        issuer="http://127.0.0.1:8080/dev",
        request=request["request"],
        target=Target(request["namespace"], DEV_CONNECTIONS[request["connectionId"]]),
    )
    assert result.decision is not None
    assert f'"allowed":{json.dumps(result.decision.allowed)}' in shown
    reasons = [reason.as_json() for reason in result.decision.reasons]
    for fragment in shown.split('{"rule":')[1:]:
        pairs = dict(re.findall(r'"(\w+)":"([^"]*)"', '"rule":' + fragment))
        assert any(pairs.items() <= reason.items() for reason in reasons), pairs


def test_bench_results_named_as_the_harness_names_them() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (documented,) = re.findall(r"Results: (bench/results/\S+)\.", makefile)
    assert f"`{documented}`" in (ROOT / "README.md").read_text()


if __name__ == "__main__":
    readme = ROOT / "README.md"
    content = readme.read_text()
    begin, finish = readme_table(content)
    readme.write_text(content[:begin] + render_table() + content[finish:])
