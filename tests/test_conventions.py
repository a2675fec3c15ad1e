"""Every task folder is complete, and the README's table matches the committed run records."""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

import nbformat
import pytest
import torch

from notebook_cells import ControlEditError, notebook_functions
from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
update_readme = load_script("update_readme")

TASK_DIRS = sorted(p for c in update_readme.CATEGORIES for p in (REPO_ROOT / c).iterdir() if p.is_dir()
                   and not p.name.startswith((".", "_")))
TEMPLATE = REPO_ROOT / "templates" / "task_template"
SKELETON = ["Overview", "Setup", "Config", "Data", "Model", "Objective", "Training", "Evaluation",
            ("Samples", "Visualisation"), "Takeaways", "The runs behind these numbers"]
# The Overview's cost part (from its "**Cost" paragraph to the Setup heading: a table of runs and a short reading
# against the paper) stays within this many words; each run's full account goes to the last section.
OVERVIEW_COST_WORDS = 400
RECORD_KEYS = {"task", "preset", "device", "device_type", "data", "train_seconds", "peak_memory_bytes",
               "metrics", "versions", "finished_at"}


def _ids(paths):
    return [p.relative_to(REPO_ROOT).as_posix() for p in paths]


def h2_headings(nb) -> list[str]:
    return [line[3:].strip() for cell in nb.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith("## ")]


def check_skeleton(nb) -> None:
    headings = h2_headings(nb)
    positions = []
    for wanted in SKELETON:
        options = wanted if isinstance(wanted, tuple) else (wanted,)
        found = [i for i, h in enumerate(headings) if h.startswith(options)]
        assert found, f"no '## {' or '.join(options)}' heading (headings: {headings})"
        positions.append(found[0])
    assert positions == sorted(positions), f"the skeleton headings are out of order: {headings}"


def overview_cost_words(nb) -> int:
    """Words of the Overview from its first paragraph that starts with "**Cost" up to the Setup heading."""
    text, inside = [], False
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        if re.search(r"^## Setup", cell.source, re.M):
            break
        inside = inside or bool(re.search(r"^## Overview", cell.source, re.M))
        if inside:
            text.append(cell.source)
    overview = "\n".join(text)
    cost = re.search(r"^\*\*Cost", overview, re.M)
    assert cost, "the Overview needs a paragraph starting with **Cost (its cost and result)"
    return len(overview[cost.start():].split())


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=_ids(TASK_DIRS))
def test_the_overview_keeps_its_cost_short(task_dir: Path) -> None:
    """A learner reaches the lesson within a screen or two: the Overview's cost and result are a table and a short
    reading, and each run's full account lives in the last section, The runs behind these numbers."""
    nb = nbformat.read(next(task_dir.glob("*.ipynb")), as_version=4)
    words = overview_cost_words(nb)
    assert words <= OVERVIEW_COST_WORDS, \
        f"the Overview's cost part has {words} words (at most {OVERVIEW_COST_WORDS}): move run-by-run detail to " \
        "the last section, The runs behind these numbers"


