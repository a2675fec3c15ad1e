import json

import pytest
import torch
from torch import nn

from common import (RunClock, amp_dtype, autocast, compile_report, compile_unavailable_reason, enable_tf32, fp32_exact,
                    grad_scaler, guarded_step, is_compile_error, maybe_compile, precision, precision_mode,
                    to_channels_last, write_run_record)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def dynamo_settings_restored(monkeypatch):
    """`maybe_compile` raises Dynamo's recompile limit and sets its hard failure for the whole process; each test
    here gets them, and the count of compiled models, back as they were."""
    import torch._dynamo

    for name in ("recompile_limit", "fail_on_recompile_limit_hit"):
        monkeypatch.setattr(torch._dynamo.config, name, getattr(torch._dynamo.config, name))
    monkeypatch.setattr(precision, "_COMPILED_MODELS", [precision._COMPILED_MODELS[0]])


def test_cpu_runs_in_full_precision():
    assert amp_dtype(CPU) is None
    layer = nn.Linear(4, 3)
    with autocast(CPU):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.float32


def test_the_cpu_rehearses_the_gpus_bf16_path_and_layout_only_when_asked(monkeypatch, fresh_precision_log):
    monkeypatch.setenv("DL_REHEARSE_GPU", "1")
    assert precision_mode(CPU) == "bf16" and amp_dtype(CPU) is torch.bfloat16
    with autocast(CPU):
        assert nn.Linear(4, 3)(torch.randn(2, 4)).dtype == torch.bfloat16
    assert not grad_scaler(CPU).is_enabled()  # bf16 needs no loss scaling, as on the GPU
    assert to_channels_last(torch.randn(2, 3, 4, 4), CPU).is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("DL_REHEARSE_GPU", "bf16")
    with pytest.raises(ValueError, match="only 1"):
        precision_mode(CPU)
    assert precision.gpu_rehearsal(torch.device("cuda")) is None  # a GPU takes its own path, whatever it says
    for off in ("0", ""):  # the control: not rehearsing, the CPU runs fp32 in its own layout
        monkeypatch.setenv("DL_REHEARSE_GPU", off)
        assert precision_mode(CPU) == "fp32"
        assert to_channels_last(torch.randn(2, 3, 4, 4), CPU).is_contiguous()


def test_a_record_of_a_gpu_rehearsal_says_so(monkeypatch, runs_tmp):
    def record() -> dict:
        path = write_run_record("templates/task_template", "smoke", CPU, RunClock(), {}, data="none")
        return json.loads(path.read_text())
    monkeypatch.setenv("DL_REHEARSE_GPU", "1")
    assert record()["gpu_rehearsal"] is True
    monkeypatch.delenv("DL_REHEARSE_GPU")  # the control: an ordinary CPU record has no such field
    assert "gpu_rehearsal" not in record()


def test_grad_scaler_is_a_pass_through_on_cpu():
    scaler = grad_scaler(CPU)
    assert not scaler.is_enabled()
    loss = torch.tensor(2.0, requires_grad=True)
    assert scaler.scale(loss) is loss


def test_a_training_step_through_the_shared_path_lowers_the_loss():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = grad_scaler(CPU)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = []
    for _ in range(20):
        with autocast(CPU):
            loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9


def test_channels_last_only_on_cuda():
    x = torch.randn(2, 3, 8, 8)
    assert to_channels_last(x, CPU) is x
    conv = nn.Conv2d(3, 4, 3)
    assert to_channels_last(conv, CPU) is conv
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert to_channels_last(x.to(cuda), cuda).is_contiguous(memory_format=torch.channels_last)


def test_enable_tf32_sets_the_flags():
    before = torch.get_float32_matmul_precision()
    try:
        enable_tf32()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cuda.matmul.allow_tf32 = False


def test_fp32_exact_turns_tf32_and_autocast_off_and_restores_them():
    before = torch.get_float32_matmul_precision()
    try:
        enable_tf32()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.mm(torch.randn(4, 4), torch.randn(4, 4)).dtype == torch.bfloat16
            with fp32_exact():
                assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
                assert torch.get_float32_matmul_precision() == "highest"
                assert torch.mm(torch.randn(4, 4), torch.randn(4, 4)).dtype == torch.float32
            assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cuda.matmul.allow_tf32 = False


