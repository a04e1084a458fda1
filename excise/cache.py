"""Where excise keeps what it derives, and the memo behind the derived context.

The root is $EXCISE_CACHE, else ~/.cache/excise; each kind of result has its own folder, listed in `KINDS`
(`excise cache` prints them with their sizes; `excise cache --clear` empties them). Everything there is safe to
delete: whatever is missing is recomputed on the next call that needs it.

`derived(kind, key, compute)` keeps a JSON value keyed by a dict (which names the model by its fingerprint):
in this process (a dict) and on disk (KIND/<hash>.json, with the key beside the value), so a second call, in
this session or a later one, costs a file read; its keys name a model by `excise.weights.model_fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Every folder under the root, and what is in it (the one list `excise cache` and the README read).
KINDS = {
    "covariance": "MLP key second moments per (model fingerprint, layer, sample): rome/memit/alphaedit",
    "samples": "texts a model wrote itself (the covariance sample and general text a derived context uses)",
    "subjects": "never-seen names derived for a model and its subjects (holdout and stand-ins)",
    "oracles": "the organism retrained without a forget set",
    "sisa": "SISA shard ensembles of the organism",
    "tofu": "the TOFU organisms and their tokenizer",
    "foreign": "the foreign test models of other seeds, built by the benches from tests/foreign.py",
}

_MEMORY: dict[tuple[str, str], Any] = {}


def cache_dir() -> Path:
    """The cache root: $EXCISE_CACHE, else ~/.cache/excise (read on every call, so a test may set it)."""
    return Path(os.environ.get("EXCISE_CACHE", Path.home() / ".cache" / "excise"))


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def derived(kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """The JSON value `compute()` returns for `key`, computed once: later calls with an equal key (in this
    process, or in any process using the same cache root) read it back. `kind` is a folder of `KINDS`.
    Returns the value. Cost: `compute()` on the first call, then a dict lookup or a small file read."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; known: {', '.join(KINDS)}")
    digest = _digest(key)
    path = cache_dir() / kind / f"{digest}.json"
    memo = (str(path), digest)
    if memo in _MEMORY:
        return _MEMORY[memo]
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == json.loads(json.dumps(key)):
            _MEMORY[memo] = stored["value"]
            log.info("%s: read from the cache %s", kind, path)
            return stored["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "value": value}))
    tmp.replace(path)
    log.info("%s: computed once and kept in %s (safe to delete: recomputed when missing)", kind, path)
    _MEMORY[memo] = value
    return value


def folders() -> list[dict[str, Any]]:
    """Each kind's folder: its path, what it holds, its files and bytes. Cost: a walk of the cache root."""
    rows = []
    for kind, what in KINDS.items():
        path = cache_dir() / kind
        files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
        rows.append({"kind": kind, "path": str(path), "holds": what, "files": len(files),
                     "bytes": sum(p.stat().st_size for p in files)})
    return rows


def clear(kinds: list[str] | None = None) -> list[str]:
    """Delete the folders of `kinds` (default: every kind) and forget this process's memo; returns the paths
    removed. Safe: whatever is gone is recomputed when next needed."""
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown cache kind(s) {unknown}; known: {', '.join(KINDS)}")
    removed = []
    for kind in kinds or list(KINDS):
        path = cache_dir() / kind
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    _MEMORY.clear()
    return removed
