"""Mixed precision, TF32 and channels_last, with one code path for every device.

`precision_mode(device)` chooses once what the forward pass runs in:

- `bf16`: CUDA with compute capability >= 8.0 (Ampere, Ada, Hopper, ...: RTX 30xx/40xx, A100, H100).
  bf16 keeps fp32's exponent range, so no loss scaling is needed.
- `fp16`: CUDA with compute capability 7.x (Volta, Turing: V100, T4, RTX 20xx, the GPUs of free Colab).
  `torch.cuda.is_bf16_supported()` says True on some of them, but there bf16 is only emulated, slowly;
  fp16 runs on their tensor cores and needs loss scaling: `grad_scaler(device)` is enabled exactly here.
- `fp32`: the CPU, Apple MPS, and CUDA GPUs older than 7.0 (no tensor cores). The same calls are
  made; autocast is simply disabled and the scaler passes everything through.

A rehearsal of an Ampere+ GPU's path on a CPU (`DL_REHEARSE_GPU=1`, as `scripts/gpu_check.py --rehearse` runs every
notebook's smoke preset): the CPU's mode is 'bf16' (CPU autocast in bf16, whose op lists are close to CUDA's but
not the same), `maybe_compile` puts every model through Dynamo and AOTAutograd (also those a GPU runs eagerly), and
`to_channels_last` converts, so that most dtype mismatches, tracing errors and layout bugs show here instead of in
a borrowed GPU's minutes. Its records say device cpu, precision bf16 and `gpu_rehearsal`:
no measurement (`scripts/update_readme.py` refuses them). TF32 and Inductor's generated kernels are not rehearsed.

A notebook that trains under `autocast(device)` always creates `scaler = grad_scaler(device)` and calls
`scaler.scale(loss).backward(); scaler.step(opt); scaler.update()`: that is correct in every mode.

The run record's `precision` is what the forward passes actually ran in, not what the device supports:
the dtype(s) `autocast` was entered with in this process ('bf16', 'fp16', or 'bf16+fp16' if both), else 'fp32'
(a notebook that never enters `autocast`, or runs where it is disabled). See `precision_ran()`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import weakref
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from common.seed import rng_state, set_rng_state

BF16_MIN_CAPABILITY = (8, 0)  # native bf16 tensor cores from Ampere on
FP16_MIN_CAPABILITY = (7, 0)  # fp16 tensor cores from Volta on; below, fp32
REHEARSAL_ENV = "DL_REHEARSE_GPU"  # "1" or "inductor": the CPU rehearses an Ampere+ GPU's path (module docstring)
LIMIT_HIT_ERRORS = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")  # Dynamo's, by torch version (new, older)


def gpu_rehearsal(device: torch.device) -> str | None:
    """The torch.compile backend of a CPU rehearsing an Ampere+ GPU's path, else None: 'aot_eager' for
    `DL_REHEARSE_GPU=1` (Dynamo and AOTAutograd, no code generation), 'inductor' for `DL_REHEARSE_GPU=inductor`
    (Inductor's C++ code generation too: minutes more). See the module docstring."""
    if torch.device(device).type != "cpu":
        return None  # a GPU takes its own path: the variable cannot matter there
    value = os.environ.get(REHEARSAL_ENV, "").strip()
    if value not in ("", "0", "1", "inductor"):
        raise ValueError(f"{REHEARSAL_ENV}={value!r}: only 1, inductor (rehearse) or 0 / unset (do not) is allowed")
    return {"1": "aot_eager", "inductor": "inductor"}.get(value)


def precision_mode(device: torch.device) -> str:
    """'bf16', 'fp16' or 'fp32': the precision the forward pass runs in on `device` (see the module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":  # autocast asks every step: the CUDA path stays free of the rehearsal's lookup
        return "fp32" if gpu_rehearsal(device) is None else "bf16"
    capability = tuple(torch.cuda.get_device_capability(device))
    if capability >= BF16_MIN_CAPABILITY:
        return "bf16"
    return "fp16" if capability >= FP16_MIN_CAPABILITY else "fp32"


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 or fp16 on CUDA (by compute capability), bf16 on a CPU rehearsing a
    GPU (`DL_REHEARSE_GPU=1`), None (full precision) elsewhere."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision_mode(device)]


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_AUTOCAST_RAN: set[str] = set()  # the dtypes (bf16, fp16) `autocast` really ran in during this process


def _autocast_enabled(device_type: str) -> bool:
    """Whether torch's autocast is on for `device_type` right now (torch disables a CUDA one without CUDA)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))  # torch >= 2.4
    except TypeError:  # torch 2.3: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class _Autocast(AbstractContextManager):
    """`torch.autocast` in `amp_dtype(device)` (disabled when None) that notes, on entry, the dtype it ran in."""

    def __init__(self, device: torch.device) -> None:
        self.dtype = amp_dtype(device)
        self.device_type = device.type
        try:
            self.inner = torch.autocast(device_type=device.type, dtype=self.dtype, enabled=self.dtype is not None)
        except RuntimeError:  # torch < 2.5 has no autocast for MPS, not even a disabled one
            if self.dtype is not None:
                raise
            self.inner = contextlib.nullcontext()

    def __enter__(self) -> "_Autocast":
        self.inner.__enter__()
        if self.dtype is not None and _autocast_enabled(self.device_type):
            _AUTOCAST_RAN.add(_DTYPE_NAMES[self.dtype])
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self.inner.__exit__(*exc)


def autocast(device: torch.device) -> AbstractContextManager:
    """A context manager for the forward pass and loss: `with autocast(device): loss = ...`. Runs in
    `amp_dtype(device)` (full precision where that is None); the run record's `precision` says what it ran in."""
    return _Autocast(torch.device(device))


def precision_ran() -> str:
    """What the forward passes of this process ran in, for the run record's `precision`: the dtype(s) `autocast`
    was entered with and torch kept enabled ('bf16', 'fp16', or 'bf16+fp16'), else 'fp32'."""
    return "+".join(sorted(_AUTOCAST_RAN)) or "fp32"


class _GradScaler(torch.amp.GradScaler):
    """torch's GradScaler, resumable from a checkpoint written in another precision mode: a disabled scaler's
    state is empty, which an enabled one refuses ("The source state dict is empty"); then the scale starts afresh."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.is_enabled() and not state_dict:
            print("note: the checkpoint was written without fp16 loss scaling (bf16 or fp32, another device): the "
                  "loss scale starts afresh")
            return
        super().load_state_dict(state_dict)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is enabled exactly when `precision_mode(device)` is 'fp16'; elsewhere its calls pass
    through (`scale(loss)` returns `loss`, `step(opt)` calls `opt.step()`), so one training loop fits all. It
    loads the state of a checkpoint written in another precision mode too (a T4 resuming an A100's run)."""
    device = torch.device(device)  # "cuda" as a string works too, as it does for `autocast`
    return _GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


def enable_tf32() -> None:
    """Let fp32 matrix multiplies and convolutions use TF32 tensor cores on CUDA. Its
    `set_float32_matmul_precision("high")` also sets `torch.backends.mkldnn.matmul.fp32_precision` to "tf32" (torch
    2.14): oneDNN may then use reduced precision for CPU matmuls where the CPU supports it. `fp32_exact()` undoes
    all three settings inside its block."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")


def to_channels_last(obj: nn.Module | torch.Tensor, device: torch.device) -> nn.Module | torch.Tensor:
    """Convert a 4-d tensor or a conv model to channels_last memory layout on CUDA (and a CPU rehearsing it) only.

    channels_last (NHWC) lets cuDNN use its fastest convolution kernels. Elsewhere `obj` is
    returned unchanged: on the CPU the gain depends on the network (measured on a 2-core AMD
    EPYC: 1.12x for a ResNet-20 training step, 1.55x for SimCLR's encoder), so notebooks that
    want it there convert explicitly, as `resnet` and `simclr` do. A CPU rehearsing the GPU's path converts too.
    """
    if torch.device(device).type != "cuda" and gpu_rehearsal(device) is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=torch.channels_last) if obj.dim() == 4 else obj
    return obj.to(memory_format=torch.channels_last)


@contextmanager
def fp32_exact() -> Iterator[None]:
    """Full fp32 inside the block: TF32 off and autocast off, restored afterwards.

    Use it for exactness checks and for the losses, likelihoods and metrics a notebook reports: on an
    Ampere or newer GPU, TF32 matmuls keep only 10 mantissa bits and bf16 only 8, so a check with a
    tolerance of 1e-5 would fail and a reported likelihood would carry rounding noise. On the CPU it
    changes nothing.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why `torch.compile` cannot work on `device` here (None when it can): its Inductor backend needs
    Triton on CUDA and a C++ compiler on the CPU, and does not support Apple MPS."""
    if device.type == "mps":
        return "torch.compile does not support MPS"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    compilers = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "no C++ compiler found (set CXX or install g++)"
    return None


def _compile_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions torch.compile raises when compiling fails: Dynamo's (tracing, backend failures, Inductor's
    `InductorError`) and Inductor's own (lowering, C++/CUDA compile errors). Imported only when needed."""
    found: list[type[BaseException]] = []
    try:
        from torch._dynamo import exc as dynamo_exc
        found.append(dynamo_exc.TorchDynamoException)
        for name in LIMIT_HIT_ERRORS:  # not TorchDynamoExceptions
            cls = getattr(dynamo_exc, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    except ImportError:
        pass
    try:
        from torch._inductor import exc as inductor_exc
        for name in ("InductorError", "LoweringException", "CppCompileError", "CUDACompileError"):
            cls = getattr(inductor_exc, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    except ImportError:
        pass
    return tuple(found)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the exceptions it wraps (`inner_exception`, `__cause__`, `__context__`)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "inner_exception", None), e.__cause__, e.__context__]


def is_compile_error(error: BaseException) -> bool:
    """True for an error of the compiler itself, which eager mode avoids; False for anything else, above all an
    out-of-memory error (also one raised while compiling) and a bug in the model, which must surface as themselves."""
    if any(isinstance(e, torch.OutOfMemoryError) for e in _chain(error)):
        return False
    return isinstance(error, _compile_error_types())


_COMPILE_OUTCOMES: "weakref.WeakKeyDictionary[nn.Module, dict[str, Any]]" = weakref.WeakKeyDictionary()  # by model
_OUTCOMES_IN_ORDER: list[dict[str, Any]] = []  # every model's outcome, also once the model is garbage-collected
RECOMPILES_PER_MODEL = 8  # Dynamo's default recompile_limit: compiled graphs one function may keep, per model
_COMPILED_MODELS = [0]  # models `maybe_compile` has handed to torch.compile in this process


def _recompile_limit_hit(error: BaseException) -> bool:
    """Whether `error` (or one it wraps) is Dynamo's hard failure at a recompile limit."""
    return any(type(e).__name__ in LIMIT_HIT_ERRORS for e in _chain(error))


def _limit_reached(error: BaseException) -> str:
    """Which of Dynamo's limits a recompile-limit failure reached, from the message it wraps ("Limit type: ..."),
    with its value: "recompile_limit = 16" (or "accumulated_recompile_limit = 256")."""
    import torch._dynamo

    found = next((m.group(1) for e in _chain(error) for m in [re.search(r"Limit type: (\w+)", str(e))] if m), None)
    name = found or _dynamo_setting("recompile_limit", "cache_size_limit") or "recompile_limit"
    return f"{name} = {getattr(torch._dynamo.config, name, '?')}"


def _dynamo_setting(*names: str) -> str | None:
    """The first of `names` that torch._dynamo.config has, else None (torch 2.14 keeps the older names
    `cache_size_limit` and `fail_on_cache_limit_hit` as aliases; earlier versions may have only those)."""
    import torch._dynamo

    return next((name for name in names if hasattr(torch._dynamo.config, name)), None)


def _allow_recompiles_for_one_more_model() -> None:
    """Dynamo keeps at most `recompile_limit` compiled graphs per Python function, and models of one class share
    their `forward`: the ViT's ablations (another patch size, depth or pooling) each need a graph of their own. Past
    the limit Dynamo would run the function eagerly with a logged warning only. So each compiled model raises the
    limit by Dynamo's default (never lowers it), and a hit that still happens raises (`fail_on_recompile_limit_hit`,
    for every compiled function of the process: the notebooks compile only through `maybe_compile`), which
    `_CompiledOrEager` turns into a fallback on the record. Not where that setting is missing (older torch) or
    where Dynamo's `suppress_errors` is on (the two cannot be set together): there a hit still runs eagerly unseen."""
    import torch._dynamo

    _COMPILED_MODELS[0] += 1
    limit, fail = _dynamo_setting("recompile_limit", "cache_size_limit"), _dynamo_setting(
        "fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")
    if limit is not None:
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit),
                                                 RECOMPILES_PER_MODEL * _COMPILED_MODELS[0]))
    if fail is not None and not getattr(torch._dynamo.config, "suppress_errors", False):
        setattr(torch._dynamo.config, fail, True)