def test_the_overview_and_skeleton_checks_fail_where_they_should() -> None:
    """Controls: a cost part of run-by-run prose is too long, and a notebook without the last section fails the
    skeleton check, as does one whose last section comes before the Takeaways."""
    def notebook(cost: str, headings: list[str]):
        cells = [nbformat.v4.new_markdown_cell(f"## Overview\n\nWhat you will learn.\n\n{cost}")]
        cells += [nbformat.v4.new_markdown_cell(f"## {h}\n\nText.") for h in headings]
        return nbformat.v4.new_notebook(cells=cells)

    body = [h if isinstance(h, str) else h[0] for h in SKELETON[1:]]
    short = notebook("**Cost and result.** A table.", body)
    check_skeleton(short)
    assert overview_cost_words(short) == 5
    long = notebook("**Cost:** " + "a run on another VM took 1.0 s; " * 100, body)
    assert overview_cost_words(long) > OVERVIEW_COST_WORDS
    with pytest.raises(AssertionError, match="The runs behind"):
        check_skeleton(notebook("**Cost.**", body[:-1]))
    with pytest.raises(AssertionError, match="out of order"):
        check_skeleton(notebook("**Cost.**", body[:-2] + [body[-1], body[-2]]))


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=_ids(TASK_DIRS))
def test_task_folder_is_complete(task_dir: Path) -> None:
    meta_path = task_dir / "task.toml"
    assert meta_path.exists(), "a task folder needs a task.toml (copy templates/task_template)"
    meta = update_readme.tomllib.loads(meta_path.read_text())
    missing = [k for k in update_readme.TASK_KEYS if k not in meta]
    assert not missing, f"task.toml lacks {missing}"
    notebooks = list(task_dir.glob("*.ipynb"))
    assert [p.name for p in notebooks] == [meta["notebook"]], "exactly one notebook, named in task.toml"
    assert (task_dir / "requirements.txt").exists()
    nb = nbformat.read(notebooks[0], as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "write_run_record(" in source, "the notebook must write a run record"
    assert f'"{task_dir.relative_to(REPO_ROOT).as_posix()}"' in source, "the run record must name the task folder"
    assert not re.search(r"^\s*from \S+ import \*", source, re.M), "no star imports"
    assert not re.search(r"\.(cuda|half)\(\)", source), "no hard-coded .cuda() or .half()"
    check_skeleton(nb)
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"({task_dir.relative_to(REPO_ROOT).as_posix()}/{meta['notebook']})" in readme, "no README row"


def lesson_test_modules(notebook_name: str, tests_dir: Path) -> list[str]:
    """The test modules in `tests_dir` (this one aside) that import tests/notebook_cells at their top level and name
    the notebook's file in a string of their code (not their docstring): the modules that run its own functions."""
    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        stat = path.stat()
        imports, strings = module_facts(str(path), stat.st_mtime_ns, stat.st_size)
        if imports and notebook_name in strings:
            found.append(path.name)
    return found


@functools.lru_cache(maxsize=256)
def module_facts(path: str, mtime_ns: int, size: int) -> tuple[bool, frozenset[str]]:
    """Whether the module imports notebook_cells at its top level, and the strings of its code (its docstring aside),
    for the file as it is at (mtime_ns, size)."""
    tree = ast.parse(Path(path).read_text())
    imports = any(isinstance(node, ast.ImportFrom) and node.module in ("notebook_cells", "tests.notebook_cells")
                  for node in tree.body)
    docstring = ast.get_docstring(tree, clean=False)
    strings = frozenset(node.value for node in ast.walk(tree)
                        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value != docstring)
    return imports, strings


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=_ids(TASK_DIRS))
def test_the_lesson_code_has_a_unit_test_module(task_dir: Path) -> None:
    """Beside the smoke run, some test module imports tests/notebook_cells and names the task's notebook: it runs the
    notebook's own functions (what it checks is that module's business; CONTRIBUTING's Tests convention)."""
    notebook = update_readme.tomllib.loads((task_dir / "task.toml").read_text())["notebook"]
    assert lesson_test_modules(notebook, REPO_ROOT / "tests"), (
        f"no test module imports notebook_cells and names {notebook!r}: unit-test its lesson code")


def test_the_lesson_test_check_needs_the_import_and_the_name_in_code(tmp_path: Path) -> None:
    """Controls: a module that only names the notebook, one that only imports notebook_cells, one whose import is text
    in a string, one that names the notebook only in its docstring, and this module itself."""
    modules = {
        "test_both.py": 'from notebook_cells import notebook_functions\nNB = "a.ipynb"\n',
        "test_package_import.py": 'from tests.notebook_cells import cell_sources\nNB = "f.ipynb"\n',
        "test_name_only.py": 'NB = "b.ipynb"\n',
        "test_import_only.py": 'from notebook_cells import notebook_functions\nNB = "c"\n',
        "test_import_in_a_string.py": 'TEXT = "from notebook_cells import x"\nNB = "d.ipynb"\n',
        "test_docstring_only.py": '"""e.ipynb"""\nfrom notebook_cells import notebook_functions\n',
        Path(__file__).name: 'from notebook_cells import notebook_functions\nNB = "g.ipynb"\n',
    }
    for name, text in modules.items():
        (tmp_path / name).write_text(text)
    assert lesson_test_modules("a.ipynb", tmp_path) == ["test_both.py"]
    assert lesson_test_modules("f.ipynb", tmp_path) == ["test_package_import.py"]
    assert not any(lesson_test_modules(f"{c}.ipynb", tmp_path) for c in "bcdeg")