def test_maybe_compile_is_the_eager_model_when_disabled_or_impossible(capsys):
    model = nn.Linear(3, 2)
    assert maybe_compile(model, False, CPU) is model
    assert capsys.readouterr().out == ""
    assert compile_unavailable_reason(torch.device("mps")) is not None
    assert maybe_compile(model, True, torch.device("mps")) is model
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "running the model eagerly" in out


def compile_error(message: str = "backend compiler failed\nlong traceback ...") -> Exception:
    """What Inductor raises when compiling fails (e.g. g++ or Triton failing on generated code)."""
    from torch._inductor.exc import InductorError
    return InductorError(RuntimeError(message), None)


def test_maybe_compile_falls_back_to_eager_when_compiling_fails(monkeypatch, capsys):
    def broken_compile(model):
        def run(*args):
            raise compile_error()
        return run
    monkeypatch.setattr(precision.torch, "compile", broken_compile)
    monkeypatch.setattr(precision, "compile_unavailable_reason", lambda device: None)
    model = nn.Linear(3, 2)
    fn = maybe_compile(model, True, CPU)
    x = torch.randn(5, 3)
    assert torch.equal(fn(x), model(x))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "backend compiler failed" in out and "eagerly" in out
    assert torch.equal(fn(x), model(x)) and capsys.readouterr().out == ""  # said once, eager from then on
    assert fn.weight is model.weight  # attributes are the eager model's


def test_a_forward_that_fails_after_a_compiled_part_ran_is_rerun_from_the_same_state(monkeypatch, capsys):
    """A graph break splits a forward: its first compiled part can update batch-norm statistics and draw random
    numbers before a later part fails to compile. The eager rerun must start from the state before the call."""
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5))
    reference = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5))
    reference.load_state_dict(model.state_dict())

    def compile_failing_midway(m):
        def run(x):
            m[0](x)  # the first compiled part: running statistics move
            torch.rand(1)  # and a random number is drawn
            raise compile_error("a later graph failed to compile")
        return run
    monkeypatch.setattr(precision.torch, "compile", compile_failing_midway)
    monkeypatch.setattr(precision, "compile_unavailable_reason", lambda device: None)
    fn = maybe_compile(model, True, CPU)
    x = torch.randn(8, 3)
    torch.manual_seed(5)
    out = fn(x)
    torch.manual_seed(5)
    expected = reference(x)
    assert torch.equal(out, expected)  # the same dropout mask: the random stream was put back
    assert torch.equal(model[0].running_mean, reference[0].running_mean)  # the statistics moved once, not twice
    assert model[0].num_batches_tracked.item() == 1


# ---------------------------------------------------------------- precision by compute capability

CUDA = torch.device("cuda")


