"""The house style of CONTRIBUTING.md that a parser can check, in every task notebook's code cells and the template's:

- every field of a `Config` dataclass carries a comment (its meaning or unit), on one of its lines or on a
  comment-only line directly above it;
- every statement that reshapes or joins arrays (a call of a method in SHAPE_OPS) carries a comment, on one of its
  lines or on a comment-only line directly above, that says the shapes, e.g. `# (B, T, C) -> (B, nh, T, hs)`; for a
  compound statement (def, for, if, with, ...) its head counts: decorators, arguments, the loop's iterable;
- no function is longer than FUNCTION_LINES lines (CONTRIBUTING: "under ~40 lines").

The same rules hold for the Python files in task folders (the data-parallel notebook writes its script parts, strings
in its cells, to dp_train.py, committed beside it), with one listed exception that must stay true while listed.

Each check is paired with a control: a cell broken in exactly that way, which the check reports. What a parser cannot
judge is left to review: whether a comment says the right shapes (any comment counts, even a section heading directly
above), attribute forms (`.T`, `x[:, None]`) and broadcasting (`expand`, `repeat`), which are not in SHAPE_OPS, and
whether a flagged call (matplotlib's `axes.flatten()`, say) is about arrays at all (it is commented all the same).
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from test_conventions import REPO_ROOT, TASK_DIRS, TEMPLATE, _ids

NOTEBOOKS = [next(d.glob("*.ipynb")) for d in [*TASK_DIRS, TEMPLATE]]
SCRIPTS = sorted(p for d in TASK_DIRS for p in d.glob("*.py"))
# Known breaks, each with its reason; the test fails when one no longer happens, so the list cannot go stale.
EXCEPTIONS = {
    ("text_generation/data_parallel/dp_train.py", "function `train` has 71 lines (at most 45)"):
        "one torchrun worker's whole training; splitting it changes the notebook's code, so it waits for the "
        "notebook's next rerun (its H200 `full` record is of the current code)",
}
SHAPE_OPS = {"reshape", "view", "flatten", "unflatten", "permute", "transpose", "movedim", "swapaxes", "squeeze",
             "unsqueeze", "einsum", "cat", "concat", "concatenate", "stack", "hstack", "vstack"}
FUNCTION_LINES = 45  # "under ~40 lines": the tilde's allowance; the longest lesson functions now have 43


def parse_cell(source: str) -> tuple[ast.Module, set[int], set[int]]:
    """A code cell's syntax tree, the lines that hold a comment and the lines that hold only one (1-based). IPython's
    magics and shell lines are blanked first."""
    text = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    comments, only = set(), set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments.add(tok.start[0])
            if not tok.line[:tok.start[1]].strip():
                only.add(tok.start[0])
    return ast.parse(text), comments, only


def commented(first: int, last: int, comments: set[int], only: set[int]) -> bool:
    """A comment on one of the lines first..last, or on a comment-only line directly above them."""
    return bool(set(range(first, last + 1)) & comments) or first - 1 in only


BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def statement_heads(tree: ast.Module):
    """(statement, the nodes of its own lines, first line, last line) for every statement: a simple statement whole;
    a compound one (def, for, if, with, ...) by its header alone (decorators, arguments, the loop's iterable, the
    condition, ...), since its body's statements come on their own."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        if not hasattr(node, "body"):
            yield node, [node], node.lineno, node.end_lineno
            continue
        parts = [value for field, value in ast.iter_fields(node) if field not in BODIES]
        nodes = [n for part in parts for n in (part if isinstance(part, list) else [part]) if isinstance(n, ast.AST)]
        yield node, nodes, min([node.lineno] + [getattr(n, "lineno", node.lineno) for n in nodes]), node.body[0].lineno - 1


def style_problems(source: str) -> list[str]:
    """What one code cell breaks of the rules above, one line per problem (none for a cell that a cell magic such
    as %%bash makes something other than Python)."""
    if source.lstrip().startswith("%%"):
        return []
    tree, comments, only = parse_cell(source)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            problems += [f"Config field `{f.target.id}` has no comment" for f in node.body
                         if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)
                         and not commented(f.lineno, f.end_lineno, comments, only)]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > FUNCTION_LINES:
                problems.append(f"function `{node.name}` has {length} lines (at most {FUNCTION_LINES})")
    for stmt, nodes, first, last in statement_heads(tree):
        ops = sorted({c.func.attr for n in nodes for c in ast.walk(n) if isinstance(c, ast.Call)
                      and isinstance(c.func, ast.Attribute) and c.func.attr in SHAPE_OPS})
        if ops and not commented(first, last, comments, only):
            problems.append(f"line {first}: {', '.join(ops)} without a comment on the shapes")
    return problems


