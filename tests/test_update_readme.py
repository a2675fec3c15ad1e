"""scripts/update_readme.py: which records the table shows and how it names their yardsticks and GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
update_readme = load_script("update_readme")


def add_task(root: Path, name: str, metric: str, records: list[dict]) -> None:
    """A task folder image_generation/<name> with a task.toml and the given committed records."""
    task_dir = root / "image_generation" / name
    task_dir.mkdir(parents=True)
    (task_dir / "task.toml").write_text(f'title = "{name.upper()}"\ncategory = "Image generation"\npaper = "P"\n'
                                        f'paper_url = "u"\nnotebook = "{name}.ipynb"\nmetric = "{metric}"\n'
                                        f'metric_label = "{metric}"\nlower_is_better = true\nprerequisites = []\n'
                                        'next = []\n')
    results = root / "results" / "image_generation" / name
    results.mkdir(parents=True)
    for i, extra in enumerate(records):
        record = {"task": f"image_generation/{name}", "preset": "quick", "device": "cpu", "device_type": "cpu",
                  "data": "MNIST subset", "train_seconds": 60.0, "timing": "steps-only/v1",
                  "metrics": {metric: 50.0 + i}, "finished_at": f"2026-01-0{i + 1}", **extra}
        (results / f"{i}.json").write_text(json.dumps(record))


SHA_A, SHA_B = "a" * 64, "b" * 64


def test_fid_headlines_name_their_classifier_and_a_mix_is_flagged(tmp_path: Path) -> None:
    add_task(tmp_path, "gan", "fid", [{"fid_classifier_sha256": SHA_A}])
    add_task(tmp_path, "vae", "fid", [{"fid_classifier_sha256": SHA_A}])
    add_task(tmp_path, "nll", "nelbo", [{"fid_classifier_sha256": SHA_B}])  # not a fid headline: never compared
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "fid: 50.00 (quick, CPU; MNIST subset; classifier aaaaaaaa)" in table
    assert "classifier bbbbbbbb" not in table and "Not comparable" not in table  # one classifier: nothing to flag

    add_task(tmp_path, "ddpm", "fid_unconditional", [{"fid_classifier_sha256": SHA_B}])
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    flags = [line for line in table.splitlines() if "Not comparable" in line]
    assert len(flags) == 1 and "MNIST subset" in flags[0]
    assert "aaaaaaaa: GAN, VAE" in flags[0] and "bbbbbbbb: DDPM" in flags[0] and "NLL" not in flags[0]


def test_a_record_without_its_classifier_is_flagged_only_beside_one_that_has_it(tmp_path: Path) -> None:
    add_task(tmp_path, "gan", "fid", [{}])
    add_task(tmp_path, "vae", "fid", [{}])
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "Not comparable" not in table and "classifier" not in table  # no classifier committed: nothing to mark
    add_task(tmp_path, "ddpm", "fid", [{"fid_classifier_sha256": {"fid_classifier_mnist.pt": SHA_A}}])
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "not recorded: GAN, VAE" in table and "aaaaaaaa: DDPM" in table


def commit_classifiers(root: Path, *shas: str) -> None:
    """`root`'s common/fid_weights/SHA256SUMS pins `shas` (the committed FID classifiers)."""
    folder = root / "common" / "fid_weights"
    folder.mkdir(parents=True)
    (folder / "SHA256SUMS").write_text("".join(f"{sha}  fid_classifier_{i}.pt\n" for i, sha in enumerate(shas)))


def test_a_fid_headline_measured_with_another_classifier_than_the_committed_one_is_marked(tmp_path: Path) -> None:
    commit_classifiers(tmp_path, SHA_A, "c" * 64)
    add_task(tmp_path, "gan", "fid", [{"fid_classifier_sha256": SHA_A}])
    add_task(tmp_path, "nll", "nelbo", [{"fid_classifier_sha256": SHA_B}])  # not a fid headline: never marked
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "fid: 50.00 (quick, CPU; MNIST subset; classifier aaaaaaaa)" in table  # the committed one: no mark
    assert "†" not in table
    add_task(tmp_path, "vae", "fid", [{"fid_classifier_sha256": SHA_B}])
    add_task(tmp_path, "ddpm", "fid", [{"fid_classifier_sha256": {"fid_classifier_mnist.pt": SHA_A,
                                                                   "fid_classifier_fashion_mnist.pt": SHA_B}}])
    add_task(tmp_path, "flow", "fid", [{}])  # a record that does not name its classifier
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "fid: 50.00 (quick, CPU; MNIST subset; classifier aaaaaaaa)" in table
    assert "classifier bbbbbbbb†)" in table and "classifier aaaaaaaa+bbbbbbbb†)" in table
    assert "classifier not recorded†)" in table
    notes = [line for line in table.splitlines() if line.startswith("† ")]
    assert len(notes) == 1 and "other than the committed one" in notes[0]
    assert all(title in notes[0] for title in ("VAE", "DDPM", "FLOW")) and "GAN" not in notes[0] and "NLL" not in notes[0]