def fake_gpu(monkeypatch, capability, bf16_supported=True):
    """Pretend a CUDA GPU of `capability` is present; `is_bf16_supported` says True, as it does on a T4."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)


@pytest.mark.parametrize("capability, mode, dtype", [
    ((9, 0), "bf16", torch.bfloat16),  # H100
    ((8, 9), "bf16", torch.bfloat16),  # RTX 4090
    ((8, 0), "bf16", torch.bfloat16),  # A100
    ((7, 5), "fp16", torch.float16),  # T4, RTX 20xx: bf16 only emulated although is_bf16_supported() says True
    ((7, 0), "fp16", torch.float16),  # V100
    ((6, 1), "fp32", None),  # GTX 10xx: no tensor cores
])
def test_precision_follows_the_compute_capability(monkeypatch, capability, mode, dtype):
    fake_gpu(monkeypatch, capability)
    assert precision_mode(CUDA) == mode
    assert amp_dtype(CUDA) == dtype
    assert grad_scaler(CUDA).is_enabled() == (mode == "fp16")  # loss scaling exactly for fp16
    assert precision_mode(CPU) == "fp32" and not grad_scaler(CPU).is_enabled()


def record_precision(device: torch.device = CPU) -> str:
    path = write_run_record("templates/task_template", "smoke", device, RunClock(), {"loss": 1.0}, data="none")
    return json.loads(path.read_text())["precision"]


@pytest.fixture
def fresh_precision_log(monkeypatch):
    """An empty log of the dtypes `common.autocast` ran in, as in a new notebook kernel."""
    monkeypatch.setattr(precision, "_AUTOCAST_RAN", set())


def test_the_run_record_says_which_precision_ran(monkeypatch, runs_tmp, fresh_precision_log):
    assert record_precision() == "fp32"


def test_the_record_says_fp32_on_a_bf16_gpu_when_autocast_never_ran(monkeypatch, runs_tmp, fresh_precision_log):
    """The device supports bf16 (a 4090), but the notebook never entered `common.autocast` (the MLP notebook):
    the forward pass ran in fp32, and the record must say so, not what the device could have done."""
    fake_gpu(monkeypatch, (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    for name in ("max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda device=None: 0)
    assert precision_mode(CUDA) == "bf16"
    assert record_precision(CUDA) == "fp32"


@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_the_record_says_the_dtype_autocast_ran_in(monkeypatch, runs_tmp, fresh_precision_log, mode, dtype):
    """A run that entered `common.autocast` records its dtype. The CPU's real autocast plays a GPU's here: the
    precision chosen for the CPU is made `mode`, so autocast really runs (a layer's output comes out in `dtype`)."""
    monkeypatch.setattr(precision, "precision_mode", lambda device: mode)
    layer = nn.Linear(4, 3)
    assert record_precision() == "fp32"  # chosen, not yet run
    with autocast(CPU):
        assert layer(torch.randn(2, 4)).dtype == dtype
    assert record_precision() == mode


def test_an_autocast_that_torch_disables_is_not_recorded(monkeypatch, runs_tmp, fresh_precision_log):
    """Where CUDA is not usable torch disables a CUDA autocast (with a warning): nothing ran in fp16, although the
    precision chosen for the (fake) T4 is fp16. This machine has no usable CUDA (the test is skipped where it has)."""
    if torch.cuda.is_available():
        pytest.skip("CUDA works here: torch would not disable its autocast")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert precision_mode(CUDA) == "fp16"
    with pytest.warns(UserWarning), autocast(CUDA):
        pass
    assert record_precision() == "fp32"


# ---------------------------------------------------------------- torch.compile: a fallback that covers the whole step


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))


def train_one_step(train_model, model: nn.Module) -> torch.Tensor:
    """One SGD step through `guarded_step`, from a fixed random state; returns the loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.ones(32, 1)

    def step():
        loss = nn.functional.mse_loss(train_model(x), y)  # dropout draws from the global generator
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    torch.manual_seed(2)
    return guarded_step(train_model, step)


def compile_failing_in_backward(model):
    """A stand-in for torch.compile whose forward works and whose backward fails to compile, as Inductor's can."""
    class FailsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise compile_error("C++ compile error in the backward graph")

    return lambda *args, **kwargs: FailsInBackward.apply(model(*args, **kwargs))


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.fixture
def compile_possible(monkeypatch):
    monkeypatch.setattr(precision, "compile_unavailable_reason", lambda device: None)


def test_a_backward_compile_failure_falls_back_and_the_step_equals_an_eager_one(monkeypatch, capsys, compile_possible,
                                                                                 runs_tmp):
    eager = make_net()
    eager_loss = train_one_step(eager, eager)
    monkeypatch.setattr(precision.torch, "compile", compile_failing_in_backward)
    model = make_net()
    train_model = maybe_compile(model, True, CPU)
    loss = train_one_step(train_model, model)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "first training step" in out and "eagerly" in out
    assert torch.equal(loss, eager_loss)  # the same dropout mask: the random state was put back
    assert_same_state(model, eager)  # weights and batch-norm statistics (updated once, not twice)
    assert train_one_step(train_model, model).isfinite() and capsys.readouterr().out == ""  # eager from now on
    outcome = precision._COMPILE_OUTCOMES[model]
    assert outcome["status"] == "fell_back" and "InductorError in the first training step" in outcome["reason"]
    record = json.loads(write_run_record("templates/task_template", "smoke", CPU, RunClock(), {}, data="none").read_text())
    assert {"model": "Sequential", "requested": True, "status": "fell_back",
            "reason": outcome["reason"]} in record["compile"]["models"]


