"""Planetoid citation graphs (Cora), as published with Yang, Cohen and Salakhutdinov 2016 and used by the GCN and
GAT papers, with their standard split.

    graph = load_planetoid("cora")   # 2,708 nodes, 1,433 features, 7 classes, 140 / 500 / 1,000 split

The eight files `ind.cora.{x,y,tx,ty,allx,ally,graph,test.index}` are looked for in `planetoid/` under the data
folders of `common.paths` (`DL_DATA_DIR`, then `DL_EXTRA_DATA_DIRS`), else downloaded by `common.download.fetch`
from the `data/` folder of the GitHub repository kimiyoung/planetoid at a pinned commit. Each file is checked
against its SHA-256 before it is read: a missing or altered file is one `DatasetError` naming the file. The files
are Python 2 pickles of NumPy arrays, SciPy sparse matrices and a dict of lists; they are read by a restricted
unpickler that admits only those classes, and rebuilds the sparse matrices from their arrays without importing
SciPy. The graph is then turned once into `planetoid/cora.npz` in `DL_DATA_DIR`, which later loads read.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data import DatasetError, sha256_of
from common.download import DownloadError, Source, fetch
from common.paths import data_dir, find_data_file, user_data_dir

__all__ = ["PLANETOID_COMMIT", "PLANETOID_SHA256", "Graph", "load_planetoid", "parse_planetoid"]

PLANETOID_COMMIT = "af6abf468a772cc055bec88c52e4d6f51b7c37e3"  # kimiyoung/planetoid, the files as published
PLANETOID_URL = f"https://raw.githubusercontent.com/kimiyoung/planetoid/{PLANETOID_COMMIT}/data/"
SUFFIXES = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
PLANETOID_SHA256: dict[str, str] = {
    "ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
}
# name -> (nodes, features, classes, train, validation, test) of the standard split, checked on every load
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {"cora": (2708, 1433, 7, 140, 500, 1000)}
KEYS = ("x", "y", "edge_index", "train_idx", "val_idx", "test_idx")


@dataclass
class Graph:
    """A node-classification graph held as NumPy arrays.

    `x` float32 (N, F) node features as published (Cora: binary bag of words, not normalised); `y` int64 (N,)
    labels; `edge_index` int64 (2, E): every undirected link as two directed edges (source row 0, target row 1),
    without duplicates or self-loops; `train_idx`, `val_idx`, `test_idx` int64 node indices of the standard split.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    edge_index: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int:
        return SIZES[self.name][2] if self.name in SIZES else int(self.y.max()) + 1

    def describe(self) -> str:
        """One line for run records: the graph, its size and its split."""
        return (f"{self.name.capitalize()} (Planetoid release, kimiyoung/planetoid@{PLANETOID_COMMIT[:7]}): "
                f"{self.num_nodes:,} nodes, {self.edge_index.shape[1] // 2:,} undirected edges, "
                f"{self.num_features:,} features, {self.num_classes} classes; standard split "
                f"{len(self.train_idx)} train / {len(self.val_idx)} validation / {len(self.test_idx)} test nodes")

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The arrays as tensors on `device`: x float32, the others int64."""
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))).to(device) for k in KEYS}


class _SparseMatrix:
    """Stands in for the SciPy sparse matrices of the pickles: keeps the arrays the pickle sets, builds nothing."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def toarray(self) -> np.ndarray:
        """The dense float32 matrix (CSR or CSC, the layouts scipy pickles carry)."""
        shape, fmt = tuple(int(n) for n in self.__dict__["_shape"]), self.__dict__.get("format", "csr")
        if fmt not in ("csr", "csc"):
            raise pickle.UnpicklingError(f"unexpected sparse format {fmt!r}")
        indptr, indices = np.asarray(self.indptr, np.int64), np.asarray(self.indices, np.int64)
        outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))  # the row (csr) or column (csc) of each entry
        dense = np.zeros(shape, dtype=np.float32)
        rows, cols = (outer, indices) if fmt == "csr" else (indices, outer)
        np.add.at(dense, (rows, cols), np.asarray(self.data, np.float32))
        return dense


class _PlanetoidUnpickler(pickle.Unpickler):
    """Unpickles the Planetoid files (Python 2 pickles), admitting only NumPy arrays, SciPy's CSR/CSC matrices
    (as `_SparseMatrix`) and a `defaultdict` of lists; any other class is an `UnpicklingError`."""

    NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes, pickled by Python 3
    SPARSE = {(f"scipy.sparse.{m}", f"{f}_matrix") for m in ("csr", "csc", "_csr", "_csc") for f in ("csr", "csc")}
    BUILTIN = {("collections", "defaultdict"): collections.defaultdict, ("__builtin__", "list"): list,
               ("builtins", "list"): list}

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's own signature)
        if (module, name) in self.NUMPY:
            return super().find_class(module, name)
        if (module, name) in self.SPARSE:
            return _SparseMatrix
        if (module, name) in self.BUILTIN:
            return self.BUILTIN[(module, name)]
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a Planetoid file")


def _unpickle(raw: bytes) -> Any:
    return _PlanetoidUnpickler(io.BytesIO(raw), encoding="latin1").load()


def _dense(obj: Any) -> np.ndarray:
    return obj.toarray() if isinstance(obj, _SparseMatrix) else np.asarray(obj)


