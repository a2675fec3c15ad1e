"""Execute a notebook top to bottom in its own folder and save it with its outputs.

    DL_PRESET=quick python scripts/run_notebook.py image_classification/resnet/resnet.ipynb
    DL_PRESET=smoke python scripts/run_notebook.py --no-save templates/task_template/task_template.ipynb

Like `jupyter execute --inplace`, but progress bars are collapsed to their final line
(carriage returns resolved), so committed notebooks stay small and readable, and figures are always captured:
the kernel runs without the caller's `MPLBACKEND` (a headless `Agg` set by a shell or CI would otherwise keep
every plot out of the saved notebook), so matplotlib uses Jupyter's inline backend.

After the run, each run record the notebook wrote is compared with the newest committed record of its task and
preset (scripts/compare_records.py), in one line: whether every metric but the clock readings came out again; and
in a second line with the newest committed record that ran under the same conditions (code, torch, threads,
device, CPU kernels, config), where that is an older one (kept in `other_cpu_kind/`, say).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from traitlets.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_records  # noqa: E402


def kernel_config() -> Config:
    """How a new kernel talks to its client: over Unix sockets with a name no other kernel has, where the system has
    them and their path fits in a socket address (about 100 characters). Over TCP, the kernel's five ports are found
    free by the client and bound by the kernel a moment later, and in between another process can take one (a kernel
    starting beside it, as under pytest's two workers, or the local end of any outgoing connection): the kernel dies
    with "Address already in use". jupyter_client's own name for the sockets (`kernel-ipc-1`..`-5` in the kernel's
    working directory) is shared by every kernel started there, so each client is given its own. One config per
    client: call this once per NotebookClient."""
    prefix = Path(tempfile.gettempdir()) / f"kernel-{uuid.uuid4().hex[:12]}"  # sockets: prefix-1 .. prefix-5
    if os.name == "nt" or len(str(prefix)) + len("-5") > 100:
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": str(prefix)}})


def kernel_env() -> dict[str, str]:
    """The caller's environment less `MPLBACKEND`, so that the kernel's figures go into the notebook."""
    return {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}


def new_records(since: float) -> list[Path]:
    """The run records in the runs folder (`DL_RUNS_DIR`, else runs/) written at or after `since` (time.time())."""
    from common.paths import runs_dir  # late: `common` imports torch

    return sorted(p for p in runs_dir().glob("*.json") if p.stat().st_mtime >= since)


def rerun_lines(records: list[Path]) -> list[str]:
    """For each record, one line: how it compares with the newest committed record of its task and preset; and a
    second where an older committed record ran under the same conditions (compare_records.same_conditions)."""
    lines, aliases = [], compare_records.code_aliases.load(compare_records.REPO_ROOT)
    for path in records:
        new = json.loads(path.read_text())
        olds = compare_records.references(new, path)
        if not olds:
            lines.append(f"{path.name}: no committed {new['preset']} record of {new['task']} to compare with")
            continue
        results = [compare_records.compare(json.loads(old.read_text()), new, compare_records.clock_metrics(new["task"]),
                                           aliases) for old in olds]
        lines.append(f"{path.name} against the committed {olds[0].name}: {compare_records.verdict(results[0])} "
                     f"(details: python scripts/compare_records.py {olds[0]} {path})")
        if len(olds) == 2:
            lines.append(f"  and against {olds[1].relative_to(compare_records.REPO_ROOT)}, the newest committed record "
                         f"run under the same conditions (code, torch, threads, device, CPU kernels, config): "
                         f"{compare_records.verdict(results[1])}")
    return lines


def run(path: Path, timeout: int = 24 * 3600, save: bool = True) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": str(path.parent)}}, config=kernel_config())
    start, started_at = time.perf_counter(), time.time()
    try:
        client.execute(env=kernel_env())
    finally:
        if save:
            nbformat.write(nb, path)
        print(f"{path}: {time.perf_counter() - start:.0f} s" + (", outputs saved" if save else ", outputs not saved"))
    for line in rerun_lines(new_records(started_at)):
        print(line)


if __name__ == "__main__":
    args = sys.argv[1:]
    save = "--no-save" not in args
    paths = [a for a in args if a != "--no-save"]
    if len(paths) != 1 or paths[0].startswith("-"):  # -h, --help, an unknown option: the usage
        sys.exit(__doc__)
    if not Path(paths[0]).is_file():
        sys.exit(f"{paths[0]}: no such notebook")
    run(Path(paths[0]).resolve(), save=save)
