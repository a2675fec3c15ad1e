"""Downloads that finish: sources tried in order, slow ones abandoned, every copy checked against its checksum.

    fetch("cifar-10-python.tar.gz", CIFAR10_SOURCES, ("md5", "c58f30108f718f92721af3b95e74349a"))

tries each `Source` in turn. A source whose speed stays below `min_speed` bytes/s over a `window` of seconds
(1 MB/s over 15 s by default), that sends nothing for a `window`, or that fails, is abandoned for the next one,
with one line that says why. The last source is never abandoned for being slow (on a slow link every source is
slow, and there is no next one): one line says it is below the floor, and its progress bar runs to the end.
Whatever a source served is checked against the checksum; a copy that does not match is rejected with one line
and the next source is tried. The progress bar names the source and shows its speed; the last line names the
source that served the file. Verified files are kept in `common.paths.cache_dir()`, so each archive is
downloaded once per machine.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm  # plain text bars: tqdm.auto warns in kernels without ipywidgets

from common.paths import cache_dir

MIN_SPEED = 1_000_000  # bytes/s: a source slower than this over a whole window is abandoned
WINDOW = 15.0  # seconds over which the speed is measured (and the longest wait for any data)
CHUNK = 1 << 16  # bytes read at a time
USER_AGENT = "dl-4090-hours-common (python urllib)"  # some hosts refuse urllib's default agent


@dataclass(frozen=True)
class Source:
    """Where a file can be downloaded from: a short `name` for the progress bar and the report, and the URL."""

    name: str
    url: str


@dataclass(frozen=True)
class Download:
    """A verified file: its path, the name of the source that served it (None: it was already cached), the
    seconds the download took and its size in bytes."""

    path: Path
    source: str | None
    seconds: float
    size: int


class DownloadError(RuntimeError):
    """No source served a copy that passed its checksum; the message says what each source did."""


class _TooSlow(Exception):
    pass


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file (`algorithm`: any name `hashlib.new` accepts, e.g. 'md5', 'sha256')."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(filename: str, sources: Sequence[Source], checksum: tuple[str, str], *, folder: Path | None = None,
          min_speed: float | None = None, window: float | None = None, progress: bool = True) -> Download:
    """`folder/filename` (default folder: `cache_dir()`), downloaded from the first source that serves a copy
    matching `checksum` = (algorithm, hex digest) at `min_speed` bytes/s or faster, measured over `window` seconds
    (defaults: `MIN_SPEED`, `WINDOW`), or else from the last source at whatever speed it manages; a verified copy
    already there is used as it is. Raises `DownloadError` (one line: each source's fate) when no source does."""
    min_speed = MIN_SPEED if min_speed is None else min_speed
    window = WINDOW if window is None else window
    folder = Path(folder) if folder is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    algorithm, expected = checksum[0], checksum[1].lower()
    target = folder / filename
    if target.is_file():
        if file_digest(target, algorithm) == expected:
            return Download(target, None, 0.0, target.stat().st_size)
        print(f"{filename}: the copy in {folder} fails its {algorithm.upper()} check: downloading it again")
        target.unlink()
    failures = []
    for source in sources:
        try:
            last = source is sources[-1]
            tmp, size, seconds = _download(source, folder, filename, min_speed, window, progress, abandon_slow=not last)
        except _TooSlow as e:
            failures.append(f"{source.name}: {e}")
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{source.name}: {type(e).__name__}: {e}")
        else:
            actual = file_digest(tmp, algorithm)
            if actual == expected:
                os.replace(tmp, target)
                print(f"{filename}: served by {source.name} ({size / 1e6:.1f} MB in {seconds:.1f} s, "
                      f"{size / 1e6 / max(seconds, 1e-9):.1f} MB/s), {algorithm.upper()} verified")
                return Download(target, source.name, seconds, size)
            tmp.unlink()
            failures.append(f"{source.name}: served a corrupt copy ({algorithm.upper()} {actual}, expected "
                            f"{expected}), rejected")
        print(f"{filename}: {failures[-1]}; " + ("trying the next source" if source is not sources[-1] else
                                                  "no source left"))
    raise DownloadError(f"{filename} could not be downloaded: " + "; ".join(failures or ["no sources given"]))


def _download(source: Source, folder: Path, filename: str, min_speed: float, window: float,
              progress: bool, abandon_slow: bool = True) -> tuple[Path, int, float]:
    """Download `source` to a temporary file in `folder`: (its path, bytes, seconds). Raises `_TooSlow` when a
    whole `window` passes below `min_speed` and `abandon_slow` (else says so once and goes on); the socket times
    out when nothing arrives for a `window`."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
    tmp = Path(name)
    try:
        request = urllib.request.Request(source.url, headers={"User-Agent": USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=window) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            read = getattr(response, "read1", response.read)  # read1: whatever has arrived, without waiting
            size, start, said_slow = 0, time.monotonic(), False
            window_start, window_bytes = start, 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=f"{filename} from {source.name}",
                      disable=not progress, mininterval=0.5) as bar:
                while chunk := read(CHUNK):
                    out.write(chunk)
                    size += len(chunk)
                    window_bytes += len(chunk)
                    bar.update(len(chunk))
                    now = time.monotonic()
                    if now - window_start >= window:
                        speed = window_bytes / (now - window_start)
                        if speed < min_speed:
                            slow = (f"{speed / 1e6:.3g} MB/s over {now - window_start:.3g} s, below the floor of "
                                    f"{min_speed / 1e6:.3g} MB/s")
                            if abandon_slow:
                                raise _TooSlow(slow)
                            if not said_slow:
                                bar.write(f"{filename}: {source.name}: {slow}; it is the last source, so the "
                                          f"download goes on", file=sys.stdout)
                                said_slow = True
                        window_start, window_bytes = now, 0
            if total is not None and size != total:
                raise ValueError(f"the connection closed after {size:,} of {total:,} bytes")
        return tmp, size, time.monotonic() - start
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
