"""The MNIST generative notebooks hold out a validation split that fits the data the machine has, in every preset.

Offline, MNIST exists here only as the 8k subset (8,000 training images). The GAN, DDPM and flow-matching
notebooks once held out a fixed count, 6,000 images in `full` (sized for full MNIST's 60,000): offline that left
2,000 of 8,000 images to train on, which only a `full` run would have shown (a CPU rehearsal of the GAN's `full`
preset did). Their split is now a share of the training images (`val_fraction`). These tests run each notebook's own
Setup, Config and Data cells under `quick` and `full`, on whatever MNIST `DL_DATA_DIR` holds, and check the
split; the control runs the same cells with the share that rebuilds the old `full` split (6,000 of 8,000 = 0.75)
and shows that the check catches it.

The three also hold out the same images (flow matching compares its validation fids with DDPM's record, and the
GAN's floor is quoted beside both), and the newest committed flow-matching and DDPM records name one split by its
hash (`val_split_sha256`); each check has a control that breaks it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.notebook_cells import cell_sources, run_sources, setup_and_config

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [REPO_ROOT / "image_generation" / "gan" / "gan.ipynb",
             REPO_ROOT / "image_generation" / "ddpm" / "ddpm.ipynb",
             REPO_ROOT / "image_generation" / "flow_matching" / "flow_matching.ipynb"]
MIN_TRAIN_SHARE = 0.85  # at least this share of the training images is trained on
MIN_VAL_IMAGES = 1_000  # and at least this many are held out: the real side of every validation fid


def unchanged(source: str) -> str:
    return source


def data_namespace(notebook: Path, preset: str, monkeypatch: pytest.MonkeyPatch,
                   edit_config: Callable[[str], str] = unchanged,
                   edit_data: Callable[[str], str] = unchanged) -> dict:
    """The names the notebook's Setup, Config and Data cells (each passed through its edit) define in `preset`."""
    monkeypatch.setenv("DL_PRESET", preset)
    data = cell_sources(notebook, select=lambda s: "held_out = " in s)
    assert len(data) == 1, f"{notebook.name}: Data cell not found"
    return run_sources(setup_and_config(notebook, edit_config) + [edit_data(data[0])], notebook)


def split_sizes(notebook: Path, preset: str, monkeypatch: pytest.MonkeyPatch,
                edit_config: Callable[[str], str] = unchanged) -> tuple[int, int, int]:
    """(all training images, trained on, held out) after the notebook's Setup, Config and Data cells in `preset`."""
    namespace = data_namespace(notebook, preset, monkeypatch, edit_config)
    n_all, n_train, n_val = len(namespace["x_all"]), len(namespace["x_train"]), len(namespace["x_val"])
    assert n_train + n_val == n_all
    return n_all, n_train, n_val


def split_problems(n_all: int, n_train: int, n_val: int) -> list[str]:
    problems = []
    if n_train < MIN_TRAIN_SHARE * n_all:
        problems.append(f"trains on {n_train:,} of {n_all:,} images (under {MIN_TRAIN_SHARE:.0%})")
    if n_val < MIN_VAL_IMAGES:
        problems.append(f"holds out {n_val:,} images (under {MIN_VAL_IMAGES:,})")
    return problems


