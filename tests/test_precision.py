import torch
from torch import nn

from common import amp_dtype, autocast, enable_tf32, grad_scaler, to_channels_last

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
