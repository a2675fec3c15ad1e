"""The repository's scripts (scripts/<name>.py, not a package) as modules, for the tests that call their functions.

    update_readme = load_script("update_readme")

Each script is loaded once per process and registered in `sys.modules` under its name (dataclasses look their module
up there), so every test file that loads it shares one module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `name` (the one already loaded, if any)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