def test_a_stale_control_edit_is_not_an_assertion_error() -> None:
    """A control expected to fail a check (pytest.raises(AssertionError)) must not pass because its edit no longer
    matches the notebook: notebook_functions raises ControlEditError, which AssertionError does not catch."""
    notebook = REPO_ROOT / "image_generation" / "vae" / "vae.ipynb"
    with pytest.raises(ControlEditError, match="found 0"):
        notebook_functions(notebook, "reparameterise", namespace={"torch": torch},
                           edits=[("reparameterise", "text that is not in the notebook", "")])
    assert not issubclass(ControlEditError, AssertionError)
    with pytest.raises(ControlEditError, match="more than once"):  # the MLP's deliberately broken twin, defined later
        notebook_functions(REPO_ROOT / "image_classification" / "mlp_backprop" / "mlp_backprop.ipynb", "relu_backward")
    doubled = notebook_functions(notebook, "reparameterise", namespace={"torch": torch},
                                 edits=[("reparameterise", "return mu +", "return 2 * mu +")])["reparameterise"]
    mu = torch.arange(1.0, 4.0)
    assert torch.equal(doubled(mu, torch.full((3,), -200.0)), 2 * mu)  # sigma = e^-100: the edit is what runs


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=_ids(TASK_DIRS))
def test_committed_outputs_show_at_least_one_figure(task_dir: Path) -> None:
    """Readers on GitHub see the committed outputs: a run saved with a headless backend shows them no plot."""
    notebook = next(task_dir.glob("*.ipynb"))
    outputs = [o for c in nbformat.read(notebook, as_version=4).cells for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), \
        f"{notebook.name}'s committed outputs hold no figure: rerun it with scripts/run_notebook.py"


# Issues 23 and 24, notebook by notebook: each notebook gains a `stop_after_steps` field (the mid-run resume test of
# tests/test_notebooks.py) and a cost line before training (`announce_cost`) with its next real rerun, since its
# committed outputs must come from its committed code. Remove a task from this set when its rerun lands.
NOT_YET_CONVERTED: set[str] = set()


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=_ids(TASK_DIRS))
def test_notebook_announces_its_cost_and_resumes_part_way(task_dir: Path) -> None:
    """A converted notebook prints its preset's cost before training and can be stopped and resumed part-way; the
    list of the others only shrinks (a converted notebook still listed fails too)."""
    task = task_dir.relative_to(REPO_ROOT).as_posix()
    notebook = next(task_dir.glob("*.ipynb"))
    source = "\n".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code")
    converted = "announce_cost(" in source and "stop_after_steps: int = 0" in source
    meta = update_readme.tomllib.loads((task_dir / "task.toml").read_text())
    if task in NOT_YET_CONVERTED:
        assert not converted, f"{task} is converted: remove it from NOT_YET_CONVERTED"
    else:
        assert converted, "call announce_cost(...) before training and add a `stop_after_steps: int = 0` Config field"
        assert meta.get("resume_test_stop", 0) > 0, "task.toml needs resume_test_stop (tests/test_notebooks.py)"


def test_template_follows_the_skeleton() -> None:
    nb = nbformat.read(TEMPLATE / "task_template.ipynb", as_version=4)
    check_skeleton(nb)
    assert (TEMPLATE / "requirements.txt").exists() and (TEMPLATE / "task.toml").exists()
    meta = update_readme.tomllib.loads((TEMPLATE / "task.toml").read_text())
    assert "prerequisites" in meta and "next" in meta, "the template's task.toml shows the learning-path fields"


def is_task_folder(folder: str, root: Path = REPO_ROOT) -> bool:
    parts = folder.split("/")
    return len(parts) == 2 and parts[0] in update_readme.CATEGORIES and (root / folder / "task.toml").exists()


def test_the_learning_path_names_task_folders_and_has_no_cycle() -> None:
    metas = {t.folder: t.meta for t in update_readme.load_tasks()}
    metas["templates/task_template"] = update_readme.tomllib.loads((TEMPLATE / "task.toml").read_text())
    assert update_readme.path_problems(metas, is_task_folder) == []


