"""Each task's requirements.txt lists exactly what its notebook imports, with the root requirements' bounds.

A notebook opened alone (e.g. in Colab) installs `common` and its task's requirements.txt, nothing else, so a
missing line there is an ImportError for a learner; a bound that differs from the root file's is a version
nobody tested. `common`'s own dependencies (pyproject.toml) follow the same rule.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import notebook_header  # noqa: E402

update_readme = notebook_header.update_readme  # tomllib (tomli on Python 3.10)

LOCAL = {"common"}  # this repository's package: installed by the setup cell, not by requirements.txt
IMPORT_TO_DIST = {  # import name -> distribution name on PyPI; add a line when a notebook imports something new
    "torch": "torch", "torchvision": "torchvision", "torchaudio": "torchaudio", "numpy": "numpy",
    "matplotlib": "matplotlib", "tqdm": "tqdm", "scipy": "scipy", "sklearn": "scikit-learn", "PIL": "pillow",
    "pandas": "pandas", "einops": "einops", "yaml": "pyyaml", "cv2": "opencv-python", "skimage": "scikit-image",
    "tomli": "tomli", "packaging": "packaging", "num2words": "num2words", "gymnasium": "gymnasium",
}
NOTEBOOKS = notebook_header.task_notebooks()


def imported_modules(source: str) -> set[str]:
    """The top-level names of the absolute imports in `source` (anywhere: module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports(nb) -> set[str]:
    """The notebook's imports that are neither the standard library nor this repository's `common`."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return {n for n in imported_modules(code) if n not in sys.stdlib_module_names and n not in LOCAL
            and n != "__future__"}


def parse_requirements(lines: list[str]) -> dict[str, Requirement]:
    """Canonical distribution name -> requirement; comments, blank lines and pip options (`-e .`) skipped."""
    out = {}
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def read_requirements(path: Path) -> dict[str, Requirement]:
    return parse_requirements(path.read_text().splitlines())


ROOT_REQUIREMENTS = read_requirements(REPO_ROOT / "requirements.txt")


NEWER_APIS = {  # an import that needs a newer version than the root's floor -> (distribution, the first version with it)
    "from torch.distributed.fsdp import fully_shard": ("torch", "2.6"),  # FSDP2 public from 2.6 (2.4-2.5: _composable)
}


def lower_bound(req: Requirement) -> Version | None:
    """The version of a requirement's `>=` bound, if that is its only bound."""
    specs = list(req.specifier)
    return Version(specs[0].version) if len(specs) == 1 and specs[0].operator == ">=" else None


def bound_problems(reqs: dict[str, Requirement], root: dict[str, Requirement], where: str) -> list[str]:
    """Every requirement must be in the root file, with the same version bounds and markers, except that a task may
    raise a `>=` floor (a newer API its code needs: NEWER_APIS)."""
    problems = []
    for name, req in sorted(reqs.items()):
        if name not in root:
            problems.append(f"{where} lists {name}, which the root requirements.txt lacks")
            continue
        same = (req.specifier, str(req.marker or "")) == (root[name].specifier, str(root[name].marker or ""))
        floor, root_floor = lower_bound(req), lower_bound(root[name])
        raised = (floor is not None and root_floor is not None and floor > root_floor
                  and str(req.marker or "") == str(root[name].marker or ""))
        if not (same or raised):
            problems.append(f"{where}: {req} differs from the root requirements.txt's {root[name]}")
    return problems


def api_problems(nb, reqs: dict[str, Requirement]) -> list[str]:
    """An import listed in NEWER_APIS needs a floor at least as new as the version that introduced it."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    problems = []
    for line, (dist, version) in NEWER_APIS.items():
        req = reqs.get(canonicalize_name(dist))
        floor = lower_bound(req) if req is not None else None
        if line in code and (floor is None or floor < Version(version)):
            problems.append(f"the notebook has `{line}`, which needs {dist}>={version}; requirements.txt says {req}")
    return problems


def requirement_problems(nb, reqs: dict[str, Requirement], root: dict[str, Requirement]) -> list[str]:
    """What is wrong with `reqs` (a task's requirements.txt) for the notebook `nb`."""
    problems, needed = [], set()
    for module in sorted(third_party_imports(nb)):
        dist = IMPORT_TO_DIST.get(module)
        if dist is None:
            problems.append(f"the notebook imports {module}: add its distribution to IMPORT_TO_DIST in this test")
            continue
        needed.add(canonicalize_name(dist))
        if canonicalize_name(dist) not in reqs:
            problems.append(f"the notebook imports {module}, but requirements.txt lacks {dist}")
    problems += [f"requirements.txt lists {name}, which the notebook does not import" for name in sorted(reqs)
                 if name not in needed]
    return problems + bound_problems(reqs, root, "requirements.txt") + api_problems(nb, reqs)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS])
