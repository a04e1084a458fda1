"""What moved when excise's paper-named methods and metrics were made to compute what the papers' code computes.

    python -m excise.bench.parity --before OLD_RESULTS_DIR [--after benchmarks/results]

OLD_RESULTS_DIR holds the benchmark JSON files from before the change
(e.g. `git archive ee15fff benchmarks/results | tar -x -C /tmp/old`). Every
numeric result present in both runs is compared; writes `parity.json` (every
value that moved) and `parity.md` (the items, then the moved values of the
metrics each benchmark reports) into the after directory. Rows renamed by the
change (excise's own deletion objectives now carry `_unlikelihood`) are
matched under their new names. Seconds and machine facts are not compared.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from excise.bench.results import write_result
from excise.display import fmt

FILES = ("edit.json", "locate.json", "stories.json", "verify.json", "tofu.json", "unlearn.json", "demo.json")

# excise's deletion objectives kept their behaviour and took new names; the old names now mean the reference's
RENAMES = {"edit.json": {f"rome_{o}": f"rome_{o}_unlikelihood" for o in ("erase", "max_entropy", "empty",
                                                                      "head_projection")}
           | {"rome_erase_protect8": "rome_erase_unlikelihood_protect8"}}

# the metrics parity.md shows per benchmark (every moved value is in parity.json)
SHOWN = ("efficacy", "paraphrase_forget", "neighbor_kept", "surname_kept", "forget_quality", "utility",
         "mia_auc", "relearn_recall", "logit_lens_top1", "forget_rouge_l", "p_corrupt", "peak", "planted",
         "recovery", "attack_success", "membership", "truth_ratio", "trace_mlp_peak_layer")
SKIP = ("second", "machine", "python", "torch_threads", "speedup", "date", "wall", "provenance")

ITEMS = [
    ("TOFU truth ratio", "exp(mean_j L(perturbed_j) - L(paraphrased)) from per-token mean losses, a geometric mean "
     "(locuslab/tofu aggregate_eval_stat.py)", "the reference (was: mean of the perturbed answers' probabilities)",
     "tofu forget quality and truth scores; unlearn forget quality; verify truth ratios"),
    ("TOFU ROUGE-L and generation", "rouge_score with use_stemmer=True; greedy answers up to max_length 200, no cut",
     "the reference (was: no stemmer, 64 new tokens cut at the first newline)", "tofu ROUGE-L columns, utility"),
    ("TOFU model utility", "harmonic mean of 9 parts (3 splits x probability, ROUGE-L, truth ratio)",
     "`tofu.metrics.utility_of` is TOFU's; the organism's 4-part analogue is now `organism_utility`",
     "names only: unlearn's utility column is organism_utility, as before"),
    ("Patil et al. deletion objectives", "erase: p(target); head_projection: margin loss keeping the target out "
     "of the lens top-k and bottom-k, no erase term; max_entropy: entropy of intermediate lens distributions; "
     "empty: rewrite to a dummy object", "reference names compute the reference losses; excise's earlier losses "
     "are `*_unlikelihood`, and `erase_unlikelihood` stays the default (edit.json: both side by side)",
     "edit rows rome_* (old rows match the new *_unlikelihood rows)"),
    ("Patil et al. attack", "the answer counts as extracted when it is in the top-k or bottom-k of the chosen "
     "layers' lens projections", "`verify.logit_lens.head_projection_attack` (reference), reported beside "
     "excise's top-B lens attack", "edit rows: head_projection attack columns (new)"),
    ("Causal trace noise", "3 x std of the subjects' token embeddings (kmeng01/rome collect_embedding_std)",
     "the reference (`TraceConfig.noise_scale='subjects'`; was the std of all of W_E, now 'vocabulary')",
     "locate planted-layer recovery, stories trace peaks, demo trace"),
    ("Causal trace window", "truncated at layer 0 and the last layer (trace_important_window)",
     "the reference (`window_edge='truncate'`; was shifted to keep w layers: 'shift'); no effect at window 1",
     "none at excise's default window 1"),
    ("ROME / MEMIT / AlphaEdit", "no ridge on C; KL factor 0.0625 and weight decay 0.5; AlphaEdit: absolute "
     "null-space threshold 1e-2, L2 10, sequential key cache", "excise keeps ridge 1e-2 and its regularizer "
     "(RomeConfig.reference gives ROME's); AlphaEdit now as its reference computes it", "edit memit_null_space "
     "rows, unlearn AlphaEdit rows, sequential.json"),
    ("Min-K% / Min-K%++", "floor(k*n) lowest tokens (zjysteven/mink-plus-plus)", "the reference (was max(1, round(k*n)))",
     "membership AUCs in verify, unlearn and the demo"),
]


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves by dotted path; lists of rows are keyed by their method/scope (or name) fields."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= flatten(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, dict) and "method" in v:
                key = "/".join(str(v[f]) for f in ("method", "scope") if f in v)
            elif isinstance(v, dict) and ("fraction" in v or "name" in v):
                key = str(v.get("fraction", v.get("name")))
            else:
                key = str(i)
            out |= flatten(v, f"{prefix}{key}.")
    elif _numeric(obj):
        out[prefix.rstrip(".")] = float(obj)
    return out


def _renamed(name: str, flat: dict[str, float]) -> dict[str, float]:
    renames = RENAMES.get(name, {})
    out = {}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        out[f"{renames.get(head, head)}.{rest}" if rest else renames.get(head, head)] = v
    return out


def moved(before: Path, after: Path, rel: float = 1e-9) -> dict[str, list[dict[str, Any]]]:
    """Per results file: every numeric value present before and after that changed."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in FILES:
        if not (before / name).exists() or not (after / name).exists():
            continue
        old = _renamed(name, flatten(json.loads((before / name).read_text())))
        new = flatten(json.loads((after / name).read_text()))
        rows = [{"key": k, "before": old[k], "after": new[k]} for k in sorted(old.keys() & new.keys())
                if not any(s in k for s in SKIP) and abs(old[k] - new[k]) > rel * max(1.0, abs(old[k]))]
        out[name] = rows
    return out