def test_the_real_readme_is_checked_against_the_committed_classifiers() -> None:
    """The repository's own table uses the pinned SHA-256 of common/fid_weights (not an empty set)."""
    from common.fid_classifier import pinned_sha256
    assert update_readme.committed_classifiers() == set(pinned_sha256().values()) != set()


def gpu_record(name: str) -> dict:
    return {"device_type": "cuda", "gpu": name, "device": name}


def test_only_the_desktop_rtx_4090_counts_toward_n() -> None:
    for name in ("NVIDIA GeForce RTX 4090", "NVIDIA  GeForce RTX 4090 ", "GeForce RTX 4090"):
        assert update_readme.is_4090(gpu_record(name)), name
    for name in ("NVIDIA GeForce RTX 4090 Laptop GPU", "NVIDIA GeForce RTX 4090 D", "NVIDIA RTX 4090 Mobile",
                 "NVIDIA GeForce RTX 4080", "NVIDIA H100 80GB HBM3"):
        assert not update_readme.is_4090(gpu_record(name)), name
    assert not update_readme.is_4090({"device_type": "cpu", "gpu": None, "device": "cpu (RTX 4090 box)"})


def test_a_laptop_4090_run_is_named_apart_and_not_summed_into_n(tmp_path: Path) -> None:
    add_task(tmp_path, "gan", "fid", [])
    results = tmp_path / "results" / "image_generation" / "gan"
    laptop = {"task": "image_generation/gan", "preset": "full", "data": "MNIST subset", "train_seconds": 3600.0,
              "timing": "steps-only/v1", "metrics": {"fid": 20.0}, "finished_at": "2026-02-01",
              **gpu_record("NVIDIA GeForce RTX 4090 Laptop GPU")}
    (results / "laptop.json").write_text(json.dumps(laptop))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "N = not yet measured**: 0 of 1 tasks" in table
    assert "NVIDIA GeForce RTX 4090 Laptop GPU: 1.00 hours over 1 of 1 tasks" in table


def test_a_gpu_time_that_ran_eagerly_after_a_compile_fallback_says_so(tmp_path: Path) -> None:
    add_task(tmp_path, "gan", "fid", [])
    results = tmp_path / "results" / "image_generation" / "gan"
    record = {"task": "image_generation/gan", "preset": "full", "data": "MNIST subset", "train_seconds": 600.0,
              "timing": "steps-only/v1", "metrics": {"fid": 20.0}, "finished_at": "2026-02-01",
              "compile": {"status": "fell_back", "models": [{"model": "G", "requested": True, "status": "fell_back",
                                                             "reason": "InductorError in the first training step"}]},
              **gpu_record("NVIDIA GeForce RTX 4090")}
    (results / "rtx.json").write_text(json.dumps(record))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "10.0 min (NVIDIA GeForce RTX 4090), eager: torch.compile fell back" in table
    record["compile"]["models"][0]["status"] = record["compile"]["status"] = "compiled"
    (results / "rtx.json").write_text(json.dumps(record))
    assert "eager" not in update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    fell_back = {"status": "fell_back", "models": [{"model": "G", "requested": True, "status": "fell_back"}]}
    record["slices"] = [{"to_step": 500, "compile": fell_back}, {"to_step": 1000, "compile": record["compile"]}]
    (results / "rtx.json").write_text(json.dumps(record))  # compiled in its last slice, eager in its first
    assert "eager: torch.compile fell back" in update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)