def test_the_learning_path_checker_catches_missing_folders_self_references_and_cycles() -> None:
    def check(metas):
        return update_readme.path_problems(metas, lambda folder: folder in metas)

    assert check({"a/x": {"next": ["a/y"]}, "a/y": {"prerequisites": ["a/x"]}}) == []
    assert check({"a/x": {"next": ["a/gone"]}}) == ["a/x: `next` names 'a/gone', which is not a task folder"]
    assert check({"a/x": {"prerequisites": ["a/x"]}}) == ["a/x: `prerequisites` names the task itself"]
    assert check({"a/x": {"next": "a/y"}, "a/y": {}}) == ["a/x: `next` must be a list of task folders"]
    cycle = check({"a/x": {"next": ["a/y"]}, "a/y": {"next": ["a/z"]}, "a/z": {"prerequisites": ["a/y"], "next": ["a/x"]}})
    assert cycle == ["the learning path has a cycle: a/x -> a/y -> a/z -> a/x"]
    # a prerequisite is an edge too: y needs x, and x says y comes before it
    assert check({"a/x": {"prerequisites": ["a/y"]}, "a/y": {"prerequisites": ["a/x"]}})[0].startswith("the learning path has a cycle")


RECORDS = sorted((REPO_ROOT / "results").glob("*/*/*.json"))  # results/<category>/<task>/: the notebooks' run records
# results/<category>/<task>/<measurement>/: records of a one-off measurement script (scripts/sampling_precision.py)
# or notebook run records kept apart (a rerun on another kind of CPU), which the README's table does not read
MEASUREMENTS = sorted((REPO_ROOT / "results").glob("*/*/*/**/*.json"))
MEASUREMENT_KEYS = {"task", "preset", "what", "device", "data", "git_commit", "git_dirty", "finished_at"}


@pytest.mark.parametrize("path", RECORDS, ids=_ids(RECORDS))
def test_committed_records_are_complete(path: Path) -> None:
    record = json.loads(path.read_text())
    assert RECORD_KEYS <= set(record), f"missing {RECORD_KEYS - set(record)}"
    assert path.parent.relative_to(REPO_ROOT / "results").as_posix() == record["task"]
    assert record["preset"] in ("quick", "full"), "publish only quick and full runs"


@pytest.mark.parametrize("path", MEASUREMENTS, ids=_ids(MEASUREMENTS))
def test_committed_measurements_name_their_task_run_and_code(path: Path) -> None:
    """A measurement script's output, or a notebook's run record kept apart from the README's (such as a rerun on
    another kind of CPU): either way it names its task, preset and a clean commit."""
    record = json.loads(path.read_text())
    if "code" in record:  # a notebook's run record
        assert RECORD_KEYS <= set(record), f"missing {RECORD_KEYS - set(record)}"
        record = {**record, **record["code"]}
    else:
        assert MEASUREMENT_KEYS <= set(record), f"missing {MEASUREMENT_KEYS - set(record)}"
    assert path.parent.parent.relative_to(REPO_ROOT / "results").as_posix() == record["task"]
    assert record["preset"] in ("quick", "full"), "publish only quick and full runs"
    assert record["git_commit"] and record["git_dirty"] is False, "a published measurement names a clean commit"


def test_readme_table_is_up_to_date() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    assert update_readme.updated_readme(text, update_readme.load_tasks()) == text, \
        "README.md is out of date: run `python scripts/update_readme.py`"


def test_readme_learning_path_is_up_to_date() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    assert update_readme.PATH_START in text and update_readme.PATH_END in text, "README.md lacks the learning path"
    block = text.split(update_readme.PATH_START, 1)[1].split(update_readme.PATH_END, 1)[0]
    tasks = update_readme.load_tasks()
    assert block == f"\n{update_readme.render_path(tasks)}\n", \
        "README.md's learning path is out of date: run `python scripts/update_readme.py`"
    for t in tasks:  # every task is on the path, with its notebook and its Colab link
        path = f"{t.folder}/{t.meta['notebook']}"
        assert f"]({path})" in block and update_readme.colab_url(path) in block