def _f(v: float) -> str:
    return fmt(v, large=1e4)


def to_markdown(changes: dict[str, list[dict[str, Any]]], before_label: str, stale: Sequence[str] = ()) -> str:
    lines = ["# Reference parity: what moved", "",
             f"Generated by `python -m excise.bench.parity` against the results of {before_label}; do not edit by "
             "hand. Each item: what the paper's code computes, what excise does now, and the benchmark rows it "
             "affects. Below, every shown metric whose value moved (all moved values: `parity.json`).", "",
             "| item | reference code | excise now | affects |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ITEMS]
    if stale:
        lines += ["", "Not yet rerun since the change, so still computed under the earlier definitions: "
                  + ", ".join(f"`{name}`" for name in stale) + "."]
    for name, rows in changes.items():
        shown = [r for r in rows if any(s in r["key"].rsplit(".", 1)[-1] or s in r["key"] for s in SHOWN)]
        lines += ["", f"## {name}: {len(rows)} values moved, {len(shown)} shown", ""]
        if shown:
            lines += ["| result | before | after |", "|---|---|---|"]
            lines += [f"| {r['key']} | {_f(r['before'])} | {_f(r['after'])} |" for r in shown]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="directory with the results JSON from before the change")
    p.add_argument("--after", default="benchmarks/results")
    p.add_argument("--label", default=None, help="how parity.md names the before run (default: the directory)")
    p.add_argument("--stale", default="", help="comma-separated result files not rerun since the change")
    args = p.parse_args(argv)
    start = time.perf_counter()
    before, after = Path(args.before), Path(args.after)
    stale = [s for s in args.stale.split(",") if s]
    changes = {k: v for k, v in moved(before, after).items() if k not in stale}
    write_result(after, "parity", {"before": args.label or str(before), "stale": stale, "moved": changes},
                 to_markdown(changes, args.label or f"`{before}`", stale), seed="nothing random",
                 wall_seconds=time.perf_counter() - start)
    print(f"wrote {after / 'parity.md'}: " + ", ".join(f"{n} {len(r)}" for n, r in changes.items()))


if __name__ == "__main__":
    main()