class _CompiledOrEager:
    """Calls the `torch.compile`d model; if compiling fails (a compile error only, see `is_compile_error`),
    says so in one line, records why, and runs the eager model from then on. Attributes are those of the eager
    model. `guarded_step` extends the guard to a whole training step (the backward is compiled lazily)."""

    def __init__(self, model: nn.Module, outcome: dict[str, Any], backend: str | None = None) -> None:
        self.model = model
        _allow_recompiles_for_one_more_model()
        self.compiled = torch.compile(model) if backend is None else torch.compile(model, backend=backend)
        self.failed = False
        self.verified = False  # a whole training step has run compiled (through guarded_step)
        self.outcome = outcome

    def fall_back(self, error: BaseException, where: str) -> None:
        self.failed = True
        first_line = (str(error).strip().splitlines() or [""])[0][:160]
        reason = f"{type(error).__name__} in the {where}: {first_line}"
        if _recompile_limit_hit(error):
            reason = f"Dynamo's recompile limit ({_limit_reached(error)}) was reached in the {where}"
        self.outcome.update(status="fell_back", reason=reason)
        print(f"torch.compile failed ({reason}); running the model eagerly")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            # Until a whole step has run compiled, a failure can come after a compiled part of the forward already
            # ran (a graph break splits it): its batch-norm statistics and random draws are put back first.
            saved = None if self.verified else _snapshot(self.model)
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:
                if not is_compile_error(e):
                    raise  # out of memory, or a bug in the model: not a reason to fall back
                self.fall_back(e, "forward")
                if saved is not None:
                    _restore(saved)
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device) -> Callable[..., Any]:
    """`torch.compile(model)` when `enabled` and possible, else the eager `model` (with a one-line reason).

    Train through the returned callable; save and evaluate `model` itself (its state_dict keys are the
    plain ones). The first compiled call compiles, so time it as the run's `compile` span. Run the training
    step through `guarded_step(train_model, step)`, at least the first one: Inductor compiles the backward
    only during the first `loss.backward()`, and only there can a failure of it fall back. The run record's
    `compile` field says whether the run was compiled or fell back, and why (`compile_report()`). Each compiled
    model raises Dynamo's `recompile_limit` by 8, so that models of one class but other shapes do not silently
    run eagerly once the limit is reached; a hit that still happens falls back like a compile error, on the record
    (where torch has Dynamo's hard failure, as 2.14 does; the model then runs eagerly from that step on).

    On a CPU rehearsing the GPU's path (`DL_REHEARSE_GPU=1`) every model is compiled, asked or not, by Dynamo and
    AOTAutograd without code generation (`backend="aot_eager"`; `DL_REHEARSE_GPU=inductor`: Inductor's C++ code
    generation too): a rehearsal of the GPU's tracing, guards, recompilations, lowering and fallbacks
    (`scripts/gpu_check.py --rehearse`), not a speed-up; the outcome carries `rehearsal`, the backend.
    """
    outcome: dict[str, Any] = {"model": type(model).__name__, "requested": bool(enabled), "status": "eager",
                               "reason": None if enabled else "not requested"}
    earlier = _COMPILE_OUTCOMES.get(model)
    _OUTCOMES_IN_ORDER[:] = [o for o in _OUTCOMES_IN_ORDER if o is not earlier] + [outcome]  # a model counts once
    _COMPILE_OUTCOMES[model] = outcome
    rehearsal = gpu_rehearsal(device)
    if rehearsal is not None:
        outcome["rehearsal"] = rehearsal
    elif not enabled:
        return model
    reason = None if rehearsal == "aot_eager" else compile_unavailable_reason(device)  # Inductor needs a C++ compiler
    if reason is not None:
        outcome.update(status="unavailable", reason=reason)
        print(f"torch.compile unavailable ({reason}); running the model eagerly")
        return model
    outcome.update(status="compiled_unverified", reason="no training step has run through guarded_step")
    return _CompiledOrEager(model, outcome, backend=rehearsal if rehearsal == "aot_eager" else None)


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """What a failed first step may have changed before its backward failed: gradients, buffers (batch-norm
    statistics) and the random generators (dropout, noise), so the eager retry starts from the same state."""
    return {"grads": [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()],
            "buffers": [(b, b.detach().clone()) for b in model.buffers()], "rng": rng_state()}


