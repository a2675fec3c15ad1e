"""Which run records still describe a notebook's code after a change to its comments or docstrings only.

    python scripts/code_aliases.py          # add the aliases that git history proves (writes results/code_aliases.json)
    python scripts/code_aliases.py --check  # prove every alias in that file again from git history (exit 1 if one fails)

A run record names the code that ran by `notebook_code_sha256`, the SHA-256 of the notebook's code cells, comments
included. Correcting a comment (an equation number, a shape) changes that hash, and the README would then mark the
record as measured with older code until a rerun, which for a `full` record may need a GPU. A change to comments or
docstrings cannot change what a run computes, so this script keeps such changes apart:
`results/code_aliases.json` lists entries {task, from, to}, each saying that the notebook code whose hash is `from`
(a committed record's) and the code whose hash is `to` differ only in comments, docstrings and layout. Both versions
are read from git history and compared as Python syntax trees (docstrings removed, unless the code reads a
`__doc__`), with their shell and magic lines (`!pip`, `%matplotlib`) compared verbatim. `update_readme.py` and
`campaign.py` count a record whose code is `from` as a record of code `to`; the record itself is never edited, so it
still names the code that ran.

`--check` needs the repository's history: in a shallow clone it says that it cannot check, and exits 0.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO_ROOT))  # `common`, also where the repository is not pip-installed
ALIASES = Path("results") / "code_aliases.json"
WHAT = "the notebook code `from` and `to` differ only in comments, docstrings and layout"


def code_cells(notebook_json: str) -> str:
    """A notebook's code cells joined by blank lines: the text whose SHA-256 a run record names (common.record's
    `notebook_code`, imported late: `common` imports torch, which `load` and `--help` do not need)."""
    from common.record import notebook_code
    return notebook_code(notebook_json)


def code_sha256(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _drop_docstrings(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]


def skeleton(code: str) -> str:
    """What a run of `code` depends on: its syntax tree without docstrings (kept when the code reads a `__doc__`),
    then its shell and magic lines verbatim. Comments, blank lines and layout leave no trace."""
    lines, magics = [], []
    for line in code.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(("!", "%")):
            magics.append(stripped.rstrip())
            line = line[:len(line) - len(stripped)] + "pass"  # keeps the block it stands in
        lines.append(line)
    tree = ast.parse("\n".join(lines))
    reads_doc = any(isinstance(n, ast.Attribute) and n.attr == "__doc__" or isinstance(n, ast.Name)
                    and n.id == "__doc__" for n in ast.walk(tree))
    if not reads_doc:
        _drop_docstrings(tree)
    return ast.dump(tree) + "\n" + "\n".join(magics)


def same_but_comments(old: str, new: str) -> bool:
    """Whether two notebooks' code (code_cells) differ only in comments, docstrings and layout."""
    return skeleton(old) == skeleton(new)


def load(root: Path = REPO_ROOT) -> list[dict[str, str]]:
    path = root / ALIASES
    return json.loads(path.read_text())["aliases"] if path.is_file() else []


def current_codes(task: str, now: str | None, aliases: list[dict[str, str]]) -> set[str]:
    """The code hashes a record of `task` may name and still count as a record of the code now (`now`)."""
    return set() if now is None else {now} | {a["from"] for a in aliases if a["task"] == task and a["to"] == now}


def same_code(task: str, a: str, b: str, aliases: Sequence[dict[str, str]]) -> bool:
    """Whether two code hashes of `task` are one code up to comments, docstrings and layout: equal, or mapped by
    `aliases` to the same code (each `from` is aliased to the one `to` it differs from only in those)."""
    def canonical(sha: str) -> str:
        return next((x["to"] for x in aliases if x["task"] == task and x["from"] == sha), sha)
    return canonical(a) == canonical(b)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


