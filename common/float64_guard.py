"""An opt-in guard that forbids float64 on the training device, as Apple's MPS does (it has no float64), on any
machine. The notebook tests switch it on (`DL_FORBID_DEVICE_FLOAT64=1`: `get_device()` then installs it), so that a
notebook that would crash on a Mac fails its smoke test on a Linux CPU too, without a run of its own.

On a GPU, "on the device" is simply a tensor whose device is not the CPU. On the CPU, where the training device and
explicit CPU work are the same memory, the guard tells them apart by marking:

- `get_device()` returns `GUARDED_CPU`, the device `cpu:0`: the same CPU, but not equal to `torch.device("cpu")`;
- a tensor made with `device=<that device>` or moved with `.to(<that device>)` (a module's parameters and buffers
  too: `model.to(device)`) is marked as being on the device, and so is every result of an operation that reads a
  marked tensor (a Python attribute, `ON_DEVICE`, set by a `TorchFunctionMode`);
- `.cpu()` and `.to("cpu")` give an unmarked tensor back (a new tensor object sharing the memory, as a copy to the
  CPU would be), on which float64 is fine, as it is on a Mac;
- any float64 result on the device raises `DeviceFloat64Error`, naming the operation.

A checkpoint stores plain tensors; `common.load_checkpoint(..., map_location=device)` marks them again.
Limits: a tensor made on `x.device` (which reads `cpu`) rather than on the notebook's `device` is not marked, nor
are the parameters of a `copy.deepcopy` of a module (new parameter objects; what flows through them from the device
is), so a miss is possible; the guard is meant to raise only for float64 that would really be on the device. It
costs some Python per torch call (a development measurement on a shared, loaded CPU: about 5 microseconds of CPU time
per small operation, roughly doubling the cost of the tiniest ones), which the smoke runs afford.
"""

from __future__ import annotations

import os

import torch
from torch.overrides import TorchFunctionMode

ENV = "DL_FORBID_DEVICE_FLOAT64"  # set to 1: get_device() installs the guard
GUARDED_CPU = torch.device("cpu", 0)  # the training device when it is the CPU: equal to no other CPU device
ON_DEVICE = "_dl_on_device"  # the attribute that marks a CPU tensor as being on the training device


class DeviceFloat64Error(TypeError):
    """float64 on the training device (which Apple's MPS does not support)."""


ON_VALUES, OFF_VALUES = ("1", "true", "yes"), ("", "0", "false", "no")  # case and surrounding spaces ignored


def enabled() -> bool:
    """Whether the environment asks for the guard: `DL_FORBID_DEVICE_FLOAT64` set to 1, true or yes; unset, empty,
    0, false or no leave it off. Any other value raises ValueError, so that a misspelt "on" does not silently run
    without the guard."""
    value = os.environ.get(ENV, "").strip().lower()
    if value not in ON_VALUES + OFF_VALUES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: use 1, true or yes (guard on), or 0, false, no or unset (off)")
    return value in ON_VALUES


def on_device(t: torch.Tensor) -> bool:
    """Whether `t` is on the training device: marked, or on a device other than the CPU."""
    return getattr(t, ON_DEVICE, False) or t.device.type not in ("cpu", "meta")


def _any_marked(args, kwargs) -> bool:
    """Whether an argument (or an element of a list or tuple argument, as torch.cat takes) is marked."""
    for a in (*args, *kwargs.values()) if kwargs else args:
        if getattr(a, ON_DEVICE, False):
            return True
        if type(a) in (list, tuple) and any(getattr(b, ON_DEVICE, False) for b in a):
            return True
    return False


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A new, unmarked tensor object sharing `t`'s memory (and its autograd history); a parameter's is a tensor."""
    return t.as_subclass(torch.Tensor)


def _refuse(out, func) -> None:
    for t in (out,) if isinstance(out, torch.Tensor) else out if type(out) in (tuple, list) else ():
        if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and on_device(t):
            raise DeviceFloat64Error(
                f"float64 on the training device, from {getattr(func, '__name__', func)}: Apple's MPS has no "
                f"float64; do float64 work on the CPU (`.cpu().double()`) [{ENV} is set]")


def _mark(out) -> None:
    for t in (out,) if isinstance(out, torch.Tensor) else out if type(out) in (tuple, list) else ():
        if isinstance(t, torch.Tensor):
            setattr(t, ON_DEVICE, True)


class Float64Guard(TorchFunctionMode):
    """Marks what is made on, or moved to, `GUARDED_CPU` and what is computed from it; refuses float64 on the device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to or func is torch.Tensor.cpu:
            return self._move(func, args, kwargs)
        if func is torch.Tensor.__reduce_ex__:  # pickled (torch.save) without the mark
            return _alias(args[0]).__reduce_ex__(*args[1:])
        out = func(*args, **kwargs)
        if args and out is args[0]:  # in place (or a no-op): the tensor stays where it was
            pass
        elif _any_marked(args, kwargs):
            _mark(out)
        elif kwargs.get("device") is not None and not isinstance(kwargs["device"], int) \
                and torch.device(kwargs["device"]) == GUARDED_CPU:  # made on the device
            _mark(out)
        _refuse(out, func)
        return out

    @staticmethod
    def _move(func, args, kwargs):
        """`.to(...)` and `.cpu()`: to the device marks, to the CPU unmarks (a new tensor object either way, as a
        copy between devices would be), a dtype change keeps the mark."""
        out = func(*args, **kwargs)
        target = torch.device("cpu") if func is torch.Tensor.cpu else torch._C._nn._parse_to(*args[1:], **kwargs)[0]
        if target is None or target.type != "cpu":
            if target is None and _any_marked(args, kwargs) and out is not args[0]:
                _mark(out)
        else:
            onto = target == GUARDED_CPU
            if isinstance(args[0], torch.nn.Parameter):  # Module.to/.cpu: the parameter object stays, its data moves
                setattr(args[0], ON_DEVICE, onto)
            if out is args[0] or getattr(out, ON_DEVICE, False) != onto:
                out = _alias(out)
            if onto:
                setattr(out, ON_DEVICE, True)
        _refuse(out, func)
        return out


_installed: Float64Guard | None = None


def install(device: torch.device) -> torch.device:
    """Switch the guard on for the rest of this thread (once; later calls change nothing) and return the device the
    notebook should use: `GUARDED_CPU` for the CPU, `device` itself otherwise."""
    global _installed
    if _installed is None:
        _installed = Float64Guard()
        _installed.__enter__()
    return GUARDED_CPU if device.type == "cpu" else device


def uninstall() -> None:
    """Switch the guard off (for tests)."""
    global _installed
    if _installed is not None:
        _installed.__exit__(None, None, None)
        _installed = None