def test_a_gpu_run_that_would_not_fit_an_rtx_4090_says_so(tmp_path: Path) -> None:
    """Every `full` preset is sized for a 4090's 24 GiB, but the campaign runs on an H100 or H200 (80-141 GiB), where
    a preset that outgrew it would still run. A span that reserved 30 GiB is named beside the time; the control, the
    same record at 10 GiB, and a CPU run's 30 GiB of host memory are not."""
    add_task(tmp_path, "ddpm", "fid", [])
    results = tmp_path / "results" / "image_generation" / "ddpm"
    record = {"task": "image_generation/ddpm", "preset": "full", "data": "MNIST subset", "train_seconds": 600.0,
              "timing": "steps-only/v1", "metrics": {"fid": 20.0}, "finished_at": "2026-02-01",
              "peak_memory_bytes": 2 * 2**30, "train_peak_memory": {"allocated_bytes": 2**30, "reserved_bytes": 2**31},
              "peak_memory_by_span": {"eval": {"allocated_bytes": 29 * 2**30, "reserved_bytes": 30 * 2**30}},
              **gpu_record("NVIDIA H100 80GB HBM3")}
    (results / "h100.json").write_text(json.dumps(record))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "(NVIDIA H100 80GB HBM3), peak 30.0 GiB: more than an RTX 4090 holds" in table
    record["peak_memory_by_span"]["eval"] = {"allocated_bytes": 9 * 2**30, "reserved_bytes": 10 * 2**30}  # control
    (results / "h100.json").write_text(json.dumps(record))
    assert "RTX 4090 holds" not in update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert update_readme.memory_note({"device_type": "cpu", "peak_memory_bytes": 30 * 2**30}) == ""
    assert update_readme.memory_note({**gpu_record("NVIDIA GeForce RTX 4090"), "peak_memory_bytes": 23.8 * 2**30}) == ""


def test_a_record_of_a_cpu_rehearsal_of_the_gpu_path_is_refused(tmp_path: Path) -> None:
    """A CPU run in bf16 autocast or through the compile rehearsal (gpu_check.py --rehearse) measured nothing a
    reader may take for a GPU's or a CPU's time: its record in results/ stops the README. Control: the same record
    in fp32 without a rehearsal is a CPU record like any other."""
    add_task(tmp_path, "gan", "fid", [{"precision": "bf16"}])
    with pytest.raises(SystemExit, match="a CPU rehearsal of the GPU path"):
        update_readme.load_tasks(tmp_path)
    compiled = {"status": "compiled", "models": [{"model": "G", "requested": False, "status": "compiled",
                                                  "reason": None, "rehearsal": "aot_eager"}]}
    (tmp_path / "results" / "image_generation" / "gan" / "0.json").write_text(json.dumps(
        {"task": "image_generation/gan", "preset": "quick", "device": "cpu", "device_type": "cpu", "data": "MNIST",
         "train_seconds": 60.0, "timing": "steps-only/v1", "metrics": {"fid": 50.0}, "finished_at": "2026-01-01",
         "precision": "fp32", "compile": compiled}))
    with pytest.raises(SystemExit, match="a CPU rehearsal of the GPU path"):
        update_readme.load_tasks(tmp_path)
    record = json.loads((tmp_path / "results" / "image_generation" / "gan" / "0.json").read_text())
    del compiled["models"][0]["rehearsal"]
    (tmp_path / "results" / "image_generation" / "gan" / "0.json").write_text(json.dumps(
        {**record, "compile": compiled, "gpu_rehearsal": True}))  # rehearsed, though nothing autocast or compiled
    with pytest.raises(SystemExit, match="a CPU rehearsal of the GPU path"):
        update_readme.load_tasks(tmp_path)
    (tmp_path / "results" / "image_generation" / "gan" / "0.json").write_text(json.dumps(
        {**record, "compile": compiled}))  # the control: the same record without any mark of a rehearsal
    assert "1.0 min (cpu)" in update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)


