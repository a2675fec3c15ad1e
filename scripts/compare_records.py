"""Did a rerun reproduce a run record? Compares the metrics of two run records and says what else differed.

    python scripts/compare_records.py NEW.json                # against the newest committed record of its task and preset
    python scripts/compare_records.py OLD.json NEW.json

A step-budgeted `quick` run is expected to give every metric again, to the last digit, when the notebook's code (or
code that differs from it only in comments, docstrings and layout, as results/code_aliases.json lists), the torch
version, the thread count and the CPU's kernels (the record's `cpu_kernels`) are all the same; only clock
readings differ (the task.toml's `resume_test_timing_metrics`, not compared). The script prints which of those
conditions differ between the two records, the metrics that differ (each with both values), and one verdict line.

Given NEW.json alone, the newest committed record may have run under other conditions (another kind of CPU, earlier
code) while an older one, possibly kept apart in a subfolder such as `other_cpu_kind/`, ran under exactly NEW's. The
script then also compares NEW with the newest such record ("same conditions"): the one a step-budgeted rerun must
reproduce to the last digit.

Exit status: 0 when every compared metric is equal (with a same-conditions record, in the comparison with it), 1 when
one differs, 2 when the records cannot be compared (other tasks or presets, or no committed record to compare with).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import code_aliases  # noqa: E402  (which record codes differ from another only in comments, docstrings and layout)


def canonical_device_name(name: str) -> str:
    """common.device.canonical_device_name, imported when first used (`common` imports torch, which --help does not
    need): records of one device written before and after its name's spelling changed compare as one device."""
    from common.device import canonical_device_name as canonical
    return canonical(name)


def comparable_config(record: dict) -> dict | None:
    """The record's config less the fields that say how a run was cut into slices, not what it computes: a run resumed
    from its checkpoint gives the uninterrupted run's metrics exactly (tests/test_campaign.py), so they are no
    condition. Those are common.checkpoint.RESUMABLE_FIELDS (imported when first used, as above) less `compile`,
    which a resume may switch but which can change a run's rounding."""
    from common.checkpoint import RESUMABLE_FIELDS
    if record.get("config") is None:
        return None
    return {k: v for k, v in record["config"].items() if k not in RESUMABLE_FIELDS or k == "compile"}

# (label, how to read it from a record): what must be equal for a rerun to reproduce a step-budgeted metric exactly
CONDITIONS = (
    ("notebook code", lambda r: (r.get("code") or {}).get("notebook_code_sha256")),
    ("torch", lambda r: (r.get("versions") or {}).get("torch")),
    ("threads", lambda r: r.get("torch_threads")),
    ("device", lambda r: r.get("gpu") or canonical_device_name(r.get("device") or "") or None),
    ("CPU kernels", lambda r: r.get("cpu_kernels")),
    ("config", comparable_config),
)


def clock_metrics(task: str, root: Path = REPO_ROOT) -> set[str]:
    """The task's metrics that read a clock, never compared: its task.toml's `resume_test_timing_metrics` (which the
    smoke preset writes) and `clock_metrics_not_in_smoke` (which only `quick` or `full` write)."""
    toml = root / task / "task.toml"
    if not toml.exists():
        return set()
    meta = tomllib.loads(toml.read_text())
    return set(meta.get("resume_test_timing_metrics", [])) | set(meta.get("clock_metrics_not_in_smoke", []))


def newest_committed(task: str, preset: str, exclude: Path | None = None, root: Path = REPO_ROOT) -> Path | None:
    """The newest record of `task` and `preset` among those the README reads (results/<task>/*.json), but `exclude`
    (if given)."""
    found = []
    for path in (root / "results" / task).glob("*.json"):
        record = json.loads(path.read_text())
        if record.get("preset") == preset and (exclude is None or path.resolve() != exclude.resolve()):
            found.append((record.get("finished_at", ""), path))
    return max(found)[1] if found else None


def same_conditions(new: dict, exclude: Path, root: Path = REPO_ROOT) -> Path | None:
    """The newest committed record of `new`'s task and preset, anywhere under results/<task>/ (subfolders included),
    but `exclude`, whose every condition (code, torch, threads, device, CPU kernels, config) is recorded and equal to
    `new`'s; None if there is none."""
    found, aliases = [], code_aliases.load(root)
    for path in (root / "results" / new["task"]).rglob("*.json"):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and (record.get("task"), record.get("preset")) == (new["task"], new["preset"]) \
                and path.resolve() != exclude.resolve() and not differing_conditions(record, new, aliases):
            found.append((record.get("finished_at", ""), path))
    return max(found)[1] if found else None


def references(new: dict, new_path: Path, root: Path = REPO_ROOT) -> list[Path]:
    """What a rerun at `new_path` is compared with: the newest committed record of its task and preset, then, where it
    is another one, the newest committed record run under the rerun's conditions (`same_conditions`); [] if none."""
    newest = newest_committed(new["task"], new["preset"], new_path, root)
    if newest is None:
        return []
    twin = same_conditions(new, new_path, root)
    return [newest] if twin is None or twin.resolve() == newest.resolve() else [newest, twin]


