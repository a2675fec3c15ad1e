"""The Planetoid loader (common/planetoid.py): the standard Cora split, checksums checked before anything is read,
a restricted unpickler, the test-index reordering, and one clear error per missing or altered file."""

from __future__ import annotations

import pickle
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import common.download as download_mod
import common.planetoid as planetoid
from common import DatasetError, load_planetoid
from common.paths import find_data_file  # the data folders: the sandbox, then the user's (read only)

RAW = find_data_file("planetoid/ind.cora.x")  # the shared offline copy (.ci/run puts it in DL_DATA_DIR)
needs_raw = pytest.mark.skipif(RAW is None, reason="needs DL_DATA_DIR with planetoid/ind.cora.* (see .ci/run)")


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")


@pytest.fixture
def raw_copy(data_tmp: Path) -> Path:
    """The eight real files copied into the sandbox's data folder (writable, so a test may alter one)."""
    folder = data_tmp / "planetoid"
    folder.mkdir()
    for name in planetoid.PLANETOID_SHA256:
        shutil.copyfile(RAW.parent / name, folder / name)
    return folder


@needs_raw
def test_cora_has_the_standard_split_and_is_cached_as_one_npz(raw_copy: Path) -> None:
    graph = load_planetoid("cora")
    assert (graph.num_nodes, graph.num_features, graph.num_classes) == (2708, 1433, 7)
    assert (len(graph.train_idx), len(graph.val_idx), len(graph.test_idx)) == (140, 500, 1000)
    assert np.bincount(graph.y[graph.train_idx], minlength=7).tolist() == [20] * 7
    assert graph.train_idx.tolist() == list(range(140)) and graph.val_idx.tolist() == list(range(140, 640))
    assert graph.test_idx.tolist() == list(range(1708, 2708))  # sorted (the index file lists them shuffled)
    splits = [set(graph.train_idx), set(graph.val_idx), set(graph.test_idx)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert set(np.unique(graph.x)) == {0.0, 1.0} and graph.y.min() == 0  # binary words; every node labelled
    src, dst = graph.edge_index
    assert graph.edge_index.shape == (2, 10556) and not (src == dst).any()  # 5,278 links, both directions
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert all((v, u) in pairs for u, v in pairs) and len(pairs) == graph.edge_index.shape[1]
    cached = raw_copy / "cora.npz"
    assert cached.is_file()
    for name in planetoid.PLANETOID_SHA256:  # later loads read only the npz
        (raw_copy / name).unlink()
    again = load_planetoid("cora")
    assert np.array_equal(again.x, graph.x) and np.array_equal(again.edge_index, graph.edge_index)
    assert "140 train / 500 validation / 1000 test" in again.describe()


@needs_raw
def test_the_test_rows_are_put_back_at_the_node_ids_of_the_index_file(raw_copy: Path) -> None:
    """Row i of tx is node test.index[i]: the first line of Cora's index file is 2692, so node 2692 gets tx's
    first row. A loader that stacked tx in file order would give node 1708 that row instead."""
    graph = load_planetoid("cora")
    tx = planetoid._dense(planetoid._unpickle((raw_copy / "ind.cora.tx").read_bytes()))
    ty = planetoid._dense(planetoid._unpickle((raw_copy / "ind.cora.ty").read_bytes()))
    order = [int(line) for line in (raw_copy / "ind.cora.test.index").read_text().split()]
    assert order[0] == 2692 and order != sorted(order)
    assert np.array_equal(graph.x[order], tx) and np.array_equal(graph.y[order], ty.argmax(1))
    assert not np.array_equal(graph.x[1708:2708], tx)


def test_a_gap_in_the_test_index_leaves_an_unlabelled_row() -> None:
    """Citeseer's quirk, on a synthetic graph: test ids 5, 7 (6 missing) after 4 training-side nodes."""

    def dump(obj) -> bytes:
        return pickle.dumps(obj, protocol=2)

    eye = np.eye(3, dtype=np.float32)
    files = {"x": dump(np.ones((2, 3), np.float32)), "y": dump(eye[[0, 1]]),
             "allx": dump(np.ones((5, 3), np.float32)), "ally": dump(eye[[0, 1, 2, 0, 1]]),
             "tx": dump(np.full((2, 3), 2.0, np.float32)), "ty": dump(eye[[2, 1]]),
             "graph": dump({0: [1], 1: [0, 1], 5: [7]}), "test.index": b"7\n5\n"}
    arrays = planetoid.parse_planetoid(files)
    assert arrays["x"].shape == (8, 3) and arrays["test_idx"].tolist() == [5, 7]
    assert arrays["y"].tolist() == [0, 1, 2, 0, 1, 1, -1, 2]  # row 0 of tx/ty is node 7; node 6 is missing
    assert (arrays["x"][6] == 0).all()
    assert sorted(map(tuple, arrays["edge_index"].T.tolist())) == [(0, 1), (1, 0), (5, 7), (7, 5)]  # no self-loop


@needs_raw
def test_an_altered_file_is_refused_by_name_before_it_is_read(raw_copy: Path, monkeypatch) -> None:
    monkeypatch.setattr(planetoid, "_unpickle", lambda raw: pytest.fail("an unverified file was unpickled"))
    with open(raw_copy / "ind.cora.graph", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DatasetError, match=r"ind\.cora\.graph fails its SHA-256 check") as err:
        load_planetoid("cora")
    assert "\n" not in str(err.value)


def test_a_missing_file_offline_is_one_error_naming_it(data_tmp: Path, monkeypatch) -> None:
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", _no_network)
    with pytest.raises(DatasetError, match=r"ind\.cora\.\S+ is in no data folder and could not be downloaded") as err:
        load_planetoid("cora")
    assert "kimiyoung/planetoid" in str(err.value) and "\n" not in str(err.value)


def test_a_download_is_fetched_from_the_pinned_commit_with_its_checksum(data_tmp: Path, monkeypatch) -> None:
    asked = []

    def fake_fetch(filename, sources, checksum, **kwargs):
        asked.append((filename, sources[0].url, checksum))
        raise download_mod.DownloadError("offline")

    monkeypatch.setattr(planetoid, "fetch", fake_fetch)
    with pytest.raises(DatasetError):
        load_planetoid("cora")
    filename, url, checksum = asked[0]
    assert url == f"https://raw.githubusercontent.com/kimiyoung/planetoid/{planetoid.PLANETOID_COMMIT}/data/{filename}"
    assert checksum == ("sha256", planetoid.PLANETOID_SHA256[filename])


def test_the_unpickler_admits_arrays_and_sparse_matrices_and_nothing_else() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    with pytest.raises(pickle.UnpicklingError, match="print"):
        planetoid._unpickle(pickle.dumps(Evil(), protocol=2))
    assert np.array_equal(planetoid._unpickle(pickle.dumps(np.arange(3), protocol=2)), np.arange(3))


@needs_raw
def test_sparse_features_are_rebuilt_without_scipy(raw_copy: Path) -> None:
    x = planetoid._unpickle((raw_copy / "ind.cora.x").read_bytes())
    assert isinstance(x, planetoid._SparseMatrix) and x.format == "csr"
    dense = x.toarray()
    assert dense.shape == (140, 1433) and dense.sum() == len(x.data) == x.indptr[-1]
    row = 3
    assert sorted(np.nonzero(dense[row])[0].tolist()) == sorted(x.indices[x.indptr[row]:x.indptr[row + 1]].tolist())


def test_unknown_graph_is_an_error() -> None:
    with pytest.raises(DatasetError, match="unknown Planetoid graph"):
        load_planetoid("pubmed")
