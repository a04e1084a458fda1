"""`excise bench heldout`: deletion methods on split seeds that chose nothing.

A setting tuned on a split tells little about the next one: UNDO's (alpha 0.6, the recall stop, swap
as teacher) was chosen on split seeds 0-2 (TUNING_SEEDS) and was indistinguishable from never-seen
facts on seed 0 only. This bench runs methods on HELD_OUT_SEEDS (3, 4, 5), fixed before any tuning
and used to choose no setting; `--seeds` runs others (the tuning seeds, to choose a setting there).

Per seed, the organism's 5% split (`world.subjects_split(0.05, seed)`: 15 people, 90 facts) runs as
`excise bench unlearn` runs it (`bench_split`: the located neurons, the split's retain and stand-in
facts, the audit context of 150 never-seen people, every default attack, or `attacks`: `--attacks all`
runs every audited one), with relearning's never-seen baseline pooled over RELEARN_DRAWS samples of 90
facts (one sample read `leaks` for the retrain oracle itself on seed 4: `excise.verify.attacks.relearn`). The original and the retrain oracle are
audited beside the methods: the oracle's verdicts are the calibration, what a perfect deletion gets. The row
`retrain_again` (CALIBRATION) is a second exact deletion, the recipe retrained at another training seed and
audited as a method, so `reference` and depth read it too; `exact_line` counts how often the exact rows read
indistinguishable on every attack, which bounds how often the goal can be met by any method.

One JSON row per (method, seed): `method`, `seed`, `efficacy`, `utility`, `relearn_recall` (top-1
after relearning the other half; the oracle row's is the floor), `forget_quality`, `verdicts`
({attack: verdict}) and `leakage` (their AUCs and p-values), `meets_goal`. The goal (GOAL_UTILITY):
utility >= 0.95 of the original's and `indistinguishable` on every attack. A run of some methods or
seeds keeps DIR/heldout.json's other rows. Writes DIR/heldout.json and heldout.md. A seed takes about an
hour on one thread; `merge` joins runs made in parallel (one DIR per seed) into one table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from excise import organism
from excise.bench.results import read_result, write_result
from excise.bench.unlearn import Budget, _registered, bench_split, compared, prepare_split
from excise.edit import EditRecord, recording
from excise.edit.record import storage_owners
from excise.models import load
from excise.provenance import earlier
from excise.verify import AuditConfig
from excise.verify.attacks import audited, to_run
from excise.verify.leakage import ALPHA
from excise.weights import copy_model

TUNING_SEEDS = (0, 1, 2)
HELD_OUT_SEEDS = (3, 4, 5)
FRACTION = 0.05
RELEARN_DRAWS = 10          # the 150 never-seen people as 10 draws of 15 (excise.verify.attacks.relearn)
GOAL_UTILITY = 0.95
# row name -> (label, registered method, settings over its defaults)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "undo": ("UNDO, the registered defaults (swap teacher, alpha 0.6, recall stop)", "undo", {}),
    # set before any run of it, from the tuning seeds' earlier UNDO runs (excise/edit/undo.py): the recall stop
    # at 5% ended with utility 0.80-0.81, at 0 with 0.89-0.93; the goal's 0.95 needs the original's recall back
    "undo_original_outside": ("UNDO, every text naming no forget subject taught by the original, distilled until "
                              "99% of the original's retained recall (at most 2,000 steps)", "undo",
                              {"outside_teacher": "original", "retain_threshold": 0.01, "max_steps": 2000}),
    # set before any held-out run of it, from tuning seed 0 only (excise/edit/undo.py): every step distilled,
    # alpha 0.6 -> utility 0.997 with the logit lens leaking (0.605), 0.8 -> a clean lens at utility 0.739,
    # 0.7 -> utility 0.990 and no attack leaking (relearning underpowered on 3 draws)
    "undo_alpha07_long": ("UNDO at alpha 0.7, every text naming no forget subject taught by the original, all "
                          "4,000 steps distilled (no stop)", "undo",
                          {"alpha": 0.7, "outside_teacher": "original", "retain_threshold": -1.0, "max_steps": 4000}),
    # set before any run of it, after undo_alpha07_long's held-out rows (the logit lens its only leak, AUC 0.58-0.59
    # on seeds 4-5): the same with the lens term (UndoConfig.lens_weight) at weight 1; tuned on seed 0 only
    "undo_alpha07_lens": ("UNDO at alpha 0.7 as undo_alpha07_long, plus the logit-lens term at weight 1 (each "
                          "intermediate layer's lens on a forget text taught the teacher's lens on its stand-in text)",
                          "undo", {"alpha": 0.7, "outside_teacher": "original", "retain_threshold": -1.0,
                                   "max_steps": 4000, "lens_weight": 1.0}),
    # set before any run of it, after undo_alpha07_lens's held-out rows (gradnorm its only leak, AUC 0.58-0.61, as
    # its swap teacher's 0.59; the forget answers' gradients smaller in blocks 0-2): no text naming a forget subject
    # distilled, so nothing trains the student on them; to be read on tuning seed 0 before any held-out run
    "undo_alpha07_drop": ("UNDO at alpha 0.7 as undo_alpha07_long, with no text naming a forget subject distilled",
                          "undo", {"alpha": 0.7, "outside_teacher": "original", "retain_threshold": -1.0,
                                   "max_steps": 4000, "forget_texts": "drop"}),
    # set with it, the other reading of the same rows: the swap teacher's approximation of a stranger carries the
    # leak, so the forget texts are taught the original's outputs on the text with stand-ins, lens term included
    "undo_alpha07_stranger": ("UNDO at alpha 0.7 as undo_alpha07_lens, each text naming a forget subject taught "
                              "(outputs and lens) what the original gives it with a stand-in's name", "undo",
                              {"alpha": 0.7, "outside_teacher": "original", "retain_threshold": -1.0,
                               "max_steps": 4000, "lens_weight": 1.0, "forget_texts": "stranger"}),
}
# row name -> label: not deletion methods but what the goal reads for an exact one (RETRAIN_AGAIN_SEED)
CALIBRATION: dict[str, str] = {
    "retrain_again": "the organism recipe retrained without the split again, training seed 1 (init and data order; "
                     "the oracle's is 0): an exact deletion audited as the methods are, `reference` and depth read "
                     "against the oracle; how often such a row meets the goal is what the goal allows a perfect "
                     "deletion",
}
RETRAIN_AGAIN_SEED = 1
METHODS = (*VARIANTS, *CALIBRATION)
KEYS = ("method", "seed", "scope", "efficacy", "utility", "relearn_recall", "forget_quality", "retain_kept",
        "seconds", "undo_steps", "depth")


def _table() -> dict[str, tuple[str, tuple[str, ...], Any]]:
    return {name: (label, ("located",), _registered(method, **settings))
            for name, (label, method, settings) in VARIANTS.items()} | \
        {"retrain_again": (CALIBRATION["retrain_again"], ("retrain",), retrain_again)}


def retrain_again(model: Any, split: Any, scope: str, seed: int) -> EditRecord:
    """`model` (the organism) overwritten with the recipe retrained without `split.forget` at training seed
    RETRAIN_AGAIN_SEED, as one record (undo restores the organism). Cost: one organism training (about three
    minutes on one thread), cached like the oracle."""
    rec = dataclasses.replace(organism.recipe(), seed=RETRAIN_AGAIN_SEED)
    if rec == organism.recipe():
        raise ValueError(f"RETRAIN_AGAIN_SEED ({RETRAIN_AGAIN_SEED}) is the recipe's own seed: that retrain is the "
                         "oracle itself")
    other = load(str(organism.retrain_dir(split.forget, rec, progress=False)), device="cpu")
    theirs = storage_owners(other)
    with recording(model, "retrain", {"recipe_seed": rec.seed}, facts=split.forget) as box, torch.no_grad():
        for name, p in storage_owners(model).items():
            if theirs.get(name) is None or theirs[name].shape != p.shape:
                raise ValueError(f"the retrain has no parameter {name} of {tuple(p.shape)}: its recipe's "
                                 "architecture differs from the organism's")
            p.copy_(theirs[name])
    return box["record"]


def row_of(row: dict[str, Any], seed: int) -> dict[str, Any]:
    """The bench's row from a `bench_split` row: its columns, the verdicts, and whether it meets the goal."""
    out = {k: row.get(k) for k in KEYS} | {"seed": seed, "verdicts": {}, "leakage": {}}
    _add_leakage(out, row["leakage"])
    return out


