"""Tests of common/fid.py: the linear algebra exactly, the metric on real and corrupted MNIST.

The data-dependent tests use the smoke classifier (trained in seconds on first use and
cached as `fid_classifier_mnist_smoke.pt` in DL_DATA_DIR); they are skipped when the MNIST
file is not available.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import load_checkpoint, save_checkpoint
from common.data import DatasetError, ImageData, data_dir, load_image_dataset
from common.fid import (
    FORMAT_VERSION,
    FIDClassifier,
    _random_shift,
    classifier_path,
    extract_features,
    feature_stats,
    fid,
    frechet_distance,
    get_classifier,
    precision_recall,
    sqrtm_psd,
)


def _random_spd(d: int, seed: int, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    return b @ b.T / d + (0 if rank else 1e-3) * torch.eye(d, dtype=torch.float64)



def test_random_shift_moves_content_by_up_to_pad_and_fills_with_zeros() -> None:
    image = torch.zeros(256, 1, 8, 8)
    image[:, 0, 3, 3] = 1.0
    x = _random_shift(image, 2, torch.Generator().manual_seed(0))
    assert x.shape == (256, 1, 8, 8)
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in x}
    assert positions == {(r, c) for r in range(1, 6) for c in range(1, 6)}  # -2..2 in each direction
    assert torch.all(x.sum(dim=(1, 2, 3)) == 1.0)  # never lost: the pixel is 3 px from every edge
    edge = torch.ones(64, 1, 4, 4)
    assert (_random_shift(edge, 1, torch.Generator().manual_seed(1)) == 0).any()  # zeros shift in at the borders

# ---------------------------------------------------------------- linear algebra


def test_sqrtm_psd_of_random_spd_matrix() -> None:
    a = _random_spd(64, seed=0)
    root = sqrtm_psd(a)
    torch.testing.assert_close(root, root.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(root @ root, a, rtol=1e-9, atol=1e-10)
    assert torch.linalg.eigvalsh(root).min() > 0


def test_sqrtm_psd_of_singular_matrix() -> None:
    a = _random_spd(32, seed=1, rank=5)  # PSD with 27 zero eigenvalues
    root = sqrtm_psd(a)
    assert torch.isfinite(root).all()
    torch.testing.assert_close(root @ root, a, rtol=1e-7, atol=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances() -> None:
    g = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(16, generator=g, dtype=torch.float64) + 0.1, torch.rand(16, generator=g, dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum())
    got = frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_for_non_commuting_covariances() -> None:
    linalg = pytest.importorskip("scipy.linalg")
    s1, s2 = _random_spd(24, seed=3), _random_spd(24, seed=4)
    mu1, mu2 = torch.zeros(24, dtype=torch.float64), torch.full((24,), 0.5, dtype=torch.float64)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace()) - 2 * float(covmean.trace())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_frechet_distance_of_identical_gaussians_is_zero() -> None:
    s = _random_spd(128, seed=5, rank=40)
    mu = torch.randn(128, dtype=torch.float64)
    assert frechet_distance(mu, s, mu, s) < 1e-8 * float(s.trace())


def test_precision_recall_uses_the_kth_nearest_other_point() -> None:
    real = torch.arange(10.0)[:, None]  # 1-D points 0..9: point 0's 3rd nearest other point is 3 away
    fake = torch.tensor([[-2.5], [-3.5], [4.2], [20.0]])  # inside, just outside, inside, far outside
    assert precision_recall(real, fake, k=3)[0] == 0.5
    assert precision_recall(fake, real, k=3)[1] == 0.5  # recall is precision with the roles swapped
    assert precision_recall(real, fake, k=2)[0] == 0.25  # radius 2 around point 0 no longer reaches -2.5


def test_precision_recall_on_toy_sets() -> None:
    g = torch.Generator().manual_seed(6)
    real = torch.randn(500, 8, generator=g)
    assert precision_recall(real, real) == (1.0, 1.0)
    far = torch.randn(500, 8, generator=g) + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    collapsed = real[:500] * 0.05  # all fakes near the centre of the real cloud
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.2


# ---------------------------------------------------------------- classifier and metric on MNIST


@pytest.fixture(scope="module")
def mnist() -> ImageData:
    try:
        return load_image_dataset("mnist")
    except DatasetError as e:
        pytest.skip(f"MNIST not available: {e}")


@pytest.fixture(scope="module")
def model(mnist: ImageData) -> FIDClassifier:
    return get_classifier("mnist", device="cpu", preset="smoke")


@pytest.fixture(scope="module")
def test_images(mnist: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test split in a fixed random order: uint8 (N, 1, 28, 28) and labels."""
    images, labels = mnist.tensors("test")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order], labels[order]


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 (N, 1, 28, 28) images -> float in [0, 1]."""
    radius = math.ceil(3 * sigma)
    taps = torch.exp(-torch.arange(-radius, radius + 1).float().square() / (2 * sigma**2))
    taps = taps / taps.sum()
    x = images.float() / 255
    x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, radius))  # blur rows
    return F.conv2d(x, taps.view(1, 1, -1, 1), padding=(radius, 0))  # blur columns


def _distance(model: FIDClassifier, a: torch.Tensor, b: torch.Tensor) -> float:
    fa, _ = extract_features(model, a, "cpu")
    fb, _ = extract_features(model, b, "cpu")
    return frechet_distance(*feature_stats(fa), *feature_stats(fb))


def test_classifier_cache_files_and_accuracy(model: FIDClassifier) -> None:
    smoke, quick, full = (classifier_path("mnist", p) for p in ("smoke", "quick", "full"))
    assert smoke.name == "fid_classifier_mnist_smoke.pt" and quick == full != smoke
    entry = load_checkpoint(smoke)
    assert entry is not None and entry["format_version"] == FORMAT_VERSION
    assert entry["test_accuracy"] == model.test_accuracy
    assert 0.5 < model.test_accuracy <= 1.0  # even the smoke classifier must have learnt something
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_fid_ordering_on_corrupted_images(model: FIDClassifier, test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = test_images
    half = len(images) // 2
    a, b = images[:half], images[half:]  # disjoint halves of the test split
    noise = torch.rand(half, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    real = _distance(model, a, b)
    mild, strong = _distance(model, _blur(a, 1.0), b), _distance(model, _blur(a, 2.0), b)
    noisy = _distance(model, noise, b)
    assert real < 0.2 * mild, (real, mild)
    assert real < mild < strong < noisy, (real, mild, strong, noisy)


def test_single_class_is_far_and_concentrated(model: FIDClassifier, test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_images
    half = len(images) // 2
    ones = images[:half][labels[:half] == 1]  # one class only, from the first half
    same_size_real = images[:len(ones)]  # all classes, as many images
    b = images[half:]
    assert _distance(model, ones, b) > 5 * _distance(model, same_size_real, b)
    result = fid(ones, dataset="mnist", device="cpu", preset="smoke")
    assert max(result["class_histogram"]) == result["class_histogram"][1] > 0.8
    assert result["recall"] < 0.3 < result["precision"]


def test_fid_api_contract(model: FIDClassifier, test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = test_images
    result = fid(images[:300], dataset="mnist", device="cpu", preset="smoke")
    assert set(result) == {"fid", "class_histogram", "precision", "recall", "n_samples", "n_real", "reference"}
    assert result["reference"] == "test"
    assert isinstance(result["fid"], float) and result["fid"] >= 0
    assert len(result["class_histogram"]) == 10 and sum(result["class_histogram"]) == pytest.approx(1.0)
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["n_samples"] == 300 and result["n_real"] == len(images)
    as_float = fid(images[:300].float() / 255, dataset="mnist", device="cpu", preset="smoke")
    assert as_float["fid"] == pytest.approx(result["fid"], rel=1e-6)
    assert fid(images[:300, 0], dataset="mnist", device="cpu", preset="smoke")["fid"] == pytest.approx(result["fid"], rel=1e-6)
    assert math.isfinite(fid(images[:2], dataset="mnist", device="cpu", preset="smoke")["fid"])
    with pytest.raises(ValueError):
        fid(images[:1], dataset="mnist", device="cpu", preset="smoke")
    with pytest.raises(ValueError):
        fid(torch.full((4, 1, 28, 28), float("nan")), dataset="mnist", device="cpu", preset="smoke")


def test_fid_of_the_test_split_itself_is_zero(model: FIDClassifier, test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_images
    result = fid(images, dataset="mnist", device="cpu", preset="smoke")
    assert result["fid"] < 1e-6
    assert result["precision"] == result["recall"] == 1.0
    true_histogram = torch.bincount(labels, minlength=10).double() / len(labels)
    assert torch.tensor(result["class_histogram"]).sub(true_histogram).abs().sum() < 0.5


def test_a_given_reference_replaces_the_test_split(model: FIDClassifier,
                                                  test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """fid(..., reference=held_out) measures the distance to the held-out images (a validation split), not to the test
    split: the reference itself scores 0 against itself, and a sample scores what the Frechet distance to it says."""
    images, _ = test_images
    half = len(images) // 2
    held_out, samples = images[:half], _blur(images[half:], 1.0)
    itself = fid(held_out, dataset="mnist", device="cpu", preset="smoke", reference=held_out)
    assert itself["fid"] < 1e-6 and itself["reference"] == "given" and itself["n_real"] == half
    given = fid(samples, dataset="mnist", device="cpu", preset="smoke", reference=held_out)
    assert given["fid"] == pytest.approx(_distance(model, samples, held_out), rel=1e-9)
    assert given["fid"] != pytest.approx(fid(samples, dataset="mnist", device="cpu", preset="smoke")["fid"], rel=1e-3)
    with pytest.raises(ValueError):
        fid(samples, dataset="mnist", device="cpu", preset="smoke", reference=held_out[:1])


def test_real_halves_have_high_precision_and_recall(model: FIDClassifier,
                                                    test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = test_images
    half = len(images) // 2
    fa, _ = extract_features(model, images[:half], "cpu")
    fb, _ = extract_features(model, images[half:], "cpu")
    noise, _ = extract_features(model, torch.rand(half, 1, 28, 28, generator=torch.Generator().manual_seed(2)), "cpu")
    precision, recall = precision_recall(fb, fa)
    assert precision > 0.6 and recall > 0.6, (precision, recall)
    assert precision_recall(fb, noise)[0] < 0.05


def test_missing_or_stale_cache_is_retrained_without_touching_global_rng(
        mnist: ImageData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mnist.npz").symlink_to(data_dir() / "mnist.npz")
    monkeypatch.setenv("DL_DATA_DIR", str(tmp_path))
    path = classifier_path("mnist", "smoke")
    assert not path.exists()
    rng_before = torch.get_rng_state()
    get_classifier("mnist", device="cpu", preset="smoke")
    assert torch.equal(torch.get_rng_state(), rng_before)
    entry = load_checkpoint(path)
    assert entry is not None
    save_checkpoint(path, {**entry, "format_version": -1})
    get_classifier("mnist", device="cpu", preset="smoke")
    assert load_checkpoint(path)["format_version"] == FORMAT_VERSION


# ---------------------------------------------------------------- no float64 on the device (Apple MPS has none)


class _OnFakeMPS(torch.Tensor):
    """A CPU tensor standing for one on Apple MPS: results of ops on it stay "on MPS", and any float64 result
    raises, as MPS does. `.cpu()` (or `.to("cpu")`) gives a plain CPU tensor back."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_cpu = func is torch.Tensor.cpu or (func is torch.Tensor.to and _target(args, kwargs)[0] == "cpu")
        if to_cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)  # a CPU tensor's .cpu() is itself
        out = super().__torch_function__(func, types, args, kwargs)
        _refuse_float64(out, func)
        return out


