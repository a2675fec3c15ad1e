"""Run a notebook's own cells inside a unit test, so the test checks the code a learner reads, not a copy of it.

    namespace = run_tagged(NOTEBOOK, "model", at_least=6)

executes, in order, every code cell of NOTEBOOK whose metadata tags include "model", in one namespace, and returns
that namespace (the functions and classes the cells define). Tag the cells a test needs in the notebook
(cell metadata `"tags": [...]`), and keep them free of training and plotting.

    namespace = notebook_functions(NOTEBOOK, "ema_update", "ode_sample", namespace={"torch": torch, ...})

executes only the named top-level functions and classes (with their decorators) and UPPER_CASE constants
(`NORMS = {...}`), for cells that also train or plot.

    control = notebook_functions(NOTEBOOK, "q_sample", "ddim_sample", namespace={...},
                                 edits=[("q_sample", "alpha_bars[t].sqrt()", "alpha_bars[t]")])

does the same with a control's edit: each (name, old, new) replaces `old`, which must occur exactly once in the
notebook's `name`, so a control breaks loudly (ControlEditError, not an AssertionError) instead of passing once the
notebook changes. Functions that call the edited one find it in the same namespace, so they use the broken version.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import nbformat

from common import pick


def cell_sources(notebook: Path, tag: str | None = None,
                 select: Callable[[str], bool] | None = None) -> list[str]:
    """The sources of the code cells tagged `tag` (or, with `select`, those whose source it accepts), in order."""
    nb = nbformat.read(notebook, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"
            and (tag is None or tag in c.metadata.get("tags", []))
            and (select is None or select(c.source))]


def setup_and_config(notebook: Path, edit_config: Callable[[str], str] = lambda source: source) -> list[str]:
    """The sources of the notebook's Setup cell (the one that reads the preset) and its Config cell (the one that
    defines `class Config`), the latter passed through `edit_config`: run them first to get `cfg` as the notebook
    would, in the preset `DL_PRESET` names."""
    setup = cell_sources(notebook, select=lambda s: "PRESET = get_preset()" in s)
    config = cell_sources(notebook, select=lambda s: "class Config" in s)
    assert len(setup) == len(config) == 1, f"{notebook.name}: Setup or Config cell not found"
    return [setup[0], edit_config(config[0])]


def module_source(notebook: Path) -> str:
    """The notebook's code cells as one module, shell and magic lines (`!pip`, `%matplotlib`) left out."""
    return "\n".join(line for source in cell_sources(notebook) for line in source.splitlines()
                     if not line.lstrip().startswith(("!", "%")))


def run_sources(sources: list[str], notebook: Path, namespace: dict | None = None) -> dict:
    """Execute `sources` one after the other in `namespace` (a new one by default) and return it."""
    namespace = {} if namespace is None else namespace
    for source in sources:
        exec(compile(source, str(notebook), "exec"), namespace)  # noqa: S102 - the repository's own notebook
    return namespace


def run_tagged(notebook: Path, tag: str, *, count: int | None = None, at_least: int = 1,
               namespace: dict | None = None, preset: str | None = None) -> dict:
    """Execute the code cells tagged `tag` (exactly `count` of them if given, else at least `at_least`); with
    `preset`, under DL_PRESET=preset on the CPU (DL_DEVICE=cpu), the environment restored afterwards."""
    sources = cell_sources(notebook, tag)
    if count is not None:
        assert len(sources) == count, f"{notebook.name}: {len(sources)} code cells tagged `{tag}`, expected {count}"
    assert len(sources) >= at_least, f"expected at least {at_least} code cells tagged `{tag}` in {notebook.name}"
    env = {} if preset is None else {"DL_PRESET": preset, "DL_DEVICE": "cpu"}
    with mock.patch.dict(os.environ, env):
        return run_sources(sources, notebook, namespace)


