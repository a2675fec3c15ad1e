"""SimCLR's per-step code, taken from representation_learning/simclr itself: no host sync, a batch order that
depends on (seed, step) only, and colour matrices that do what the notebook says.

The notebook's cells tagged `model` (the imports, the Config, the augmentations, the encoder, NT-Xent and the
training functions) are executed here in the smoke preset on the CPU. A training step must not wait for the host
on a GPU (issue 25): no tensor built from Python data (`new_tensor`, `torch.tensor` of a list), no matrix inverse
(`linalg.inv` checks its result on the host), no `.item()`, and the batch order drawn on the device by a device
generator. On the CPU a host-to-device copy cannot be seen, so the test records the operators the step dispatches
and rejects the ones that sync or copy on a GPU, and any permutation not drawn by the caller's generator.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from notebook_cells import notebook_functions, run_tagged
from test_deep_nets_init_and_data import SeedLog
from test_preset_seed_device import first_draws

NOTEBOOK = Path(__file__).resolve().parent.parent / "representation_learning" / "simclr" / "simclr.ipynb"
SYNCING = {"aten.lift_fresh", "aten.lift_fresh_copy", "aten._local_scalar_dense", "aten.linalg_inv_ex",
           "aten.nonzero"}  # built from host data, or read back to the host (on a GPU: a copy or a sync)


class OpLog(TorchDispatchMode):
    """Records every operator dispatched inside the block, with its keyword arguments, and for a read-back to the
    host (`.item()`) the storage address it read (`reads`). `generator`: the generator every `randperm` must draw
    from (the device generator the caller passes)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.calls: list[tuple[str, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name, kwargs = str(func).rsplit(".", 1)[0], dict(kwargs or {})
        seen = dict(kwargs)
        if name == "aten.randperm":  # the caller's generator: the same device and, before the draw, the same state
            gen = kwargs.get("generator")
            seen["callers"] = (gen is not None and self.generator is not None and gen.device == self.generator.device
                               and torch.equal(gen.get_state(), self.generator.get_state()))
        if name == "aten._local_scalar_dense":
            seen["reads"] = args[0].data_ptr()
        self.calls.append((name, seen))
        return func(*args, **kwargs)

    def syncing(self) -> list[str]:
        """The recorded operators that copy from the host or read back to it on a GPU, and the permutations drawn
        by another generator than the caller's (such as a CPU one whose result is then copied to the device)."""
        bad = [name for name, _ in self.calls if name in SYNCING]
        bad += [f"{name} on another generator" for name, kw in self.calls if name == "aten.randperm" and not kw["callers"]]
        return bad


@pytest.fixture(scope="module")
def simclr() -> dict:
    """The namespace left by the notebook's `model` cells, run in the smoke preset on the CPU."""
    namespace: dict = {"mean": torch.full((1, 3, 1, 1), 0.45), "std": torch.full((1, 3, 1, 1), 0.25)}
    return run_tagged(NOTEBOOK, "model", at_least=6, namespace=namespace, preset="smoke")


def test_the_log_catches_what_syncs() -> None:
    """The check itself: each operator the old step used (a list turned into a tensor, an inverse, a CPU randperm
    without a device, an `.item()`) is caught."""
    x, given = torch.rand(4, 3, 2, 2), torch.Generator()
    for make in (lambda: x.new_tensor([0.299, 0.587, 0.114]), lambda: torch.linalg.inv(torch.eye(3) * 2),
                 lambda: torch.randperm(10, generator=torch.Generator().manual_seed(0)), lambda: x.sum().item()):
        with OpLog(given) as log:
            make()
        assert log.syncing(), "the operator log missed a host copy or sync"
    with OpLog(given) as log:
        torch.randperm(10, generator=given)
        x.mean(dim=(2, 3)).sum(0)
    assert not log.syncing(), "the operator log flags what does not sync"


def test_a_training_step_neither_syncs_nor_copies_from_the_host(simclr: dict) -> None:
    cfg, device = simclr["cfg"], torch.device("cpu")
    images = torch.randint(0, 256, (3 * cfg.batch_size, 3, 32, 32), dtype=torch.uint8)
    model = simclr["new_model"](cfg, simclr["mean"], simclr["std"], device)
    order_gen, view_gen = torch.Generator(device=device), torch.Generator(device=device)
    with OpLog(order_gen) as log:
        for step in range(2):
            idx = simclr["batch_indices"](step, len(images), cfg.batch_size, cfg.seed, order_gen)
            view_gen.manual_seed(simclr["stream_seed"](cfg.seed, f"views {step}"))  # as in the training loop
            views = simclr["layout"](simclr["two_views"](images[idx], cfg, view_gen, simclr["colours"]),
                                     cfg.channels_last)
            loss = simclr["nt_xent"](model(views), cfg.temperature)
            loss.backward()
    assert any(name == "aten.randperm" for name, _ in log.calls), "the batch order is no longer drawn by randperm"
    assert not log.syncing(), f"a training step copies from or reads back to the host: {log.syncing()}"
    assert views.shape == (2 * cfg.batch_size, 3, cfg.crop_size, cfg.crop_size)


def test_the_batch_order_is_a_function_of_seed_and_step(simclr: dict) -> None:
    """Whatever state the generator is in, step s gets the same images (a resumed run draws the same batches); one
    epoch's batches never repeat an image."""
    batch_indices, n, b = simclr["batch_indices"], 96, 32
    fresh = torch.Generator()
    used = torch.Generator().manual_seed(123)
    torch.rand(5, generator=used)
    epoch = [batch_indices(s, n, b, 0, fresh) for s in range(n // b)]
    assert all(torch.equal(batch_indices(s, n, b, 0, used), epoch[s]) for s in reversed(range(n // b)))
    assert torch.cat(epoch).unique().numel() == n
    assert not torch.equal(batch_indices(n // b, n, b, 0, fresh), epoch[0]), "every epoch reshuffles"
    assert not torch.equal(batch_indices(0, n, b, 1, fresh), epoch[0]), "the seed changes the order"


def epoch_streams(batch_indices, seed: int, epochs: int = 50) -> list[tuple[int, ...]]:
    """The first draws of the random streams of epochs 0..epochs-1's orders (their seeds logged by SeedLog)."""
    gen = SeedLog()
    SeedLog.seeds = []
    for epoch in range(epochs):
        batch_indices(epoch, 8, 8, seed, gen)  # one batch an epoch: step e is epoch e
    return [first_draws(s) for s in SeedLog.seeds]


@pytest.mark.parametrize(("old", "new"), [('stream_seed(seed, f"epoch {epoch}")', "seed * 100_003 + epoch")],
                         ids=["seeded-as-before-2026-11-30"])
def test_no_epoch_order_draws_the_initialisations_random_stream(simclr: dict, old: str, new: str) -> None:
    """Epoch orders of seeds 0 and 1 are 100 different streams, none of them the one `seed_everything(seed)` gives
    the initialisation (on a CPU; the views of step s, seeded in the loop, had the same formula's problem). Control:
    the seeding before 30 November 2026 (seed * 100_003 + epoch), under which epoch 0 drew the initialisation's."""
    def check(batch_indices) -> None:
        streams = {first_draws(seed) for seed in (0, 1)}
        for seed in (0, 1):
            orders = epoch_streams(batch_indices, seed)
            assert len(set(orders)) == len(orders) and not set(orders) & streams, \
                f"an epoch order of seed {seed} repeats another random stream"
            streams |= set(orders)
    check(simclr["batch_indices"])
    broken = notebook_functions(NOTEBOOK, "batch_indices", namespace=dict(simclr), edits=[("batch_indices", old, new)])
    with pytest.raises(AssertionError, match="repeats another random stream"):
        check(broken["batch_indices"])


def test_the_colour_matrices(simclr: dict) -> None:
    """YIQ -> RGB inverts RGB -> YIQ; a hue rotation keeps the grey level and is the identity at angle 0."""
    colours = simclr["colour_space"](torch.device("cpu"))
    torch.testing.assert_close(colours.from_yiq @ colours.to_yiq, torch.eye(3), atol=1e-5, rtol=0)
    rot = simclr["hue_rotation"](torch.tensor([0.0, 1.0, -2.5]), colours)  # (3, 3, 3)
    torch.testing.assert_close(rot[0], torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(colours.luma @ rot, colours.luma.expand(3, 3), atol=1e-5, rtol=0)
    x = torch.rand(2, 3, 4, 4)
    grey = simclr["grey_level"](x, colours.luma)
    torch.testing.assert_close(grey[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])


def test_a_contrastive_step_reads_back_only_adamws_cpu_step_counters(simclr: dict) -> None:
    """The whole optimisation step (`contrastive_step`: loss, backward, clipping, AdamW, schedule) must not wait for
    the host either. AdamW (not capturable, not fused) keeps its per-parameter step counters on the CPU even when the
    parameters are on a GPU, and reads them with `.item()`: a host read of host memory, not a GPU sync; so a read-back
    is allowed on those counters and on nothing else. The control, a step that also reads its loss back (the sync
    this rules out), must be caught."""
    cfg, device = simclr["cfg"], torch.device("cpu")
    torch.manual_seed(0)
    model = simclr["new_model"](cfg, simclr["mean"], simclr["std"], device)
    params = list(model.parameters())
    opt, sched = simclr["make_optimizer"](model, cfg.lr, cfg.weight_decay, 1, 10)
    scaler = simclr["grad_scaler"](device)
    views = torch.rand(2 * cfg.batch_size, 3, cfg.crop_size, cfg.crop_size)

    def step() -> torch.Tensor:
        return simclr["contrastive_step"](model, params, opt, sched, scaler, views, cfg, device)

    step()  # AdamW creates its state, the step counters included, on its first step
    counters = {state["step"].data_ptr() for state in opt.state.values()}
    assert counters and all(state["step"].device.type == "cpu" for state in opt.state.values())
    for make, syncs in ((step, False), (lambda: step().item(), True)):
        with OpLog() as log:
            make()
        ops = {name for name, _ in log.calls}
        reads = [kw["reads"] for name, kw in log.calls if name == "aten._local_scalar_dense"]
        others = [ptr for ptr in reads if ptr not in counters]
        assert bool(others) == syncs, ("a step reads back more than AdamW's step counters" if others
                                       else "the control's loss read-back was not caught")
        assert "aten._foreach_add_" in ops or "aten.add_" in ops, "the optimiser step was not recorded"
        assert not ops & (SYNCING - {"aten._local_scalar_dense"}), ops & SYNCING