@pytest.mark.parametrize("preset", ["quick", "full"])
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_validation_split_leaves_most_images_for_training(notebook: Path, preset: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_problems(*split_sizes(notebook, preset, monkeypatch)) == []


def test_control_a_split_sized_for_full_mnist_is_caught_on_the_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_full_split(source: str) -> str:  # full's share set to the old 6,000 images of the subset's 8,000
        edited, n = re.subn(r"(val_fraction: float = pick\(.*full=)0\.125\)", r"\g<1>0.75)", source)
        assert n == 1, "the Config's val_fraction line changed: update this control"
        return edited

    n_all, n_train, n_val = split_sizes(NOTEBOOKS[0], "full", monkeypatch, old_full_split)
    assert n_val == round(0.75 * n_all) and n_train == n_all - n_val  # 2,000 and 6,000 on the 8k subset
    assert any(f"trains on {n_train:,} of {n_all:,}" in p for p in split_problems(n_all, n_train, n_val))


def held_out_mask(notebook: Path, monkeypatch: pytest.MonkeyPatch,
                  edit_data: Callable[[str], str] = unchanged) -> torch.Tensor:
    """Which training images the notebook holds out under `quick`, after its Setup, Config and (edited) Data cells."""
    return data_namespace(notebook, "quick", monkeypatch, edit_data=edit_data)["held_out"]


def test_the_three_notebooks_hold_out_the_same_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flow matching compares its validation fids with DDPM's record, and the GAN's prose with both: that needs one
    validation split. The control seeds flow matching's split as every notebook did before the Random streams rule
    (`cfg.seed`, not the "split" stream): it holds out other images."""
    gan, ddpm, flow_matching = (held_out_mask(notebook, monkeypatch) for notebook in NOTEBOOKS)
    assert torch.equal(gan, ddpm) and torch.equal(ddpm, flow_matching)

    def old_seeding(source: str) -> str:
        assert source.count('stream_seed(cfg.seed, "split")') == 1, "the split's line changed: update this control"
        return source.replace('stream_seed(cfg.seed, "split")', "cfg.seed")

    old = held_out_mask(NOTEBOOKS[2], monkeypatch, old_seeding)
    assert old.sum() == flow_matching.sum() and not torch.equal(old, flow_matching)


def newest_split_hashes(results: Path) -> dict[tuple[str, str], str | None]:
    """(task, preset) -> the `val_split_sha256` of that task's newest committed CPU record of that preset, for DDPM and
    flow matching (None where the record predates the hash)."""
    newest: dict[tuple[str, str], tuple[str, str | None]] = {}
    for task in ("ddpm", "flow_matching"):
        for path in (results / "image_generation" / task).glob("*__cpu__*.json"):
            record = json.loads(path.read_text())
            key = (task, record["preset"])
            if key not in newest or record["finished_at"] > newest[key][0]:
                newest[key] = (record["finished_at"], record["metrics"].get("val_split_sha256"))
    return {key: value for key, (_, value) in newest.items()}


def split_mismatches(hashes: dict[tuple[str, str], str | None]) -> list[str]:
    """Presets whose newest flow-matching record names a validation split that DDPM's newest record does not share."""
    return [f"{preset}: flow matching {hashes[('flow_matching', preset)]}, DDPM {hashes.get(('ddpm', preset))}"
            for (task, preset) in hashes if task == "flow_matching"
            and hashes[("flow_matching", preset)] is not None
            and hashes[("flow_matching", preset)] != hashes.get(("ddpm", preset))]


def test_flow_matchings_newest_records_compare_with_ddpms_newest_on_one_split(tmp_path: Path) -> None:
    """Flow matching's committed outputs and prose compare it with DDPM's newest record on the same validation split:
    a DDPM rerun that draws another split, committed without a flow-matching rerun, would leave that comparison
    pointing at a record flow matching can no longer match. The control copies both folders of records and adds
    such a DDPM rerun: a `quick` record finished after all the others, of another split."""
    results = REPO_ROOT / "results"
    hashes = newest_split_hashes(results)
    assert hashes.get(("flow_matching", "quick")), "no committed quick record of flow matching with a split hash"
    assert split_mismatches(hashes) == []

    for task in ("ddpm", "flow_matching"):
        shutil.copytree(results / "image_generation" / task, tmp_path / "image_generation" / task)
    ddpm = tmp_path / "image_generation" / "ddpm"
    rerun = json.loads(sorted(ddpm.glob("*__quick__cpu__*.json"))[-1].read_text())
    rerun["finished_at"] = "9999-12-31T00:00:00+00:00"
    rerun["metrics"]["val_split_sha256"] = "0" * 64
    (ddpm / "image_generation__ddpm__quick__cpu__99991231T000000000000Z.json").write_text(json.dumps(rerun))
    assert [m.split(":")[0] for m in split_mismatches(newest_split_hashes(tmp_path))] == ["quick"]
