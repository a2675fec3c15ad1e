"""Does the GAT's dropout on its transformed features W h help on the validation split? A measurement for the GCN/GAT
notebook, whose GAT drops W h as the authors' code does (the paper does not say so) and whose first version did not.

    DL_PRESET=quick python scripts/gat_wh_dropout.py --seeds 20      # on a CPU: minutes
    DL_PRESET=full python scripts/gat_wh_dropout.py --seeds 20       # the `full` GAT (patience only, no epoch cap)

That dropout was added after comparing the two versions' *test* accuracies over a `full` run's 100 seeds (the
notebook says so); no validation comparison existed. This script makes one without touching the notebook's code:
it runs the notebook's own cells, in a kernel, up to the cell of its main runs (definitions, data, Config of the
preset), then trains the GAT of each seed `cfg.seed`, `cfg.seed + 1`, ... as the main runs do (same seeding, model,
optimiser, early-stopping rule and `fit`), first as the notebook defines it, then with the notebook's `GATLayer` cell
executed again with one line changed, `wh_dropped = F.dropout(wh, ...)` -> `wh_dropped = wh` (the script fails if
that line is not found exactly once). Only the validation nodes' accuracy and loss at the stopping point are kept:
`fit` also scores the test nodes, and the script throws that number away, so the comparison cannot lean on the test
split. The record (JSON) goes to `results/graph_learning/gcn_gat/wh_dropout/`, a folder the README's table does not
read; the paired difference per seed and its spread over seeds say whether the effect exceeds the seed noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_measurement import run_in_kernel, write_record  # noqa: E402  (kernel, provenance, record file)

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "graph_learning" / "gcn_gat" / "gcn_gat.ipynb"
OUT_DIR = REPO_ROOT / "results" / "graph_learning" / "gcn_gat" / "wh_dropout"
DROP_LINE = "wh_dropped = F.dropout(wh, self.dropout, self.training)"
NO_DROP_LINE = "wh_dropped = wh"

MEASURE = r'''
import json as _json
from common import describe_device as _describe_device

def _gat_runs(n_seeds):
    out = []
    for s in range(cfg.seed, cfg.seed + n_seeds):
        seed_everything(s)
        model = make_model("gat", cfg, x, edge_index, n_classes)
        run = fit(model, make_optimizer("gat", model, cfg), "patience", cfg.gat_max_epochs, x, data, cfg, clock,
                  "train")
        out.append({"seed": s, "val_acc": run["val_acc"], "val_loss": run["val_loss"], "epochs": run["epochs"]})
    return out  # run["test_acc"] is dropped: this comparison reads the validation split only

_with = _gat_runs(__SEEDS__)
exec(compile(__VARIANT__, "GATLayer cell, W h not dropped", "exec"), globals())
_without = _gat_runs(__SEEDS__)
print("RESULT " + _json.dumps({"preset": PRESET, "device": _describe_device(device), "data": graph.describe(),
                               "gat_max_epochs": cfg.gat_max_epochs, "gat_patience": cfg.gat_patience,
                               "gat_dropout": cfg.gat_dropout, "with_wh_dropout": _with,
                               "without_wh_dropout": _without, "train_seconds": clock["train"]}))
'''


def variant_source(nb: nbformat.NotebookNode) -> str:
    """The notebook's GATLayer cell with the dropout on W h taken out (exactly one line changed)."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and "class GATLayer" in c.source)
    if cell.source.count(DROP_LINE) != 1:
        raise SystemExit(f"expected the line `{DROP_LINE}` once in the GATLayer cell; the notebook has changed")
    return cell.source.replace(DROP_LINE, NO_DROP_LINE)


def summarise(result: dict) -> dict:
    """Means over seeds and the paired differences (with minus without) of validation accuracy and loss."""
    pairs = list(zip(result["with_wh_dropout"], result["without_wh_dropout"]))
    out = {}
    for key in ("val_acc", "val_loss"):
        diffs = [a[key] - b[key] for a, b in pairs]
        mean = sum(diffs) / len(diffs)
        std = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else 0.0
        out[key] = {"with_mean": sum(a[key] for a, _ in pairs) / len(pairs),
                    "without_mean": sum(b[key] for _, b in pairs) / len(pairs),
                    "paired_difference_mean": mean, "paired_difference_std": std,
                    "standard_error": std / len(diffs) ** 0.5, "seeds_with_higher": sum(d > 0 for d in diffs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="GAT runs per version (seeds cfg.seed, cfg.seed + 1, ...)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the JSON record")
    args = parser.parse_args()
    assert args.seeds >= 2, "two seeds at least: their spread is the noise an effect must exceed"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    variant = variant_source(nb)
    main_runs = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "ckpt_path = checkpoint_path(TASK" in c.source)
    nb.cells = nb.cells[:main_runs] + [nbformat.v4.new_code_cell(
        MEASURE.replace("__SEEDS__", str(args.seeds)).replace("__VARIANT__", repr(variant)))]
    result, _ = run_in_kernel(nb, NOTEBOOK, "graph_learning/gcn_gat",
                              "GAT with and without dropout on W h: validation split only")
    result["summary"] = summarise(result)
    path = write_record(result, args.out, "wh_dropout")
    for key, s in result["summary"].items():
        print(f"{key}: with {s['with_mean']:.4f}, without {s['without_mean']:.4f}; paired difference "
              f"{s['paired_difference_mean']:+.4f} +- {s['standard_error']:.4f} (standard error, {args.seeds} seeds); "
              f"with higher on {s['seeds_with_higher']} of {args.seeds} seeds")
    print(f"record: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


if __name__ == "__main__":
    sys.exit(main())