def test_a_run_in_slices_on_two_gpus_is_listed_under_each_and_never_as_a_4090(tmp_path: Path) -> None:
    slices = [{"device": "NVIDIA GeForce RTX 4090", "train_seconds": 100.0},
              {"device": "NVIDIA H100 80GB HBM3", "train_seconds": 260.0}]
    full = {"preset": "full", "device": "NVIDIA H100 80GB HBM3", "gpu": "NVIDIA H100 80GB HBM3", "device_type": "cuda",
            "train_seconds": 360.0, "slices": slices}
    add_task(tmp_path, "gan", "fid", [full])
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "NVIDIA GeForce RTX 4090 + NVIDIA H100 80GB HBM3" in table
    assert "0 of 1 tasks have a `full` run measured on an RTX 4090" in table
    other = next(line for line in table.splitlines() if line.startswith("Measured on other GPUs"))
    assert "NVIDIA GeForce RTX 4090: 0.03 hours over 1 of 1 tasks" in other
    assert "NVIDIA H100 80GB HBM3: 0.07 hours over 1 of 1 tasks" in other
    one_gpu = {**full, "slices": [{**s, "device": "NVIDIA GeForce RTX 4090"} for s in slices],
               "device": "NVIDIA GeForce RTX 4090", "gpu": "NVIDIA GeForce RTX 4090", "finished_at": "2026-02-01"}
    add_task(tmp_path, "vae", "fid", [one_gpu])
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "1 of 2 tasks have a `full` run measured on an RTX 4090" in table


def test_a_time_names_the_whole_notebooks_wall_clock_when_the_record_has_it(tmp_path: Path) -> None:
    """A notebook whose sweep runs outside `train_seconds` (the BPE vocabulary sweep) must not look cheaper than it is."""
    add_task(tmp_path, "vae", "nelbo", [{"timings": {"train": 60.0, "notebook": 1944.0}}])
    add_task(tmp_path, "gan", "nelbo", [{}])  # a record without the notebook's time: nothing is made up
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "1.0 min (cpu; whole notebook 32.4 min)" in table
    assert "whole notebook" not in next(line for line in table.splitlines() if "gan.ipynb" in line)


def test_a_full_run_on_a_cpu_is_the_headline_without_a_gpu_run_and_is_timed_as_full(tmp_path: Path) -> None:
    """A `full` preset run on a CPU (the RL notebook's: bound by Python and its simulators) outranks the `quick` run as
    the headline and is listed, labelled `full`, beside the quick time in the CPU column; a GPU `full` run still
    outranks it, and it never counts toward N or the other GPUs' hours."""
    full_cpu = {"preset": "full", "train_seconds": 3000.0, "device": "cpu (1 threads)"}
    add_task(tmp_path, "vae", "nelbo", [{}, full_cpu])  # metrics 50.0 (quick) and 51.0 (full, CPU)
    headline, gpu_time, cpu_time = vae_cells(tmp_path)[3:6]
    assert headline.startswith("nelbo: 51.00 (full, CPU;") and gpu_time == update_readme.NOT_MEASURED
    assert cpu_time == "1.0 min (cpu)<br>50.0 min (`full`, cpu (1 thread))"  # records before 2026-11-29 said "1 threads"
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "No `full` run has been measured on another GPU either." in table
    add_task(tmp_path, "gan", "nelbo", [{}, full_cpu, {"preset": "full", **gpu_record("NVIDIA H100 80GB HBM3")}])
    gan = next(line for line in update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path).splitlines()
               if "gan.ipynb" in line)
    assert "nelbo: 52.00 (full, NVIDIA H100 80GB HBM3;" in gan  # the control: a GPU run is still the headline


def test_a_cpu_time_names_the_instruction_set_of_its_kernels_when_the_record_has_it(tmp_path: Path) -> None:
    """Two CPUs that both call themselves "AMD EPYC" ran the DDPM's `quick` steps in 595 s and 1,083 s: a CPU time
    says which kernels ran where the record stores `cpu_kernels` (records before 2026-11-27 do not)."""
    kernels = {"capability": "AVX2", "cpu_family": "25", "model": "1", "stepping": "1"}
    full_cpu = {"preset": "full", "train_seconds": 3000.0, "device": "cpu (1 threads)", "cpu_kernels": kernels}
    add_task(tmp_path, "vae", "nelbo", [{"device": "cpu (2 threads, x86_64)", "cpu_kernels": kernels}, full_cpu])
    assert vae_cells(tmp_path)[5] == "1.0 min (cpu (2 threads, x86_64, AVX2))<br>50.0 min (`full`, cpu (1 thread, AVX2))"
    add_task(tmp_path, "gan", "nelbo", [{"device": "cpu (2 threads, x86_64)"}])  # the control: not recorded
    assert "1.0 min (cpu (2 threads, x86_64)) |" in update_readme.render_table(update_readme.load_tasks(tmp_path),
                                                                             tmp_path)