def test_task_requirements_match_the_notebook_and_the_root_bounds(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    problems = requirement_problems(nb, read_requirements(notebook.parent / "requirements.txt"), ROOT_REQUIREMENTS)
    assert not problems, "\n".join(problems)


def test_common_declares_what_it_imports_with_the_root_bounds() -> None:
    """`pip install git+<repository>` (the setup cell) must bring what `common` itself imports."""
    deps = parse_requirements(update_readme.tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
                              ["project"]["dependencies"])
    code = "\n".join(p.read_text() for p in sorted((REPO_ROOT / "common").glob("*.py")))
    needed = {canonicalize_name(IMPORT_TO_DIST[m]) for m in imported_modules(code)
              if m not in sys.stdlib_module_names and m not in LOCAL and m != "__future__"}
    assert set(deps) == needed, f"pyproject.toml's dependencies {sorted(deps)} != what common imports {sorted(needed)}"
    assert not bound_problems(deps, ROOT_REQUIREMENTS, "pyproject.toml")


def synthetic_notebook() -> nbformat.NotebookNode:
    """A notebook with the generated setup cell (it imports importlib, subprocess, sys), common, and three packages."""
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Setup"),
        nbformat.v4.new_code_cell(notebook_header.setup_cell_source("image_generation/demo")),
        nbformat.v4.new_code_cell("import os\nimport numpy as np\nimport torch.nn.functional as F\nimport common\n"
                                  "from common.fid import fid\nfrom dataclasses import dataclass"),
        nbformat.v4.new_code_cell("def f():\n    from sklearn.linear_model import LogisticRegression\n"
                                  "    return LogisticRegression"),
    ])


def test_the_checker_fails_when_a_requirement_is_missing_extra_or_differently_bounded() -> None:
    nb = synthetic_notebook()
    root = parse_requirements(["torch>=2.3,<=2.14.1", "numpy>=1.24", "scikit-learn>=1.3", "tqdm>=4.65", "-e ."])
    full = ["torch>=2.3,<=2.14.1", "numpy>=1.24", "scikit-learn>=1.3  # a comment"]
    assert third_party_imports(nb) == {"numpy", "torch", "sklearn"}  # the setup cell and common do not count
    assert requirement_problems(nb, parse_requirements(full), root) == []
    removed = requirement_problems(nb, parse_requirements(full[:2]), root)
    assert removed == ["the notebook imports sklearn, but requirements.txt lacks scikit-learn"]
    extra = requirement_problems(nb, parse_requirements(full + ["tqdm>=4.65"]), root)
    assert extra == ["requirements.txt lists tqdm, which the notebook does not import"]
    unbounded = requirement_problems(nb, parse_requirements(["torch>=2.3"] + full[1:]), root)
    assert len(unbounded) == 1 and "torch>=2.3 differs" in unbounded[0]
    nb.cells.append(nbformat.v4.new_code_cell("import mystery_package"))
    assert any("mystery_package" in p for p in requirement_problems(nb, parse_requirements(full), root))


def upper_bounded(reqs: dict[str, Requirement]) -> list[str]:
    """The requirements that cap a version (<, <=, ==, ~=, ===)."""
    return [str(r) for r in reqs.values() if any(s.operator in ("<", "<=", "==", "~=", "===") for s in r.specifier)]