def notebook_problems(path: Path, check: Callable[[str], list[str]]) -> list[str]:
    """What `check` (one code cell's source -> its problems) reports in every code cell of a notebook, each line
    prefixed with its cell's id."""
    nb = nbformat.read(path, as_version=4)
    return [f"cell {cell.get('id')}: {p}" for cell in nb.cells if cell.cell_type == "code" for p in check(cell.source)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_code_follows_the_house_style(path: Path) -> None:
    problems = notebook_problems(path, style_problems)
    assert not problems, "\n".join(problems)


def unexplained_and_stale(name: str, source: str, exceptions: dict) -> tuple[list[str], list[str]]:
    """A task script's problems not in `exceptions`, and the exceptions listed for it that no longer happen."""
    problems = set(style_problems(source))
    known = {problem for (file, problem) in exceptions if file == name}
    return sorted(problems - known), sorted(known - problems)


@pytest.mark.parametrize("path", SCRIPTS, ids=_ids(SCRIPTS))
def test_task_scripts_follow_the_house_style(path: Path) -> None:
    unexplained, stale = unexplained_and_stale(path.relative_to(REPO_ROOT).as_posix(), path.read_text(), EXCEPTIONS)
    assert not unexplained, "\n".join(unexplained)
    assert not stale, f"no longer true, remove from EXCEPTIONS: {stale}"


def test_a_listed_exception_that_no_longer_happens_is_reported() -> None:
    """Control: the listed long function shortened; and a second long function, not listed."""
    exceptions = {("pkg/run.py", "function `train` has 46 lines (at most 45)"): "a reason"}
    long_train = "def train():\n" + "    pass\n" * 45
    assert unexplained_and_stale("pkg/run.py", long_train, exceptions) == ([], [])
    assert unexplained_and_stale("pkg/run.py", "def train():\n    pass\n", exceptions) == (
        [], ["function `train` has 46 lines (at most 45)"])
    assert unexplained_and_stale("pkg/run.py", long_train + long_train.replace("train", "evaluate"), exceptions) == (
        ["function `evaluate` has 46 lines (at most 45)"], [])


GOOD = '''
@dataclass
class Config:
    lr: float = 3e-4  # peak learning rate after warm-up
    # (name, changes) pairs, each trained from scratch
    ablations: tuple = (
        ("baseline", {}),
    )


def heads(x, nh):
    b, t, c = x.shape
    y = x.view(b, t, nh, c // nh).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
    # (B, nh, T, hs) -> (B, T, C)
    z = y.transpose(1, 2).reshape(b, t, c)
    for row in z.unbind(0):
        pass
    return torch.cat([y.flatten(1), z.flatten(1)], 1)  # (B, nh T hs) twice -> (B, 2 nh T hs)


@torch.no_grad()
def total(x):
    for row in x.view(len(x), -1):  # (B, ...) -> (B, D)
        x = row
    return x
'''


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("lr: float = 3e-4  # peak learning rate after warm-up", "lr: float = 3e-4", "field `lr` has no comment"),
    ("    # (name, changes) pairs, each trained from scratch\n", "", "field `ablations` has no comment"),
    ("  # (B, T, C) -> (B, nh, T, hs)", "", "line 13: transpose, view without a comment"),
    ("    # (B, nh, T, hs) -> (B, T, C)\n", "", "line 14: reshape, transpose without a comment"),
    ("  # (B, nh T hs) twice -> (B, 2 nh T hs)", "", "line 18: cat, flatten without a comment"),
    ("    return torch.cat([y.flatten(1), z.flatten(1)], 1)  # (B, nh T hs) twice -> (B, 2 nh T hs)",
     "    w = z  # (B, nh T hs) twice -> (B, 2 nh T hs)\n    return torch.cat([y.flatten(1), z.flatten(1)], 1)",
     "line 19: cat, flatten without a comment"),
    ("    b, t, c = x.shape\n", "    b, t, c = x.shape\n" + "    pass\n" * 38, "function `heads` has 46 lines"),
    ("  # (B, ...) -> (B, D)", "", "line 23: view without a comment"),
    ("def total(x):", "def total(x=torch.zeros(2, 3).flatten()):", "line 21: flatten without a comment"),  # a def's head starts at its decorator
], ids=["field", "field-above", "view", "reshape-above", "cat", "comment-a-line-too-high", "long-function",
        "loop-header", "default-argument"])
def test_the_style_check_reports_each_broken_rule(old: str, new: str, problem: str) -> None:
    assert style_problems(GOOD) == []
    assert GOOD.count(old) == 1
    problems = style_problems(GOOD.replace(old, new))
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_style_check_reads_a_cell_with_magics() -> None:
    assert style_problems("%matplotlib inline\n!pip list\ny = x.view(2, 3)\n") == [
        "line 3: view without a comment on the shapes"]
    assert style_problems("%%bash\nfor f in *.py; do echo $f; done\n") == []  # not Python: nothing to parse