def test_a_real_torch_compile_whose_backward_fails_to_compile_falls_back(monkeypatch, capsys, compile_possible):
    from torch._dynamo.backends.common import aot_autograd

    def failing_backward_compiler(graph, example_inputs):
        raise compile_error("generated backward kernel failed to compile")

    backend = aot_autograd(fw_compiler=lambda graph, example_inputs: graph.forward, bw_compiler=failing_backward_compiler)
    real_compile = torch.compile
    monkeypatch.setattr(precision.torch, "compile", lambda model: real_compile(model, backend=backend))
    eager = make_net()
    eager_loss = train_one_step(eager, eager)
    model = make_net()
    try:
        loss = train_one_step(maybe_compile(model, True, CPU), model)  # the forward compiles; the backward cannot
    finally:
        torch._dynamo.reset()
    assert "first training step" in capsys.readouterr().out
    assert torch.equal(loss, eager_loss)
    assert_same_state(model, eager)


@pytest.fixture
def dynamo_fresh(monkeypatch, compile_possible):
    """Dynamo as a new process has it, with a recompile limit of 1 to reach it quickly, a real torch.compile on
    Dynamo's eager backend (no C++ compiler needed), and Dynamo's caches, counters and settings put back after."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", False)
    monkeypatch.setattr(precision, "_COMPILED_MODELS", [0])
    real_compile = torch.compile
    monkeypatch.setattr(precision.torch, "compile", lambda model: real_compile(model, backend="eager"))
    yield counters
    torch._dynamo.reset()
    counters.clear()


def train_linears(widths: tuple[int, ...]) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """One guarded training step of an nn.Linear(4, w) per width, all compiled (they share Linear.forward): each
    model's compile outcome, its output and the eager output of a copy of the same model."""
    results = []
    for width in widths:
        torch.manual_seed(width)
        model, x = nn.Linear(4, width), torch.randn(3, 4)
        expected = nn.Linear(4, width).requires_grad_(False)
        expected.load_state_dict(model.state_dict())
        train_model = maybe_compile(model, True, CPU)
        out = guarded_step(train_model, lambda: train_model(x))
        out.sum().backward()
        results.append((dict(precision._COMPILE_OUTCOMES[model]), out.detach(), expected(x)))
    return results


def test_models_of_one_class_but_other_shapes_each_run_compiled(dynamo_fresh, monkeypatch, capsys):
    results = train_linears((2, 5, 7))  # three shapes of one forward: three graphs, over a limit of 1
    assert [outcome["status"] for outcome, _, _ in results] == ["compiled"] * 3
    assert dynamo_fresh["stats"]["unique_graphs"] == 3  # each model ran a graph of its own: none ran eagerly
    assert all(torch.allclose(out, expected) for _, out, expected in results)
    assert torch._dynamo.config.recompile_limit == 3 * precision.RECOMPILES_PER_MODEL and capsys.readouterr().out == ""


def test_a_recompile_limit_hit_is_a_fallback_on_the_record(dynamo_fresh, monkeypatch, capsys):
    monkeypatch.setattr(precision, "RECOMPILES_PER_MODEL", 0)  # the limit stays at 1: the second model reaches it
    (first, _, _), (second, out, expected) = train_linears((2, 5))
    assert first["status"] == "compiled" and second["status"] == "fell_back"
    assert "Dynamo's recompile limit (recompile_limit = 1) was reached in the forward" in second["reason"]
    assert "running the model eagerly" in capsys.readouterr().out
    assert torch.allclose(out, expected) and dynamo_fresh["stats"]["unique_graphs"] == 1


