"""The data-parallel notebook's equivalence check, run for real: two processes under torchrun, gloo, on the CPU.

The training script lives in text_generation/data_parallel/data_parallel.ipynb as the parts of a dict `SCRIPT`
(`SCRIPT["name"] = r'''...'''`), which the notebook writes to a file and launches. This test extracts the same
parts, writes the script into a temporary folder, launches its `checks` mode on two ranks with a tiny model, and
asserts what the notebook claims: the manual all-reduce, DDP (also accumulating with and without `no_sync`),
gradient accumulation and FSDP reach the first-step gradient and the parameters of one process with the whole batch
within the notebook's stated `grad_tol` and `param_tol`, while the controls (no all-reduce; a sum instead of a mean)
fail the gradient check, so the checks can tell the difference.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_cells import cell_sources, run_sources

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "text_generation" / "data_parallel" / "data_parallel.ipynb"
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0, "batch_size": 8, "lr": 2e-3,
        "min_lr_frac": 0.1, "warmup_steps": 2, "max_steps": 10, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99,
        "grad_clip": 1.0, "check_steps": 5, "collective_timeout_s": 120, "seed": 0, "resume": False}


def script_parts(nb: nbformat.NotebookNode) -> list[str]:
    """The string values assigned to `SCRIPT[...]` in the notebook's code cells, in order."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                    and isinstance(node.targets[0].value, ast.Name) and node.targets[0].value.id == "SCRIPT"):
                parts.append(ast.literal_eval(node.value))
    return parts


