import os
import random
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from common import (get_device, get_preset, load_checkpoint, pick, rng_state, save_checkpoint, seed_everything,
                    seed_from_env, set_rng_state, stream_seed)
from common.device import DeviceError, canonical_device_name, describe_device, host_to_device, parse_device
from common import preset as preset_module
from common.preset import PresetError, announce_preset, default_preset, preset_and_reason


@pytest.mark.parametrize("value", ["smoke", "quick", "full", "QUICK", " full "])
def test_preset_reads_env(monkeypatch, value):
    monkeypatch.setenv("DL_PRESET", value)
    assert get_preset() == value.strip().lower()


def fake_gpu(monkeypatch, capability: tuple[int, int], gib: float, name: str = "Fake GPU") -> None:
    """Pretend this machine has one CUDA GPU with this compute capability and memory."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(total_memory=int(gib * 2**30)))


@pytest.mark.parametrize("capability, gib, dl_device, expected, why", [
    ((8, 9), 24.0, "", "full", "native bf16 and 24 GiB"),  # an RTX 4090
    ((9, 0), 80.0, "cuda:0", "full", "native bf16 and 80 GiB"),  # an H100, named
    ((7, 5), 15.0, "", "quick", "compute capability 7.5) has no native bf16"),  # Colab's T4
    ((8, 6), 12.0, "", "quick", "12 GiB, under the 20 GiB"),  # a laptop's RTX 3080
    ((8, 9), 24.0, "cpu", "quick", "the device is cpu"),  # a 4090 is here, but DL_DEVICE=cpu chose the CPU
])
def test_the_default_preset_follows_the_chosen_device(monkeypatch, capsys, capability, gib, dl_device, expected, why):
    fake_gpu(monkeypatch, capability, gib)
    monkeypatch.setattr(preset_module, "_announced", False)
    monkeypatch.delenv("DL_PRESET", raising=False)
    monkeypatch.setenv("DL_DEVICE", dl_device)
    preset, reason = default_preset()
    assert (preset, "\n" in reason) == (expected, False) and why in reason and "DL_PRESET" in reason, reason
    assert get_preset() == expected and pick(1, 2, 3) == {"quick": 2, "full": 3}[expected]
    assert capsys.readouterr().out == f"Preset: {expected} ({reason}).\n"  # said once, at the first use
    monkeypatch.setenv("DL_PRESET", "smoke")  # DL_PRESET still decides
    assert get_preset() == "smoke" and preset_and_reason() == ("smoke", "DL_PRESET is set")


def test_the_default_preset_without_cuda_is_quick(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(preset_module, "_announced", True)
    monkeypatch.delenv("DL_PRESET", raising=False)
    monkeypatch.delenv("DL_DEVICE", raising=False)
    assert get_preset() == "quick" and default_preset(torch.device("cpu"))[0] == "quick"
    fake_gpu(monkeypatch, (8, 9), 24.0)
    assert default_preset(torch.device("cpu"))[0] == "quick" and default_preset(torch.device("cuda"))[0] == "full"


def test_announce_preset_prints_once(monkeypatch, capsys):
    monkeypatch.setattr(preset_module, "_announced", False)
    monkeypatch.setenv("DL_PRESET", "quick")
    assert announce_preset() == "quick" and announce_preset() == "quick"
    assert capsys.readouterr().out == "Preset: quick (DL_PRESET is set).\n"


def test_bogus_preset_is_a_one_line_actionable_error(monkeypatch):
    monkeypatch.setenv("DL_PRESET", "bogus")
    with pytest.raises(PresetError) as err:
        get_preset()
    message = str(err.value)
    assert "\n" not in message
    assert "bogus" in message and all(p in message for p in ("smoke", "quick", "full"))


def test_pick_follows_the_preset(monkeypatch):
    for preset, expected in [("smoke", 1), ("quick", 2), ("full", 3)]:
        monkeypatch.setenv("DL_PRESET", preset)
        assert pick(smoke=1, quick=2, full=3) == expected
    assert pick(smoke="a", quick="b", full="c", preset="quick") == "b"
    with pytest.raises(PresetError):
        pick(1, 2, 3, preset="huge")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


def test_seed_from_env(monkeypatch):
    monkeypatch.delenv("DL_SEED", raising=False)
    assert seed_from_env(1337) == 1337
    monkeypatch.setenv("DL_SEED", " 7 ")
    assert seed_from_env(1337) == 7
    monkeypatch.setenv("DL_SEED", "")
    assert seed_from_env(1337) == 1337
    monkeypatch.setenv("DL_SEED", "seven")
    with pytest.raises(ValueError, match="DL_SEED"):
        seed_from_env(1337)


def test_deterministic_mode_toggles(monkeypatch):
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()


def first_draws(seed: int) -> tuple[int, ...]:
    """The first draws of a CPU generator seeded with `seed`: two seeds give one stream where these agree."""
    return tuple(torch.randint(2**31, (4,), generator=torch.Generator().manual_seed(seed)).tolist())


def check_streams_apart(seed_of) -> None:
    """seed_of(seed, stream): the streams "batches", "augmentation" and "noise" of runs seeded 0..29 (a notebook's
    several seeds) all draw different random numbers on the CPU generator, and the same arguments give the same seed."""
    streams = ("batches", "augmentation", "noise")
    draws = {(seed, name): first_draws(seed_of(seed, name)) for seed in range(30) for name in streams}
    assert len(set(draws.values())) == len(draws), "two streams draw the same random numbers"
    assert all(first_draws(seed_of(seed, name)) == d for (seed, name), d in draws.items()), "not repeatable"


@pytest.mark.parametrize("naive", [
    lambda seed, name: seed,  # every stream seeded with the run's seed
    lambda seed, name: seed + ("batches", "augmentation", "noise").index(name),  # run s's stream k is run s+k's first
    lambda seed, name: 2**32 * ("batches", "augmentation", "noise").index(name) + seed,  # apart above 32 bits only
], ids=["one-seed", "seed-plus-k", "offset-2**32"])
def test_stream_seed_gives_every_stream_its_own_draws(naive) -> None:
    check_streams_apart(stream_seed)
    with pytest.raises(AssertionError, match="draw the same random numbers"):
        check_streams_apart(naive)


def check_within_32_bits(seed_of) -> None:
    assert all(0 <= seed_of(s, n) < 2**32 for s in (-5, 0, 2**40) for n in ("batches", "")), "outside 32 bits"


def test_stream_seeds_fit_the_cpu_generator() -> None:
    """Control: a seed that leaves the 32 bits the CPU generator keeps."""
    check_within_32_bits(stream_seed)
    with pytest.raises(AssertionError, match="outside 32 bits"):
        check_within_32_bits(lambda s, n: stream_seed(s, n) + 2**32)


SEEDS_IN_A_FRESH_PROCESS = ("from common import stream_seed; "
                            "print([{expression} for s in range(5) for n in ('batches', 'noise')])")


def check_same_in_every_process(expression: str) -> None:
    """`expression` (of s, the seed, and n, the stream's name) gives the same seeds in two fresh Python processes with
    different string-hash salts: a resumed run, or another machine, gets the same streams."""
    outputs = {subprocess.run([sys.executable, "-c", SEEDS_IN_A_FRESH_PROCESS.format(expression=expression)],
                              env={**os.environ, "PYTHONHASHSEED": salt}, capture_output=True, text=True,
                              check=True).stdout for salt in ("1", "2")}
    assert len(outputs) == 1, f"the seeds change from one process to the next: {sorted(outputs)}"


def test_stream_seeds_are_the_same_in_every_process() -> None:
    """Control: Python's hash of the name, salted per process."""
    check_same_in_every_process("stream_seed(s, n)")
    with pytest.raises(AssertionError, match="change from one process to the next"):
        check_same_in_every_process("hash((s, n)) % 2**32")


def test_seeding_does_not_import_the_compiler():
    """Every notebook seeds at start-up; `torch.use_deterministic_algorithms` imports Dynamo and Inductor (seconds
    on a CPU), so seeding in the default mode must not call it when the deterministic mode is already off."""
    code = ("import sys, common; common.seed_everything(0); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"seeding imported the compiler: {out[:300]}"


@pytest.mark.parametrize("threads, expected", [(1, "cpu (1 thread, "), (2, "cpu (2 threads, ")])
def test_a_cpu_is_named_with_its_threads_in_the_singular_or_plural(monkeypatch, threads, expected):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    name = describe_device(torch.device("cpu"))
    assert name.startswith(expected) and canonical_device_name(name) == name


def test_the_old_plural_of_one_thread_reads_as_the_name_written_now():
    assert canonical_device_name("cpu (1 threads, x86_64)") == "cpu (1 thread, x86_64)"
    for unchanged in ("cpu (2 threads, x86_64)", "cpu (11 threads, x86_64)", "NVIDIA H100 80GB HBM3"):  # controls
        assert canonical_device_name(unchanged) == unchanged


def test_get_device_prints_one_line(capsys, monkeypatch):
    monkeypatch.delenv("DL_DEVICE", raising=False)
    device = get_device()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and device.type in out
    if not torch.cuda.is_available():
        assert device.type in ("cpu", "mps")


def test_dl_device_overrides(monkeypatch):
    monkeypatch.setenv("DL_DEVICE", "cpu")
    assert get_device(verbose=False) == torch.device("cpu")


@pytest.mark.parametrize("value", ["gpu", "cuda0", "cpu:0x", "tpu", "mps:1", "cuda:-1"])
def test_a_bogus_dl_device_is_one_line_naming_the_allowed_values(monkeypatch, value):
    monkeypatch.setenv("DL_DEVICE", value)
    with pytest.raises(DeviceError) as err:
        get_device(verbose=False)
    message = str(err.value)
    assert "\n" not in message and repr(value) in message
    assert "allowed: cpu, cuda, cuda:N, mps" in message


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "CUDA:1"])
def test_dl_device_cuda_without_cuda_fails_at_once_in_one_line(monkeypatch, value):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("DL_DEVICE", value)
    with pytest.raises(DeviceError) as err:
        get_device(verbose=False)
    message = str(err.value)
    assert "\n" not in message and "CUDA is not available" in message and "cpu, cuda, cuda:N, mps" in message