def same(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN here


def differing_metrics(first: dict, second: dict, clock: set[str] | list[str]) -> list[str]:
    """The names, sorted, of the metrics (but the `clock` ones) that one `metrics` dict lacks or whose values differ;
    also the resume test's comparison (tests/test_notebooks.py)."""
    return [k for k in sorted((set(first) | set(second)) - set(clock))
            if k not in first or k not in second or not same(first[k], second[k])]


def aliased_code(old: dict, new: dict, aliases: Sequence[dict[str, str]]) -> bool:
    """Whether the two records' notebook codes differ but only in comments, docstrings and layout: results/
    code_aliases.json (scripts/code_aliases.py proves each entry from git history) maps both to the same code."""
    read = dict(CONDITIONS)["notebook code"]
    a, b = read(old), read(new)
    return None not in (a, b) and a != b and code_aliases.same_code(new.get("task"), a, b, aliases)


def differing_conditions(old: dict, new: dict,
                         aliases: Sequence[dict[str, str]] = ()) -> dict[str, tuple[object, object]]:
    """The CONDITIONS that differ between two records (label -> (old, new)); one either record lacks counts. Notebook
    codes that `aliases` (code_aliases.load) prove equal but for comments count as the same code."""
    found = {label: (read(old), read(new)) for label, read in CONDITIONS
             if read(old) is None or read(new) is None or not same(read(old), read(new))}
    if aliased_code(old, new, aliases):
        del found["notebook code"]
    return found


def compare(old: dict, new: dict, clock: set[str], aliases: Sequence[dict[str, str]] = ()) -> dict:
    """The conditions that differ (label -> (old, new); a missing entry counts as differing), the metrics compared
    and those that differ (name -> (old, new)), leaving out the `clock` metrics."""
    conditions = differing_conditions(old, new, aliases)
    names = sorted((set(old["metrics"]) | set(new["metrics"])) - clock)
    differing = {k: (old["metrics"].get(k), new["metrics"].get(k))
                 for k in differing_metrics(old["metrics"], new["metrics"], clock)}
    return {"conditions": conditions, "compared": names, "differing": differing}


def verdict(result: dict) -> str:
    n, k = len(result["compared"]), len(result["differing"])
    if not k:
        return f"reproduced: all {n} compared metrics are equal"
    if result["conditions"]:
        return (f"differs in {k} of {n} metrics, which may follow from what differs: "
                f"{', '.join(result['conditions'])}")
    return (f"differs in {k} of {n} metrics with the same code, torch, threads, device, CPU kernels and config: "
            "not expected of a step-budgeted run (a time budget, or a metric that reads a clock, would explain it)")


def short(value: object, width: int = 60) -> str:
    text = "not recorded" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width - 3] + "..."


def describe_difference(a: object, b: object) -> str:
    """One condition's difference: 'not recorded' where a record lacks it, else the keys of two dicts that differ,
    else both values."""
    if a is None and b is None:
        return "not recorded in either record"
    if a is None or b is None:
        return f"not recorded in the {'old' if a is None else 'new'} record ({short(a)} -> {short(b)})"
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b)) if not same(a.get(k), b.get(k))]
        return "differs in " + ", ".join(f"{k} ({short(a.get(k), 30)} -> {short(b.get(k), 30)})" for k in keys)
    return f"differs: {short(a)} -> {short(b)}"


def report(old_path: Path, new_path: Path) -> int:
    """Print one comparison (what differs, then the verdict); 0 if every compared metric is equal, 1 if not, 2 if the
    records are of other tasks or presets."""
    old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
    if (old["task"], old["preset"]) != (new["task"], new["preset"]):
        print(f"not comparable: {old['task']} {old['preset']} against {new['task']} {new['preset']}")
        return 2
    aliases = code_aliases.load(REPO_ROOT)
    result = compare(old, new, clock_metrics(new["task"]), aliases)
    print(f"old: {old_path}\nnew: {new_path}")
    if aliased_code(old, new, aliases):
        print("  notebook code: the same but for comments, docstrings and layout (results/code_aliases.json)")
    for label, (a, b) in result["conditions"].items():
        print(f"  {label}: {describe_difference(a, b)}")
    for name, (a, b) in result["differing"].items():
        print(f"  {name}: {short(a)} -> {short(b)}")
    print(verdict(result))
    return 1 if result["differing"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path, help="NEW.json, or OLD.json NEW.json")
    args = parser.parse_args(argv)
    if len(args.records) > 2:
        parser.error("give one record (compared with the newest committed one) or two")
    if len(args.records) == 2:
        return report(*args.records)
    new_path = args.records[0]
    new = json.loads(new_path.read_text())
    olds = references(new, new_path, REPO_ROOT)
    if not olds:
        print(f"no committed {new['preset']} record of {new['task']} in results/{new['task']}/ to compare with")
        return 2
    status = report(olds[0], new_path)
    if len(olds) == 2:
        print("\nsame conditions (code, torch, threads, device, CPU kernels, config), the newest such committed record:")
        status = report(olds[1], new_path)
    return status


if __name__ == "__main__":
    sys.exit(main())
