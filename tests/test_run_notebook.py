"""scripts/run_notebook.py saves a notebook's figures even when the caller's shell sets a headless backend, and says
whether the run records it wrote reproduced the committed ones."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
run_notebook = load_script("run_notebook")


@pytest.mark.notebook
def test_figures_are_saved_even_when_the_caller_sets_agg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what CI and the root conftest.py set
    path = tmp_path / "plot.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()")]
    nbformat.write(nb, path)
    run_notebook.run(path)
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), f"no figure saved: {outputs}"


def one_cell_client(config: "object", cwd: Path) -> "object":
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ran')")])
    return NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                          shutdown_kernel="immediate", config=config)


@pytest.mark.notebook
@pytest.mark.skipif(os.name == "nt", reason="Windows kernels keep TCP (no Unix sockets)")
def test_a_kernel_starts_even_when_another_process_holds_the_port_it_was_given(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """What failed a CI run: a kernel's port, found free, was taken by another process before the kernel bound it
    ("Address already in use", "Kernel died before replying to kernel_info"). Here the port is held from the start.
    A kernel configured by kernel_config() talks over its own Unix sockets and runs; the control, the default TCP
    kernel given the same port, dies. No socket files are left behind, and two configs never share a socket name."""
    import atexit
    import socket

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    first, second = run_notebook.kernel_config(), run_notebook.kernel_config()
    assert first.KernelManager.transport == "ipc" and first.KernelManager.ip != second.KernelManager.ip
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        first.KernelManager.shell_port = port
        client = one_cell_client(first, tmp_path)
        client.execute()
        assert client.nb.cells[0].outputs[0]["text"] == "ran\n"
        from traitlets.config import Config

        control = Config({"KernelManager": {"shell_port": port, "cache_ports": False}})  # else a new free port
        dead = one_cell_client(control, tmp_path)
        with pytest.raises(RuntimeError, match="[Kk]ernel died"):
            dead.execute()
        atexit.unregister(dead._cleanup_kernel)  # nbclient's exit hook for a kernel that never started
    assert not list(tmp_path.glob("kernel-*")), "socket files left behind"


def test_the_kernel_environment_drops_only_mplbackend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("DL_PRESET", "quick")
    env = run_notebook.kernel_env()
    assert "MPLBACKEND" not in env and env["DL_PRESET"] == "quick"


def test_a_new_record_is_compared_with_the_newest_committed_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of DDPM's newest committed `quick` record, written after the run started, is "reproduced"; the control,
    the same copy with one metric changed, is not; an older file in the runs folder is not read."""
    monkeypatch.setenv("DL_RUNS_DIR", str(tmp_path))
    committed = sorted((REPO_ROOT / "results" / "image_generation" / "ddpm").glob("*quick*.json"))[-1]
    stale = tmp_path / "stale.json"
    shutil.copy(committed, stale)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    since = time.time() - 1
    shutil.copy(committed, tmp_path / "rerun.json")
    changed = json.loads(committed.read_text())
    changed["metrics"]["fid"] += 1e-9
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    records = run_notebook.new_records(since)
    assert [p.name for p in records] == ["changed.json", "rerun.json"]
    changed_line, rerun_line = run_notebook.rerun_lines(records)
    assert f"rerun.json against the committed {committed.name}: reproduced: all" in rerun_line
    assert "changed.json" in changed_line and "differs in 1 of" in changed_line
    smoke = dict(changed, preset="smoke")
    (tmp_path / "smoke.json").write_text(json.dumps(smoke))
    assert run_notebook.rerun_lines([tmp_path / "smoke.json"]) == [
        "smoke.json: no committed smoke record of image_generation/ddpm to compare with"]



def run_script(args: list[str], cwd: Path) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "run_notebook.py"), *args], cwd=cwd,
                          capture_output=True, text=True)


@pytest.mark.parametrize("args", [["--help"], ["-h"], [], ["a.ipynb", "b.ipynb"], ["no_such_notebook.ipynb"]])
def test_usage_errors_stop_before_any_notebook_is_read(args: list[str], tmp_path: Path) -> None:
    """An option, a wrong number of paths or a missing file ends with the usage or a one-line message and status 1,
    instead of nbformat's traceback for a file named "--help" (what the script did before)."""
    done = run_script(args, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert ("no such notebook" in done.stderr) == (args == ["no_such_notebook.ipynb"]), done.stderr
    assert ("Execute a notebook" in done.stderr) == (args != ["no_such_notebook.ipynb"]), done.stderr


@pytest.mark.notebook
def test_the_control_a_real_notebook_with_no_save_runs_and_is_left_as_it_was(tmp_path: Path) -> None:
    """The control for the usage test: the same call with one existing notebook (and --no-save) passes the checks,
    runs it (status 0) and leaves the file unchanged."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(6 * 7)")]
    path = tmp_path / "ok.ipynb"
    nbformat.write(nb, path)
    before = path.read_text()
    done = run_script(["--no-save", str(path)], tmp_path)
    assert done.returncode == 0 and "outputs not saved" in done.stdout, done.stderr
    assert path.read_text() == before