def stated_tolerance(nb: nbformat.NotebookNode, name: str = "param_tol") -> float:
    """The default of the notebook's Config field `name` (a tolerance)."""
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    found = re.findall(rf"^\s*{name}: float = ([0-9.eE+-]+)", source, re.M)
    assert len(found) == 1, f"the Config should state `{name}: float = <number>` once"
    return float(found[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, float]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parts = script_parts(nb)
    assert len(parts) >= 5 and "def main()" in parts[-1], "the notebook's script parts were not found"
    work = tmp_path_factory.mktemp("data_parallel")
    script = work / "dp_train.py"
    script.write_text("\n\n\n".join(part.strip("\n") for part in parts) + "\n")  # as the notebook's write_script
    (work / "cfg.json").write_text(json.dumps(TINY))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), "--modes", "checks", "--config", str(work / "cfg.json"),
           "--out", str(work / "out.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DL_DEVICE": "cpu"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads((work / "out.json").read_text())["checks"]
    result["stated_grad_tol"] = stated_tolerance(nb, "grad_tol")  # read once, with the notebook
    return result, stated_tolerance(nb)


@pytest.mark.parametrize("variant", ["manual", "ddp", "accumulation", "fsdp", "ddp_no_sync", "ddp_sync_every"])
def test_two_ranks_match_one_process_with_the_whole_batch(checks: tuple[dict, float], variant: str) -> None:
    result, tol = checks
    assert result["world_size"] == 2
    assert result["max_param_diff"][variant] <= tol, f"{variant}: {result['max_param_diff'][variant]:.2e} > {tol:.0e}"
    grad_tol = result["stated_grad_tol"]
    assert result["max_grad_rel_diff"][variant] <= grad_tol, (variant, result["max_grad_rel_diff"][variant])


def test_the_gradient_check_sees_a_sum_in_place_of_the_mean_exactly(checks: tuple[dict, float]) -> None:
    """Summing instead of averaging doubles the gradient: relative difference exactly 1 for N = 2 in the gradient
    check. The parameter check sees it only through what breaks AdamW's blindness to a constant scale, less than it
    sees a missing all-reduce."""
    result, tol = checks
    assert result["max_grad_rel_diff"]["sum_not_mean"] == pytest.approx(1.0, abs=1e-4)
    assert result["max_grad_rel_diff"]["sum_not_mean"] > result["stated_grad_tol"]
    assert result["max_param_diff"]["sum_not_mean"] < result["max_param_diff"]["no_allreduce"]


def test_halving_is_exact_so_two_ranks_agree_bit_for_bit(checks: tuple[dict, float]) -> None:
    """With two ranks, (g1 + g2) / 2 (by hand), g1 / 2 + g2 / 2 (accumulation) and DDP's divide-then-sum round alike."""
    equal = checks[0]["bitwise_equal_to_manual"]
    assert equal["accumulation"] and equal["ddp"], equal
    assert not equal["ddp_no_sync"], "half-shards are other matrix shapes: equal within round-off, not bit for bit"


def test_no_sync_all_reduces_once_per_step_and_accumulating_without_it_twice(checks: tuple[dict, float]) -> None:
    buckets = checks[0]["ddp_bucket_bytes_by_step"]
    for step in range(len(buckets["ddp"])):
        assert buckets["ddp_no_sync"][step] == buckets["ddp"][step]
        assert buckets["ddp_sync_every"][step] == buckets["ddp"][step] * 2
    n_params = checks[0]["n_params"]
    assert sum(buckets["ddp"][0]) == 4 * n_params, "every float32 gradient in exactly one bucket"


def test_the_check_fails_without_the_all_reduce(checks: tuple[dict, float]) -> None:
    result, tol = checks
    assert result["max_param_diff"]["no_allreduce"] > 10 * tol
    assert result["max_grad_rel_diff"]["no_allreduce"] > result["stated_grad_tol"], "the gradient check sees it too"
    assert result["max_param_spread_across_ranks"]["no_allreduce"] > 10 * tol  # the ranks' copies drift apart
    assert result["max_param_spread_across_ranks"]["ddp"] <= tol and result["max_param_spread_across_ranks"]["manual"] <= tol


def test_fsdp_holds_about_half_of_ddp_per_rank_on_two_ranks(checks: tuple[dict, float]) -> None:
    memory = checks[0]["memory_per_rank"]
    for part in ("params", "grads"):
        assert 0.45 <= memory["fsdp"][part] / memory["ddp"][part] <= 0.6, (part, memory)
    assert memory["fsdp"]["optimizer"] < 0.6 * memory["ddp"]["optimizer"]


def test_the_script_beside_the_notebook_is_the_notebooks_script() -> None:
    """data_parallel.ipynb saves its finished script as dp_train.py beside itself, for the shell commands it shows;
    the committed copy must be what the notebook's SCRIPT parts make now (rerun the notebook after editing them)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    expected = "\n\n\n".join(part.strip("\n") for part in script_parts(nb)) + "\n"
    committed = NOTEBOOK.parent / "dp_train.py"
    assert committed.is_file(), "dp_train.py is missing beside the notebook: run the notebook in its folder"
    assert committed.read_text() == expected, "dp_train.py is stale: rerun the notebook (scripts/run_notebook.py)"


OLD_GPU_WORLD_SIZES = "tuple(range(1, max(1, N_GPUS) + 1))"  # every count from 1 to N: 256 does not split over 3 ranks


def full_config(monkeypatch, n_gpus: int, world_sizes: str | None = None):
    """The notebook's `full` Config as a machine with `n_gpus` GPUs would build it (its cell asserts that the
    global batch splits over every world size it uses); `world_sizes` replaces the notebook's GPU_WORLD_SIZES."""
    monkeypatch.setenv("DL_PRESET", "full")
    edit = (lambda s: s) if world_sizes is None else (
        lambda s: re.sub(r"^GPU_WORLD_SIZES = .*$", f"GPU_WORLD_SIZES = {world_sizes}", s, count=1, flags=re.M))
    (setup,) = cell_sources(NOTEBOOK, select=lambda source: "PRESET = common.get_preset()" in source)
    (config,) = cell_sources(NOTEBOOK, select=lambda source: "class Config" in source)
    namespace = run_sources([setup], NOTEBOOK)
    namespace["N_GPUS"] = n_gpus  # as torch.cuda.device_count() would say there
    return run_sources([edit(config)], NOTEBOOK, namespace)["cfg"]


@pytest.mark.parametrize("n_gpus", range(1, 9))
def test_the_full_config_splits_its_batch_on_any_number_of_gpus(monkeypatch, n_gpus: int) -> None:
    cfg = full_config(monkeypatch, n_gpus)
    assert cfg.world_size == n_gpus and {1, n_gpus} <= set(cfg.scaling_world_sizes)


def test_timing_every_world_size_from_1_to_n_fails_on_4_gpus(monkeypatch) -> None:
    """The control: the world sizes the notebook timed before 2026-11-29 stop its Config cell on 4 GPUs."""
    with pytest.raises(AssertionError, match="split evenly"):
        full_config(monkeypatch, 4, OLD_GPU_WORLD_SIZES)
