"""CONTRIBUTING's **Random streams** rule, where a parser can check it: no generator is seeded from a run's seed
except through `common.stream_seed(seed, "stream name")`.

Seeding a generator with `cfg.seed` itself (the stream `seed_everything(cfg.seed)` gives the initialisation, on a
CPU) or with a formula of it (`cfg.seed + 1`, `seed * 100_003 + epoch`, which meets `seed * 100_003 + step` and the
next seed's `cfg.seed`) makes one stream repeat another's draws. The check reads every `manual_seed(...)` and
`generator_seed=...` in a notebook's code cells and reports each value that reads a seed (`.seed` or a name `seed`)
other than through `stream_seed(...)`; a parameter named `seed` passed on unchanged (`manual_seed(seed)`) is left to
its caller, where the value is made. `seed_everything(cfg.seed)` itself is the run's own stream and is not read.

The notebooks written before the rule (30 November 2026) adopt it when their code next changes, since it changes
every draw and so every number: they are listed in PENDING, and a listed notebook that no longer breaks the rule
fails the test, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from test_conventions import REPO_ROOT, _ids
from test_house_style import NOTEBOOKS, notebook_problems, parse_cell

GPU_RECORD = ("predates the rule; its H200 `full` record is of today's code, so it waits for a change that needs a "
              "rerun anyway")
CPU_FULL = ("predates the rule; its CPU `full` record (the README's headline) is of today's code: it adopts the rule "
            "with its next `full` run")
PENDING = {
    "image_classification/mlp_backprop/mlp_backprop.ipynb": GPU_RECORD,
    "image_generation/vae/vae.ipynb": GPU_RECORD,
    "text_generation/char_gpt/char_gpt.ipynb": GPU_RECORD,
    "text_generation/data_parallel/data_parallel.ipynb": GPU_RECORD,
    "text_generation/seq2seq_attention/seq2seq_attention.ipynb": CPU_FULL,
}


def _reads_seed(node: ast.AST) -> bool:
    """Whether an expression reads a seed: an attribute `.seed` or `._seed` (cfg.seed, run.seed, cfg.split_seed) or a
    name `seed` or `..._seed`."""
    return any(isinstance(n, ast.Attribute) and _seed_name(n.attr) or isinstance(n, ast.Name) and _seed_name(n.id)
               for n in ast.walk(node))


def _seed_name(name: str) -> bool:
    return name == "seed" or name.endswith("_seed")


def _called(node: ast.Call) -> str | None:
    return getattr(node.func, "attr", getattr(node.func, "id", None))


def shared_seeds(source: str) -> list[str]:
    """The seeds one code cell gives generators from a run's seed without `stream_seed`, as `line N: value`."""
    if source.lstrip().startswith("%%"):
        return []
    found = []
    for node in ast.walk(parse_cell(source)[0]):
        if not isinstance(node, ast.Call):
            continue
        values = node.args[:1] if _called(node) == "manual_seed" else []
        values += [k.value for k in node.keywords if k.arg == "generator_seed"]
        for value in values:
            passed_on = isinstance(value, ast.Name)  # a parameter: its caller makes the value
            through_streams = isinstance(value, ast.Call) and _called(value) == "stream_seed"
            if not passed_on and not through_streams and _reads_seed(value):
                found.append(f"line {node.lineno}: {ast.unparse(value)}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_generators_are_seeded_through_stream_seed(path: Path) -> None:
    found = notebook_problems(path, shared_seeds)
    name = path.relative_to(REPO_ROOT).as_posix()
    if name in PENDING:
        assert found, f"{name} follows the rule now: remove it from PENDING"
    else:
        assert not found, "seeded without common.stream_seed:\n" + "\n".join(found)


def test_every_pending_notebook_exists() -> None:
    assert set(PENDING) <= {p.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS}


GOOD = '''
gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, f"epoch {epoch}"))
loader = DeviceImageLoader(x, y, 64, device=device, generator_seed=stream_seed(cfg.seed, "batches"))
seed_everything(cfg.seed)


def draw(n, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


demo = torch.Generator().manual_seed(0)
'''


@pytest.mark.parametrize(("old", "new", "problem"), [
    ('stream_seed(cfg.seed, f"epoch {epoch}")', "cfg.seed * 100_003 + epoch", "line 2: cfg.seed * 100003 + epoch"),
    ('generator_seed=stream_seed(cfg.seed, "batches")', "generator_seed=cfg.seed", "line 3: cfg.seed"),
    ("manual_seed(seed))", "manual_seed(seed + 1))", "line 8: seed + 1"),
    ("manual_seed(0)", "manual_seed(run.seed)", "line 11: run.seed"),
    ("manual_seed(0)", "manual_seed(cfg.split_seed)", "line 11: cfg.split_seed"),
], ids=["formula", "loader", "offset-parameter", "bare-seed", "named-seed"])
def test_the_check_reports_each_shared_seed(old: str, new: str, problem: str) -> None:
    assert shared_seeds(GOOD) == []
    assert GOOD.count(old) == 1
    assert shared_seeds(GOOD.replace(old, new)) == [problem]
