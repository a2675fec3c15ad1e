"""scripts/gpu_check.py: everything but CUDA itself, tested on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"
gpu_check = load_script("gpu_check")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_help_works_without_a_gpu():
    result = run("--help")
    assert result.returncode == 0 and "--full" in result.stdout and "--data-dir" in result.stdout


def test_every_notebook_converts_to_a_script_that_compiles(tmp_path):
    found = gpu_check.notebooks()
    assert "templates/task_template" in found and len(found) >= 2
    for task, path in found.items():
        script = gpu_check.notebook_to_script(path)
        assert "write_run_record(" in script and f'"{task}"' in script
        compile(script, task, "exec")


def test_magics_are_commented_out(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": "%matplotlib inline\nx = 1\n!ls"},
                    {"cell_type": "markdown", "source": "# not code"}]}
    path = tmp_path / "demo.ipynb"
    path.write_text(json.dumps(nb))
    script = gpu_check.notebook_to_script(path)
    assert "# (magic) %matplotlib inline" in script and "# (magic) !ls" in script and "not code" not in script


def test_unknown_task_is_refused():
    result = run("--only", "image_generation/no_such_task")
    assert result.returncode == 2 and "unknown task" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_stops_before_the_cuda_runs():
    result = run("--only", "templates/task_template")
    assert result.returncode == gpu_check.NO_CUDA, result.stdout + result.stderr
    assert "converted 1 notebooks" in result.stdout and "no CUDA device" in result.stdout


def test_the_same_path_runs_on_the_cpu_and_keeps_results_untouched():
    before = sorted((REPO_ROOT / "results").rglob("*"))
    result = run("--device", "cpu", "--only", "templates/task_template", "--no-save")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "templates/task_template" in result.stdout and "1 of 1 runs passed on cpu" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("templates/task_template"))
    assert " fp32 " in line and "compile eager" in line  # smoke compiles on CUDA only
    assert sorted((REPO_ROOT / "results").rglob("*")) == before


def test_the_gpu_rehearsal_runs_the_notebook_in_bf16_autocast_and_compiled():
    """`--rehearse`: the template's smoke on the CPU with its autocast in bf16, as on an Ampere+ GPU, and its model
    through Dynamo and AOTAutograd (the record's precision and compile status say what ran; the CPU-path test above
    is its control: fp32, eager). No `full` run: it is no measurement."""
    result = run("--rehearse", "--only", "templates/task_template", "--no-save")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 of 1 runs passed on cpu (rehearsing a GPU: bf16 autocast, aot_eager compile, channels_last)" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("templates/task_template"))
    assert " bf16 " in line and "compile compiled" in line
    refused = run("--rehearse", "--only", "templates/task_template", "--full", "templates/task_template")
    assert refused.returncode == 2 and "drop --full" in refused.stdout


def test_a_cuda_run_whose_compile_fell_back_fails_the_check():
    def result(status):
        models = [{"model": "UNet", "requested": True, "status": status, "reason": "InductorError in the forward: x"}]
        return {"status": "ok", "record": {"device_type": "cuda", "compile": {"status": status, "models": models}}}
    for status, ok in (("compiled", True), ("compiled_unverified", True), ("fell_back", False), ("unavailable", False)):
        r = result(status)
        gpu_check.check_record(r, "cuda")
        assert (r["status"] == "ok") == ok, (status, r["status"])
    r = result("fell_back")
    gpu_check.check_record(r, "cuda")
    assert "InductorError" in r["status"]
    cpu = {"status": "ok", "record": {"device_type": "cpu", "compile": None}}
    gpu_check.check_record(cpu, "cpu")
    assert cpu["status"] == "ok"
    for rehearsal, ok in (({"rehearsal": "aot_eager"}, False), ({}, True)):  # --rehearse compiles unasked models too
        model = {"model": "GPT", "requested": False, "status": "fell_back", "reason": "x", **rehearsal}
        r = {"status": "ok", "record": {"device_type": "cpu", "compile": {"status": "fell_back", "models": [model]}}}
        gpu_check.check_record(r, "cpu")
        assert (r["status"] == "ok") == ok, (rehearsal, r["status"])
    for flagged, ok in ((True, True), (False, False)):  # a --rehearse run whose record does not say it rehearsed
        record = {"device_type": "cpu", "compile": None, **({"gpu_rehearsal": True} if flagged else {})}
        r = {"status": "ok", "record": record}
        gpu_check.check_record(r, "cpu", rehearse=True)
        assert (r["status"] == "ok") == ok, (flagged, r["status"])


def test_no_save_keeps_a_full_record_out_of_results(tmp_path: Path, monkeypatch) -> None:
    """`--no-save` is about `full` records, which go to results/ otherwise: the CPU-path test above runs no `full`
    preset, so it could not see a copy made anyway. Here a faked `full` run's record must stay out of results/ with
    `--no-save`, and (the control) land there without it."""
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"device_type": "cpu", "peak_memory_bytes": 0}))
    real = gpu_check.notebooks()
    monkeypatch.setattr(gpu_check, "notebooks", lambda: real)
    monkeypatch.setattr(gpu_check, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(gpu_check, "run_one", lambda task, script, preset, env, workdir, timeout: {
        "task": task, "preset": preset, "status": "ok", "seconds": 0.0, "log": tmp_path / "log",
        "record": json.loads(rec.read_text()), "record_path": rec})
    args = ["--device", "cpu", "--data-dir", str(tmp_path), "--only", "templates/task_template",
            "--full", "templates/task_template"]
    assert gpu_check.main(args + ["--no-save"]) == 0 and not (tmp_path / "results").exists()
    assert gpu_check.main(args) == 0 and (tmp_path / "results" / "templates" / "task_template" / "rec.json").is_file()
