"""Measure every bar of tests/test_foreign.py across CPU float paths: `python -m tests.foreign_spread`.

Runs tests/test_foreign.py once per (ATEN_CPU_CAPABILITY, thread count) in a
fresh process with EXCISE_FOREIGN_RECORD set, so each `check` appends the
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

from excise.provenance import provenance
from tests.test_foreign import SPREAD, bar

PATHS = ("default", "avx2", "avx512")
# The tests about the spread and the shipped files assert no numbers and need no float path.
META = ("test_every_bar_sits_outside_the_spread_measured_across_float_paths",
        "test_the_shipped_models_are_the_current_recipes", "test_the_build_recipe_still_trains_a_model_that_loads")
THREADS = (1, 2)


def run_once(capability: str, threads: int) -> tuple[list[dict], dict]:
    """test_foreign.py under one float path and thread count: the recorded values and how the run went."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "values.jsonl"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads), "EXCISE_FOREIGN_RECORD": str(record)}
        start = time.perf_counter()
        deselect = [a for name in META for a in ("--deselect", f"tests/test_foreign.py::{name}")]
        done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_foreign.py", "-n", "0", "-q",
                               "-p", "no:cacheprovider", *deselect], env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        values = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return values, {"capability": capability, "threads": threads, "seconds": round(seconds, 1),
                    "exit_code": done.returncode, "pytest": summary}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Measure test_foreign's bars across CPU float paths and threads.")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    p.add_argument("--out", type=Path, default=SPREAD)
    args = p.parse_args(argv)
    start = time.perf_counter()
    runs, values = [], {}
    for capability in args.paths:
        for threads in args.threads:
            got, run = run_once(capability, threads)
            runs.append(run)
            print(json.dumps(run), flush=True)
            for v in got:
                values.setdefault(v["arch"], {}).setdefault(v["name"], []).append(v["value"])
    table = {arch: {name: {"bar": list(bar(arch, name)), "min": min(vs), "max": max(vs), "values": vs}
                    for name, vs in sorted(names.items())} for arch, names in sorted(values.items())}
    result = {"runs": runs, "values": table,
              "provenance": provenance(None, time.perf_counter() - start, threads=args.threads,
                                       cpu_capability=[r["capability"] for r in runs],
                                       note=f"torch {torch.__version__}; the runs' float paths and threads are in "
                                            "'runs'")}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
