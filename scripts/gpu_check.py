"""The GPU check: every notebook in `smoke` on CUDA, then, if asked, chosen `full` presets, with their records.

    python scripts/gpu_check.py --data-dir /path/to/data                      # smoke, every notebook, on CUDA
    python scripts/gpu_check.py --data-dir /path/to/data --full image_generation/vae text_generation/char_gpt
    python scripts/gpu_check.py --data-dir /path/to/data --full all --timeout 3600
    python scripts/gpu_check.py --device cpu --only templates/task_template    # the same path on a CPU (tests)
    python scripts/gpu_check.py --rehearse      # every smoke on the CPU as on an Ampere+ GPU: a rehearsal
    python scripts/gpu_check.py --rehearse inductor   # the same, compiled by Inductor (C++ code): minutes more

It needs no Jupyter and no internet: each notebook's code cells are concatenated into a plain Python script
(PyTorch, NumPy, Matplotlib and tqdm are enough for most; the seq2seq notebook also needs `num2words`, the
reinforcement-learning one `gymnasium`: each task's requirements.txt says; on a lent machine `scripts/loan.sh`
brings them as wheels and its records back through $OUT, which this script alone does not) and run in a fresh process with `DL_PRESET`, `DL_DATA_DIR`,
`DL_DEVICE` and a temporary `DL_RUNS_DIR`/`DL_CHECKPOINT_DIR` set, so nothing of yours is overwritten. On
CUDA the notebooks take their GPU path: bf16 autocast (fp16 with loss scaling below compute capability 8.0),
TF32, channels_last, `torch.compile` where their Config turns it on. The smoke runs check that each notebook
runs there and records a CUDA device. Each line reports the training peak memory (allocated/reserved, on
CUDA), the precision that ran and whether the model was compiled or fell back to eager mode (see the log and
the record's `compile` field for why).
Records of `full` runs are copied into `results/<task>/` (named by the GPU they ran on); then run
`python scripts/update_readme.py` and commit them. Without a CUDA device (and without `--device cpu`)
it converts and checks everything it can, then stops with exit code 3 before the CUDA runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("graph_learning", "image_classification", "image_generation", "reinforcement_learning", "representation_learning", "text_generation", "templates")
NO_CUDA = 3


def notebooks() -> dict[str, Path]:
    """Task folder (e.g. 'image_generation/vae') -> its notebook, for every notebook in the repository."""
    found = sorted(p for folder in FOLDERS for p in (REPO_ROOT / folder).glob("**/*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
    return {p.parent.relative_to(REPO_ROOT).as_posix(): p for p in found}


def notebook_to_script(path: Path, between: str = "") -> str:
    """The notebook's code cells as one Python script; IPython magics and shell lines are commented out.
    `between`, if given, is a line put after every cell (scripts/campaign.py: stop after a stopped slice)."""
    cells = json.loads(path.read_text())["cells"]
    parts = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = [f"# (magic) {line}" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
        parts.append(f"# ---- cell {i} ----\n" + "\n".join(lines) + (f"\n{between}" if between else ""))
    script = "\n\n".join(parts) + "\n"
    compile(script, str(path), "exec")  # a syntax error is reported here, before any run
    return script


def run_one(task: str, script: Path, preset: str, env: dict[str, str], workdir: Path, timeout: int) -> dict:
    """Run one converted notebook; returns its status, wall-clock, log file and run record (if any)."""
    runs = workdir / "runs" / preset / task.replace("/", "__")
    runs.mkdir(parents=True, exist_ok=True)
    log = workdir / "logs" / f"{task.replace('/', '__')}__{preset}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**env, "DL_PRESET": preset, "DL_RUNS_DIR": str(runs)}
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout} s"
    records = sorted(runs.glob("*.json"))
    record = json.loads(records[-1].read_text()) if records else None
    if status == "ok" and record is None:
        status = "failed (no run record)"
    return {"task": task, "preset": preset, "status": status, "seconds": time.perf_counter() - start, "log": log,
            "record": record, "record_path": records[-1] if records else None}


def check_record(result: dict, device: str, rehearse: bool = False) -> None:
    """A run on CUDA must have trained on CUDA, and a model it asked to compile must not have fallen back to
    eager mode (or found torch.compile unavailable); anything else is a failure of the check. So must a model of
    the CPU's compile rehearsal (`--rehearse`), whose record must say it rehearsed (DL_REHEARSE_GPU reached it)."""
    record = result["record"]
    if result["status"] != "ok":
        return
    if rehearse and not record.get("gpu_rehearsal"):
        result["status"] = "failed (the record does not say gpu_rehearsal: DL_REHEARSE_GPU did not reach the run)"
        return
    if record["device_type"] != device:
        result["status"] = f"failed (record says device {record['device_type']}, expected {device})"
        return
    models = (record.get("compile") or {}).get("models", [])
    rehearsed = [m for m in models if "rehearsal" in m]  # --rehearse: every model compiled, asked or not
    not_compiled = [m for m in models
                    if (m["requested"] or "rehearsal" in m) and m["status"] in ("fell_back", "unavailable")]
    if (device == "cuda" or rehearsed) and not_compiled:
        result["status"] = f"failed (compile {not_compiled[0]['status']}: {not_compiled[0]['reason']})"