def test_a_cpu_time_says_when_its_kernels_were_capped(tmp_path: Path) -> None:
    """A run that capped its kernels (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU, to repeat an AVX2 machine's
    rounding) ran AVX2 kernels on another CPU, whose speed is not an AVX2 machine's: the time says so."""
    capped = {"capability": "AVX2", "cpu_family": "25", "model": "17", "stepping": "1",
              "env": {"ATEN_CPU_CAPABILITY": "avx2"}}
    add_task(tmp_path / "capped", "vae", "nelbo", [{"device": "cpu (2 threads, x86_64)", "cpu_kernels": capped}])
    assert vae_cells(tmp_path / "capped")[5] == "1.0 min (cpu (2 threads, x86_64, AVX2, capped))"
    del capped["env"]  # the control: the same record without the caps
    add_task(tmp_path / "plain", "vae", "nelbo", [{"device": "cpu (2 threads, x86_64)", "cpu_kernels": capped}])
    assert vae_cells(tmp_path / "plain")[5] == "1.0 min (cpu (2 threads, x86_64, AVX2))"


def notebook_json(code: str, markdown: str = "# A task") -> str:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": markdown},
             {"cell_type": "code", "metadata": {}, "source": code, "outputs": [], "execution_count": None}]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def code_sha(tmp_path: Path, code: str) -> str:
    """The notebook-code SHA-256 of a one-cell notebook holding `code` (what a record of that code names)."""
    from common.record import notebook_code_sha256
    scratch = tmp_path / "scratch.ipynb"
    scratch.write_text(notebook_json(code))
    return notebook_code_sha256(scratch)


def vae_cells(root: Path) -> list[str]:
    """The VAE row's cells: task, paper, notebook, headline, GPU time, CPU time."""
    table = update_readme.render_table(update_readme.load_tasks(root), root)
    line = next(line for line in table.splitlines() if "vae.ipynb" in line)
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def test_a_number_from_older_notebook_code_is_marked_and_explained(tmp_path: Path) -> None:
    now = code_sha(tmp_path, "x = 1")
    gpu_full = {"preset": "full", "train_seconds": 30.0, "code": {"notebook_code_sha256": "0" * 64},
                **gpu_record("NVIDIA H100 80GB HBM3")}
    add_task(tmp_path, "vae", "nelbo", [{"code": {"notebook_code_sha256": now}}, gpu_full])
    notebook = tmp_path / "image_generation" / "vae" / "vae.ipynb"
    notebook.write_text(notebook_json("x = 1"))

    headline, gpu_time, cpu_time = vae_cells(tmp_path)[3:6]
    assert "‡" in headline and "(full, NVIDIA H100 80GB HBM3" in headline  # the older GPU run is the headline
    assert gpu_time.endswith("‡") and "‡" not in cpu_time  # the quick CPU run is of the code there is now
    notebook.write_text(notebook_json("x = 1", markdown="# New prose"))  # prose is not code: nothing changes
    assert "‡" not in vae_cells(tmp_path)[5]

    notebook.write_text(notebook_json("x = 2"))  # the control: the quick run's code is now older too
    assert vae_cells(tmp_path)[5].endswith("‡")
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "‡ Measured with an earlier version of the notebook's code" in table and "(VAE)" in table

    add_task(tmp_path, "gan", "fid", [{}])  # a record that does not name its code

    def gan_row() -> str:
        table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
        return next(line for line in table.splitlines() if "gan.ipynb" in line)
    assert "‡" not in gan_row()  # no notebook to compare it with: nothing to say
    (tmp_path / "image_generation" / "gan" / "gan.ipynb").write_text(notebook_json("y = 1"))
    assert gan_row().endswith("(cpu)‡ |")  # with one, a record that names no code counts as older code