def test_the_learning_path_renders_next_prerequisites_and_coming(tmp_path: Path) -> None:
    tasks = [update_readme.Task("image_classification/a", {"category": "C", "title": "A", "notebook": "a.ipynb",
                                                           "prerequisites": [], "next": ["image_generation/b"],
                                                           "coming": ["S"]}, []),
             update_readme.Task("image_generation/b", {"category": "C", "title": "B", "notebook": "b.ipynb",
                                                       "prerequisites": ["image_classification/a"], "next": []}, []),
             update_readme.Task("image_generation/c", {"category": "C", "title": "D", "notebook": "c.ipynb",
                                                       "prerequisites": ["image_generation/b"], "next": []}, []),
             update_readme.Task("text_generation/d", {"category": "T", "title": "E", "notebook": "d.ipynb",
                                                      "prerequisites": [], "next": []}, [])]
    lines = update_readme.render_path(tasks).splitlines()
    assert [line.split("]")[0] for line in lines] == ["- [C: A", "  - [C: B", "    - [C: D", "  - coming, not written yet: S",
                                                      "- [T: E"]
    tasks[0].meta["prerequisites"] = ["image_generation/c"]
    with pytest.raises(ValueError, match="cycle"):
        update_readme.render_path(tasks)


def write_demo_task(root: Path, folder: str, category: str, metric: str, label: str) -> None:
    """A minimal task folder `<root>/<folder>/demo` with its task.toml."""
    task_dir = root / folder / "demo"
    task_dir.mkdir(parents=True)
    (task_dir / "task.toml").write_text(f'title = "Demo"\ncategory = "{category}"\npaper = "P"\npaper_url = "u"\n'
                                        f'notebook = "demo.ipynb"\nmetric = "{metric}"\nmetric_label = "{label}"\n'
                                        'lower_is_better = true\nprerequisites = []\nnext = []\n')


def test_readme_says_not_yet_measured_without_a_record(tmp_path: Path) -> None:
    write_demo_task(tmp_path, "text_generation", "Text generation", metric="val_loss", label="val loss")
    tasks = update_readme.load_tasks(tmp_path)
    table = update_readme.render_table(tasks)
    assert "| not yet measured | not yet measured | not yet measured |" in table
    results = tmp_path / "results" / "text_generation" / "demo"
    results.mkdir(parents=True)
    record = {"task": "text_generation/demo", "preset": "quick", "device": "cpu (2 threads, x86_64)", "device_type": "cpu",
              "data": "Tiny Shakespeare", "train_seconds": 290.0, "metrics": {"val_loss": 1.61234},
              "finished_at": "2026-01-01T00:00:00+00:00"}
    (results / "a.json").write_text(json.dumps(record))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path))
    assert "val loss: 1.612 (quick, CPU; Tiny Shakespeare)" in table
    assert "4.8 min (cpu (2 threads, x86_64)), earlier timing policy" in table  # this record has no `timing` field
    assert "N = not yet measured**: 0 of 1 tasks" in table


def test_readme_lists_each_dataset_of_a_task(tmp_path: Path) -> None:
    write_demo_task(tmp_path, "image_generation", "Image generation", metric="nll", label="NLL")
    results = tmp_path / "results" / "image_generation" / "demo"
    results.mkdir(parents=True)
    base = {"task": "image_generation/demo", "preset": "quick", "device": "cpu", "device_type": "cpu",
            "timing": "steps-only/v1"}
    runs = [("MNIST", 100.0, "2026-01-01"), ("Fashion", 230.0, "2026-01-02"), ("MNIST", 99.0, "2026-01-03")]
    for i, (data, nll, day) in enumerate(runs):
        record = {**base, "data": data, "train_seconds": 60.0 + i, "metrics": {"nll": nll}, "finished_at": day}
        (results / f"{i}.json").write_text(json.dumps(record))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path))
    assert "NLL: 230.0 (quick, CPU; Fashion)<br>NLL: 99.00 (quick, CPU; MNIST)" in table  # newest per dataset
    assert "NLL: 100 " not in table and "1.0 min (Fashion; cpu)<br>1.0 min (MNIST; cpu)" in table  # which is which


