"""The generated notebook header (scripts/notebook_header.py): Colab badge, setup cell, "Next" line.

The setup cell must do nothing and print nothing where `common` is importable (a clone, these tests), and, where
it is not (Colab), install `common` and the task's requirements.txt from the repository's one address, at the branch
the Colab badge opens, and say which commit it installed.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import notebook_header  # noqa: E402

from common import preset  # noqa: E402

update_readme = notebook_header.update_readme
NOTEBOOKS = notebook_header.task_notebooks()
IDS = [p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_every_task_notebook_has_the_current_header(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    folder = notebook.parent.relative_to(REPO_ROOT).as_posix()
    fresh = copy.deepcopy(nb)
    changed = notebook_header.apply_header(fresh, folder, notebook_header.read_meta(folder), notebook_header.read_meta)
    assert not changed, f"the header is missing or stale: run `python scripts/notebook_header.py {folder}/{notebook.name}`"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code.source == notebook_header.setup_cell_source(folder), "the setup cell must be the first code cell"
    assert nb.cells[0].source.startswith(update_readme.colab_badge(f"{folder}/{notebook.name}"))


RUN_SETUP_CELLS = r"""
import contextlib, io, json, sys, traceback
sources, results = json.load(open(sys.argv[1])), {}
for folder, source in sources.items():  # each in a fresh namespace, its own output captured
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(source, f"setup cell of {folder}", "exec"), {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc()
    results[folder] = [out.getvalue(), err.getvalue()]
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def setup_cell_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """Every task's setup cell, run one after another in one Python process (the repository's interpreter), outside
    the repository, like a kernel would: folder -> [what it printed, what it wrote to stderr]. One process rather than
    one per notebook: each new process spent about 3.5 s importing torch. The first cell imports `common`; what that
    import itself prints (a warning, say) is therefore charged to the first notebook, or, if written below Python's
    sys.stdout (by C code), to the process's own output, which every notebook's test checks too."""
    assert importlib.util.find_spec("common") is not None, "this test needs the repository installed (pip install -e .)"
    work = tmp_path_factory.mktemp("setup_cells")
    sources = {folder: notebook_header.setup_cell_source(folder) for folder in IDS}
    (work / "sources.json").write_text(json.dumps(sources))
    proc = subprocess.run([sys.executable, "-c", RUN_SETUP_CELLS, "sources.json", "results.json"], cwd=work,
                          capture_output=True, text=True, timeout=120)
    return proc, (json.loads((work / "results.json").read_text()) if proc.returncode == 0 else {})


@pytest.mark.parametrize("folder", IDS)
def test_the_setup_cell_prints_nothing_where_common_is_importable(folder: str, setup_cell_outputs) -> None:
    proc, results = setup_cell_outputs
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), "the process running the setup cells"
    assert results[folder] == ["", ""], f"the setup cell of {folder} printed something"


def test_a_setup_cell_that_prints_is_caught(tmp_path: Path) -> None:
    """The runner above reports a cell's output and its errors, so the test above can fail."""
    sources = {"a": "print('installing')", "b": "import sys; print('x', file=sys.stderr)", "c": "raise ValueError('no')"}
    (tmp_path / "sources.json").write_text(json.dumps(sources))
    proc = subprocess.run([sys.executable, "-c", RUN_SETUP_CELLS, "sources.json", "results.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    results = json.loads((tmp_path / "results.json").read_text())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert results["a"] == ["installing\n", ""] and results["b"] == ["", "x\n"]
    assert results["c"][0] == "" and "ValueError: no" in results["c"][1]


def run_without_common(source: str, monkeypatch: pytest.MonkeyPatch, returncode: int = 0,
                       hidden: tuple[str, ...] = ()) -> list[tuple[list[str], str]]:
    """Execute `source` as if `common` (and the modules in `hidden`) were not installed, with pip replaced by a
    recorder; returns each pip command with the text of its constraints file."""
    real_find_spec, calls = importlib.util.find_spec, []
    missing = {"common", *hidden}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name, *a))

    def fake_run(cmd, **kwargs):
        constraints = Path(cmd[cmd.index("-c") + 1]).read_text() if "-c" in cmd else ""
        calls.append((cmd, constraints))
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(compile(source, "setup-cell", "exec"), {})
    return calls


def installed(cmd: list[str]) -> list[str]:
    """The requirements a pip command installs (its arguments after `install`, options and their values dropped)."""
    args = cmd[cmd.index("install") + 1:]
    return [a for i, a in enumerate(args) if not a.startswith("-") and not (i and args[i - 1] in ("-c", "-r"))]


