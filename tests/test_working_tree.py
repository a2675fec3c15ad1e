"""The suite leaves the checkout as it found it: no new, changed or deleted file, ignored files included.

The root conftest.py snapshots the checkout when pytest starts and moves this test to the end of the run,
after the notebooks have executed (tests/test_notebooks.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from scratch_git import git

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_snapshot_sees_a_new_file_an_overwritten_checkpoint_and_a_deleted_file(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch):
    """The control of the test below: in a scratch checkout, each of the three faults it guards against shows up."""
    spec = importlib.util.spec_from_file_location("root_conftest", REPO_ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    repo = tmp_path / "checkout"
    (repo / "checkpoints").mkdir(parents=True)
    (repo / ".gitignore").write_text("checkpoints/\n")
    (repo / "tracked.txt").write_text("kept in git\n")
    (repo / "checkpoints" / "user.pt").write_bytes(b"a user's weights")
    git(repo, "init", "-q")
    git(repo, "add", ".gitignore", "tracked.txt")
    git(repo, "commit", "-q", "-m", "one")
    monkeypatch.setattr(root_conftest, "REPO_ROOT", repo)
    before = root_conftest.tree_snapshot()
    assert "checkpoints/user.pt" in before, "ignored files are listed one by one"
    assert root_conftest.snapshot_changes(before, root_conftest.tree_snapshot()) == [], "nothing done, nothing seen"
    (repo / "new.txt").write_text("a test's output\n")
    checkpoint = repo / "checkpoints" / "user.pt"
    stat = checkpoint.stat()
    checkpoint.write_bytes(b"a test's weight")  # one byte shorter, and a later modification time
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    (repo / "tracked.txt").unlink()
    changed = root_conftest.snapshot_changes(before, root_conftest.tree_snapshot())
    assert changed == ["checkpoints/user.pt", "new.txt", "tracked.txt"], changed


def test_the_suite_leaves_the_working_tree_clean(tree_changes: list[str] | None) -> None:
    if tree_changes is None:
        pytest.skip("not a git checkout")
    assert not tree_changes, f"the tests created, changed or deleted files in the repository: {tree_changes[:20]}"