def test_the_footnote_names_a_task_whose_only_older_number_is_a_full_run_on_a_cpu(tmp_path: Path) -> None:
    """The CPU column shows `full` runs made on a CPU too; the footnote that explains ‡ read only the headline, the
    GPU runs and the `quick` CPU runs, so a ‡ on such a run stood under no footnote naming its task."""
    now = code_sha(tmp_path, "x = 1")
    gpu_full = {"preset": "full", "code": {"notebook_code_sha256": now}, **gpu_record("NVIDIA H100 80GB HBM3")}
    cpu_full = {"preset": "full", "train_seconds": 600.0, "code": {"notebook_code_sha256": "0" * 64}}
    add_task(tmp_path, "vae", "nelbo", [{"code": {"notebook_code_sha256": now}}, gpu_full, cpu_full])
    (tmp_path / "image_generation" / "vae" / "vae.ipynb").write_text(notebook_json("x = 1"))
    headline, gpu_time, cpu_time = vae_cells(tmp_path)[3:6]
    assert "‡" not in headline + gpu_time and cpu_time == "1.0 min (cpu)<br>10.0 min (`full`, cpu)‡"
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "‡ Measured with an earlier version of the notebook's code" in table and "(VAE)" in table
    cpu_full["code"] = {"notebook_code_sha256": now}  # the control: the same run of the code now, no ‡, no footnote
    (tmp_path / "results" / "image_generation" / "vae" / "2.json").write_text(json.dumps(
        {**json.loads((tmp_path / "results" / "image_generation" / "vae" / "2.json").read_text()), **cpu_full}))
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "‡" not in table


def test_a_run_in_slices_waits_for_all_its_slices_not_the_last_one(tmp_path: Path) -> None:
    """A sliced record's `notebook` timing covers its last slice only (the seq2seq `full` CPU run: 113 of 181 min)."""
    slices = [{"device": "cpu", "train_seconds": 4033.3, "wall_seconds": 4066.2},
              {"device": "cpu", "train_seconds": 6324.0, "wall_seconds": 6800.2}]
    record = {"train_seconds": 10357.3, "timings": {"train": 10357.3, "notebook": 6784.8}, "slices": slices}
    add_task(tmp_path, "vae", "nelbo", [record])
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "172.6 min (cpu; whole notebook 181.1 min in 2 slices)" in table
    assert "113.1 min" not in table  # the control: the last slice's notebook time alone, what the table showed before
    one = {**record, "slices": slices[:1]}  # one slice: its notebook timing is the whole run's
    add_task(tmp_path, "gan", "nelbo", [one])
    gan = next(line for line in update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path).splitlines()
               if "gan.ipynb" in line)
    assert "whole notebook 113.1 min)" in gan


def test_a_record_of_older_code_leaves_the_table_once_the_code_now_has_one_on_its_dataset(tmp_path: Path) -> None:
    """A code change that rewords a record's `data` text (the training-deep-nets section 5 on other images, SimCLR's
    validation split described) left the superseded run beside the new one, as a second line of the same dataset."""
    now, old = code_sha(tmp_path, "x = 1"), "0" * 64
    fashion = "Fashion-MNIST (60,000 train / 10,000 test images); section 5 trains on"
    add_task(tmp_path, "vae", "nelbo", [
        {"data": f"{fashion} 2,000 images", "code": {"notebook_code_sha256": old}, "train_seconds": 120.0},  # 50
        {"data": f"{fashion} 1,000 images", "code": {"notebook_code_sha256": now}, "train_seconds": 180.0}])  # 51
    notebook = tmp_path / "image_generation" / "vae" / "vae.ipynb"
    notebook.write_text(notebook_json("x = 1"))
    headline, _, cpu_time = vae_cells(tmp_path)[3:6]
    assert headline == "nelbo: 51.00 (quick, CPU; Fashion-MNIST)" and cpu_time == "3.0 min (cpu)"
    note = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path).split("behind each headline")[1]
    assert f"{fashion} 1,000 images" in note and f"{fashion} 2,000 images" not in note

    notebook.write_text(notebook_json("x = 2"))  # the control: no record of the code now, so both stay, marked
    headline, _, cpu_time = vae_cells(tmp_path)[3:6]
    assert "nelbo: 50.00 " in headline and "nelbo: 51.00 " in headline and cpu_time == "2.0 min (cpu)‡<br>3.0 min (cpu)‡"


def test_an_older_record_on_another_dataset_stays_and_every_time_names_its_dataset(tmp_path: Path) -> None:
    now = code_sha(tmp_path, "x = 1")
    add_task(tmp_path, "vae", "nelbo", [
        {"data": "Fashion-MNIST (60,000 train)", "code": {"notebook_code_sha256": "0" * 64}},
        {"data": "MNIST (8,000 train)", "code": {"notebook_code_sha256": now}, "train_seconds": 180.0}])
    (tmp_path / "image_generation" / "vae" / "vae.ipynb").write_text(notebook_json("x = 1"))
    assert vae_cells(tmp_path)[5] == "1.0 min (Fashion-MNIST; cpu)‡<br>3.0 min (MNIST; cpu)"