def test_n_counts_only_rtx_4090_runs_and_other_gpus_are_named(tmp_path: Path) -> None:
    write_demo_task(tmp_path, "text_generation", "Text generation", metric="val_loss", label="val loss")
    results = tmp_path / "results" / "text_generation" / "demo"
    results.mkdir(parents=True)
    base = {"task": "text_generation/demo", "preset": "full", "device_type": "cuda", "data": "TS",
            "timing": "steps-only/v1", "metrics": {"val_loss": 1.5}}
    h100 = {**base, "device": "NVIDIA H100 80GB HBM3", "gpu": "NVIDIA H100 80GB HBM3", "train_seconds": 360.0,
            "finished_at": "2026-01-01"}
    (results / "h100.json").write_text(json.dumps(h100))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path))
    assert "N = not yet measured**: 0 of 1 tasks" in table  # an H100 run is not a 4090 run
    assert "6.0 min (NVIDIA H100 80GB HBM3)" in table and "NVIDIA H100 80GB HBM3: 0.10 hours over 1 of 1 tasks" in table
    rtx = {**base, "device": "NVIDIA GeForce RTX 4090", "gpu": "NVIDIA GeForce RTX 4090", "train_seconds": 720.0,
           "finished_at": "2026-01-02", "metrics": {"val_loss": 1.47}}
    (results / "rtx.json").write_text(json.dumps(rtx))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path))
    assert "**N = 0.20** 4090-hours" in table and "val loss: 1.470 (full, RTX 4090; TS)" in table
    assert "12.0 min (NVIDIA GeForce RTX 4090)" in table and "6.0 min (NVIDIA H100 80GB HBM3)" in table


CITED_RECORD = re.compile(r"(?:\.\.\.|\b)([\w.-]*?\d{8}T\d{6}(?:\d{6})?Z\.json)")  # a record's name, whole or `...`-shortened; the measurement scripts' names have seconds only
READMES = [REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md",
           *(REPO_ROOT / c / "README.md" for c in update_readme.CATEGORIES)]
PROSE_FILES = [p for p in READMES if p.exists()] + load_script("notebook_header").task_notebooks()


def cited_records(text: str) -> set[str]:
    """The run-record names a text cites, each as written after any leading `...`."""
    return set(CITED_RECORD.findall(text))


def unresolved_citations(text: str, committed: list[Path]) -> list[str]:
    """The cited record names that are not the end of exactly one committed record's file name."""
    return sorted(name for name in cited_records(text) if sum(p.name.endswith(name) for p in committed) != 1)


def notebook_text(path: Path) -> str:
    """A notebook's cells and the text its committed outputs printed (where each run says which record it wrote)."""
    nb = nbformat.read(path, as_version=4)
    return "\n".join([cell.source for cell in nb.cells] + [printed_text(nb)])


def printed_text(nb: nbformat.NotebookNode) -> str:
    """What the notebook's committed outputs printed (its code cells' stream outputs)."""
    return "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.parametrize("path", PROSE_FILES, ids=_ids(PROSE_FILES))
def test_every_cited_run_record_is_committed(path: Path) -> None:
    """A record that prose names as its evidence (`...ddpm__quick__cpu__<time>Z.json`), or that a committed output says
    the run wrote, is a file under results/ that a reader can open: no typo, nothing deleted or renamed since."""
    text = notebook_text(path) if path.suffix == ".ipynb" else path.read_text()
    assert unresolved_citations(text, RECORDS + MEASUREMENTS) == [], "cited run records missing from results/"


def test_citation_check_finds_a_missing_or_ambiguous_record() -> None:
    committed = [Path("results/a/t/a__t__quick__cpu__20261127T190339872440Z.json"),
                 Path("results/a/t/a__t__full__cpu__20261127T190339872440Z.json")]
    text = ("record `...t__quick__cpu__20261127T190339872440Z.json` and `...20261101T000000000000Z.json`; "
            "wrote a__t__full__cpu__20261127T190339872440Z.json; `...20261127T190339872440Z.json` is two files")
    assert cited_records(text) == {"t__quick__cpu__20261127T190339872440Z.json", "20261101T000000000000Z.json",
                                   "a__t__full__cpu__20261127T190339872440Z.json", "20261127T190339872440Z.json"}
    assert unresolved_citations(text, committed) == ["20261101T000000000000Z.json", "20261127T190339872440Z.json"]
    # the measurement scripts name their records to the second: a typo in one must be caught too
    measured = [Path("results/g/t/wh_dropout/wh_dropout__full__20261128T100523Z.json")]
    assert unresolved_citations("`...wh_dropout__full__20261128T100523Z.json`", measured) == []
    assert unresolved_citations("`...wh_dropout__full__20261128T100599Z.json`", measured) == [
        "wh_dropout__full__20261128T100599Z.json"]


