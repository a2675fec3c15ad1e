"""scripts/gat_wh_dropout.py: the variant it measures is the notebook's GATLayer cell with exactly the dropout on W h
taken out, and its summary pairs the two versions seed by seed."""

from __future__ import annotations

import nbformat
import pytest

from scripts_module import load_script

gat_wh_dropout = load_script("gat_wh_dropout")


def test_the_variant_changes_one_line_of_the_notebooks_gat_cell() -> None:
    nb = nbformat.read(gat_wh_dropout.NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "class GATLayer" in c.source)
    variant = gat_wh_dropout.variant_source(nb)
    changed = [(a, b) for a, b in zip(cell.source.splitlines(), variant.splitlines()) if a != b]
    assert len(cell.source.splitlines()) == len(variant.splitlines()) and len(changed) == 1
    assert gat_wh_dropout.DROP_LINE in changed[0][0] and changed[0][1].strip().startswith(gat_wh_dropout.NO_DROP_LINE)
    compile(variant, "variant", "exec")  # still Python
    cell.source = cell.source.replace(gat_wh_dropout.DROP_LINE, "wh_dropped = F.dropout(wh, 0.5, self.training)")
    with pytest.raises(SystemExit):  # the control: a notebook whose line changed is refused, not measured wrongly
        gat_wh_dropout.variant_source(nb)


def test_the_summary_pairs_the_runs_by_seed() -> None:
    result = {"with_wh_dropout": [{"val_acc": 0.80, "val_loss": 1.0}, {"val_acc": 0.82, "val_loss": 0.9},
                                  {"val_acc": 0.81, "val_loss": 1.1}],
              "without_wh_dropout": [{"val_acc": 0.79, "val_loss": 1.1}, {"val_acc": 0.80, "val_loss": 1.0},
                                     {"val_acc": 0.82, "val_loss": 1.0}]}
    acc = gat_wh_dropout.summarise(result)["val_acc"]
    assert acc["paired_difference_mean"] == pytest.approx((0.01 + 0.02 - 0.01) / 3)
    assert acc["paired_difference_std"] == pytest.approx(0.0152752523, rel=1e-6)  # sample std of (.01, .02, -.01)
    assert acc["seeds_with_higher"] == 2 and acc["with_mean"] == pytest.approx(0.81)
