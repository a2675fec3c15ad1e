"""Mixed precision, TF32 and channels_last, with one code path for every device.

On CUDA the forward pass runs under bf16 autocast when the GPU supports it (no loss
scaling needed), else fp16 autocast with a GradScaler. On the CPU and MPS everything runs
in full fp32 precision: the same calls are made, autocast is simply disabled.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 or fp16 on CUDA, None (full precision) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> AbstractContextManager:
    """A context manager for the forward pass and loss: `with autocast(device): loss = ...`."""
    dtype = amp_dtype(device)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 autocast; elsewhere its calls pass through."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


def enable_tf32() -> None:
    """Let fp32 matrix multiplies and convolutions use TF32 tensor cores on CUDA (no-op elsewhere)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")


def to_channels_last(obj: nn.Module | torch.Tensor, device: torch.device) -> nn.Module | torch.Tensor:
    """Convert a 4-d tensor or a conv model to channels_last memory layout on CUDA only.

    channels_last (NHWC) lets cuDNN use its fastest convolution kernels; on the CPU it
    brings little, so elsewhere `obj` is returned unchanged.
    """
    if device.type != "cuda":
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=torch.channels_last) if obj.dim() == 4 else obj
    return obj.to(memory_format=torch.channels_last)