def test_dynamos_suppress_errors_leaves_the_hard_failure_off(dynamo_fresh, monkeypatch):
    """Dynamo refuses `fail_on_recompile_limit_hit` beside `suppress_errors` (an AssertionError at every compiled
    call): with the latter on (TORCHDYNAMO_SUPPRESS_ERRORS=1), maybe_compile leaves the former off and compiles."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", True)
    [(outcome, out, expected)] = train_linears((2,))
    assert outcome["status"] == "compiled" and torch.allclose(out, expected)
    assert torch._dynamo.config.fail_on_recompile_limit_hit is False


def test_control_without_the_guard_a_limit_hit_leaves_a_record_that_says_compiled(dynamo_fresh, monkeypatch):
    """What the two tests above rule out: Dynamo's own behaviour, the limit unchanged and no hard failure."""
    monkeypatch.setattr(precision, "_allow_recompiles_for_one_more_model", lambda: None)
    (first, _, _), (second, out, expected) = train_linears((2, 5))
    assert first["status"] == second["status"] == "compiled"  # the record says compiled...
    assert dynamo_fresh["stats"]["unique_graphs"] == 1  # ...but the second model ran eagerly
    assert torch.allclose(out, expected)


def test_the_cpu_rehearses_the_compiled_path_of_every_model_only_when_asked(monkeypatch, capsys, runs_tmp):
    """DL_REHEARSE_GPU=1: a model its notebook does not ask to compile (smoke on a CPU) goes through Dynamo and
    AOTAutograd, and its step equals the eager one; the record says so. Control: unset, it stays the eager model."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    eager = make_net()
    eager_loss = train_one_step(eager, eager)
    monkeypatch.setenv("DL_REHEARSE_GPU", "1")
    torch._dynamo.reset()
    counters.clear()
    try:
        model = make_net()
        train_model = maybe_compile(model, False, CPU)
        loss = train_one_step(train_model, model)
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert train_model is not model and graphs >= 1 and capsys.readouterr().out == ""
    assert torch.allclose(loss, eager_loss) and all(torch.allclose(a, b) for a, b in
                                                    zip(model.state_dict().values(), eager.state_dict().values()))
    assert precision._COMPILE_OUTCOMES[model] == {"model": "Sequential", "requested": False, "status": "compiled",
                                                  "reason": None, "rehearsal": "aot_eager"}
    monkeypatch.delenv("DL_REHEARSE_GPU")  # the control
    off = make_net()
    assert maybe_compile(off, False, CPU) is off and "rehearsal" not in precision._COMPILE_OUTCOMES[off]


def test_the_inductor_rehearsal_compiles_with_the_default_backend_where_a_cpp_compiler_is(monkeypatch):
    """DL_REHEARSE_GPU=inductor: torch.compile with its default backend (Inductor; here a stand-in that records its
    arguments, as a real C++ build takes a minute), and only where Inductor can work on the CPU (a C++ compiler);
    =1 passes backend="aot_eager", which needs none."""
    calls = []
    monkeypatch.setattr(precision.torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    monkeypatch.setattr(precision, "compile_unavailable_reason", lambda device: None)
    monkeypatch.setenv("DL_REHEARSE_GPU", "inductor")
    model = make_net()
    maybe_compile(model, False, CPU)
    assert calls == [{}] and precision._COMPILE_OUTCOMES[model]["rehearsal"] == "inductor"
    assert precision_mode(CPU) == "bf16"
    monkeypatch.setattr(precision, "compile_unavailable_reason", lambda device: "no C++ compiler found")
    assert maybe_compile(make_net(), False, CPU) is not None and len(calls) == 1  # unavailable: eager, not compiled
    monkeypatch.setenv("DL_REHEARSE_GPU", "1")  # the other rehearsal needs no C++ compiler
    maybe_compile(make_net(), False, CPU)
    assert calls[1:] == [{"backend": "aot_eager"}]


def test_out_of_memory_and_model_bugs_surface_as_themselves(monkeypatch, capsys, compile_possible):
    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                  ValueError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)")):
        def compiled_raising(model, error=error):
            def run(*args):
                raise error
            return run
        monkeypatch.setattr(precision.torch, "compile", compiled_raising)
        model = nn.Linear(3, 2)
        with pytest.raises(type(error)) as info:
            maybe_compile(model, True, CPU)(torch.randn(4, 3))
        assert info.value is error and capsys.readouterr().out == ""  # no fallback announced
        assert precision._COMPILE_OUTCOMES[model]["status"] == "compiled_unverified"
    wrapped_oom = compile_error("autotuning failed")
    wrapped_oom.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
    assert is_compile_error(compile_error()) and not is_compile_error(wrapped_oom)
    assert not is_compile_error(RuntimeError("backend compiler failed"))


def test_the_record_tells_a_verified_compiled_run_from_an_unverified_one(monkeypatch, compile_possible):
    monkeypatch.setattr(precision.torch, "compile", lambda model: model)  # a compile that works
    model = make_net()
    train_model = maybe_compile(model, True, CPU)
    assert precision._COMPILE_OUTCOMES[model]["status"] == "compiled_unverified"
    train_one_step(train_model, model)
    assert precision._COMPILE_OUTCOMES[model] == {"model": "Sequential", "requested": True, "status": "compiled",
                                                  "reason": None}
    off = nn.Linear(2, 2)
    assert maybe_compile(off, False, CPU) is off
    assert precision._COMPILE_OUTCOMES[off]["status"] == "eager"
    report = compile_report()
    assert report["status"] == "mixed" and len(report["models"]) >= 2


def test_a_device_given_as_a_string_works_as_for_autocast():
    from common import grad_scaler, to_channels_last
    assert not grad_scaler("cpu").is_enabled()
    x = torch.zeros(1, 2, 3, 3)
    assert to_channels_last(x, "cuda").is_contiguous(memory_format=torch.channels_last)
    assert to_channels_last(x, "cpu") is x


def test_autocast_on_a_device_torch_has_no_autocast_for_runs_in_full_precision(monkeypatch, fresh_precision_log):
    """torch before 2.5 has no autocast for Apple's MPS and raises even for a disabled one: `autocast` must then
    be a no-op (it runs in fp32 there anyway, and the record says so), while a real autocast dtype still raises."""
    real = torch.autocast

    def no_mps(device_type, *args, **kwargs):
        if device_type == "mps":
            raise RuntimeError("User specified an unsupported autocast device_type 'mps'")
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", no_mps)
    with autocast(torch.device("mps")):
        pass
    assert precision.precision_ran() == "fp32"
    monkeypatch.setattr(precision, "amp_dtype", lambda device: torch.float16)  # the control: a dtype to run in
    with pytest.raises(RuntimeError, match="unsupported autocast"):
        autocast(torch.device("mps"))


def test_the_record_keeps_the_outcome_of_a_model_that_is_gone():
    """A side model compiled inside a function (SimCLR's supervised reference) is garbage-collected before the
    record is written: its outcome must stay in `compile_report`, once, however often the model was registered."""
    import gc

    def side_run() -> None:
        model = nn.Linear(2, 2)
        maybe_compile(model, False, CPU)
        maybe_compile(model, False, CPU)  # registered twice: still one entry

    before = len((compile_report() or {"models": []})["models"])
    side_run()
    gc.collect()
    assert len(compile_report()["models"]) == before + 1


def test_a_scaler_resumes_from_a_checkpoint_written_without_loss_scaling(monkeypatch, capsys):
    """A disabled scaler (bf16 or fp32) saves {}; an enabled one (fp16: a T4) used to refuse that state with torch's
    "The source state dict is empty". The control: torch's own scaler still refuses it."""
    monkeypatch.setattr(precision, "amp_dtype", lambda device: torch.float16)  # as on a GPU without bf16
    scaler = grad_scaler(CPU)
    assert scaler.is_enabled()
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})
    scaler.load_state_dict({})
    assert "loss scale starts afresh" in capsys.readouterr().out
    saved = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    scaler.load_state_dict(saved)  # an fp16 checkpoint still resumes exactly
    assert scaler.state_dict() == saved