def _restore(state: dict[str, Any]) -> None:
    with torch.no_grad():
        for p, grad in state["grads"]:
            p.grad = grad
        for b, saved in state["buffers"]:
            b.copy_(saved)
    set_rng_state(state["rng"])


def guarded_step(train_model: Callable[..., Any], step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one training step, `step(*args, **kwargs)` (forward through `train_model`, backward, optimiser step),
    falling back to eager mode if torch.compile fails anywhere in it, and return what `step` returns.

    The backward of a compiled model is compiled lazily, inside the first `loss.backward()`, where the guard of
    `maybe_compile`'s forward cannot catch it. Here a compile error (only: see `is_compile_error`) makes the
    model eager; until a whole step has run compiled, the gradients, buffers and random generators are put back
    as they were before the step (later, a recompilation that fails, e.g. for a new batch shape, reruns the step
    without that restore, so its buffers and random draws advance twice), and the step runs again, eagerly. `step` must fail before its optimiser step changes the weights, which a
    compile failure of the model does. For an eager `train_model` this is just `step(*args, **kwargs)`.
    """
    if not isinstance(train_model, _CompiledOrEager) or train_model.failed:
        return step(*args, **kwargs)
    saved = None if train_model.verified else _snapshot(train_model.model)
    try:
        result = step(*args, **kwargs)
    except Exception as e:
        if not is_compile_error(e):
            raise
        train_model.fall_back(e, "first training step" if saved is not None else "training step")
        if saved is not None:
            _restore(saved)
        return step(*args, **kwargs)
    if not train_model.verified and not train_model.failed:
        train_model.verified = True
        train_model.outcome.update(status="compiled", reason=None)
    return result


def compile_report() -> dict[str, Any] | None:
    """What `maybe_compile` did in this process, for the run record: {"status", "models": [...]}, where status
    is 'compiled' (a whole training step ran compiled), 'compiled_unverified' (compiled, but no step ran
    through `guarded_step`), 'fell_back', 'unavailable' or 'eager' (not requested), or 'mixed' when the
    models differ; None if `maybe_compile` was never called."""
    models = [dict(outcome) for outcome in _OUTCOMES_IN_ORDER]
    if not models:
        return None
    statuses = {m["status"] for m in models}
    return {"status": statuses.pop() if len(statuses) == 1 else "mixed", "models": models}
