import json

import pytest
import torch
from torch import nn

from common import (RunClock, amp_dtype, autocast, compile_unavailable_reason, enable_tf32, fp32_exact, grad_scaler,
                    maybe_compile, precision, precision_mode, to_channels_last, write_run_record)

CPU = torch.device("cpu")


def test_cpu_runs_in_full_precision():
    assert amp_dtype(CPU) is None
    layer = nn.Linear(4, 3)
    with autocast(CPU):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.float32


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


def test_maybe_compile_falls_back_to_eager_when_compiling_fails(monkeypatch, capsys):
    def broken_compile(model):
        def run(*args):
            raise RuntimeError("backend compiler failed\nlong traceback ...")
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


def test_the_run_record_says_which_precision_ran(monkeypatch, runs_tmp):
    path = write_run_record("templates/task_template", "smoke", CPU, RunClock(), {"loss": 1.0}, data="none")
    assert json.loads(path.read_text())["precision"] == "fp32"
