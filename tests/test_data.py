import gzip
import urllib.error

import numpy as np
import pytest
import torch

import common.data as data_mod
import common.download as download_mod
from common import (DatasetError, DeviceImageLoader, load_checkpoint, load_image_dataset, load_tinyshakespeare,
                    load_tinystories, save_checkpoint)
from common.paths import find_data_file  # the data folders: the sandbox, then the user's (read only)


def _fake_arrays(n_train=20, n_test=10, shape=(28, 28)):
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")


def test_missing_dataset_offline_is_a_one_line_actionable_error(data_tmp, monkeypatch):
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", _no_network)
    with pytest.raises(DatasetError) as err:
        load_image_dataset("cifar10")
    message = str(err.value)
    assert "\n" not in message
    assert "cifar10.npz" in message and str(data_tmp) in message and "DL_DATA_DIR" in message
    assert "cs.toronto.edu (official): URLError" in message  # every source tried, each named


@pytest.mark.parametrize("load, filename", [(load_tinyshakespeare, "tinyshakespeare.txt"),
                                            (load_tinystories, "TinyStories-valid.txt")])
def test_missing_text_offline_is_a_one_line_actionable_error(data_tmp, monkeypatch, load, filename):
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", _no_network)
    with pytest.raises(DatasetError) as err:
        load()
    assert "\n" not in str(err.value) and filename in str(err.value) and str(data_tmp) in str(err.value)
    assert list(data_tmp.iterdir()) == []  # no partial download left behind
    assert list((data_tmp.parent / "cache").iterdir()) == []


def test_datasets_are_read_from_the_read_only_folders_and_built_into_the_writable_one(data_tmp, tmp_path,
                                                                                      monkeypatch):
    """As under the test suite: DL_DATA_DIR is a sandbox, the user's real folder is read only."""
    home = tmp_path / "home_data"
    home.mkdir()
    np.savez(home / "mnist.npz", **_fake_arrays())
    before = {p.name: p.stat().st_mtime_ns for p in home.iterdir()}
    monkeypatch.setenv("DL_EXTRA_DATA_DIRS", str(home))
    assert load_image_dataset("mnist").x_train.shape == (20, 28, 28)
    assert list(data_tmp.iterdir()) == []  # read in place, not copied
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", _no_network)
    with pytest.raises(DatasetError) as err:  # offline: the message names the user's folder, not the sandbox
        load_image_dataset("fashion_mnist")
    assert str(home) in str(err.value) and str(data_tmp) not in str(err.value)
    (home / "tinyshakespeare.txt").write_text("To be or not to be")
    with pytest.raises(DatasetError, match="home_data"):  # a wrong copy is named where it is
        load_tinyshakespeare()
    np.savez(data_tmp / "mnist.npz", **_fake_arrays(n_train=7))
    assert len(load_image_dataset("mnist").x_train) == 7  # DL_DATA_DIR comes first
    assert {p.name: p.stat().st_mtime_ns for p in home.iterdir() if p.name != "tinyshakespeare.txt"} == before


@pytest.mark.parametrize("load, filename", [(load_tinyshakespeare, "tinyshakespeare.txt"),
                                            (load_tinystories, "TinyStories-valid.txt")])
def test_wrong_text_fails_its_checksum(data_tmp, load, filename):
    (data_tmp / filename).write_text("To be or not to be")
    with pytest.raises(DatasetError, match="SHA-256"):
        load()


def test_a_text_with_the_right_checksum_is_read(data_tmp, monkeypatch):
    (data_tmp / "TinyStories-valid.txt").write_text("Once upon a time<|endoftext|>", encoding="utf-8")
    monkeypatch.setattr(data_mod, "TINYSTORIES_SHA256", data_mod.sha256_of(data_tmp / "TinyStories-valid.txt"))
    assert load_tinystories() == "Once upon a time<|endoftext|>"


def test_npz_round_trip_and_description(data_tmp):
    np.savez(data_tmp / "mnist.npz", **_fake_arrays())
    ds = load_image_dataset("mnist")
    assert ds.x_train.shape == (20, 28, 28) and not ds.is_full_size
    assert "20 train / 10 test images, a subset of 60,000 / 10,000" in ds.describe()
    assert ds.sha256 == data_mod.sha256_of(data_tmp / "mnist.npz")
    images, labels = ds.tensors("test")
    assert images.shape == (10, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="'train' or 'test'"):  # a typo used to hand out the test split
        ds.tensors("val")


def test_colour_images_become_nchw(data_tmp):
    np.savez(data_tmp / "cifar10.npz", **_fake_arrays(shape=(32, 32, 3)))
    ds = load_image_dataset("cifar10")
    images, _ = ds.tensors("train")
    assert images.shape == (20, 3, 32, 32)
    assert torch.equal(images[3, 1], torch.from_numpy(ds.x_train[3, :, :, 1]))


@pytest.mark.parametrize("corrupt", ["shape", "dtype", "labels", "keys", "garbage"])
def test_malformed_files_fail_loudly(data_tmp, corrupt):
    arrays = _fake_arrays()
    path = data_tmp / "mnist.npz"
    if corrupt == "shape":
        arrays["x_train"] = arrays["x_train"][:, :27]
    elif corrupt == "dtype":
        arrays["x_test"] = arrays["x_test"].astype(np.float32)
    elif corrupt == "labels":
        arrays["y_train"] = arrays["y_train"][:-1]
    elif corrupt == "keys":
        del arrays["y_test"]
    if corrupt == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        np.savez(path, **arrays)
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist")
    assert "mnist.npz" in str(err.value) and "\n" not in str(err.value)


