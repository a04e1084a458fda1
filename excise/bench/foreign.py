"""The foreign test models' builder, `tests/foreign.py`, for the benches that use them (sites, calibration,
batch): found beside the package in a clone, wherever the command runs from."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any


def foreign_suite() -> Any:
    """The repository's tests/foreign.py as a module (a FileNotFoundError saying what to do outside a clone)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "foreign.py").is_file():
        raise FileNotFoundError(f"the foreign test models are built by the repository's tests/foreign.py, not "
                                f"found under {root}: run this bench from a clone of excise (pip install -e .)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("tests.foreign")