class ControlEditError(LookupError):
    """What a test asked of the notebook's code is not there as asked: a control's edit (or a name, or a literal)
    that no longer matches the notebook. Not an AssertionError, so that a test expecting its control to fail a check
    (`pytest.raises(AssertionError)`) cannot mistake a stale edit for that."""


def _all_definitions(notebook: Path) -> dict[str, tuple[str, ...]]:
    """The source of every top-level function, class (decorators included) and UPPER_CASE constant assignment of
    the notebook's code cells, by name (a tuple: a name may be defined more than once), in the order of first
    definition. Read once per version of the file (a test that builds twenty controls reads a notebook of megabytes
    once)."""
    stat = Path(notebook).stat()
    return _definitions(str(Path(notebook).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _definitions(notebook: str, mtime_ns: int, size: int) -> dict[str, tuple[str, ...]]:
    """_all_definitions of the file as it is at (mtime_ns, size): the cache's key, so an edited file is read again."""
    source = "\n".join(cell_sources(Path(notebook)))
    lines = source.split("\n")
    sources: dict[str, tuple[str, ...]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name, start = node.name, min([d.lineno for d in node.decorator_list] + [node.lineno])
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id.isupper()):
            name, start = node.targets[0].id, node.lineno
        else:
            continue
        sources[name] = sources.get(name, ()) + ("\n".join(lines[start - 1:node.end_lineno]),)
    return sources


def notebook_functions(notebook: Path, *names: str, namespace: dict | None = None,
                       edits: Sequence[tuple[str, str, str]] = ()) -> dict:
    """Execute the notebook's top-level functions, classes (decorators included) and UPPER_CASE constants `names` in
    `namespace` (the modules they use; a new one by default) and return it. Each edit (name, old, new) first replaces
    the one occurrence of `old` in `name`'s source by `new` (a control, broken in exactly that way)."""
    definitions = _all_definitions(notebook)
    if not set(names) <= set(definitions):
        raise ControlEditError(f"not found in {notebook.name}: {set(names) - set(definitions)}")
    twice = sorted(name for name in names if len(definitions[name]) > 1)
    if twice:  # e.g. a deliberately broken twin defined later for a demonstration: which one is meant is unclear
        raise ControlEditError(f"defined more than once in {notebook.name}: {twice}; take the one meant by its cell")
    chunks = {name: sources[0] for name, sources in definitions.items() if name in names}  # in the notebook's order
    for name, old, new in edits:
        if name not in chunks:
            raise ControlEditError(f"the edit of `{name}` names a function that is not executed: {names}")
        count = chunks[name].count(old)
        if count != 1:
            raise ControlEditError(f"the control's edit expects {old!r} once in {notebook.name}'s `{name}`, "
                                   f"found {count}")
        chunks[name] = chunks[name].replace(old, new)
    code = "from __future__ import annotations\n" + "\n\n".join(chunks.values())
    return run_sources([code], notebook, namespace)


def notebook_literal(notebook: Path, name: str) -> object:
    """The value of the notebook's top-level UPPER_CASE constant `name = <literal>` (a dict, tuple, ... of constants),
    read without running its cell."""
    sources = _all_definitions(notebook).get(name, ())
    if len(sources) != 1:
        raise ControlEditError(f"{notebook.name}: {len(sources)} top-level definitions of {name}, expected 1")
    [node] = ast.parse(sources[0]).body
    return ast.literal_eval(node.value)


def preset_config(notebook: Path, preset: str, namespace: dict | None = None) -> object:
    """An instance of the notebook's `Config` as the preset `preset` sets it, its fields evaluated in `namespace`
    (the names they read besides `dataclass` and `pick`, e.g. {"device": torch.device("cpu")})."""
    names = {"dataclass": dataclasses.dataclass, "pick": functools.partial(pick, preset=preset), **(namespace or {})}
    return notebook_functions(notebook, "Config", namespace=names)["Config"]()