def test_the_setup_cell_installs_common_from_the_badges_branch_and_the_task_requirements_where_common_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    folder = "image_generation/vae"
    commit = "0123456789abcdef0123456789abcdef01234567"
    direct_url = json.dumps({"url": "https://github.com/x/y", "vcs_info": {"vcs": "git", "commit_id": commit}})
    real = importlib.metadata.distribution
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: SimpleNamespace(
        read_text=lambda file: direct_url if file == "direct_url.json" else None)
        if name == notebook_header.PACKAGE_ID else real(name))
    monkeypatch.setattr(preset, "_announced", False)
    monkeypatch.setenv("DL_PRESET", "quick")
    monkeypatch.setenv("DL_CHECKPOINT_DIR", "/content/checkpoints")
    calls = run_without_common(notebook_header.setup_cell_source(folder), monkeypatch, hidden=notebook_header.KEPT)
    printed = capsys.readouterr()
    repo, ref = update_readme.repository_url(), update_readme.branch()
    assert ref == "main" and notebook_header.install_ref() == ref  # the branch the badges open, not a tag
    lines = printed.out.splitlines()
    assert printed.err == "" and len(lines) == 4 and f"at {ref}," in lines[0], printed.out
    assert lines[1] == f"Installed `common` at commit {commit} of {ref}."  # pip's record of what it installed
    assert lines[2] == "Preset: quick (DL_PRESET is set)."  # which preset will run, and why
    assert "/content/checkpoints" in lines[3] and "drive.mount('/content/drive')" in lines[3]
    assert "os.environ['DL_CHECKPOINT_DIR'] = '/content/drive/" in lines[3] and "resume=True" in lines[3]
    assert len(calls) == 1
    cmd, constraints = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert f"git+{repo}@{ref}" in cmd
    requirements = notebook_header.task_requirements(folder)
    assert requirements and "torch>=2.3" in requirements  # nothing importable here: torch is installed too
    assert installed(cmd) == [f"git+{repo}@{ref}", *requirements] and constraints == ""
    with pytest.raises(RuntimeError, match="No matching distribution"):  # a failed install says why
        run_without_common(notebook_header.setup_cell_source(folder), monkeypatch, returncode=1)