def _add_leakage(row: dict[str, Any], leakage: dict[str, dict[str, Any]]) -> None:
    """Adds an audit's `leakage` ({attack: {verdict, auc, p_value, ...}}) to the bench's `row` and re-reads
    its goal."""
    row["verdicts"] |= {a: v["verdict"] for a, v in leakage.items()}
    row["leakage"] |= {a: {"auc": v["auc"], "p_value": v["p_value"]} for a, v in leakage.items()}
    row["meets_goal"] = meets_goal(row)


def meets_goal(row: dict[str, Any]) -> bool:
    return (row["utility"] or 0) >= GOAL_UTILITY and bool(row["verdicts"]) and \
        all(v == "indistinguishable" for v in row["verdicts"].values())


def meets_familywise(row: dict[str, Any]) -> bool:
    """The goal read at family-wise level ALPHA over the row's attacks, not the goal itself: utility >=
    GOAL_UTILITY, no verdict underpowered, and no attack's p-value below ALPHA / the row's attacks (Holm's
    first step, which decides whether Holm rejects any). With one test per attack at ALPHA, eleven attacks
    flag an exact deletion somewhere on about four seeds in ten; this reading tells that from a leak."""
    verdicts = row["verdicts"]
    return (row["utility"] or 0) >= GOAL_UTILITY and bool(verdicts) and \
        all(v != "underpowered" for v in verdicts.values()) and \
        all(row["leakage"][a]["p_value"] >= ALPHA / len(verdicts) for a in verdicts)