def history(root: Path, notebook: Path) -> dict[str, str]:
    """Code hash -> code, for every committed version of `notebook` (followed across renames) and the working tree's."""
    versions = {}
    out = _git(root, "log", "--follow", "--format=commit %H", "--name-only", "--", str(notebook.relative_to(root)))
    commit = None
    for line in out.splitlines():
        if line.startswith("commit "):
            commit = line.split()[1]
        elif line.strip() and commit:
            try:
                code = code_cells(_git(root, "show", f"{commit}:{line.strip()}"))
            except (subprocess.CalledProcessError, json.JSONDecodeError):
                continue  # deleted in that commit, or not a notebook there
            versions.setdefault(code_sha256(code), code)
    if notebook.is_file():
        code = code_cells(notebook.read_text())
        versions[code_sha256(code)] = code
    return versions


def shallow(root: Path) -> bool:
    try:
        return _git(root, "rev-parse", "--is-shallow-repository").strip() != "false"
    except (subprocess.CalledProcessError, FileNotFoundError):
        return True


def tasks(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Task folder -> its notebook, for every folder with a task.toml."""
    found = {}
    for toml_path in sorted(root.glob("*/*/task.toml")):
        notebook = toml_path.parent / tomllib.loads(toml_path.read_text())["notebook"]
        if notebook.is_file():
            found[toml_path.parent.relative_to(root).as_posix()] = notebook
    return found


def record_codes(root: Path, task: str) -> set[str]:
    """The code hashes named by the committed records of `task` (subfolders included)."""
    codes = set()
    for path in (root / "results" / task).rglob("*.json"):
        code = (json.loads(path.read_text()).get("code") or {}).get("notebook_code_sha256")
        if code:
            codes.add(code)
    return codes


def proven(root: Path = REPO_ROOT) -> list[dict[str, str]]:
    """Every alias that git history proves now: a committed record's code that equals the notebook's code now but for
    comments, docstrings and layout."""
    found = []
    for task, notebook in tasks(root).items():
        now_code = code_cells(notebook.read_text())
        now = code_sha256(now_code)
        named = record_codes(root, task) - {now}
        if not named:
            continue
        versions = history(root, notebook)
        found += [{"task": task, "from": old, "to": now} for old in sorted(named)
                  if old in versions and same_but_comments(versions[old], now_code)]
    return found


def check(root: Path = REPO_ROOT, aliases: list[dict[str, str]] | None = None) -> list[str]:
    """What is wrong with the aliases (those of the committed file by default): one line per alias that history
    cannot find or that differs in more than comments, docstrings and layout."""
    aliases = load(root) if aliases is None else aliases
    notebooks, problems, cache = tasks(root), [], {}
    for alias in aliases:
        task = alias["task"]
        if task not in notebooks:
            problems.append(f"{task}: no such task")
            continue
        versions = cache.setdefault(task, history(root, notebooks[task]))
        missing = [side for side in ("from", "to") if alias[side] not in versions]
        if missing:
            problems.append(f"{task}: code {', '.join(alias[s][:12] for s in missing)} not found in git history")
        elif not same_but_comments(versions[alias["from"]], versions[alias["to"]]):
            problems.append(f"{task}: {alias['from'][:12]} -> {alias['to'][:12]} differs in more than comments")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="prove the committed aliases again; write nothing")
    args = parser.parse_args(argv)
    if shallow(REPO_ROOT):
        print("no full git history here (a shallow clone?): aliases can be neither proven nor checked")
        return 0 if args.check else 1
    if args.check:
        problems = check()
        print("\n".join(problems) or f"all {len(load())} aliases proven from git history")
        return 1 if problems else 0
    known = load()
    new = [a for a in proven() if a not in known]
    aliases = sorted(known + new, key=lambda a: (a["task"], a["to"], a["from"]))
    (REPO_ROOT / ALIASES).write_text(json.dumps({"what": WHAT, "aliases": aliases}, indent=1) + "\n")
    for alias in new:
        print(f"{alias['task']}: records of code {alias['from'][:12]} count as code {alias['to'][:12]} (comments only)")
    print(f"{len(new)} new, {len(aliases)} in all: {ALIASES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
