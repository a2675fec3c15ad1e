"""Every notebook runs, writes one honest run record, and resumes from its checkpoint.

Each notebook runs in the `smoke` preset, in a temporary folder: once from scratch (every cell must run
without error; a failing cell is reported with its source and traceback), then resumed *part-way*.

Every notebook's Config has a `stop_after_steps: int = 0` field: its cells are run again up to the training cell
with `stop_after_steps` set to the task.toml's `resume_test_stop`, which stops the training there with a
checkpoint; then the whole notebook runs with `resume = True` and must end exactly as the uninterrupted run did:
every metric of its run record equal (but those the task.toml lists in `resume_test_timing_metrics`: clock readings,
which differ between any two runs), and every tensor of every checkpoint it leaves bit-identical to the uninterrupted
run's (the model, optimiser and EMA weights, the random generators' states; the checkpoints' other entries, such as
the clock, are not tensors). The runs use the CPU (`DL_DEVICE=cpu`): on a GPU a bit-exact resume is not guaranteed,
and the GPU path has its own check (scripts/gpu_check.py). A notebook without that field fails: resuming only from
the end of training would never run the training loop after a resume.

Every run forbids float64 on the training device (`DL_FORBID_DEVICE_FLOAT64=1`, common/float64_guard.py), as Apple's
MPS does, so a notebook that would crash on a Mac fails here too, at no extra run.

Nothing else executes the notebooks (nbval, which would run each again, is used only when asked:
`pytest --nbval-lax <notebook>`). Notebooks are found by globbing, so a new task is covered without editing this
file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

from common import TIMING_POLICY
from scripts_module import load_script

compare_records = load_script("compare_records")
run_notebook = load_script("run_notebook")

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("graph_learning", "image_classification", "image_generation", "reinforcement_learning", "representation_learning", "text_generation", "templates")
NOTEBOOKS = sorted(p for folder in FOLDERS for p in (REPO_ROOT / folder).glob("**/*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
IDS = [p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS]


@pytest.fixture
def smoke_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The smoke preset, headless plots, run records and checkpoints in temporary folders; returns the records'."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("DL_PRESET", "smoke")
    monkeypatch.setenv("DL_RUNS_DIR", str(runs))
    monkeypatch.setenv("DL_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("DL_DEVICE", "cpu")  # a bit-exact resume is a CPU property; GPUs: scripts/gpu_check.py
    monkeypatch.setenv("DL_FORBID_DEVICE_FLOAT64", "1")  # as on Apple's MPS (common/float64_guard.py)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # a killed kernel leaves its temporary files here
    return runs


def client_for(nb: nbformat.NotebookNode, cwd: Path) -> NotebookClient:
    """A client that runs `nb` in a fresh kernel whose working directory is `cwd`, and kills the kernel at the end
    rather than asking it to exit: a kernel that has imported torch and started tqdm's monitor thread takes 2-3 s to
    shut down gracefully, three kernels per notebook. Every file a notebook writes is written inside a cell (the
    records and checkpoints this test reads are complete), and its temporary files go to the test's folder (TMPDIR).
    The kernel talks over Unix sockets of its own (run_notebook.kernel_config): over TCP, two kernels starting on
    pytest's two workers could race for a port, and one died ("Address already in use") in a CI run."""
    return NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                          shutdown_kernel="immediate", config=run_notebook.kernel_config())


def execute(nb: nbformat.NotebookNode, cwd: Path) -> str:
    """Run every cell of `nb` in a fresh kernel whose working directory is `cwd`; returns the text it printed."""
    client_for(nb, cwd).execute()
    return " ".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


STOP_FIELD = "stop_after_steps: int = 0"


def with_resume(path: Path, resume: bool, stop_after: int = 0) -> nbformat.NotebookNode:
    """The notebook with `resume` (and, if given, `stop_after_steps`) edited into its Config cell."""
    nb = nbformat.read(path, as_version=4)
    config_cells = [c for c in nb.cells if c.cell_type == "code" and "resume: bool = False" in c.source]
    assert len(config_cells) == 1, "the Config needs a `resume: bool = False` field"
    config_cells[0].source = config_cells[0].source.replace("resume: bool = False", f"resume: bool = {resume}")
    if stop_after:
        config_cells[0].source = config_cells[0].source.replace(STOP_FIELD, f"stop_after_steps: int = {stop_after}")
    return nb


def mid_run_stop(path: Path) -> int:
    """The step at which the resume test interrupts the training (the task.toml's `resume_test_stop`)."""
    assert STOP_FIELD in path.read_text(), f"the Config needs a `{STOP_FIELD}` field for the mid-run resume test"
    meta = tomllib.loads((path.parent / "task.toml").read_text())
    assert meta.get("resume_test_stop", 0) > 0, "a notebook with stop_after_steps needs resume_test_stop in task.toml"
    return meta["resume_test_stop"]


