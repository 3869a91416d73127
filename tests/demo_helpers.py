"""Shared by the demo tests: importing examples/affinity_demo and finding the FIB-25 copy."""

import os
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def fib25_dir() -> Path:
    """$SEGLOSSES_DATA_DIR, else ../shared/data/fib25 beside the repository; skips the test if absent."""
    env = os.environ.get("SEGLOSSES_DATA_DIR")
    folder = Path(env) if env else EXAMPLES.parent.parent / "shared" / "data" / "fib25"
    if not (folder / "groundtruth.h5.gz").is_file():
        pytest.skip(f"FIB-25 not found in {folder} (set SEGLOSSES_DATA_DIR to a copy of shared/data/fib25)")
    return folder


def load_script(path: Path):
    """Import a script of examples/ as a module (it is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