def parse_planetoid(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The arrays of `KEYS` from the raw bytes of the eight files (keyed by suffix: 'x', ..., 'test.index').

    The Planetoid layout: `allx`/`ally` hold the first nodes (the 140 labelled training nodes `x`/`y` come first),
    `tx`/`ty` the test nodes in the order of `test.index`, which is neither sorted nor contiguous. Test rows are put
    back at their node ids; ids missing from a gap of `test.index` (isolated test nodes of Citeseer; none in Cora)
    get zero features and label -1. Validation: the 500 nodes after the training nodes."""
    arrays = {s: _dense(_unpickle(files[s])) for s in SUFFIXES if s not in ("graph", "test.index")}
    graph = _unpickle(files["graph"])
    test_order = np.array([int(line) for line in files["test.index"].decode().split()], dtype=np.int64)
    test_sorted = np.sort(test_order)
    n_all = len(arrays["allx"])
    n = max(int(test_sorted[-1]) + 1, n_all + len(test_order))
    x = np.zeros((n, arrays["allx"].shape[1]), dtype=np.float32)
    onehot = np.zeros((n, arrays["ally"].shape[1]), dtype=np.float32)
    x[:n_all], onehot[:n_all] = arrays["allx"], arrays["ally"]
    x[test_order], onehot[test_order] = arrays["tx"], arrays["ty"]  # row i of tx is node test_order[i]
    y = np.where(onehot.sum(1) > 0, onehot.argmax(1), -1).astype(np.int64)
    src = np.array([u for u, vs in graph.items() for _ in vs], dtype=np.int64)
    dst = np.array([v for vs in graph.values() for v in vs], dtype=np.int64)
    keep = src != dst
    pairs = np.unique(np.concatenate([np.stack([src, dst], 1), np.stack([dst, src], 1)])[np.concatenate([keep, keep])],
                      axis=0)  # (2E', 2) both directions -> deduplicated (E, 2)
    n_train = len(arrays["y"])
    return {"x": x, "y": y, "edge_index": np.ascontiguousarray(pairs.T),  # (E, 2) -> (2, E)
            "train_idx": np.arange(n_train, dtype=np.int64),
            "val_idx": np.arange(n_train, n_train + 500, dtype=np.int64),
            "test_idx": test_sorted}


def _validate(name: str, arrays: dict[str, np.ndarray], where: str) -> None:
    """Raise `DatasetError` unless the arrays have the standard sizes of `name` (20 training nodes per class)."""
    n, f, c, n_train, n_val, n_test = SIZES[name]
    problems = []
    if arrays["x"].shape != (n, f):
        problems.append(f"x has shape {arrays['x'].shape}, expected ({n}, {f})")
    if arrays["y"].shape != (n,):
        problems.append(f"y has shape {arrays['y'].shape}, expected ({n},)")
    sizes = tuple(len(arrays[k]) for k in ("train_idx", "val_idx", "test_idx"))
    if sizes != (n_train, n_val, n_test):
        problems.append(f"the split has {sizes} nodes, expected {(n_train, n_val, n_test)}")
    elif np.bincount(arrays["y"][arrays["train_idx"]], minlength=c).tolist() != [n_train // c] * c:
        problems.append(f"the training nodes are not {n_train // c} per class")
    e = arrays["edge_index"]
    if e.ndim != 2 or e.shape[0] != 2 or (e.size and (e.min() < 0 or e.max() >= n)):
        problems.append(f"edge_index has shape {e.shape} or node ids outside [0, {n})")
    if problems:
        raise DatasetError(f"{name}: {where} is malformed: {'; '.join(problems)}")


def _raw_file(filename: str) -> Path:
    """`planetoid/<filename>` from a data folder, else a verified download; either way SHA-256-checked."""
    expected = PLANETOID_SHA256[filename]
    path = find_data_file(f"planetoid/{filename}")
    if path is None:
        try:
            path = fetch(filename, [Source("github.com/kimiyoung/planetoid", PLANETOID_URL + filename)],
                         ("sha256", expected)).path
        except DownloadError as e:
            raise DatasetError(f"planetoid: {filename} is in no data folder and could not be downloaded ({e}). "
                               f"Offline? Put the eight ind.cora.* files of github.com/kimiyoung/planetoid "
                               f"(data/) in {user_data_dir() / 'planetoid'}/") from None
    if sha256_of(path) != expected:
        raise DatasetError(f"planetoid: {path} fails its SHA-256 check (altered or another file); it is not read. "
                           f"Replace it with the file of kimiyoung/planetoid@{PLANETOID_COMMIT[:7]}, or delete it "
                           f"to download it.")
    return path


def load_planetoid(name: str = "cora") -> Graph:
    """The Planetoid graph `name` ('cora') with its standard split, from `planetoid/<name>.npz` in a data folder,
    else built once from the eight verified `ind.<name>.*` files into `DL_DATA_DIR`."""
    if name not in SIZES:
        raise DatasetError(f"unknown Planetoid graph {name!r}; choose one of {sorted(SIZES)}")
    path = find_data_file(f"planetoid/{name}.npz")
    if path is None:
        files = {s: _raw_file(f"ind.{name}.{s}").read_bytes() for s in SUFFIXES}
        try:
            arrays = parse_planetoid(files)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError, IndexError) as e:
            raise DatasetError(f"planetoid: the ind.{name}.* files could not be read ({type(e).__name__}: {e})") \
                from None
        _validate(name, arrays, f"the ind.{name}.* files")
        path = data_dir() / "planetoid" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in KEYS}
    except Exception as e:  # zip/IO errors and missing keys: the file is corrupt
        raise DatasetError(f"{name}: {path} is corrupt or unreadable ({e}). Delete it to rebuild it.") from None
    _validate(name, arrays, str(path))
    return Graph(name=name, **arrays)
