"""Where a result came from: the commit, the versions, the CPU, the threads, the seed and the wall time.

Floating point differs between CPUs and between torch's CPU kernel paths
(`ATEN_CPU_CAPABILITY`), so a number is only reproducible together with the
machine that produced it. Every benchmark's JSON carries `provenance(...)`
under the key "provenance", and its Markdown says it in one line
(`provenance_line`); a table that keeps rows of earlier runs lists their
blocks under "earlier", one more line each (`provenance_lines`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# What a complete block holds; tests/test_bench.py refuses a committed result file without every key.
FIELDS = ("commit", "versions", "cpu", "cpu_capability", "threads", "seed", "wall_seconds", "written")
PACKAGES = ("torch", "transformers", "transformer-lens", "numpy")
# Outputs and prose: editing them does not change what a run computes, and a bench rewrites its own results
# mid-run, so they do not make the checkout "+dirty".
NOT_CODE = (":(exclude)benchmarks", ":(exclude)*.md")


def commit(repo: Path | None = None) -> str:
    """The git commit of the checkout excise runs from, with "+dirty" for uncommitted changes to anything but
    results and prose; "unknown" outside a git checkout (an installed wheel)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE],
                               cwd=repo, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Python's and the numerically relevant packages' versions."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(seed: int | list[int] | str | None, wall_seconds: float | None, **extra: Any) -> dict[str, Any]:
    """The provenance block of a result made now, on this machine.

    `seed`: what seeded the run (an int, a list, or words such as "fixed in the code"); `extra` adds or
    overrides keys (`note`, `earlier`)."""
    return {
        "commit": commit(),
        "versions": versions(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),   # the float path torch's CPU kernels took
        "cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 1),
        "written": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def earlier(old: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The runs a results file `old` came from, its own block first: what a table that keeps `old`'s rows
    records under provenance["earlier"]. A file from before blocks were recorded gives one of unknowns."""
    if old is None:
        return []
    block = dict(old.get("provenance") or unknown("kept from a results file that recorded no provenance"))
    return [block, *block.pop("earlier", [])]


def unknown(note: str) -> dict[str, Any]:
    """A complete block of which nothing is known but `note`."""
    return {"commit": "not recorded", "versions": {}, "cpu": "not recorded", "cpu_capability": None,
            "threads": None, "seed": None, "wall_seconds": None, "written": None, "note": note}


def _listed(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def _seed(seed: Any) -> str:
    if seed is None:
        return "seed not recorded"
    if isinstance(seed, str):
        return seed
    return f"seed{'s' if isinstance(seed, list) else ''} {_listed(seed)}"


def short_commit(commit_: str) -> str:
    """A block's commit as Markdown shows it: 12 hex digits, keeping "+dirty"."""
    head, dirty, _ = commit_.partition("+dirty")
    return head[:12] + dirty if len(head) == 40 else commit_


def provenance_line(block: dict[str, Any], lead: str = "Measured") -> str:
    """One Markdown line: commit, date, versions, CPU, kernel path, threads, seed and wall time."""
    v, wall, threads = block["versions"], block["wall_seconds"], block["threads"]
    stack = ", ".join(f"{name} {v[name]}" for name in ("torch", "transformers", "transformer-lens") if name in v)
    note = block.get("note")
    return (f"{lead} at commit `{short_commit(block['commit'])}`" + (f" on {block['written'][:10]}" if block.get("written") else "")
            + (f" with {stack}" if stack else " with versions not recorded")
            + f"; CPU: {block['cpu']} ({_listed(block['cpu_capability'] or 'kernel path not recorded')}, "
            + ("threads not recorded" if threads is None else
               f"{_listed(threads)} thread{'' if threads == 1 else 's'}")
            + f"); {_seed(block['seed'])}; wall time "
            + ("not recorded" if wall is None else f"{wall:,.0f} s")
            + (f". {note[0].upper()}{note[1:]}" if note else "") + ("" if (note or "").endswith(".") else "."))


def provenance_lines(block: dict[str, Any]) -> list[str]:
    """The block's line, then one per earlier run whose rows the result keeps."""
    return [provenance_line(block)] + [provenance_line(e, "Rows kept from an earlier run: measured")
                                       for e in block.get("earlier", [])]
