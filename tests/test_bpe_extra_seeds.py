"""The BPE notebook's extra seeds, taken from the notebook's own cell: the main run repeated with each seed in
`cfg.extra_seeds`, except one equal to the main run's seed (`DL_SEED=1338` makes the main run seed 1338's run), which
would be trained twice and scored in the main model's place.

The cell runs with `train_briefly`, the model and the checkpoint functions replaced by stand-ins that record which
seeds would train; the control is the cell without its skip (a skip no longer written as SKIP raises ControlEditError).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from types import SimpleNamespace

from notebook_cells import ControlEditError, cell_sources, run_sources

NOTEBOOK = Path(__file__).resolve().parent.parent / "text_generation" / "bpe_gpt" / "bpe_gpt.ipynb"
SKIP = " or s == cfg.seed"


@dataclasses.dataclass
class StandInConfig:
    seed: int  # the main run's seed
    extra_seeds: tuple[int, ...]  # the seeds the cell repeats the main run with
    resume: bool = False
    corpus: str = "tinyshakespeare"


class StandInModel:
    def to(self, device: object) -> StandInModel:
        return self


def seeds_trained(main_seed: int, extra_seeds: tuple[int, ...], drop_skip: bool = False) -> list[int]:
    """The seeds the notebook's extra-seeds cell trains when the main run has `main_seed`."""
    cells = cell_sources(NOTEBOOK, select=lambda s: "seeds_path" in s and "train_briefly(" in s)
    assert len(cells) == 1, "the extra-seeds cell not found"
    source = cells[0]
    if drop_skip:
        if source.count(SKIP) != 1:
            raise ControlEditError(f"the control's edit expects {SKIP!r} once in the extra-seeds cell, "
                                   f"found {source.count(SKIP)}")
        source = source.replace(SKIP, "")
    trained: list[int] = []

    def train_briefly(model: StandInModel, data: dict, cfg: StandInConfig, device: str) -> dict:
        trained.append(cfg.seed)
        return {"best_bpc": 2.0, "steps": 1, "train_seconds": 0.1}

    stand_in_common = SimpleNamespace(checkpoint_path=lambda *args, **kwargs: None,
                                      load_checkpoint=lambda *args, **kwargs: None,
                                      save_checkpoint=lambda *args, **kwargs: None,
                                      seed_everything=lambda seed: None)
    namespace = {"common": stand_in_common, "cfg": StandInConfig(main_seed, extra_seeds), "dataclasses": dataclasses,
                 "train_briefly": train_briefly, "GPT": lambda *args: StandInModel(), "tok": SimpleNamespace(n_vocab=1),
                 "data": {}, "device": "cpu", "clock": SimpleNamespace(span=lambda name: contextlib.nullcontext()),
                 "TASK": "text_generation/bpe_gpt", "PRESET": "smoke", "config_dict": {}}
    run_sources([source], NOTEBOOK, namespace)
    return trained


def test_each_extra_seed_other_than_the_main_runs_trains_once() -> None:
    assert seeds_trained(1337, (1338, 1339)) == [1338, 1339]
    assert seeds_trained(1338, (1338, 1339)) == [1339]
    assert seeds_trained(1338, (1338,)) == []


def test_the_control_without_the_skip_trains_the_main_runs_seed_again() -> None:
    assert seeds_trained(1338, (1338,), drop_skip=True) == [1338]
    assert seeds_trained(1337, (1338,), drop_skip=True) == [1338]