def run(out: str | Path, seeds: Sequence[int] = HELD_OUT_SEEDS, methods: Sequence[str] = METHODS,
        progress: bool = True, log: Callable[[str], None] = lambda m: None,
        attacks: Sequence[str] | None = None, records: str | Path | None = None) -> dict[str, Any]:
    """Runs `methods` on each of `seeds` and writes DIR/heldout.json/.md (rows of other seeds and methods kept).
    `attacks`: the audit's attacks (default: the default audit's; `audited()` for every one). `records`: a
    folder where each edit's record is saved, to audit it again later without redoing the edit."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    start = time.perf_counter()
    kept_from = read_result(out / "heldout.json")
    rows = [r for r in (kept_from or {}).get("rows", [])
            if not (r["seed"] in seeds and (r["method"] in methods or r["method"] in ("original", "oracle")))]
    original, world = load("organism", device="cpu"), organism.world()
    results: dict[str, Any] = {}
    seconds = dict((kept_from or {}).get("seed_seconds", {}))
    for seed in seeds:
        t0 = time.perf_counter()
        split = bench_split(original, world, FRACTION, list(methods), Budget(), seed, progress, log,
                            relearn_draws=RELEARN_DRAWS, table=_table(),
                            attacks=tuple(attacks) if attacks else None,
                            records=Path(records) if records is not None else None)
        rows = _ordered(rows + [row_of(r, seed) for r in split["rows"]])
        seconds[str(seed)] = time.perf_counter() - t0
        results = {"fraction": FRACTION, "tuning_seeds": list(TUNING_SEEDS), "held_out_seeds": list(HELD_OUT_SEEDS),
                   "relearn_draws": RELEARN_DRAWS, "goal_utility": GOAL_UTILITY,
                   "labels": {m: v[0] for m, v in VARIANTS.items()} | CALIBRATION, "seed_seconds": seconds, "rows": rows}
        write_result(out, "heldout", results, to_markdown(results), seed=sorted({r["seed"] for r in rows}),
                     wall_seconds=time.perf_counter() - start, kept_from=kept_from)
        log(f"seed {seed}: {seconds[str(seed)]:.0f}s")
    return results


def audit_records(out: str | Path, records: str | Path, seeds: Sequence[int] = HELD_OUT_SEEDS,
                  methods: Sequence[str] = METHODS, attacks: Sequence[str] | None = None,
                  log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The attacks that compare models (`reference`, `depth`; or `attacks`) on the edits `run(records=)` saved,
    added to DIR/heldout.json's rows of (method, seed), without redoing the edits: each record is applied to
    the organism and audited against it and the seed's retrain oracle (`compared`). Rows without a record are
    left as they are; a record whose row is missing is an error."""
    out, records = Path(out), Path(records)
    kept_from = read_result(out / "heldout.json")
    if kept_from is None:
        raise ValueError(f"no {out / 'heldout.json'}: run excise bench heldout first")
    rows = {(r["method"], r["seed"]): r for r in kept_from["rows"]}
    original, world = load("organism", device="cpu"), organism.world()
    names = tuple(attacks) if attacks else tuple(a.name for a in to_run(audited()) if a.compares_models)
    start, done = time.perf_counter(), []
    for seed in seeds:
        todo = [(m, p) for m in methods if (p := records / f"{m}-located-seed{seed}.safetensors").exists()]
        if not todo:
            continue
        split, context, oracle, _ = prepare_split(original, world, FRACTION, Budget(), seed, False, with_heads=False)
        config = AuditConfig(seed=seed, attacks=names, relearn_draws=RELEARN_DRAWS)
        for method, path in todo:
            if (method, seed) not in rows:
                raise ValueError(f"{path} has no row in {out / 'heldout.json'}: run that method on seed {seed}")
            model = copy_model(original)
            EditRecord.load(path, model).apply()
            more = compared(model, original, oracle, split.forget, config, context)
            row = rows[(method, seed)]
            _add_leakage(row, more["leakage"])
            row["depth"] = more.get("depth")
            done.append(f"{method} seed {seed}")
            log(f"{method} seed {seed}: " + ", ".join(f"{a} {v}" for a, v in row["verdicts"].items() if a in names))
    results = {**kept_from, "rows": _ordered(list(rows.values()))}
    results.pop("provenance", None)
    write_result(out, "heldout", results, to_markdown(results), seed=sorted({r["seed"] for r in rows.values()}),
                 wall_seconds=time.perf_counter() - start, kept_from=kept_from,
                 note=f"{', '.join(names)} added from saved edit records ({'; '.join(done) or 'none'})")
    return results


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The anchors, then the variants in VARIANTS order (unknown methods last), each by seed."""
    order = {m: i for i, m in enumerate(("original", "oracle", *METHODS))}
    return sorted(rows, key=lambda r: (order.get(r["method"], len(order)), r["seed"]))


def merge(out: str | Path, parts: Sequence[str | Path], note: str | None = None) -> dict[str, Any]:
    """DIR/heldout.json from the heldout.json of each of `parts` (runs of the same bench, e.g. one seed each
    in parallel): a later part's rows replace an earlier one's of the same (method, seed); every part's
    provenance is kept under the merged file's ["provenance"]["earlier"]; `note` goes in the merged block."""
    files = [read_result(Path(p) / "heldout.json") for p in parts]
    if not files or any(f is None for f in files):
        raise ValueError(f"every part needs a heldout.json; missing in {[str(p) for p, f in zip(parts, files) if f is None]}")
    settings = {k: files[0][k] for k in ("fraction", "relearn_draws", "goal_utility")}
    if any({k: f[k] for k in settings} != settings for f in files):
        raise ValueError("the parts were measured under different settings (fraction, relearn draws, goal)")
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for f in files:
        rows |= {(r["method"], r["seed"]): r for r in f["rows"]}
        seconds |= f.get("seed_seconds", {})
    results = {**files[0], "labels": {k: v for f in files for k, v in f["labels"].items()}, "seed_seconds": seconds,
               "rows": _ordered(list(rows.values()))}
    blocks = [b for f in files for b in earlier(f)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_result(out, "heldout", results, to_markdown(results), seed=sorted({r["seed"] for r in rows.values()}),
                        wall_seconds=sum(seconds.values()), kept_from={"provenance": {**blocks[0], "earlier": blocks[1:]}},
                        note=note)


def exact_line(rows: Sequence[dict[str, Any]]) -> str:
    """What the goal gives an exact deletion, from `rows`' retrains (the oracle and `retrain_again`, every seed):
    on how many it read indistinguishable on every attack, which attacks said otherwise, and the chance, at the
    rate measured, that one such deletion meets the goal on all of HELD_OUT_SEEDS; "" without such rows."""
    exact = [r for r in rows if r["method"] in ("oracle", *CALIBRATION) and r["verdicts"]]
    if not exact:
        return ""
    clean = [r for r in exact if all(v == "indistinguishable" for v in r["verdicts"].values())]

    def said(r: dict[str, Any]) -> str:
        return f"{r['method']} seed {r['seed']}: " + ", ".join(
            f"{a} {v.replace('_', '-')} ({r['leakage'][a]['auc']:.2f}, p {r['leakage'][a]['p_value']:.3g})"
            for a, v in r["verdicts"].items() if v != "indistinguishable")

    off = [said(r) for r in exact if r not in clean]
    sizes = sorted({len(r["verdicts"]) for r in exact})
    rate = len(clean) / len(exact)
    n = len(HELD_OUT_SEEDS)
    return (f"Exact deletions (the retrain oracle and `retrain_again`, {len(exact)} rows over seeds "
            f"{', '.join(map(str, sorted({r['seed'] for r in exact})))}, {'-'.join(map(str, sizes))} attacks each) "
            f"read indistinguishable on every attack on {len(clean)} of {len(exact)} "
            f"({sum(map(meets_familywise, exact))} of {len(exact)} at family-wise {ALPHA})"
            + (f"; the others: {'; '.join(off)}" if off else "")
            + f". At that rate an exact deletion meets the goal on all {n} held-out seeds with probability "
              f"{rate ** n:.2f}.")


def goal_cell(row: dict[str, Any]) -> str:
    """The goal, and where it is missed but met at family-wise level (`meets_familywise`), that too."""
    return "**met**" if row["meets_goal"] else "missed (family-wise met)" if meets_familywise(row) else "missed"


def verdict_cell(v: str | None, auc: float | None) -> str:
    """A verdict as a table cell: shortened, with its AUC."""
    short = {"indistinguishable": "indist.", "over_suppressed": "over-supp."}.get(v or "", v or "-")
    return f"{short} ({auc:.2f})" if auc is not None else short


def depth_cell(row: dict[str, Any]) -> str:
    """The Unlearning Depth Score (1: as deep as the retrain oracle; 0: the unedited model) and the share of
    facts under depth's cut, or - where it was not measured."""
    d = row.get("depth")
    return "-" if not d else f"{d['uds']:.2f} ({d['shallow_share']:.0%} shallow)"


def to_markdown(r: dict[str, Any]) -> str:
    attacks = sorted({a for row in r["rows"] for a in row["verdicts"]})
    lines = ["# Deletion on held-out split seeds (organism, 5% split)", "",
             f"Split seeds {', '.join(map(str, r['held_out_seeds']))} were fixed before any tuning; "
             f"{', '.join(map(str, r['tuning_seeds']))} chose the settings. Goal: utility >= "
             f"{r['goal_utility']} of the original's and indistinguishable from never-seen facts on every attack "
             f"(verdict and AUC per attack; relearning's baseline pooled over {r['relearn_draws']} samples). "
             "The oracle's row is what a perfect deletion gets. Depth (UDS, `excise.verify.depth`): how much of "
             "what the retrain oracle lacks the unedited model cannot read back from the row's residual stream "
             "(1 as deep as the oracle), and the share of facts below depth's cut.", "",
             "| seed | method | efficacy | utility | relearned | forget quality | depth (UDS) | " + " | ".join(attacks)
             + " | goal |", "|---|---|---|---|---|---|---|" + "---|" * (len(attacks) + 1)]
    for row in sorted(r["rows"], key=lambda x: (x["seed"], x["method"] not in ("original", "oracle"))):
        cells = [verdict_cell(row["verdicts"].get(a), row["leakage"].get(a, {}).get("auc")) for a in attacks]
        fq = row["forget_quality"]
        seed = f"{row['seed']} (tuning)" if row["seed"] in r["tuning_seeds"] else str(row["seed"])
        lines.append(f"| {seed} | {row['method']} | {row['efficacy']:.3f} | {row['utility']:.3f} | "
                     f"{row['relearn_recall']:.3f} | {'-' if fq is None else f'{fq:.2g}'} | {depth_cell(row)} | "
                     + " | ".join(cells)
                     + f" | {goal_cell(row)} |")
    exact = exact_line(r["rows"])
    lines += ["", exact] if exact else []
    lines += ["", "Methods:"] + [f"- `{m}`: {label}" for m, label in r["labels"].items()]
    return "\n".join(lines) + "\n"