def _target(args, kwargs) -> tuple[str | None, torch.dtype | None]:
    """(device type, dtype) that a `Tensor.to(...)` call asks for."""
    device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
    return (device.type if device is not None else None), dtype


def _refuse_float64(out, func) -> None:
    for t in (out if isinstance(out, (tuple, list)) else [out]):
        if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
            raise TypeError(f"float64 on the (fake) MPS device, from {getattr(func, '__name__', func)}: "
                            f"MPS does not support float64")


class _FakeMPS(torch.overrides.TorchFunctionMode):
    """Moving a tensor (or a module) to 'mps' keeps it on the CPU, tagged `_OnFakeMPS`; factories asked for
    'mps' do the same. Everything else runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and _target(args, kwargs)[0] == "mps":
            dtype = _target(args, kwargs)[1] or args[0].dtype
            out = args[0].as_subclass(torch.Tensor).to(dtype=dtype)
            _refuse_float64(out, func)
            return out.as_subclass(_OnFakeMPS)
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "mps":
            out = func(*args, **{**kwargs, "device": "cpu"})
            _refuse_float64(out, func)
            return out.as_subclass(_OnFakeMPS)
        return func(*args, **kwargs)


def test_the_fake_mps_device_refuses_float64_and_keeps_float32() -> None:
    with _FakeMPS():
        x = torch.ones(3).to(torch.device("mps"))
        assert isinstance(x * 2, _OnFakeMPS) and not isinstance((x * 2).cpu(), _OnFakeMPS)
        with pytest.raises(TypeError, match="float64"):
            x.double()
        with pytest.raises(TypeError, match="float64"):
            (x > 0).double().mean()
        with pytest.raises(TypeError, match="float64"):
            torch.zeros(2, dtype=torch.float64, device="mps")
        assert (x.cpu().double() * 2).dtype == torch.float64  # float64 on the CPU is fine
        layer = torch.nn.Linear(3, 2).to(torch.device("mps"))
        assert isinstance(layer(x), _OnFakeMPS)


def test_fid_puts_no_float64_on_the_device(model: FIDClassifier, test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = test_images
    on_cpu = fid(images[:300], dataset="mnist", device="cpu", preset="smoke")
    with _FakeMPS():
        on_mps = fid(images[:300], dataset="mnist", device=torch.device("mps"), preset="smoke")
    assert on_mps == on_cpu


# ---------------------------------------------------------------- one yardstick: trained on the CPU, named in records


def _fresh_fid_state(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[str]:
    """Point DL_DATA_DIR at `folder` (holding only MNIST), forget every per-process cache of common.fid, and
    return a list that collects the name of every dataset load from then on."""
    import sys

    import common.fid_classifier as classifier_module
    fid_module = sys.modules["common.fid"]  # the submodule (`common.fid`, the attribute, is the function)
    folder.mkdir()
    (folder / "mnist.npz").symlink_to(data_dir() / "mnist.npz")
    monkeypatch.setenv("DL_DATA_DIR", str(folder))
    for name in ("_REFERENCE", "_DATA"):
        if hasattr(fid_module, name):
            monkeypatch.setattr(fid_module, name, {})
    if hasattr(classifier_module, "_SCORED"):
        monkeypatch.setattr(classifier_module, "_SCORED", {})
    loads: list[str] = []
    import common.data
    real_load = common.data.load_image_dataset

    def counting_load(name: str) -> ImageData:
        loads.append(name)
        return real_load(name)

    for module in (fid_module, classifier_module, common.data):
        if hasattr(module, "load_image_dataset"):
            monkeypatch.setattr(module, "load_image_dataset", counting_load)
    return loads


def test_the_classifier_is_trained_on_the_cpu_whatever_the_device_and_named_in_the_record(
        mnist: ImageData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs_tmp: Path) -> None:
    import hashlib
    import json

    from common import RunClock, write_run_record
    samples = mnist.tensors("test")[0][:300]
    loads = _fresh_fid_state(monkeypatch, tmp_path / "a")
    on_cpu = fid(samples, dataset="mnist", device="cpu", preset="smoke")
    assert loads == ["mnist"]  # training, the cache check and the real features share one load
    cpu_file = (tmp_path / "a" / "fid_classifier_mnist_smoke.pt").read_bytes()

    loads = _fresh_fid_state(monkeypatch, tmp_path / "b")
    with _FakeMPS():  # the caller's device is "mps": the classifier must still be trained on the CPU
        on_mps = fid(samples, dataset="mnist", device=torch.device("mps"), preset="smoke")
    assert loads == ["mnist"]
    mps_file = (tmp_path / "b" / "fid_classifier_mnist_smoke.pt").read_bytes()
    assert mps_file == cpu_file and on_mps == on_cpu  # byte-identical classifier, identical numbers

    path = write_run_record("image_generation/vae", "smoke", torch.device("cpu"), RunClock(), {"fid": on_mps["fid"]},
                            data=mnist.describe())
    assert json.loads(path.read_text())["fid_classifier_sha256"] == hashlib.sha256(mps_file).hexdigest()


def test_an_earlier_cache_layout_is_kept_if_trained_on_the_cpu_and_retrained_if_not(
        mnist: ImageData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from common.fid_classifier import load_classifier
    _fresh_fid_state(monkeypatch, tmp_path / "c")
    canonical = load_classifier("mnist", "smoke", verbose=False).sha256
    path = classifier_path("mnist", "smoke")
    entry = torch.load(path, weights_only=True)
    assert canonical == hashlib_of(path)
    for trained_on, retrained in (("cpu (2 threads, x86_64)", False), ("NVIDIA GeForce RTX 4090", True)):
        legacy = {**entry, "train_seconds": 3.4, "trained_on": trained_on}  # what the earlier code wrote
        torch.save(legacy, path)
        capsys.readouterr()
        model = load_classifier("mnist", "smoke")
        out = capsys.readouterr().out
        assert ("trained in" in out) == retrained and (("NVIDIA" in out) == retrained), out
        assert model.sha256 == canonical == hashlib_of(path)  # same network, same file, same SHA-256


def hashlib_of(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()
