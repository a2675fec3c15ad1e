"""git in a scratch repository a test made under its tmp_path, with a throw-away identity (a test machine may have
none configured): `git(repo, "commit", "-q", "-m", "one")` returns git's output, stripped, and raises on failure."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                          capture_output=True, text=True).stdout.strip()
