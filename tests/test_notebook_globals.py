"""House style: a notebook's functions take `cfg` or explicit arguments and never read the notebook's variables.

A function that reads a variable the notebook assigns at its top level (`cfg`, `device`, `x_train`, ...) works only
in that notebook, in that order of cells, and hides what it depends on. Read here: any name a function (or a
function nested in it) loads that is none of its own arguments or locals, nor those of an enclosing function, and
that the notebook assigns at its top level. Allowed: the notebook's functions, classes and imports, and constants
(UPPER_CASE names, assigned once: not twice, not by a loop).

Every notebook passes: the last offenders (the MLP's `standardise`, `get_batch`, `train_hand` and `replay_autograd`,
which read its data splits) were fixed on 2026-11-29, and the list of known exceptions that this test carried until
then is gone. `test_the_check_sees_a_function_reading_a_notebook_variable_and_nothing_else` is the control: it shows the
reader catching each kind of read, and the MLP notebook before 2026-11-29 failed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from notebook_cells import module_source
from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = load_script("notebook_header").task_notebooks()  # every task's notebook and the template's


def is_constant(name: str) -> bool:
    """UPPER_CASE (digits and underscores allowed): a constant by convention, e.g. PAD, GPT2_SPLIT, RGB_TO_YIQ."""
    return name.upper() == name and any(c.isalpha() for c in name)


def top_level_variables(tree: ast.Module) -> set[str]:
    """Names the module assigns at its top level (loops, `with` targets and walrus included), but not its functions
    and classes (even where a cell rebinds one), imports and constants."""
    stores: dict[str, int] = {}  # how often each name is bound: an UPPER_CASE name bound twice, or by a loop, varies
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                stores[sub.id] = stores.get(sub.id, 0) + 1
            if isinstance(sub, (ast.For, ast.AsyncFor, ast.comprehension)):
                for target in ast.walk(sub.target):
                    if isinstance(target, ast.Name):
                        stores[target.id] = stores.get(target.id, 0) + 1  # rebound at every iteration
    names = {name for name, count in stores.items() if not is_constant(name) or count > 1}
    return names - defined  # a function swapped for another and back (mlp_backprop's broken-gradient control)


def bound_in(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    """The names a function binds itself: its arguments and every name it assigns, imports or defines."""
    args = function.args
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    for sub in ast.walk(function):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            names.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not function:
            names.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)  # a lambda's or comprehension's arguments
    return names


def offenders(source: str) -> dict[str, set[str]]:
    """{function (nested ones as outer.inner): the top-level variables it reads} for one notebook's code."""
    tree = ast.parse(source)
    variables = top_level_variables(tree)
    found: dict[str, set[str]] = {}

    def visit(node: ast.AST, path: str, enclosing: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path}.{child.name}" if path else child.name
                bound = enclosing | bound_in(child)
                inner = {n for f in ast.walk(child) if f is not child and isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                         for n in ast.walk(f)}
                loads = {n.id for n in ast.walk(child) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                         and n not in inner}
                read = (loads & variables) - bound
                if read:
                    found[name] = read
                visit(child, name, bound)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{path}.{child.name}" if path else child.name, enclosing)
            else:
                visit(child, path, enclosing)

    visit(tree, "", set())
    return found


def test_the_check_sees_a_function_reading_a_notebook_variable_and_nothing_else() -> None:
    """The control: `cfg` read inside a function is found (also from a nested function, and in a class's method);
    arguments, locals, an enclosing function's names, constants, functions and imports are not."""
    source = """
import torch
THRESHOLD = 3
cfg = object()
device = torch.device("cpu")
for name in ("a", "b"):
    pass

def helper(x):
    return x

broken = helper
def helper(x):
    return -x
helper = broken

def good(cfg, x):
    y = helper(x) + THRESHOLD
    def inner(z):
        return z + y + cfg.lr
    return inner, [name for name in ("c",)], (lambda device: device)(1)

def bad(x):
    return x * cfg.lr

def outer(name):
    def run(recipe):
        return recipe, name, device
    return run

class Model:
    def forward(self, x):
        return x.to(device)

MODE = "a"
def uses_mode():
    return MODE
MODE = "b"
for T in (1, 2):
    pass
def uses_t():
    return T + THRESHOLD
"""
    assert offenders(source) == {"bad": {"cfg"}, "outer.run": {"device"}, "Model.forward": {"device"},
                                 "uses_mode": {"MODE"}, "uses_t": {"T"}}  # UPPER_CASE, but rebound: not constants


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS])
def test_no_function_reads_the_notebooks_variables(notebook: Path) -> None:
    task = notebook.parent.relative_to(REPO_ROOT).as_posix()
    found = offenders(module_source(notebook))
    assert not found, f"{task}: functions reading the notebook's variables (pass them as arguments): {found}"
