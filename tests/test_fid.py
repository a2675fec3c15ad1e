"""Tests of common/fid.py: the linear algebra exactly, the metric on real and corrupted MNIST, the committed
classifier (pinned SHA-256, one clear error for a changed file) and the script that trains it.

The data-dependent tests use the committed MNIST classifier (nothing is trained, except by the script's test, on a
tiny budget); they are skipped when the MNIST file is not available.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import common.fid_classifier as classifier_module
from common.data import ImageData, load_image_dataset
from common.paths import find_data_file
from common.fid import (
    SUPPORTED_DATASETS,
    FIDClassifier,
    FIDClassifierError,
    classifier_path,
    extract_features,
    feature_stats,
    fid,
    frechet_distance,
    get_classifier,
    precision_recall,
    sqrtm_psd,
)
from common.fid_classifier import WEIGHTS_DIR, pinned_sha256, read_classifier

from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent


train_script = load_script("train_fid_classifier")


def _random_spd(d: int, seed: int, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    return b @ b.T / d + (0 if rank else 1e-3) * torch.eye(d, dtype=torch.float64)



def test_random_shift_moves_content_by_up_to_pad_and_fills_with_zeros() -> None:
    image = torch.zeros(256, 1, 8, 8)
    image[:, 0, 3, 3] = 1.0
    x = train_script.random_shift(image, 2, torch.Generator().manual_seed(0))
    assert x.shape == (256, 1, 8, 8)
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in x}
    assert positions == {(r, c) for r in range(1, 6) for c in range(1, 6)}  # -2..2 in each direction
    assert torch.all(x.sum(dim=(1, 2, 3)) == 1.0)  # never lost: the pixel is 3 px from every edge
    edge = torch.ones(64, 1, 4, 4)
    assert (train_script.random_shift(edge, 1, torch.Generator().manual_seed(1)) == 0).any()  # zeros shift in at the borders

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
    if find_data_file("mnist.npz") is None:  # never a download from a test
        pytest.skip("needs mnist.npz in DL_DATA_DIR (the shared datasets)")
    return load_image_dataset("mnist")  # the file is there: a DatasetError now is a fault, not a reason to skip


@pytest.fixture(scope="module")
def model(mnist: ImageData) -> FIDClassifier:
    return get_classifier("mnist", device="cpu")


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


def test_every_dataset_has_a_committed_classifier_under_a_megabyte_with_its_pinned_sha256() -> None:
    pins = pinned_sha256()
    assert WEIGHTS_DIR.parent == Path(classifier_module.__file__).parent  # inside the package: installed with it
    for dataset in SUPPORTED_DATASETS:
        path = classifier_path(dataset)
        assert path.parent == WEIGHTS_DIR and path.stat().st_size < 2**20, path
        model = get_classifier(dataset, device="cpu", verbose=False)
        assert model.sha256 == pins[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert model.test_accuracy > {"mnist": 0.99, "fashion_mnist": 0.90}[dataset], (dataset, model.test_accuracy)
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert set(pins) == {classifier_path(d).name for d in SUPPORTED_DATASETS}


def test_the_package_data_ships_the_committed_classifiers() -> None:
    """`pip install git+...` must install the weights: pyproject.toml's package data names every committed file."""
    import fnmatch
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["common"]
    shipped = sorted(p.relative_to(WEIGHTS_DIR.parent).as_posix() for p in WEIGHTS_DIR.iterdir())
    assert shipped and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in shipped), (shipped, globs)