def test_a_full_run_of_the_code_now_heads_the_row_before_a_gpu_run_of_older_code(tmp_path: Path) -> None:
    """The MLP's `full` rerun on a CPU (its current code) stood under its older H100 run's headline: a `full` run of
    the notebook's code now outranks any `full` run of older code, wherever each ran; the older GPU run stays in the
    GPU column, marked."""
    now = code_sha(tmp_path, "x = 1")
    gpu_full = {"preset": "full", "code": {"notebook_code_sha256": "0" * 64}, **gpu_record("NVIDIA H100 80GB HBM3")}
    cpu_full = {"preset": "full", "train_seconds": 600.0, "code": {"notebook_code_sha256": now}}
    add_task(tmp_path, "vae", "nelbo", [{"code": {"notebook_code_sha256": now}}, gpu_full, cpu_full])
    notebook = tmp_path / "image_generation" / "vae" / "vae.ipynb"
    notebook.write_text(notebook_json("x = 1"))
    headline, gpu_time, _ = vae_cells(tmp_path)[3:6]
    assert headline.startswith("nelbo: 52.00 (full, CPU;") and "‡" not in headline
    assert "NVIDIA H100 80GB HBM3" in gpu_time and gpu_time.endswith("‡")
    notebook.write_text(notebook_json("x = 2"))  # the control: both runs are of older code, so the GPU run leads
    headline = vae_cells(tmp_path)[3]
    assert headline.startswith("nelbo: 51.00 (full, NVIDIA H100 80GB HBM3;") and headline.endswith("‡")


def test_a_headline_keeps_four_significant_digits_with_trailing_zeros() -> None:
    """The seq2seq headline, an exact match of 1.0, printed as a bare "1" (a count, or a flag?): four significant
    digits always, so 1.0 and 0.824 read as the fractions they are."""
    assert update_readme.fmt_metric(1.0) == "1.000" and update_readme.fmt_metric(0.824) == "0.8240"
    assert update_readme.fmt_metric(86.381) == "86.38" and update_readme.fmt_metric(3.0652e-06) == "3.065e-06"
    assert update_readme.fmt_metric("n/a") == "n/a"


MNIST_8K = ("MNIST (8,000 train / 2,000 test images, a subset of 60,000 / 10,000; both splits cut from the official MNIST "
            "test set)")
CIFAR_JPEG = "CIFAR-10 (50,000 train / 10,000 test images; decoded from a public JPEG copy); validation = 5,000 images"


@pytest.mark.parametrize("data, short", [
    (MNIST_8K, "MNIST 8k subset"),
    (CIFAR_JPEG, "CIFAR-10 JPEG copy"),
    ("MNIST (7,500 train / 2,000 test images, a subset of 60,000 / 10,000)", "MNIST subset"),  # not whole thousands
    ("MNIST (60,000 train / 10,000 test images)", "MNIST"),  # controls: the whole dataset, the original CIFAR-10
    ("CIFAR-10 (50,000 train / 10,000 test images)", "CIFAR-10"),
    ("MNIST subset", "MNIST subset"),  # already says so
])
def test_the_table_names_a_subset_or_a_copy_of_a_dataset_in_a_few_words(data: str, short: str) -> None:
    assert update_readme.data_short({"data": data}) == short


def test_the_headline_names_its_data_in_a_few_words_and_the_record_s_words_follow_the_table(tmp_path: Path) -> None:
    """The table's headline cells held each record's whole `data` text (up to 300 characters: the RL row's seeds and
    episodes, the seq2seq split): now a few words, with the whole text once per task under the table."""
    add_task(tmp_path, "vae", "nelbo", [{"data": MNIST_8K}])
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    headline = vae_cells(tmp_path)[3]
    assert headline == "nelbo: 50.00 (quick, CPU; MNIST 8k subset)" and "official MNIST test set" not in headline
    note = table.split("**The data behind each headline**", 1)[1]
    assert f"- VAE: {MNIST_8K}" in note.splitlines()
    add_task(tmp_path, "gan", "nelbo", [])  # the control: a task without a record lists no data
    table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
    assert "- GAN:" not in table.split("**The data behind each headline**", 1)[1]