def execute_through_training(nb: nbformat.NotebookNode, cwd: Path) -> str:
    """Run the cells of `nb` up to and including the first cell after the Config that reads `cfg.stop_after_steps`
    (the training loop); returns the text they printed."""
    loop = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "cfg.stop_after_steps" in c.source)
    client = client_for(nb, cwd)
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells[:loop + 1]):
            client.execute_cell(cell, i)
    return " ".join(o.get("text", "") for c in nb.cells[:loop + 1] for o in c.get("outputs", []))


def check_record(record: dict, path: Path, fresh: bool) -> None:
    assert record["task"] == path.parent.relative_to(REPO_ROOT).as_posix()
    assert record["preset"] == "smoke"
    assert record["metrics"], "the run record has no metrics"
    assert record["timing"] == TIMING_POLICY and record["train_seconds"] > 0
    assert record["timings"]["train"] == record["train_seconds"]
    if fresh:  # a resumed run's spans include the first run's time, its notebook time does not
        spans = sum(v for k, v in record["timings"].items() if k != "notebook")
        assert record["timings"]["notebook"] >= spans - 0.05, "the spans overlap: a span ran inside another"
    assert len(record["code"]["notebook_code_sha256"]) == 64


def tensor_hashes(value, prefix: str = "") -> dict[str, str]:
    """Every tensor in a loaded checkpoint (in dicts, lists and tuples), by its path: the SHA-256 of its dtype,
    shape and bytes. Other entries (numbers, strings, the clock's seconds) are left out."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()  # bf16 too: numpy sees bytes
        digest = hashlib.sha256(f"{t.dtype} {tuple(t.shape)} ".encode() + raw).hexdigest()
        return {prefix or ".": digest}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return {k: v for key, item in items for k, v in tensor_hashes(item, f"{prefix}/{key}").items()}


def checkpoint_hashes(folder: Path) -> dict[str, dict[str, str]]:
    """file name -> tensor path -> hash, for every checkpoint in `folder`."""
    import torch

    return {p.name: tensor_hashes(torch.load(p, map_location="cpu", weights_only=True)) for p in sorted(folder.glob("*.pt"))}


def checkpoint_differences(first: dict[str, dict[str, str]], second: dict[str, dict[str, str]]) -> list[str]:
    """The checkpoint files and tensors that differ between two `checkpoint_hashes`."""
    out = [f"{name}: only in {'the first' if name in first else 'the second'} run" for name in sorted(set(first) ^ set(second))]
    for name in sorted(set(first) & set(second)):
        out += [f"{name}{key}" for key in sorted(set(first[name]) | set(second[name]))
                if first[name].get(key) != second[name].get(key)]
    return out


def metric_differences(first: dict, second: dict, timing: list[str]) -> list[str]:
    """The metrics (but the `timing` ones) whose values differ between two run records' `metrics` (NaN equals NaN):
    the comparison scripts/compare_records.py makes of a rerun."""
    return compare_records.differing_metrics(first, second, timing)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_writes_a_record_and_resumes_from_its_checkpoint(path: Path, tmp_path: Path, smoke_env: Path,
                                                                 uninterrupted_runs: dict[str, dict]) -> None:
    """Run once in smoke, stop a second run part-way through the training, resume it: every metric (but clock
    readings) and every checkpoint tensor must equal the uninterrupted run's."""
    first = execute(with_resume(path, False), tmp_path)
    records = [json.loads(p.read_text()) for p in smoke_env.glob("*.json")]
    assert len(records) == 1, f"expected one run record, found {len(records)}"
    check_record(records[0], path, fresh=True)
    uninterrupted_runs[records[0]["task"]] = records[0]  # the reference of this task's slice test (tests/conftest.py)
    assert "resumed" not in first.lower()
    assert any((tmp_path / "checkpoints").iterdir()), "no checkpoint was written to DL_CHECKPOINT_DIR"
    assert not list(tmp_path.glob("*.pt")) and not (tmp_path / "checkpoints").samefile(tmp_path)
    first_checkpoints = checkpoint_hashes(tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints")  # the resumed run may rely only on the interrupted run's checkpoints

    stop = mid_run_stop(path)
    stopped = execute_through_training(with_resume(path, False, stop_after=stop), tmp_path)
    assert f"stopped after step {stop}" in stopped, "stop_after_steps did not stop the training there"
    second = execute(with_resume(path, True), tmp_path)
    assert "resumed" in second.lower(), "the resumed run did not say it resumed"
    records = sorted((json.loads(p.read_text()) for p in smoke_env.glob("*.json")), key=lambda r: r["finished_at"])
    assert len(records) == 2, "only the two whole runs write a record"
    check_record(records[1], path, fresh=False)
    assert f"at step {stop}" in second, "the resumed run did not start from the interrupted step"
    meta = tomllib.loads((path.parent / "task.toml").read_text())
    timing = meta.get("resume_test_timing_metrics", [])
    assert set(timing) <= set(records[0]["metrics"]), "resume_test_timing_metrics names metrics the record lacks"
    assert meta["metric"] not in timing, "the README's metric is compared, always"
    differing = metric_differences(records[0]["metrics"], records[1]["metrics"], timing)
    assert not differing, f"resumed part-way, the run ended with other metrics than the uninterrupted run: {differing}"
    assert first_checkpoints, "the uninterrupted run left no checkpoint tensors"
    differing = checkpoint_differences(first_checkpoints, checkpoint_hashes(tmp_path / "checkpoints"))
    assert not differing, f"resumed part-way, the run ended with other checkpoint tensors: {differing[:20]}"


@pytest.mark.notebook
def test_the_notebook_runs_forbid_float64_on_the_device(tmp_path: Path, smoke_env: Path) -> None:
    """The control of the guard the notebook runs use: under the same settings, a notebook whose check runs in float64
    on the training device (as mlp_backprop's gradient check once did) fails, naming the cause, while float64 on
    the CPU runs, as on Apple's MPS."""
    from nbclient.exceptions import CellExecutionError

    cells = ["import torch\nfrom common import get_device\n\ndevice = get_device()\n"
             "params = [torch.ones(3, device=device), torch.zeros(2).to(device)]\n"
             "print(sum(p.cpu().double().sum().item() for p in params))  # float64 on the CPU: fine",
             "check_params = [p.double() for p in params]  # float64 on the device: MPS would refuse"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    with pytest.raises(CellExecutionError, match="DeviceFloat64Error") as err:
        execute(nb, tmp_path)
    assert "float64 on the training device, from double" in str(err.value)
    printed = " ".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "3.0" in printed and "DL_FORBID_DEVICE_FLOAT64 is set" in printed


@pytest.mark.notebook
def test_the_vits_same_time_runs_refuse_a_headline_stopped_part_way(tmp_path: Path, smoke_env: Path) -> None:
    """A headline that stop_after_steps stopped must not lend its partial seconds to the same-time ResNet-20 (which a
    resumed run would then reuse from its side-run folder): the notebook raises before it. Control: after an
    uninterrupted headline the same cells run on and train the ResNet-20."""
    from nbclient.exceptions import CellExecutionError

    guard = "the headline was stopped part-way"
    for stop in (5, 0):
        nb = with_resume(REPO_ROOT / "image_classification" / "vit" / "vit.ipynb", False, stop_after=stop)
        last = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and guard in c.source)
        nb.cells = nb.cells[:last + 1]
        if stop:
            with pytest.raises(CellExecutionError, match=guard):
                execute(nb, tmp_path)
        else:
            assert "ResNet-20: " in execute(nb, tmp_path)


def test_a_notebook_without_stop_after_steps_fails_the_resume_test(tmp_path: Path) -> None:
    """The mid-run resume test has no weaker fallback: a Config without the field is an error, not a skipped check."""
    (tmp_path / "task.toml").write_text("resume_test_stop = 3\n")
    without, with_field = tmp_path / "without.ipynb", tmp_path / "with.ipynb"
    without.write_text('{"cells": [{"source": "    resume: bool = False\\n"}]}')
    with_field.write_text('{"cells": [{"source": "    stop_after_steps: int = 0  # steps\\n"}]}')
    with pytest.raises(AssertionError, match="stop_after_steps"):
        mid_run_stop(without)
    assert mid_run_stop(with_field) == 3


def test_the_resume_comparison_sees_any_tensor_or_metric_that_differs(tmp_path: Path) -> None:
    """The controls of the comparisons above: a resumed run that lost one optimiser moment, one random generator's
    state or one metric (but a listed clock reading) is caught; identical checkpoints and records pass."""
    import torch

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(), "seconds": 1.5}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        torch.save(state, tmp_path / folder / "run.pt")
    same = checkpoint_hashes(tmp_path / "a")
    assert same == checkpoint_hashes(tmp_path / "b") and "/opt/state/0/exp_avg" in same["run.pt"]
    assert checkpoint_differences(same, checkpoint_hashes(tmp_path / "b")) == []
    torch.save({**state, "seconds": 9.0}, tmp_path / "b" / "run.pt")  # a clock entry is not a tensor
    assert checkpoint_differences(same, checkpoint_hashes(tmp_path / "b")) == []
    opt.state[model.weight]["exp_avg"].zero_()  # a moment lost on resume
    torch.save({**state, "opt": opt.state_dict(), "rng": torch.manual_seed(1).get_state()}, tmp_path / "b" / "run.pt")
    torch.save(state, tmp_path / "b" / "extra.pt")
    assert checkpoint_differences(same, checkpoint_hashes(tmp_path / "b")) == [
        "extra.pt: only in the second run", "run.pt/opt/state/0/exp_avg", "run.pt/rng"]
    first = {"loss": 0.5, "fid": float("nan"), "by_step": {"1": 2.0}, "seconds": 3.0}
    assert metric_differences(first, dict(first), []) == []  # NaN equals NaN
    assert metric_differences(first, {**first, "seconds": 4.0}, ["seconds"]) == []
    assert metric_differences(first, {**first, "seconds": 4.0, "by_step": {"1": 2.5}}, []) == ["by_step", "seconds"]
    assert metric_differences(first, {k: v for k, v in first.items() if k != "loss"}, []) == ["loss"]