def summary_line(result: dict) -> str:
    r = result["record"] or {}
    timings = r.get("timings", {})
    extra = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k not in ("train", "notebook"))
    memory = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r else "-"
    train_peak = r.get("train_peak_memory")  # CUDA: the training spans' own peak, allocated / reserved
    if train_peak:
        memory = f"{train_peak['allocated_bytes'] / 2**30:.2f}/{train_peak['reserved_bytes'] / 2**30:.2f} GiB"
    compiled = (r.get("compile") or {}).get("status", "-")
    return (f"{result['task']:<32} {result['preset']:<6} {result['status']:<28} wall {result['seconds']:7.1f} s  "
            f"train {timings.get('train', float('nan')):7.1f} s  peak {memory:>11}  {r.get('precision', '-')}  "
            f"compile {compiled}  {extra}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("DL_DATA_DIR") or str(REPO_ROOT / "data"),
                        help="folder with the datasets (mnist.npz, cifar10.npz, tinyshakespeare.txt, ...); "
                             "default: $DL_DATA_DIR, else data/")
    parser.add_argument("--only", nargs="+", metavar="TASK", help="smoke-check only these task folders")
    parser.add_argument("--full", nargs="+", metavar="TASK", default=[],
                        help="after the smoke runs, run these tasks' `full` presets ('all' for every task)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default) or cpu: the CPU runs the same path, for testing")
    parser.add_argument("--rehearse", nargs="?", const="aot_eager", choices=("aot_eager", "inductor"),
                        help="run on the CPU as an Ampere+ GPU would (DL_REHEARSE_GPU): autocast in bf16, every "
                             "model through torch.compile's Dynamo and AOTAutograd (no code generation; 'inductor': "
                             "Inductor's C++ code too), channels_last; dtype, tracing, lowering and layout errors "
                             "show here before a loan; smoke only")
    parser.add_argument("--timeout", type=int, default=3 * 3600, help="seconds per notebook run (default 3 h)")
    parser.add_argument("--no-save", action="store_true", help="do not copy `full` records into results/")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (scripts, logs, records)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.rehearse:
        if args.full:
            print("--rehearse is a rehearsal at smoke: its records are no measurement of a GPU; drop --full")
            return 2
        args.device = "cpu"
    available = notebooks()
    tasks = args.only or list(available)
    full = [t for t in available if not t.startswith("templates/")] if args.full == ["all"] else args.full
    unknown = [t for t in tasks + full if t not in available]
    if unknown:
        print(f"unknown task folder(s): {unknown}; known: {list(available)}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    scripts = {}
    for task in dict.fromkeys(tasks + full):
        scripts[task] = workdir / f"{task.replace('/', '__')}.py"
        scripts[task].write_text(notebook_to_script(available[task]))
    data_dir = Path(args.data_dir).expanduser().resolve()
    print(f"converted {len(scripts)} notebooks to scripts in {workdir}; data from {data_dir} "
          f"({', '.join(sorted(p.name for p in data_dir.iterdir())) if data_dir.is_dir() else 'MISSING'})")

    import torch  # imported late so that --help and the conversion work anywhere

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: everything up to the CUDA runs is done; run this on a GPU machine "
              "(or pass --device cpu to exercise the same path on the CPU)")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return NO_CUDA
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    if args.rehearse:
        device_name += f" (rehearsing a GPU: bf16 autocast, {args.rehearse} compile, channels_last)"
    print(f"device: {device_name}, torch {torch.__version__}")
    env = {**os.environ, "DL_DATA_DIR": str(data_dir), "DL_DEVICE": args.device, "MPLBACKEND": "Agg",
           "DL_CHECKPOINT_DIR": str(workdir / "checkpoints"), "PYTHONUNBUFFERED": "1",
           "DL_REHEARSE_GPU": {"aot_eager": "1", "inductor": "inductor"}.get(args.rehearse, "0"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}

    results = []
    for preset, selected in (("smoke", tasks), ("full", full)):
        for task in selected:
            result = run_one(task, scripts[task], preset, env, workdir, args.timeout)
            check_record(result, args.device, bool(args.rehearse))
            results.append(result)
            print(summary_line(result), flush=True)
            if result["status"] != "ok":
                print(f"  log: {result['log']}\n  " + "\n  ".join(result["log"].read_text().splitlines()[-15:]))
            elif preset == "full" and not args.no_save:
                target = REPO_ROOT / "results" / task / result["record_path"].name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(result["record_path"], target)
                print(f"  record saved: {target.relative_to(REPO_ROOT)}")
    failed = [r for r in results if r["status"] != "ok"]
    print(f"{len(results) - len(failed)} of {len(results)} runs passed on {device_name}")
    if not args.keep and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work folder kept: {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