def test_upper_bounds_live_only_in_the_constraints_file() -> None:
    """What a notebook's Colab cell installs (its requirements.txt, `common`'s dependencies) has lower bounds only,
    so an installed newer torch (Colab's) satisfies it; the caps that make CI reproducible are in constraints.txt,
    which the root requirements.txt applies."""
    task_files = sorted(REPO_ROOT.glob("*/*/requirements.txt"))
    assert task_files
    for path in task_files:
        assert not upper_bounded(read_requirements(path)), path
    deps = parse_requirements(update_readme.tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
                              ["project"]["dependencies"])
    assert not upper_bounded(deps) and not upper_bounded(ROOT_REQUIREMENTS)
    assert "-c constraints.txt" in (REPO_ROOT / "requirements.txt").read_text().splitlines()
    caps = read_requirements(REPO_ROOT / "constraints.txt")
    assert {"torch", "torchvision"} <= set(caps) and set(upper_bounded(caps)) == {str(r) for r in caps.values()}
    for name, cap in caps.items():  # a cap never excludes the lower bound it caps
        low = [s.version for s in ROOT_REQUIREMENTS[name].specifier if s.operator == ">="]
        assert all(cap.specifier.contains(v) for v in low), (name, low, cap)


def readme_start_commands() -> list[str]:
    """The shell commands of the README's "Start" section, in order (the lines of its ```bash blocks)."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.split("\n## Start\n", 1)[1].split("\n## ", 1)[0]
    blocks = start.split("```bash\n")[1:]
    return [line.split("#", 1)[0].strip() for block in blocks for line in block.split("```", 1)[0].splitlines()
            if line.split("#", 1)[0].strip()]


def test_the_readme_start_uses_a_venv_and_offers_the_cpu_build_within_the_constraints() -> None:
    """A system Python refuses `pip install` (PEP 668), so a virtual environment comes before any install; on a
    Linux machine without an NVIDIA GPU, PyPI's torch is the CUDA build (several GB), so the start offers PyTorch's
    CPU-only build first, within constraints.txt (as CI installs it), so that the requirements keep it."""
    commands = readme_start_commands()
    installs = [i for i, c in enumerate(commands) if "pip install" in c]
    venv = [i for i, c in enumerate(commands) if "-m venv .venv" in c and ". .venv/bin/activate" in c]
    assert installs and venv and venv[0] < installs[0], commands
    cpu = [c for c in commands if "https://download.pytorch.org/whl/cpu" in c]
    assert len(cpu) == 1, commands
    requirements = [i for i, c in enumerate(commands) if "pip install -r requirements.txt" in c]
    assert requirements and commands.index(cpu[0]) < requirements[0]  # the CPU build first, then the rest
    words = cpu[0].split()
    assert words[:2] == ["pip", "install"] and {"torch", "torchvision"} <= set(words)
    assert "-c constraints.txt" in cpu[0] and "--index-url https://download.pytorch.org/whl/cpu" in cpu[0]
    ci = (REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text()
    ci_cpu = [line.split("run:", 1)[1].split() for line in ci.splitlines()
              if "run:" in line and "download.pytorch.org/whl/cpu" in line]
    assert len(ci_cpu) == 1 and sorted(ci_cpu[0][ci_cpu[0].index("install") + 1:]) == sorted(words[2:])
    caps = read_requirements(REPO_ROOT / "constraints.txt")
    for name in ("torch", "torchvision"):  # the CPU build's local version (2.14.1+cpu) is within its cap
        top = next(s.version for s in caps[name].specifier if s.operator == "<=")
        assert caps[name].specifier.contains(f"{top}+cpu") and ROOT_REQUIREMENTS[name].specifier.contains(f"{top}+cpu")


def test_a_newer_api_needs_a_raised_floor_and_only_a_raised_floor_may_differ() -> None:
    """The data-parallel notebook imports FSDP2 from its public path (torch 2.6): a torch>=2.3 bound must fail, the
    raised torch>=2.6 must pass, and a lowered or capped bound still differs from the root's."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import torch\nfrom torch.distributed.fsdp import fully_shard")])
    root = parse_requirements(["torch>=2.3"])
    old = requirement_problems(nb, parse_requirements(["torch>=2.3"]), root)
    assert len(old) == 1 and "needs torch>=2.6" in old[0], old
    assert requirement_problems(nb, parse_requirements(["torch>=2.6"]), root) == []
    assert bound_problems(parse_requirements(["torch>=2.2"]), root, "r") != []
    assert bound_problems(parse_requirements(["torch>=2.6,<3"]), root, "r") != []
