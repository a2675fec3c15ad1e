"""The suite leaves the checkout as it found it: no new, changed or deleted file, ignored files included.

The root conftest.py snapshots the checkout when pytest starts and moves this test to the end of the run,
after the notebooks have executed (tests/test_notebooks.py).
"""

from __future__ import annotations

import pytest


def test_the_suite_leaves_the_working_tree_clean(tree_changes: list[str] | None) -> None:
    if tree_changes is None:
        pytest.skip("not a git checkout")
    assert not tree_changes, f"the tests created, changed or deleted files in the repository: {tree_changes[:20]}"