def test_a_changed_or_corrupt_classifier_file_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "fid_weights"
    shutil.copytree(WEIGHTS_DIR, copy)
    monkeypatch.setattr(classifier_module, "WEIGHTS_DIR", copy)
    path = classifier_path("mnist")
    assert path.parent == copy
    good = path.read_bytes()
    assert classifier_module.load_classifier("mnist", verbose=False).sha256 == pinned_sha256()[path.name]  # control
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # one bit of one weight
    for payload in (bytes(flipped), good[:len(good) // 2], b""):
        path.write_bytes(payload)
        with pytest.raises(FIDClassifierError, match=r"not the pinned .* changed or is corrupt"):
            classifier_module.load_classifier("mnist")
    path.unlink()
    with pytest.raises(FIDClassifierError, match="missing"):
        classifier_module.load_classifier("mnist")
    path.write_bytes(good)
    (copy / "SHA256SUMS").write_text("")  # a file nobody pinned is refused as well
    with pytest.raises(FIDClassifierError, match="pins no SHA-256"):
        classifier_module.load_classifier("mnist")


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
    result = fid(ones, dataset="mnist", device="cpu")
    assert max(result["class_histogram"]) == result["class_histogram"][1] > 0.8
    assert result["recall"] < 0.3 < result["precision"]


def test_fid_api_contract(model: FIDClassifier, test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = test_images
    result = fid(images[:300], dataset="mnist", device="cpu")
    assert set(result) == {"fid", "class_histogram", "precision", "recall", "n_samples", "n_real", "reference"}
    assert result["reference"] == "test"
    assert isinstance(result["fid"], float) and result["fid"] >= 0
    assert len(result["class_histogram"]) == 10 and sum(result["class_histogram"]) == pytest.approx(1.0)
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["n_samples"] == 300 and result["n_real"] == len(images)
    as_float = fid(images[:300].float() / 255, dataset="mnist", device="cpu")
    assert as_float["fid"] == pytest.approx(result["fid"], rel=1e-6)
    assert fid(images[:300, 0], dataset="mnist", device="cpu")["fid"] == pytest.approx(result["fid"], rel=1e-6)
    assert math.isfinite(fid(images[:2], dataset="mnist", device="cpu")["fid"])
    with pytest.raises(ValueError):
        fid(images[:1], dataset="mnist", device="cpu")
    with pytest.raises(ValueError):
        fid(torch.full((4, 1, 28, 28), float("nan")), dataset="mnist", device="cpu")


def test_fid_of_the_test_split_itself_is_zero(model: FIDClassifier, test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_images
    result = fid(images, dataset="mnist", device="cpu")
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
    itself = fid(held_out, dataset="mnist", device="cpu", reference=held_out)
    assert itself["fid"] < 1e-6 and itself["reference"] == "given" and itself["n_real"] == half
    given = fid(samples, dataset="mnist", device="cpu", reference=held_out)
    assert given["fid"] == pytest.approx(_distance(model, samples, held_out), rel=1e-9)
    assert given["fid"] != pytest.approx(fid(samples, dataset="mnist", device="cpu")["fid"], rel=1e-3)
    with pytest.raises(ValueError):
        fid(samples, dataset="mnist", device="cpu", reference=held_out[:1])


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


def test_fid_loads_the_committed_classifier_and_never_trains_or_writes_it(
        mnist: ImageData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is trained at fid time (no backward pass, no optimizer) and nothing is written into the data folder;
    the global random state is left alone. (The earlier code trained the classifier there on first use.)"""
    _fresh_fid_state(monkeypatch, tmp_path / "data")  # the writable data folder; the datasets' folders stay read-only

    def refuse(*args, **kwargs):
        raise AssertionError("fid trained something")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    rng_before = torch.get_rng_state()
    result = fid(mnist.tensors("test")[0][:300], dataset="mnist", device="cpu")
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert result["fid"] >= 0 and sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mnist.npz"]
    assert (tmp_path / "data" / "mnist.npz").is_symlink()  # not rewritten under the same name
    assert classifier_module.scored_classifiers() == {"fid_classifier_mnist.pt": pinned_sha256()["fid_classifier_mnist.pt"]}


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
    on_cpu = fid(images[:300], dataset="mnist", device="cpu")
    with _FakeMPS():
        on_mps = fid(images[:300], dataset="mnist", device=torch.device("mps"))
    assert on_mps == on_cpu


# ---------------------------------------------------------------- one yardstick: trained on the CPU, named in records


def _fresh_fid_state(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[str]:
    """Point DL_DATA_DIR at `folder` (holding only MNIST, as a link to the real file, and no read-only data folders
    beside it), forget every per-process cache of common.fid, and return a list that collects the name of every
    dataset load from then on."""
    import sys

    import common.fid_classifier as classifier_module
    fid_module = sys.modules["common.fid"]  # the submodule (`common.fid`, the attribute, is the function)
    folder.mkdir()
    real = find_data_file("mnist.npz")  # the sandbox's copy or the user's read-only folder: wherever it is now
    assert real is not None, "the fid tests need mnist.npz"
    (folder / "mnist.npz").symlink_to(real.resolve())
    monkeypatch.setenv("DL_DATA_DIR", str(folder))
    monkeypatch.delenv("DL_EXTRA_DATA_DIRS", raising=False)
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


def test_the_same_committed_classifier_scores_on_every_device_and_is_named_in_the_record(
        mnist: ImageData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs_tmp: Path) -> None:
    from common import RunClock, write_run_record
    samples = mnist.tensors("test")[0][:300]
    loads = _fresh_fid_state(monkeypatch, tmp_path / "a")
    on_cpu = fid(samples, dataset="mnist", device="cpu")
    assert loads == ["mnist"]  # the real features need the data once; the classifier needs none
    loads = _fresh_fid_state(monkeypatch, tmp_path / "b")
    with _FakeMPS():  # the caller's device is "mps": the same network, the same numbers
        on_mps = fid(samples, dataset="mnist", device=torch.device("mps"))
    assert loads == ["mnist"] and on_mps == on_cpu
    path = write_run_record("image_generation/vae", "smoke", torch.device("cpu"), RunClock(), {"fid": on_mps["fid"]},
                            data=mnist.describe())
    committed = hashlib.sha256(classifier_path("mnist").read_bytes()).hexdigest()
    assert json.loads(path.read_text())["fid_classifier_sha256"] == committed == pinned_sha256()["fid_classifier_mnist.pt"]


# ---------------------------------------------------------------- retraining: an explicit command


def _tiny(out: Path, *extra: str) -> list[str]:
    return ["--dataset", "mnist", "--steps", "6", "--train-images", "256", "--out", str(out), *extra]


def test_the_script_trains_a_classifier_reproducibly_into_the_folder_it_is_given(
        mnist: ImageData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    committed = {p.name: p.read_bytes() for p in WEIGHTS_DIR.iterdir()}
    rng_before = torch.get_rng_state()
    assert train_script.main(_tiny(tmp_path / "a")) == 0
    assert train_script.main(_tiny(tmp_path / "b")) == 0
    assert torch.equal(torch.get_rng_state(), rng_before)
    name = "fid_classifier_mnist.pt"
    first, second = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
    assert first == second  # byte for byte: the SHA-256 names the network
    pins = pinned_sha256(tmp_path / "a")
    assert pins == {name: hashlib.sha256(first).hexdigest()} != {name: pinned_sha256()[name]}  # a tiny budget: another net
    model = read_classifier(tmp_path / "a" / name, pins[name])
    assert model.sha256 == pins[name] and 0 <= model.test_accuracy <= 1
    entry = torch.load(tmp_path / "a" / name, weights_only=True)
    assert entry["train_steps"] == 6 and entry["level"] == "custom" and "train_images=256" in entry["recipe"]
    capsys.readouterr()
    assert train_script.main(_tiny(tmp_path / "c", "--check")) == 1  # not the committed network: --check fails
    assert "NOT the committed one" in capsys.readouterr().out and not (tmp_path / "c").exists()
    assert {p.name: p.read_bytes() for p in WEIGHTS_DIR.iterdir()} == committed  # the package was not touched


def test_the_script_keeps_the_recipe_of_the_committed_files() -> None:
    """The committed files were trained with the 'trained' budget: the recipe string they store is the script's."""
    for dataset in SUPPORTED_DATASETS:
        entry = torch.load(classifier_path(dataset), weights_only=True)
        assert entry["recipe"] == train_script.recipe(train_script.BUDGETS["trained"]) and entry["level"] == "trained"
        assert entry["train_steps"] == train_script.BUDGETS["trained"].steps and entry["dataset"] == dataset


def test_the_fid_classifiers_fp32_block_turns_off_tf32_everywhere_after_enable_tf32():
    """After a notebook's `enable_tf32()`, the yardstick's block must run matmuls in full fp32 on the CPU's oneDNN
    too, and a `fp32_exact` inside it must work: with only the legacy flags reset, the first stayed TF32 and the
    second raised torch's "mix of the legacy and new APIs". In a fresh process: enable_tf32 is global state."""
    code = """
import torch, common
from common.fid_classifier import exact_fp32
common.enable_tf32()
with exact_fp32():
    mkldnn = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "ieee")
    assert mkldnn == "ieee", mkldnn
    with common.fp32_exact():
        pass
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-500:]