def test_the_setup_cell_says_when_pip_recorded_no_commit(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    real = importlib.metadata.distribution

    def missing(name):
        if name == notebook_header.PACKAGE_ID:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(preset, "_announced", True)
    run_without_common(notebook_header.setup_cell_source("image_generation/vae"), monkeypatch)
    assert f"Installed `common` at commit unknown of {update_readme.branch()}." in capsys.readouterr().out


BADGE_LINK = re.compile(r"\(https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/([^/]+)/([^)]+\.ipynb)\)")
SETUP_REF = re.compile(r'^REPO, REF = "([^"]+)", "([^"]+)"', re.M)


def test_every_badge_and_setup_cell_name_the_same_repository_and_branch() -> None:
    """What Colab opens (the badges, in the notebooks and the README) and what the cells install: one repository,
    one ref, the ones pyproject.toml names."""
    expected = (update_readme.repository_url()[len("https://github.com/"):], update_readme.branch())
    seen = []
    for notebook in NOTEBOOKS:
        nb = nbformat.read(notebook, as_version=4)
        badges = BADGE_LINK.findall(nb.cells[0].source.splitlines()[0])
        cells = [SETUP_REF.findall(c.source) for c in nb.cells
                 if c.get("id") == notebook_header.SETUP_ID or notebook_header.SETUP_ID in c.metadata.get("tags", [])]
        assert len(badges) == 1 and len(cells) == 1 and len(cells[0]) == 1, notebook
        assert badges[0][2] == notebook.relative_to(REPO_ROOT).as_posix()
        seen += [badges[0][:2], cells[0][0]]
        for c in nb.cells:  # every other Colab link in the notebook (the "Next" line) too
            seen += [link[:2] for link in BADGE_LINK.findall(c.source)]
    readme_links = BADGE_LINK.findall((REPO_ROOT / "README.md").read_text())
    assert readme_links
    seen += [link[:2] for link in readme_links]
    assert set(seen) == {expected}, sorted(set(seen))


def test_the_branch_is_read_from_pyproject(tmp_path: Path) -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace('branch = "main"', 'branch = "dev"'))
    assert update_readme.branch(tmp_path) == "dev" and notebook_header.install_ref(tmp_path) == "dev"
    (tmp_path / "pyproject.toml").write_text(text.replace('branch = "main"', ""))
    with pytest.raises(ValueError, match="branch"):
        update_readme.branch(tmp_path)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_the_setup_cell_never_installs_an_importable_torch(notebook: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Colab ships its own CUDA torch: it stays, pinned by a constraint, and no requirement names it."""
    folder = notebook.parent.relative_to(REPO_ROOT).as_posix()
    pytest.importorskip("torch")
    [(cmd, constraints)] = run_without_common(notebook_header.setup_cell_source(folder), monkeypatch)
    names = [notebook_header.requirement_name(r) for r in installed(cmd)[1:]]
    kept = [n for n in notebook_header.KEPT if importlib.util.find_spec(n) is not None]
    assert "torch" in kept and not set(names) & set(kept), names
    assert f"torch=={importlib.metadata.version('torch')}" in constraints.splitlines()
    assert "keeping the installed torch" in capsys.readouterr().out


def test_the_setup_cell_stops_on_another_package_named_common(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "__init__.py").write_text("VALUE = 1\n")  # someone else's `common`
    source = notebook_header.setup_cell_source("image_generation/vae")
    result = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert "another package" in last and str(tmp_path / "common") in last and "this repository's" in last


def test_the_requirements_the_cell_names_are_the_tasks(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "requirements.txt").write_text("# comment\n-c x.txt\ntorch>=2.3  # why\n\nnumpy>=1.24\n")
    assert notebook_header.task_requirements("t", tmp_path) == ["torch>=2.3", "numpy>=1.24"]
    assert notebook_header.task_requirements("missing", tmp_path) == []
    assert [notebook_header.requirement_name(r) for r in ("torch>=2.3", "Pillow[extra]>=1", "tomli; python_version<'3.11'")] \
        == ["torch", "pillow", "tomli"]


def demo_notebook() -> nbformat.NotebookNode:
    sections = ["Overview", "Setup", "Config", "Data", "Model", "Objective", "Training", "Evaluation", "Samples"]
    cells = [nbformat.v4.new_markdown_cell("# Demo\n\nIntro.")]
    for name in sections:
        cells.append(nbformat.v4.new_markdown_cell(f"## {name}\n\nText."))
        if name != "Overview":  # markdown only, as in every notebook: the setup cell is the first code cell
            cells.append(nbformat.v4.new_code_cell(f"x = '{name}'", outputs=[nbformat.v4.new_output("stream", text=name)]))
    cells.append(nbformat.v4.new_markdown_cell("## Takeaways and exercises\n\n- one\n"))
    return nbformat.v4.new_notebook(cells=cells)


def test_apply_header_is_idempotent_keeps_outputs_and_the_skeleton(monkeypatch: pytest.MonkeyPatch) -> None:
    metas = {"image_generation/demo": {"notebook": "demo.ipynb", "title": "Demo", "next": ["image_generation/two"],
                                       "coming": ["DDPM"]},
             "image_generation/two": {"notebook": "two.ipynb", "title": "Two"}}
    nb = demo_notebook()
    outputs = [c.outputs for c in nb.cells if c.cell_type == "code"]
    assert notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    once = copy.deepcopy(nb)
    assert not notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    assert nb == once
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == notebook_header.setup_cell_source("image_generation/demo") and code[0].outputs == []
    assert [c.outputs for c in code[1:]] == outputs
    assert nb.cells[2].source.startswith("## Setup") and nb.cells[3] is code[0]  # first code cell of Setup
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    assert headings == [c.source.splitlines()[0] for c in demo_notebook().cells[1:] if c.cell_type == "markdown"]
    assert nb.cells[0].source.startswith("[![Open In Colab]") and nb.cells[0].source.endswith("# Demo\n\nIntro.")
    next_line = nb.cells[-1].source.splitlines()[-1]
    assert next_line.startswith("**Next:** [Two](../two/two.ipynb)") and "DDPM" in next_line

    # A new address and branch (a fork) and a new `next` replace the badge, the cell and the line: nothing is duplicated.
    monkeypatch.setattr(update_readme, "repository_url", lambda root=None: "https://github.com/fork/repo")
    monkeypatch.setattr(update_readme, "branch", lambda root=None: "dev")
    metas["image_generation/demo"]["next"] = []
    assert notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    assert nb.cells[0].source.count("Open In Colab") == 1 and "github/fork/repo/blob/dev/" in nb.cells[0].source
    assert sum(c.get("id") == notebook_header.SETUP_ID for c in nb.cells) == 1
    assert 'REPO, REF = "fork/repo", "dev"' in nb.cells[3].source
    assert nb.cells[-1].source.count("**Next:**") == 1 and "../two" not in nb.cells[-1].source


def test_a_misplaced_setup_cell_is_moved_back(monkeypatch: pytest.MonkeyPatch) -> None:
    metas = {"image_generation/demo": {"notebook": "demo.ipynb", "title": "Demo"}}
    nb = demo_notebook()
    notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    nb.cells.append(nb.cells.pop(3))  # the setup cell dragged to the end
    assert notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    assert nb.cells[3].get("id") == notebook_header.SETUP_ID and nb.cells[-1].cell_type == "markdown"