def test_dl_device_cuda_n_beyond_the_gpus_present_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parse_device("cuda:0") == torch.device("cuda:0")
    assert parse_device(" Cuda ") == torch.device("cuda")
    with pytest.raises(DeviceError, match="1 CUDA device"):
        parse_device("cuda:1")


def test_dl_device_mps_without_mps_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS is not available"):
        parse_device("mps")
    monkeypatch.setenv("DL_DEVICE", " CPU ")
    assert get_device(verbose=False) == torch.device("cpu")


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    """Every global stream continues after a save and load as if nothing had happened (numpy's cached gaussian too)."""
    seed_everything(7)
    np.random.randn()  # leaves a cached second gaussian in numpy's state
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = _draws()
    seed_everything(123)
    set_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == expected
    seed_everything(123)
    assert _draws() != expected


class FakeMpsGenerator:
    """Apple MPS's random generator, for a machine without one: a state tensor that each draw advances."""

    def __init__(self, monkeypatch):
        self.state = torch.arange(8, dtype=torch.uint8)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        monkeypatch.setattr(torch.mps, "get_rng_state", lambda *args, **kwargs: self.state.clone())
        monkeypatch.setattr(torch.mps, "set_rng_state", self.set_rng_state)

    def set_rng_state(self, state, *args, **kwargs):
        assert state.device.type == "cpu" and state.dtype == torch.uint8
        self.state = state.clone()

    def draw(self):
        self.state = self.state + 1


