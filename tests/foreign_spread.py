"""Measure every bar of tests/test_foreign.py across CPU float paths: `python -m tests.foreign_spread`.

Runs tests/test_foreign.py once per float path (ATEN_CPU_CAPABILITY, and for
two runs MKL_ENABLE_INSTRUCTIONS) and thread count, each in a fresh process
with EXCISE_FOREIGN_RECORD set, so each `check` appends the
number it asserts, and writes tests/data/foreign/spread.json: per model and
number, the bar and the min, max and every value measured, with the runs'
provenance. test_foreign's last test holds the bars to it. Run it again
after changing a bar, a default an edit uses, or the shipped weights
(about 1-2 minutes a run on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from excise.provenance import earlier, provenance
from tests.test_foreign import SPREAD, bar

# Each run: (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS or None for MKL's own choice, threads). ATen's kernels
# and MKL's matrix products pick their instruction sets apart; MKL's is what differs on another vendor's CPU.
RUNS = tuple((aten, None, threads) for aten in ("default", "avx2", "avx512") for threads in (1, 2)) + (
    ("avx2", "AVX2", 1), ("default", "SSE4_2", 1))
# The tests about the spread and the shipped files assert no numbers and need no float path.
META = ("test_every_bar_sits_outside_the_spread_measured_across_float_paths",
        "test_the_shipped_models_are_the_current_recipes", "test_the_build_recipe_still_trains_a_model_that_loads")


def run_once(capability: str, mkl: str | None, threads: int) -> tuple[list[dict], dict]:
    """test_foreign.py under one float path and thread count: the recorded values and how the run went."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "values.jsonl"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads), "EXCISE_FOREIGN_RECORD": str(record)}
        env.pop("MKL_ENABLE_INSTRUCTIONS", None)
        if mkl is not None:
            env["MKL_ENABLE_INSTRUCTIONS"] = mkl
        start = time.perf_counter()
        deselect = [a for name in META for a in ("--deselect", f"tests/test_foreign.py::{name}")]
        done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_foreign.py", "-n", "0", "-q",
                               "-p", "no:cacheprovider", *deselect], env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        values = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return values, {"capability": capability, "mkl": mkl, "threads": threads, "seconds": round(seconds, 1),
                    "exit_code": done.returncode, "pytest": summary}


def _run_key(run: dict) -> tuple:
    return run["capability"], run.get("mkl"), run["threads"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Measure test_foreign's bars across CPU float paths and threads.")
    p.add_argument("--add", action="store_true", help="keep the runs already in --out; make only the missing ones")
    p.add_argument("--out", type=Path, default=SPREAD)
    args = p.parse_args(argv)
    old = json.loads(args.out.read_text()) if args.add and args.out.exists() else {"runs": [], "values": {}}
    done_runs = {_run_key(r) for r in old["runs"]}
    start = time.perf_counter()
    runs = list(old["runs"])
    values = {arch: {name: list(v["values"]) for name, v in names.items()} for arch, names in old["values"].items()}
    for capability, mkl, threads in RUNS:
        if (capability, mkl, threads) in done_runs:
            continue
        got, run = run_once(capability, mkl, threads)
        runs.append(run)
        print(json.dumps(run), flush=True)
        for v in got:
            values.setdefault(v["arch"], {}).setdefault(v["name"], []).append(v["value"])
    table = {arch: {name: {"bar": list(bar(arch, name)), "min": min(vs), "max": max(vs), "values": vs}
                    for name, vs in sorted(names.items())} for arch, names in sorted(values.items())}
    block = provenance(None, time.perf_counter() - start, note=f"torch {torch.__version__}; each run's float "
                       "paths and threads are in 'runs'")
    if old.get("provenance"):
        block["earlier"] = earlier(old)
    args.out.write_text(json.dumps({"runs": runs, "values": table, "provenance": block}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
