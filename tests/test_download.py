"""Downloads that finish (common/download.py), offline: local HTTP servers on 127.0.0.1 play the sources.

One server sends its file slowly (a throttled official host), another at once (a mirror), a third sends a corrupt
copy. The downloader must abandon the slow one after one speed window, reject the corrupt one in one line, verify
the copy it keeps, and say which source served it; the dataset loaders must use it for CIFAR-10.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import common.data as data_mod
import common.download as download
from common import DatasetError, load_image_dataset
from common.download import DownloadError, Source, fetch

WINDOW = 0.3  # seconds: the speed window the tests use instead of 15 s
MIN_SPEED = 200_000  # bytes/s: the tests' floor (the slow server sends 20 kB/s)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body, delay, chunk = self.server.body, self.server.delay, self.server.chunk
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for start in range(0, len(body), chunk):
                self.wfile.write(body[start:start + chunk])
                self.wfile.flush()
                time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on this source
            pass

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(body: bytes, delay: float = 0.0, chunk: int = 1 << 20) -> Iterator[str]:
    """A URL on 127.0.0.1 that serves `body` in `chunk`s with `delay` seconds after each, for the block's duration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.body, server.delay, server.chunk = body, delay, chunk
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/archive.tar.gz"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def slow(body: bytes) -> contextlib.AbstractContextManager[str]:
    return serve(body, delay=0.05, chunk=1000)  # 20 kB/s


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def fast_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' small floor and window, as the loaders' calls of `fetch` see them (the module defaults)."""
    monkeypatch.setattr(download, "MIN_SPEED", MIN_SPEED)
    monkeypatch.setattr(download, "WINDOW", WINDOW)


def test_a_slow_source_is_abandoned_for_the_next_and_the_copy_is_verified(tmp_path, fast_floor, capsys):
    body = np.random.default_rng(0).bytes(100_000)  # 5 s at the slow server's speed
    start = time.monotonic()
    with slow(body) as slow_url, serve(body) as fast_url:
        result = fetch("archive.tar.gz", [Source("slow-host", slow_url), Source("fast-mirror", fast_url)],
                       ("md5", md5(body)), folder=tmp_path)
    elapsed = time.monotonic() - start
    assert result.source == "fast-mirror" and result.path.read_bytes() == body
    assert elapsed < 3.0, f"the slow source was not abandoned after one window ({elapsed:.1f} s)"
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert any(line.startswith("archive.tar.gz: slow-host:") and "below the floor" in line for line in lines)
    assert lines[-1].startswith("archive.tar.gz: served by fast-mirror") and "MD5 verified" in lines[-1]
    assert "archive.tar.gz from slow-host" in out.err and "archive.tar.gz from fast-mirror" in out.err  # the bars
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz"]  # no partial file left behind
    capsys.readouterr()
    again = fetch("archive.tar.gz", [Source("unreachable", "http://127.0.0.1:9/")], ("md5", md5(body)), folder=tmp_path)
    assert again.source is None and capsys.readouterr().out == ""  # verified copy reused, nothing downloaded


def test_the_last_source_keeps_going_when_slow_with_progress(tmp_path, fast_floor, capsys):
    """On a slow link every source is slow: abandoning the last one too would mean the file never downloads. An
    earlier slow source is still abandoned (a faster one may follow); the last one finishes, its bar showing."""
    body = np.random.default_rng(2).bytes(20_000)  # 1 s at the slow server's 20 kB/s: several windows below the floor
    with slow(body) as first_url, slow(body) as last_url:
        result = fetch("archive.tar.gz", [Source("slow-official", first_url), Source("slow-mirror", last_url)],
                       ("md5", md5(body)), folder=tmp_path)
    assert result.source == "slow-mirror" and result.path.read_bytes() == body
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert any(line.startswith("archive.tar.gz: slow-official:") and "below the floor" in line for line in lines)
    kept = [line for line in lines if line.startswith("archive.tar.gz: slow-mirror") and "last source" in line]
    assert len(kept) == 1 and "below the floor" in kept[0], lines  # said once, not once per window
    assert lines[-1].startswith("archive.tar.gz: served by slow-mirror") and "MD5 verified" in lines[-1]
    assert "archive.tar.gz from slow-mirror" in out.err and "20.0k/20.0k" in out.err  # its bar, to the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz"]


def test_a_single_slow_source_is_not_abandoned(tmp_path, fast_floor):
    body = b"z" * 15_000  # 0.75 s at 20 kB/s: more than two windows below the floor
    with slow(body) as url:
        result = fetch("a.bin", [Source("only-host", url)], ("md5", md5(body)), folder=tmp_path, progress=False)
    assert result.source == "only-host" and result.path.read_bytes() == body


def test_a_corrupt_copy_is_rejected_in_one_line_and_the_next_source_serves(tmp_path, fast_floor, capsys):
    body = b"the real archive" * 1000
    with serve(body[:-1] + b"X") as corrupt_url, serve(body) as good_url:
        result = fetch("a.bin", [Source("bad-mirror", corrupt_url), Source("good-mirror", good_url)],
                       ("md5", md5(body)), folder=tmp_path)
    assert result.source == "good-mirror" and result.path.read_bytes() == body
    rejected = [line for line in capsys.readouterr().out.splitlines() if "bad-mirror" in line]
    assert len(rejected) == 1 and "corrupt copy" in rejected[0] and md5(body) in rejected[0]


def test_when_every_source_fails_the_error_is_one_line_naming_each(tmp_path, fast_floor):
    body = b"x" * 5000
    with serve(b"y" * 5000) as corrupt_url:
        with pytest.raises(DownloadError) as info:
            fetch("a.bin", [Source("bad-mirror", corrupt_url), Source("closed-port", "http://127.0.0.1:9/a.bin")],
                  ("md5", md5(body)), folder=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "bad-mirror: served a corrupt copy" in message and "closed-port:" in message
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_cached_copy_is_replaced(tmp_path, fast_floor, capsys):
    body = b"payload" * 100
    (tmp_path / "a.bin").write_bytes(b"half a paylo")
    with serve(body) as url:
        result = fetch("a.bin", [Source("mirror", url)], ("sha256", hashlib.sha256(body).hexdigest()), folder=tmp_path)
    assert result.source == "mirror" and result.path.read_bytes() == body
    assert "fails its SHA256 check" in capsys.readouterr().out


def fake_cifar10_archive(n: int = 4) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small archive laid out like cifar-10-python.tar.gz (pickled batches of (n, 3072) uint8 rows)."""
    rng = np.random.default_rng(1)
    buffer, arrays = io.BytesIO(), {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            raw = pickle.dumps({b"data": rows, b"labels": labels, b"batch_label": name.encode()}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            split = "test" if name == "test_batch" else "train"
            arrays[f"x_{split}"].append(rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
            arrays[f"y_{split}"].append(np.array(labels, dtype=np.uint8))
    return buffer.getvalue(), {k: np.concatenate(v) for k, v in arrays.items()}


def test_cifar10_is_downloaded_from_the_fast_mirror_verified_and_decoded(data_tmp, fast_floor, monkeypatch, capsys):
    archive, expected = fake_cifar10_archive()
    assert len(archive) > 60_000  # longer than the slow server can send in one window
    with slow(archive) as slow_url, serve(archive) as fast_url:
        monkeypatch.setattr(data_mod, "CIFAR10_SOURCES", [Source("official", slow_url), Source("mirror", fast_url)])
        monkeypatch.setattr(data_mod, "CIFAR10_MD5", md5(archive))
        ds = load_image_dataset("cifar10")
    for key, value in expected.items():
        assert np.array_equal(getattr(ds, key), value), key
    assert "served by mirror" in capsys.readouterr().out
    assert (data_tmp / "cifar10.npz").is_file()


def test_a_corrupt_cifar10_download_is_a_one_line_dataset_error(data_tmp, fast_floor, monkeypatch):
    archive, _ = fake_cifar10_archive()
    with serve(archive[:-10] + b"0123456789") as url:
        monkeypatch.setattr(data_mod, "CIFAR10_SOURCES", [Source("mirror", url)])
        monkeypatch.setattr(data_mod, "CIFAR10_MD5", md5(archive))
        with pytest.raises(DatasetError) as info:
            load_image_dataset("cifar10")
    message = str(info.value)
    assert "\n" not in message and "corrupt copy" in message and "cifar10.npz" in message
    assert list(data_tmp.iterdir()) == []


def test_a_cifar10_archive_holding_other_objects_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        raw = pickle.dumps({b"data": Payload()})
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        data_mod._cifar10_from_archive(path)


def test_every_downloaded_dataset_has_sources_and_a_checksum():
    assert len(data_mod.CIFAR10_SOURCES) >= 3 and data_mod.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert data_mod.CIFAR10_SOURCES[0].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert len({s.url for s in data_mod.CIFAR10_SOURCES}) == len(data_mod.CIFAR10_SOURCES)
    for md5s, sources in ((data_mod.MNIST_MD5, data_mod.MNIST_SOURCES),
                          (data_mod.FASHION_MNIST_MD5, data_mod.FASHION_MNIST_SOURCES)):
        assert set(md5s) == set(data_mod.IDX_FILES.values()) and len(sources) >= 2
    assert data_mod.SHAKESPEARE_SOURCES and len(data_mod.SHAKESPEARE_SHA256) == 64


def test_idx_datasets_download_through_fetch(data_tmp, monkeypatch):
    """MNIST's four files go through `fetch`, each with its own MD5 and every source, into the cache."""
    calls = []

    def fake_fetch(filename, sources, checksum, **kwargs):
        calls.append((filename, [s.url for s in sources], checksum))
        raise DownloadError(f"{filename}: offline")

    monkeypatch.setattr(data_mod, "fetch", fake_fetch)
    with pytest.raises(DatasetError, match="offline"):
        load_image_dataset("mnist")
    filename, urls, checksum = calls[0]
    assert filename == "mnist-train-images-idx3-ubyte.gz" and checksum == ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873")
    assert urls == [url + "train-images-idx3-ubyte.gz" for _, url in data_mod.MNIST_SOURCES]


def test_the_cache_folder_is_the_default_destination(tmp_path, monkeypatch, fast_floor):
    monkeypatch.setenv("DL_CACHE_DIR", str(tmp_path / "cache"))
    with serve(b"abc") as url:
        result = fetch("f.txt", [Source("here", url)], ("md5", md5(b"abc")), progress=False)
    assert result.path == tmp_path / "cache" / "f.txt"
    assert isinstance(result.path, Path)