def test_the_mps_generator_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    """On Apple silicon dropout masks and noise drawn on the device come from MPS's own generator: a resumed run
    draws the same ones only if its state is saved with the checkpoint and put back."""
    mps = FakeMpsGenerator(monkeypatch)
    mps.draw()
    saved = mps.state.clone()
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    mps.draw(), mps.draw()
    assert not torch.equal(mps.state, saved)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(mps.state, saved)


def test_an_rng_state_without_mps_leaves_the_mps_generator_alone(monkeypatch):
    """A checkpoint written on the CPU (or before MPS states were saved) resumes on a Mac with MPS's stream as it is."""
    state = rng_state()  # no MPS here
    state.pop("mps", None)  # as in a checkpoint written before MPS states were saved
    mps = FakeMpsGenerator(monkeypatch)
    before = mps.state.clone()
    set_rng_state(state)
    assert torch.equal(mps.state, before)


class _KeyOnAnAccelerator(torch.Tensor):
    """Stands in for NumPy's generator key after `torch.load(map_location="cuda")`: like a CUDA tensor, it refuses
    `.numpy()` until it is copied to the host with `.cpu()` (the CPU-only test machine has no real CUDA tensor)."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


def test_set_rng_state_accepts_a_numpy_key_loaded_onto_an_accelerator():
    """A checkpoint resumed on a GPU (map_location=cuda) carries NumPy's key as a device tensor: restoring it must
    copy it to the host first (the char-GPT's second slice on an H100 failed here on 2026-11-26)."""
    seed_everything(3)
    state = rng_state()
    expected = np.random.rand(4)
    kind, key, *rest = state["numpy"]
    moved = {**state, "numpy": (kind, key.as_subclass(_KeyOnAnAccelerator), *rest)}
    with pytest.raises(TypeError, match="can't convert"):  # the control: the stand-in really refuses .numpy()
        moved["numpy"][1].numpy()
    np.random.seed(0)
    set_rng_state(moved)
    assert np.array_equal(np.random.rand(4), expected)


def test_cuda_streams_are_restored_after_cuda_starts_and_only_for_the_gpus_here(monkeypatch):
    """Before CUDA starts, torch queues `set_rng_state_all` and runs queued seeding (an earlier `seed_everything`)
    after it, which would put a resumed run's GPU streams back at the run's start; a checkpoint from 2 GPUs
    resumed on 1 must not ask for the second."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(("set", len(states))))
    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]  # two GPUs' streams
    set_rng_state(state)
    assert calls == ["init", ("set", 1)]
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the control: a CPU-only machine asks nothing
    set_rng_state(state)
    assert calls == []


class CopyLog:
    """A stand-in for a CPU tensor that logs how it is moved (this machine has no GPU to copy to)."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list = []

    def pin_memory(self) -> "CopyLog":
        self.calls.append("pin_memory")
        return self

    def to(self, device, non_blocking: bool = False) -> "CopyLog":
        self.calls.append(("to", str(device), non_blocking))
        return self


def test_host_to_device_copies_to_cuda_through_pinned_memory_without_waiting() -> None:
    """To CUDA: pinned, then a non-blocking copy (a plain `.to` from pageable memory waits for the GPU's queue; the
    control, that plain copy, logs another sequence). Elsewhere: `t.to(device)`, values unchanged, nothing pinned."""
    moved = CopyLog()
    host_to_device(moved, "cuda")
    assert moved.calls == ["pin_memory", ("to", "cuda", True)]
    plain = CopyLog()
    plain.to(torch.device("cuda"))  # the control: what `t.to(device)` does
    assert plain.calls != moved.calls
    for device in ("cpu", "mps"):
        log = CopyLog()
        host_to_device(log, device)
        assert log.calls == [("to", device, False)]
    t = torch.arange(6.0)
    assert torch.equal(host_to_device(t, torch.device("cpu")), t)