PUBLIC_ISSUE_LINK = re.compile(r"\[[^\]]*\]\(https?://github\.com/[\w.-]+/[\w.-]+/issues/\d+\)")
DEVELOPMENT_ISSUE = re.compile(r"\b(?:the|this|an?|that) issue(?:'s)?\b|\bissue's\b|\bby the issue\b", re.IGNORECASE)


def development_issue_mentions(text: str) -> list[str]:
    """The sentences' openings where prose points to a development issue ("the issue's target") instead of saying
    what it asked; a link to a public issue tracker (`github.com/.../issues/N`) is evidence and is not flagged."""
    text = PUBLIC_ISSUE_LINK.sub("[a public issue]", text)
    return [text[max(0, m.start() - 40):m.end() + 20].replace("\n", " ") for m in DEVELOPMENT_ISSUE.finditer(text)]


@pytest.mark.parametrize("path", load_script("notebook_header").task_notebooks(),
                         ids=_ids(load_script("notebook_header").task_notebooks()))
def test_notebook_prose_does_not_point_to_development_issues(path: Path) -> None:
    """A learner cannot read this project's issues: a target or a request is stated in the notebook itself."""
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert development_issue_mentions(markdown) == []


def test_the_issue_check_flags_a_development_issue_but_not_a_public_link() -> None:
    assert len(development_issue_mentions("This meets the issue's `quick` target. The issue asks for two models.")) == 2
    assert development_issue_mentions("reported at [pytorch/vision#9536](https://github.com/pytorch/vision/issues/9536)"
                                      "; tissue samples") == []
    assert development_issue_mentions("see [the issue](https://github.com/pytorch/vision/issues/9536)") == []
    assert len(development_issue_mentions("see [the issue](https://example.org/notes)")) == 1  # not a tracker


SHOWN_RECORD = re.compile(r"(?:\.\.\.)?(\w[\w.-]*\d{8}T\d{6}\d*Z\.json)`?[^|\n]{0,40}\*\*the outputs shown below\*\*")
WRITTEN_RECORD = re.compile(r"Run record written: ([\w.-]+\.json)")


def shown_and_written(nb: nbformat.NotebookNode) -> tuple[list[str], list[str]]:
    """The record(s) the prose says the committed outputs come from, and the record(s) those outputs say they wrote."""
    prose = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    return SHOWN_RECORD.findall(prose), WRITTEN_RECORD.findall(printed_text(nb))


TASK_NOTEBOOKS = [p for p in load_script("notebook_header").task_notebooks() if "templates" not in p.parts]


@pytest.mark.parametrize("path", TASK_NOTEBOOKS, ids=_ids(TASK_NOTEBOOKS))
def test_the_record_named_as_the_outputs_shown_is_the_one_the_outputs_wrote(path: Path) -> None:
    """After a rerun the Overview's "**the outputs shown below**" row must name the new record: the committed outputs
    print which record they wrote, and it must be that one (a stale row kept the last run's record name)."""
    shown, written = shown_and_written(nbformat.read(path, as_version=4))
    assert len(shown) == 1, f"the Overview names {len(shown)} records as the outputs shown"
    assert len(written) == 1 and written[0].endswith(shown[0]), (shown, written)


def test_a_stale_outputs_shown_row_is_caught() -> None:
    """The control: the ViT's notebook with its Overview row pointing at the run before."""
    nb = nbformat.read(REPO_ROOT / "image_classification" / "vit" / "vit.ipynb", as_version=4)
    shown, written = shown_and_written(nb)
    stale = "vit__quick__cpu__20261129T171141557821Z.json"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = cell.source.replace(shown[0], stale)
    shown_now, _ = shown_and_written(nb)
    assert shown_now == [stale] and not written[0].endswith(stale)
