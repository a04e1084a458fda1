"""Where excise caches what it derives (retrain oracles, covariance statistics, trained organisms).

$EXCISE_CACHE, else ~/.cache/excise. Every package writes under its own subfolder.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $EXCISE_CACHE, else ~/.cache/excise (read on every call, so a test may set it)."""
    return Path(os.environ.get("EXCISE_CACHE", Path.home() / ".cache" / "excise"))
