"""The ResNet notebook's budget-sweep verdict, read from the notebook.

`degradation_verdict` (image_classification/resnet/resnet.ipynb) decides from deep-minus-shallow final training
losses, one per seed at each budget, whether the sweep shows degradation: only if at every judged budget every seed's
gap is positive and the mean gap exceeds the spread between seeds; one seed can never decide. Each test pairs its
case with a control that differs in the one property the rule rests on and must get the other answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from notebook_cells import notebook_functions

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_classification" / "resnet" / "resnet.ipynb"


@pytest.fixture(scope="module")
def verdict():
    return notebook_functions(NOTEBOOK, "degradation_verdict", namespace={})["degradation_verdict"]


def test_clear_positive_gaps_on_two_seeds_are_degradation(verdict) -> None:
    gaps = {500: [0.50, 0.55], 1000: [0.40, 0.42], 2000: [0.30, 0.33], 4000: [0.25, 0.27]}
    assert verdict(gaps, 1000).startswith("degradation")
    # control: the same gaps from one seed only cannot decide
    one_seed = {b: g[:1] for b, g in gaps.items()}
    assert verdict(one_seed, 1000).startswith("undecided")


def test_gaps_within_the_seed_spread_are_undecided(verdict) -> None:
    noisy = {1000: [0.40, 0.42], 2000: [0.02, 0.40]}  # at 2000 steps: mean 0.21, spread 0.38
    result = verdict(noisy, 1000)
    assert result.startswith("undecided"), result
    assert "2000 steps" in result, "the verdict should name the budget at which the gap is within the seed spread"
    # control: the same mean gap (0.21) with seeds that agree is degradation
    tight = {1000: [0.40, 0.42], 2000: [0.20, 0.22]}
    assert verdict(tight, 1000).startswith("degradation")


def test_one_seed_is_undecided_however_large_the_gap(verdict) -> None:
    result = verdict({500: [2.0], 1000: [1.5], 2000: [1.2], 4000: [1.0]}, 1000)
    assert result == "undecided: one seed cannot separate the gap from seed noise"
    # control: a second seed agreeing closely turns the same gaps into degradation
    assert verdict({500: [2.0, 2.1], 1000: [1.5, 1.6], 2000: [1.2, 1.25], 4000: [1.0, 1.05]}, 1000).startswith(
        "degradation")


def test_a_negative_gap_is_not_degradation(verdict) -> None:
    gaps = {1000: [0.40, 0.45], 2000: [0.30, 0.35], 4000: [0.10, -0.05]}  # one seed's deep net ends below at 4000
    result = verdict(gaps, 1000)
    assert result.startswith("not degradation"), result
    assert "4000 steps" in result
    # control: the same negative gap at a budget below `from_budget` (the start) is not judged
    early = {500: [0.10, -0.05], 1000: [0.40, 0.45], 2000: [0.30, 0.35]}
    assert verdict(early, 1000).startswith("degradation")


def test_no_judged_budget_is_an_error(verdict) -> None:
    with pytest.raises(ValueError):
        verdict({500: [0.4, 0.5]}, 1000)
    assert verdict({500: [0.4, 0.5]}, 500).startswith("degradation")  # control: the same budget, judged
