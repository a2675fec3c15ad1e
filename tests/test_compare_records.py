"""scripts/compare_records.py: whether a rerun reproduced a run record, and what else differed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from scripts_module import load_script

compare_records = load_script("compare_records")


def record(**metrics: object) -> dict:
    return {"task": "image_generation/ddpm", "preset": "quick", "finished_at": "2026-11-28T00:00:00Z",
            "code": {"notebook_code_sha256": "a" * 64}, "versions": {"torch": "2.14.1"}, "torch_threads": 2,
            "device": "cpu (2 threads, x86_64)", "gpu": None, "config": {"steps": 2100, "seed": 0},
            "cpu_kernels": {"capability": "AVX2", "cpu_family": "25", "model": "1", "stepping": "1"},
            "metrics": {"fid": 86.4, "fid_by_steps": {"5": 120.0, "10": 95.0}, "ancestral_seconds": 12.5, **metrics}}


def write(folder: Path, name: str, value: dict) -> Path:
    path = folder / name
    path.write_text(json.dumps(value))
    return path


def test_a_rerun_with_equal_metrics_is_reproduced_whatever_its_clock_reads(tmp_path: Path, capsys) -> None:
    old, new = record(), record(ancestral_seconds=14.0)
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "b.json", new))]) == 0
    out = capsys.readouterr().out
    assert "reproduced: all 2 compared metrics are equal" in out  # ancestral_seconds: a clock reading (DDPM's task.toml)
    assert "ancestral_seconds" in compare_records.clock_metrics("image_generation/ddpm")


def test_one_differing_digit_deep_in_a_metric_is_reported_and_fails(tmp_path: Path, capsys) -> None:
    """The control of the test above: the same records but for one value inside a dict-valued metric."""
    old, new = record(), record(fid_by_steps={"5": 120.0, "10": 95.00000001})
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "b.json", new))]) == 1
    out = capsys.readouterr().out
    assert "fid_by_steps:" in out and "fid:" not in out.replace("fid_by_steps:", "")
    assert "not expected of a step-budgeted run" in out  # nothing else differed


def test_the_conditions_that_differ_are_named(tmp_path: Path, capsys) -> None:
    old, new = record(), record(fid=86.51)
    new["cpu_kernels"] = {"capability": "AVX512", "cpu_family": "25", "model": "17", "stepping": "1"}
    new["config"] = {"steps": 2100, "seed": 1}
    del old["versions"]
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "b.json", new))]) == 1
    out = capsys.readouterr().out
    assert "CPU kernels: differs in capability" in out and "model" in out and "stepping" not in out
    assert "config: differs in seed (0 -> 1)" in out
    assert "torch: not recorded in the old record" in out
    assert "may follow from what differs: torch, CPU kernels, config" in out


def test_a_run_resumed_in_slices_is_compared_as_the_same_config(tmp_path: Path, capsys) -> None:
    """The RL `full` rerun of 2026-11-29 ran in two slices: its config's `resume` was true where the run before's was
    false, and that was named as a differing condition though a resumed run reproduces the uninterrupted one."""
    old, new = record(), record()
    old["config"] = {**old["config"], "resume": False, "stop_after_steps": 0}
    new["config"] = {**new["config"], "resume": True, "stop_after_steps": 237}
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "b.json", new))]) == 0
    assert "config" not in capsys.readouterr().out
    new["config"]["seed"] = 1  # the control: a field that changes what the run computes is still a condition
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "c.json", new))]) == 0
    assert "config: differs in seed (0 -> 1)" in capsys.readouterr().out


def test_one_thread_spelt_before_and_after_is_the_same_device(tmp_path: Path, capsys) -> None:
    """Records of a run on one thread said "cpu (1 threads, ...)" until 2026-11-29 and "cpu (1 thread, ...)" since:
    the same device, not a differing condition."""
    old, new = record(), record()
    old["device"], new["device"] = "cpu (1 threads, x86_64)", "cpu (1 thread, x86_64)"
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "b.json", new))]) == 0
    assert "device" not in capsys.readouterr().out
    new["device"] = "cpu (2 threads, x86_64)"  # the control: another device still differs
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "c.json", new))]) == 0
    assert "device: " in capsys.readouterr().out


def test_code_that_differs_only_in_comments_is_the_same_code() -> None:
    """Two notebook codes that results/code_aliases.json maps to one code are not a differing condition; the
    control, the same two codes with no alias (or an alias of another task), is."""
    old, new = record(), record()
    new["code"] = {"notebook_code_sha256": "b" * 64}
    alias = {"task": "image_generation/ddpm", "from": "a" * 64, "to": "b" * 64}
    assert compare_records.differing_conditions(old, new, [alias]) == {}
    assert compare_records.compare(old, new, set(), [alias])["conditions"] == {}
    assert "notebook code" in compare_records.differing_conditions(old, new, [])
    assert "notebook code" in compare_records.differing_conditions(old, new, [{**alias, "task": "image_generation/gan"}])
    both_older = record()  # two older codes, each aliased to the code now, are the same code too
    both_older["code"] = {"notebook_code_sha256": "c" * 64}
    assert compare_records.differing_conditions(old, both_older, [alias, {**alias, "from": "c" * 64}]) == {}
    assert "notebook code" in compare_records.differing_conditions(old, both_older, [alias])


def test_the_report_reads_the_committed_aliases(tmp_path: Path, capsys) -> None:
    """The report reads results/code_aliases.json: a record of a listed older code against one of the code it is
    aliased to names no differing condition and says that the code differs only in comments; the control, a code that
    no alias lists, is named as differing."""
    aliases = compare_records.code_aliases.load()
    assert aliases, "results/code_aliases.json lists no alias"
    task, older, now = aliases[0]["task"], aliases[0]["from"], aliases[0]["to"]
    old, new, unlisted = record(), record(), record()
    for r, sha in ((old, older), (new, now), (unlisted, "f" * 64)):
        r["task"], r["code"] = task, {"notebook_code_sha256": sha}
    assert compare_records.main([str(write(tmp_path, "a.json", old)), str(write(tmp_path, "b.json", new))]) == 0
    out = capsys.readouterr().out
    assert "notebook code: the same but for comments" in out and "reproduced" in out
    assert compare_records.main([str(write(tmp_path, "c.json", unlisted)), str(write(tmp_path, "b.json", new))]) == 0
    out = capsys.readouterr().out
    assert "notebook code: differs" in out and "the same but for comments" not in out


def test_one_record_is_compared_with_the_newest_committed_one_of_its_task_and_preset(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "results" / "image_generation" / "ddpm"
    folder.mkdir(parents=True)
    older, newer, full = record(fid=90.0), record(), record(fid=5.0)
    older["finished_at"], full["preset"] = "2026-11-20T00:00:00Z", "full"
    for name, value in (("older.json", older), ("newer.json", newer), ("full.json", full)):
        write(folder, name, value)
    rerun = write(tmp_path, "rerun.json", copy.deepcopy(newer))
    assert compare_records.newest_committed("image_generation/ddpm", "quick", rerun, tmp_path) == folder / "newer.json"
    assert compare_records.newest_committed("image_generation/ddpm", "quick", folder / "newer.json", tmp_path) == \
        folder / "older.json"  # a committed record is not compared with itself
    assert compare_records.newest_committed("image_generation/vae", "quick", rerun, tmp_path) is None


def test_an_older_record_run_under_the_same_conditions_is_compared_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys) -> None:
    """The newest committed record ran on another kind of CPU and its fid differs from the rerun's; an older one, kept
    in other_cpu_kind/, ran under the rerun's conditions with the rerun's metrics. Given the rerun alone, the script
    compares it with both and exits 0: reproduced. Controls: one digit changed in the older record's metrics exits 1,
    and an older record that does not store its CPU kernels is never taken for the same conditions."""
    folder = tmp_path / "results" / "image_generation" / "ddpm"
    (folder / "other_cpu_kind").mkdir(parents=True)
    newest, twin = record(fid=86.51), record()
    newest["cpu_kernels"] = {"capability": "AVX512", "cpu_family": "25", "model": "17", "stepping": "1"}
    twin["finished_at"] = "2026-11-27T00:00:00Z"
    write(folder, "newest.json", newest)
    rerun = write(tmp_path, "rerun.json", record())
    monkeypatch.setattr(compare_records, "REPO_ROOT", tmp_path)

    def run_with(older: dict) -> tuple[int, str]:
        write(folder / "other_cpu_kind", "twin.json", older)
        status = compare_records.main([str(rerun)])
        return status, capsys.readouterr().out

    status, out = run_with(twin)
    assert status == 0
    assert "newest.json" in out and "differs in 1 of 2 metrics, which may follow from what differs: CPU kernels" in out
    same_part = out.split("same conditions")[1]
    assert "twin.json" in same_part and same_part.rstrip().endswith("reproduced: all 2 compared metrics are equal")
    assert compare_records.same_conditions(record(), rerun, tmp_path) == folder / "other_cpu_kind" / "twin.json"

    status, out = run_with(record(fid=86.40000001) | {"finished_at": twin["finished_at"]})
    assert status == 1 and out.rstrip().endswith("not expected of a step-budgeted run (a time budget, or a metric "
                                                 "that reads a clock, would explain it)")

    unknown_cpu = copy.deepcopy(twin)
    del unknown_cpu["cpu_kernels"]
    status, out = run_with(unknown_cpu)
    assert status == 1 and "same conditions" not in out
    assert compare_records.same_conditions(record(), rerun, tmp_path) is None


def test_records_of_other_tasks_are_not_compared(tmp_path: Path, capsys) -> None:
    other = record()
    other["task"] = "image_generation/flow_matching"
    assert compare_records.main([str(write(tmp_path, "a.json", record())), str(write(tmp_path, "b.json", other))]) == 2
    assert "not comparable" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["image_generation/ddpm", "image_classification/resnet"])
def test_the_committed_records_compare_with_themselves(task: str, tmp_path: Path, capsys) -> None:
    """Every committed record of a task is reproduced by itself (the comparison reads real records whole), and the
    control: a copy with one metric moved in its last digits is not."""
    paths = sorted((compare_records.REPO_ROOT / "results" / task).glob("*.json"))
    assert paths
    clock = compare_records.clock_metrics(task)
    for path in paths:
        assert compare_records.main([str(path), str(path)]) == 0
        moved = json.loads(path.read_text())
        name = next(k for k, v in moved["metrics"].items() if isinstance(v, float) and k not in clock)
        moved["metrics"][name] *= 1 + 1e-12
        assert compare_records.main([str(path), str(write(tmp_path, path.name, moved))]) == 1, (path.name, name)


def unlisted_clock_readings(task: str, clock: set[str]) -> list[str]:
    """Metrics of the task's newest record of each preset whose names say they read a clock (seconds, a rate per
    second) but which `clock` leaves to be compared as if they were reproducible."""
    newest = [compare_records.newest_committed(task, preset) for preset in ("smoke", "quick", "full")]
    return sorted({name for path in newest if path is not None for name in json.loads(path.read_text())["metrics"]
                   if ("seconds" in name or "per_second" in name) and name not in clock})


def test_every_clock_reading_of_the_newest_records_is_left_out_of_comparisons() -> None:
    """A metric that reads a clock, compared as if reproducible, makes every rerun 'differ' (the ViT's mixup arm's
    seconds did, written by `quick` only, so smoke's `resume_test_timing_metrics` could not list it). The control:
    without `clock_metrics_not_in_smoke` the ViT's newest `quick` record is flagged."""
    tasks = sorted(p.parent.relative_to(compare_records.REPO_ROOT).as_posix()
                   for p in compare_records.REPO_ROOT.glob("*/*/task.toml"))
    assert len(tasks) >= 17
    flagged = {task: unlisted_clock_readings(task, compare_records.clock_metrics(task)) for task in tasks}
    assert not any(flagged.values()), flagged
    vit = "image_classification/vit"
    meta = compare_records.tomllib.loads((compare_records.REPO_ROOT / vit / "task.toml").read_text())
    assert unlisted_clock_readings(vit, set(meta["resume_test_timing_metrics"])) == \
        ["ablation_train_seconds__mixup_cutmix"]
