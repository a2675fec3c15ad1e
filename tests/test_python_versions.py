"""The README promises Python 3.10+: nothing in the repository may need 3.11.

No Python 3.10 interpreter is available on the CI machine, so this parses every Python file and every
notebook code cell with the 3.10 grammar, and looks for the standard-library names that 3.11 added.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SKIP = ("__pycache__", ".git", ".venv", "venv", "data", "checkpoints", "runs", "build")
PY_FILES = sorted(p for p in REPO_ROOT.rglob("*.py") if not any(part in SKIP for part in p.relative_to(REPO_ROOT).parts))
NOTEBOOKS = sorted(p for p in REPO_ROOT.rglob("*.ipynb") if not any(part in SKIP or part == ".ipynb_checkpoints"
                                                                        for part in p.relative_to(REPO_ROOT).parts))
NEW_IN_311 = {  # module -> names added in Python 3.11 (None: the whole module)
    "tomllib": None, "wsgiref.types": None,
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform"},
    "enum": {"StrEnum", "ReprEnum", "verify", "EnumCheck", "FlagBoundary"},
    "datetime": {"UTC"}, "asyncio": {"TaskGroup", "Runner", "timeout"}, "hashlib": {"file_digest"},
}
BUILTINS_311 = {"ExceptionGroup", "BaseExceptionGroup"}


def sources() -> list[tuple[str, str]]:
    out = [(p.relative_to(REPO_ROOT).as_posix(), p.read_text()) for p in PY_FILES]
    for nb_path in NOTEBOOKS:
        nb = nbformat.read(nb_path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        out.append((nb_path.relative_to(REPO_ROOT).as_posix(), code))
    return out


SOURCES = sources()


def problems_311(tree: ast.AST) -> list[str]:
    """Uses of 3.11-only library names, except imports inside a `try` (a fallback for 3.10)."""
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in NEW_IN_311 and NEW_IN_311[a.name] is None
                      and id(node) not in guarded]
        elif isinstance(node, ast.ImportFrom) and node.module in NEW_IN_311 and id(node) not in guarded:
            names = NEW_IN_311[node.module]
            found += [f"{node.module}.{a.name}" for a in node.names if names is None or a.name in names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = {"dt": "datetime", "tp": "typing"}.get(node.value.id, node.value.id)
            if module in NEW_IN_311 and NEW_IN_311[module] and node.attr in NEW_IN_311[module]:
                found.append(f"{module}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in BUILTINS_311:
            found.append(node.id)
    return found


@pytest.mark.parametrize("name,source", SOURCES, ids=[n for n, _ in SOURCES])
def test_parses_with_the_python_310_grammar_and_needs_nothing_from_311(name: str, source: str) -> None:
    tree = ast.parse(source, filename=name, feature_version=(3, 10))
    assert not problems_311(tree), f"{name} uses names that Python 3.10 lacks: {problems_311(tree)}"


def test_the_checker_catches_what_it_should() -> None:
    assert problems_311(ast.parse("import tomllib")) == ["tomllib"]
    assert problems_311(ast.parse("try:\n    import tomllib\nexcept ImportError:\n    import tomli as tomllib")) == []
    assert problems_311(ast.parse("from typing import Self, Any")) == ["typing.Self"]
    assert problems_311(ast.parse("import datetime as dt\nx = dt.UTC")) == ["datetime.UTC"]
    with pytest.raises(SyntaxError):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass", feature_version=(3, 10))


def test_the_promise_is_written_where_installers_read_it() -> None:
    assert re.search(r'requires-python\s*=\s*">=3\.10"', (REPO_ROOT / "pyproject.toml").read_text())
    assert "Python 3.10+" in (REPO_ROOT / "README.md").read_text()
    assert re.search(r'^tomli.*python_version\s*<\s*"3\.11"', (REPO_ROOT / "requirements.txt").read_text(), re.M)