def test_fashion_mnist_is_built_from_the_debian_layout(data_tmp, tmp_path, monkeypatch):
    debian = tmp_path / "fashion-mnist"
    debian.mkdir()
    arrays = _fake_arrays()
    names = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
             "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
    for key, name in names.items():
        a = arrays[key]
        header = bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
        with gzip.open(debian / name, "wb") as f:
            f.write(header + a.tobytes())
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setattr(data_mod, "_download_idx", _no_network)
    ds = load_image_dataset("fashion_mnist")
    assert (data_tmp / "fashion_mnist.npz").exists()
    for key in names:
        assert np.array_equal(getattr(ds, key), arrays[key])


def _loader(**kwargs):
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).clone()  # image i is all i
    return DeviceImageLoader(images, torch.arange(10), **kwargs)


def test_loader_covers_every_image_once_per_epoch():
    loader = _loader(batch_size=4, shuffle=True)
    assert len(loader) == 3
    seen = [int(x[i, 0, 0, 0] * 255 + 0.5) for x, _ in loader for i in range(len(x))]
    assert sorted(seen) == list(range(10))
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == list(range(10))


def test_loader_keeps_images_and_labels_together_and_reshuffles():
    loader = _loader(batch_size=10, shuffle=True, generator_seed=1)
    (x1, y1), (x2, y2) = next(iter(loader)), next(iter(loader))
    assert torch.allclose(x1[:, 0, 0, 0] * 255, y1.float())
    assert not torch.equal(y1, y2)


def test_loader_drop_last_and_normalisation():
    loader = _loader(batch_size=4, drop_last=True, shuffle=False, mean=(0.5,), std=(0.25,))
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]
    x, _ = next(iter(loader))
    assert torch.allclose(x[1, 0, 0, 0], torch.tensor((1 / 255 - 0.5) / 0.25))


def _labels(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


@pytest.mark.parametrize("stop", [0, 1, 2, 3])
def test_loader_state_resumes_an_interrupted_epoch_exactly(stop, tmp_path):
    """Batches after a checkpoint taken `stop` batches into the second epoch equal the uninterrupted loader's."""
    whole = _loader(batch_size=4, shuffle=True, generator_seed=3)
    expected = _labels(whole) + _labels(whole) + _labels(whole)  # three epochs
    first = _loader(batch_size=4, shuffle=True, generator_seed=3)
    served = _labels(first)
    it = iter(first)
    served += [next(it)[1].tolist() for _ in range(stop)]
    path = tmp_path / "loader.pt"
    save_checkpoint(path, {"loader": first.state_dict()})
    resumed = _loader(batch_size=4, shuffle=True, generator_seed=99)  # a different seed: the state must override it
    resumed.load_state_dict(load_checkpoint(path)["loader"])
    served += _labels(resumed) + _labels(resumed)  # the rest of epoch 2 (all of epoch 3 if it had ended), then more
    assert served[:len(expected)] == expected


def test_loader_state_of_a_fresh_loader_restarts_it():
    a, b = _loader(batch_size=4, generator_seed=5), _loader(batch_size=4, generator_seed=6)
    b.load_state_dict(a.state_dict())
    assert _labels(a) == _labels(b)


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28)), ("cifar10", (32, 32, 3))])
def test_real_shared_datasets_load(name, shape):
    if find_data_file(f"{name}.npz") is None:  # each dataset its own condition: never a download from a test
        pytest.skip(f"needs {name}.npz in DL_DATA_DIR (the shared datasets)")
    ds = load_image_dataset(name)
    assert ds.x_train.shape[1:] == shape and set(np.unique(ds.y_train)) == set(range(10))
    assert 30 < ds.x_train.mean() < 140  # real photos and digits, not blank or noise


@pytest.mark.skipif(find_data_file("tinyshakespeare.txt") is None, reason="needs DL_DATA_DIR with tinyshakespeare.txt")
def test_real_tinyshakespeare_loads():
    text = load_tinyshakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


def test_known_copies_are_named_in_the_description(data_tmp, monkeypatch):
    np.savez(data_tmp / "mnist.npz", **_fake_arrays())
    digest = data_mod.sha256_of(data_tmp / "mnist.npz")
    monkeypatch.setitem(data_mod.KNOWN_COPIES, digest, "a test copy")
    assert load_image_dataset("mnist").describe().endswith("; a test copy)")


def test_a_loader_refuses_in_one_line_the_data_order_of_another_kind_of_device():
    """A CPU generator's state is 5,056 bytes, a CUDA one's 16: loading one into the other used to fail deep inside
    torch ("RNG state is wrong size"). Now a CheckpointError says what to do. The control: its own state loads."""
    from common.checkpoint import CheckpointError

    loader = _loader(batch_size=4, shuffle=True, generator_seed=3)
    batches = iter(loader)
    next(batches)
    own = loader.state_dict()
    fresh = _loader(batch_size=4, shuffle=True, generator_seed=3)
    fresh.load_state_dict(own)
    assert _labels(fresh) == _labels(batches), "the control: its own kind of state resumes the epoch exactly"
    cuda_state = {"generator": torch.zeros(16, dtype=torch.uint8), "served": 1}  # the size of a CUDA generator's state
    with pytest.raises(CheckpointError, match="another kind of device"):
        fresh.load_state_dict(cuda_state)
