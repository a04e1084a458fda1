"""`excise bench anchor`: TOFU's literature anchor, with the setting chosen on forget01 only.

The anchor (issue 39): open-unlearning's NPO on TOFU forget10, Llama-2-7b, reaches forget quality 0.42 at
model utility 0.54, 86% of its retain model's 0.63. Here: forget quality >= ANCHOR_QUALITY on forget05 at
>= ANCHOR_SHARE of the retain model's utility (stretch: STRETCH_SHARE), on the TOFU organism.

Protocol, fixed before any run:
1. TUNE_SPLIT (forget01): every setting of GRIDS (method x scope x epochs x learning rate, and a config
   field of the method where a grid names one) runs once from the organism, seed 0, and is scored by
   TOFU's metrics against forget01's retain model. GRID was the first; the others were added after its
   run, each before any of its settings ran on forget05.
2. The rule (`choose`): per method, among the settings keeping utility >= ANCHOR_SHARE of the retain
   model's, the highest forget quality, ties to the higher utility. The overall pick is the same rule over
   every method.
3. Each method's pick runs once on TEST_SPLITS (forget05), scored against forget05's retain model. Nothing
   measured on forget05 chooses anything.

Training length is in epochs over the forget facts (the forget rows that name their author, which are
the ones trained on; steps = ceil(epochs * facts / batch)), so a setting
means the same thing on a split five times larger; the located mask scales the same way (4 Fisher neurons
per forget row, as `excise bench tofu`). Writes DIR/anchor.json and anchor.md: every grid row, the picks
and their test-split rows against the anchor. A rerun keeps the rows DIR/anchor.json already holds for
the same settings measured the same way, so a grid added later runs alone (`run`'s `keep`); rows measured
so far sit in DIR/anchor.partial.json until the run ends, so a stopped run loses only the row in hand.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from excise.bench.results import read_result, write_result
from excise.bench.tofu import Prepared, prepare, quality_cell
from excise.methods import unlearn
from excise.provenance import earlier, provenance
from excise.tofu import forget_quality, truth_ratio
from excise.tofu.organism import TofuRecipe
from excise.weights import copy_model

ANCHOR_QUALITY = 0.42           # open-unlearning's NPO, TOFU forget10, Llama-2-7b
ANCHOR_SHARE = 0.86             # its utility, 0.54, over its retain model's, 0.63
STRETCH_SHARE = 0.95
TUNE_SPLIT = "forget01"
TEST_SPLITS = ("forget05",)
BATCH = 32
# set before any run: NPO (the anchor's method) and GradDiff (forget05's highest forget quality in
# `excise bench tofu`, at collapsed utility), at the located neurons and at every parameter; `excise bench tofu`
# runs 40 steps at 1e-3 (34 epochs of forget01, 7 of forget05)
GRID = {"method": ("npo", "graddiff"), "scope": ("located", "all"), "epochs": (5, 10, 20, 40),
        "lr": (3e-4, 1e-3)}
# added after GRID's run (stop 47), on forget01 only, before any of them ran on forget05:
# - swap (subject-swap distillation; its stand-ins derived: `Prepared.stand_ins`), GRID's scopes and lengths;
# - GradDiff at every parameter with a heavier retain term: GRID's only setting past the anchor's quality
#   (5 epochs, lr 1e-3) lost a third of the utility, and forget quality rose then fell within 10 epochs.
GRIDS = (GRID,
         {"method": ("swap",), "scope": ("located", "all"), "epochs": (5, 10, 20, 40), "lr": (3e-4, 1e-3)},
         {"method": ("graddiff",), "scope": ("all",), "epochs": (3, 5, 7, 9, 12, 16), "lr": (1e-3,),
          "retain_weight": (3.0, 10.0, 30.0)},
         # added after those ran (stop 49), on forget01 only, before any of them ran on forget05: a length in
         # epochs did not carry over (GradDiff's pick overshot on forget05, NPO's stopped at answer probability
         # 0.19 where the retain model gives 0.0008). These stop on the forget answers' own mean probability
         # (`stop_forget_probability`, checked every step; epochs is then the cap), a target that means the same
         # on a larger split: 0.1 down to the retain models' ~0.001.
         *({"method": (m,), "scope": scopes, "epochs": (60,), "lr": (1e-3,),
            "stop_forget_probability": (0.1, 0.03, 0.01, 0.003, 0.001), **extra}
           for m, scopes, extra in (("npo", ("located", "all"), {}), ("graddiff", ("located",), {}),
                                    ("graddiff", ("all",), {"retain_weight": (10.0,)}))),
         # added after those ran (stop 50), on forget01 only, before any of them ran on forget05: the answers'
         # probability did not carry over either (NPO's pick never reached 0.1 on forget05). These stop on
         # TOFU's own forget-quality test read against a reference forget05 never sees: the truth ratios of
         # forget01's retain model on forget01 (STOP_REFERENCE), what a model that never saw the authors gives.
         # GradDiff at every parameter only: forget01's only rows past 0.4 at the anchor's utility, passing
         # through it within two epochs (0.0005 at 5, 0.405 at 7, 0.014 at 9); NPO never passed 0.03.
         {"method": ("graddiff",), "scope": ("all",), "epochs": (60,), "lr": (3e-4, 1e-3),
          "retain_weight": (10.0, 30.0), "stop_forget_quality": (0.1, 0.5)})
BASE = ("method", "scope", "epochs", "lr")      # every grid's keys; any other is a field of the method's config
STOPS = ("stop_forget_quality",)                # ... or one of these stops, which the bench reads itself
CHECK_EPOCHS = 1                                # the forget-quality stop reads the test every this many epochs
STOP_REFERENCE = "truth ratios of TUNE_SPLIT's retain model on TUNE_SPLIT"


def settings(grids: dict[str, Sequence[Any]] | Sequence[dict[str, Sequence[Any]]] = GRIDS) -> list[dict[str, Any]]:
    """Every setting of `grids` (one grid or several), in order, each once."""
    out: list[dict[str, Any]] = []
    for grid in [grids] if isinstance(grids, dict) else grids:
        missing = [k for k in BASE if k not in grid]
        if missing:
            raise ValueError(f"an anchor grid needs {', '.join(BASE)}; this one lacks {', '.join(missing)}")
        out += [s for s in (dict(zip(grid, values)) for values in itertools.product(*grid.values())) if s not in out]
    return out


def steps_for(epochs: float, rows: int, batch: int = BATCH) -> int:
    """Optimizer steps for `epochs` passes over `rows` forget facts at `batch` per step."""
    return max(1, math.ceil(epochs * rows / batch))


def run_setting(s: Prepared, setting: dict[str, Any], seed: int, reference: Any = None) -> dict[str, Any]:
    """One setting on a prepared split, from the organism: the row (setting, steps, seconds, TOFU's metrics).
    `reference`: the truth ratios a `stop_forget_quality` stop tests the split's forget rows against."""
    model = copy_model(s.full)
    steps = steps_for(setting["epochs"], len(s.forget))
    options = {k: v for k, v in setting.items() if k not in BASE}
    stop, trace = None, []
    if "stop_forget_quality" in options:              # TOFU's KS test against `reference`, every step
        if reference is None:
            raise ValueError("a stop_forget_quality setting needs the reference truth ratios to test against")
        target = options.pop("stop_forget_quality")

        def stop(m: Any) -> bool:
            trace.append(forget_quality(truth_ratio(m, s.forget_rows), reference))
            return trace[-1] >= target
    if "stop_forget_probability" in options:          # a stop on the answers: every step
        options.setdefault("eval_every", 1)
    if stop is not None:                              # TOFU's test: about once an epoch (every step on forget01)
        options.setdefault("eval_every", max(1, len(s.forget) * CHECK_EPOCHS // BATCH))
    t = time.perf_counter()
    record = unlearn(model, s.forget, s.retain, setting["method"], mask=s.masks[setting["scope"]], steps=steps,
                     lr=setting["lr"], batch_size=BATCH, stop_forget_recall=-1.0, families=("request",),
                     progress=False, seed=seed, stand_ins=s.stand_ins, stop=stop, **options)
    seconds = time.perf_counter() - t
    return {**setting, "options": sorted(k for k in setting if k not in BASE), "steps": steps,
            "steps_run": record.meta["steps"], "seconds": seconds, "parameters_touched": record.n_changed,
            **({"stop_trace": trace} if stop is not None else {}), **s.score(model)}


def choose(rows: Sequence[dict[str, Any]], retain_utility: float, share: float = ANCHOR_SHARE) -> dict[str, Any] | None:
    """The highest forget quality among `rows` keeping utility >= share * retain_utility (ties: higher
    utility); None when no row keeps it."""
    kept = [r for r in rows if r["utility"] >= share * retain_utility]
    return max(kept, key=lambda r: (r["forget_quality"], r["utility"])) if kept else None


def setting_of(row: dict[str, Any]) -> dict[str, Any]:
    """The setting a grid or test row ran: BASE and the config fields it names in row["options"]."""
    return {k: row[k] for k in (*BASE, *row.get("options", ()))}


def run(out: str | Path, grids: dict[str, Sequence[Any]] | Sequence[dict[str, Sequence[Any]]] = GRIDS,
        tests: Sequence[str] = TEST_SPLITS, seed: int = 0, recipe: TofuRecipe = TofuRecipe(),
        utility_rows: int | None = None, max_new_tokens: int | None = None, keep: bool = True,
        progress: bool = True, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The protocol of the module docstring; `utility_rows` and `max_new_tokens` shrink the scoring (smoke runs).

    keep: reuse the rows of DIR/anchor.json measured the same way (recipe, seed, scoring) for settings still in
    `grids` and for picks tested before, and run only the rest (a grid added later runs alone; the picks
    are chosen over every row). The file's provenance then names both runs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    how = {"recipe": asdict(recipe), "seed": seed, "utility_rows": utility_rows, "max_new_tokens": max_new_tokens}
    old = read_result(out / "anchor.json") if keep else None
    if old is not None and {k: old.get(k, _BEFORE.get(k)) for k in how} != how:
        old = None                                  # measured another way: nothing of it is reused
    checkpoint = _Checkpoint(out, how, seed, keep)
    known = checkpoint.known(old)
    tune = prepare(TUNE_SPLIT, recipe, seed, utility_rows=utility_rows, max_new_tokens=max_new_tokens,
                   progress=progress)
    references = {TUNE_SPLIT: tune.reference_rows(recipe)}
    retain_utility = references[TUNE_SPLIT][1]["utility"]
    grid_rows, reused = [], 0
    for setting in settings(grids):
        before = [r for r in known["grid_rows"] if setting_of(r) == setting]
        grid_rows.append(checkpoint.reuse(before[0]) if before else
                         checkpoint.add("grid_rows", run_setting(tune, setting, seed, tune.oracle_ratios)))
        reused += bool(before)
        r = grid_rows[-1]
        log(f"{TUNE_SPLIT} {_name(r)}: fq {r['forget_quality']:.3g} utility {r['utility']:.3f} ({r['seconds']:.0f}s)"
            + (" (kept)" if before else ""))
    methods = list(dict.fromkeys(r["method"] for r in grid_rows))
    picks = {m: choose([r for r in grid_rows if r["method"] == m], retain_utility) for m in methods}
    best = choose(grid_rows, retain_utility)
    ready = lambda split: prepare(split, recipe, seed, utility_rows=utility_rows,  # noqa: E731
                                  max_new_tokens=max_new_tokens, progress=progress)
    test_rows, kept = _test_picks(picks, best, tests, ready, recipe, seed, known, references, log, checkpoint,
                                  tune.oracle_ratios)
    reused += kept
    results = {"tune_split": TUNE_SPLIT, "test_splits": list(tests), **how, "batch": BATCH,
               "stop_reference": STOP_REFERENCE.replace("TUNE_SPLIT", TUNE_SPLIT),
               "grids": [{k: list(v) for k, v in g.items()} for g in ([grids] if isinstance(grids, dict) else grids)],
               "anchor": {"forget_quality": ANCHOR_QUALITY, "utility_share": ANCHOR_SHARE,
                          "stretch_share": STRETCH_SHARE},
               "stand_ins": {"names": tune.stand_ins, "note": tune.stand_ins_note},
               "references": references, "grid_rows": grid_rows,
               "picks": {m: (None if p is None else setting_of(p)) for m, p in picks.items()},
               "test_rows": [r | verdict(r, references[r["split"]][1]["utility"]) for r in test_rows]}
    kept_from = checkpoint.kept_from(old) if reused else None
    write_result(out, "anchor", results, to_markdown(results), seed=seed, wall_seconds=time.perf_counter() - t0,
                 kept_from=kept_from,
                 note=f"{reused} rows kept from the earlier run(s) below, measured the same way" if reused else None)
    checkpoint.done()
    return results


class _Checkpoint:
    """DIR/anchor.partial.json: every row a run has measured so far, written after each one, so that a run
    stopped part-way (killed, a session's end) loses only the row in hand; a rerun measured the same way
    (`how`) keeps them, as it keeps anchor.json's. Removed once anchor.json is written."""

    def __init__(self, out: Path, how: dict[str, Any], seed: int, keep: bool) -> None:
        self.path, self.how, self.seed = out / "anchor.partial.json", json.loads(json.dumps(how)), seed
        found = read_result(self.path) if keep else None
        self.found = found if found is not None and found.get("how") == self.how else None
        self.rows = {k: copy.deepcopy((self.found or {}).get(k, [] if k != "references" else {}))
                     for k in ("grid_rows", "test_rows", "references")}
        self._partial = [*self.rows["grid_rows"], *self.rows["test_rows"]]     # the interrupted runs' rows
        self.reused = {"old": False, "partial": False}

    def reuse(self, row: dict[str, Any]) -> dict[str, Any]:
        """Note that a row of `known` is kept (from anchor.json or from this file); returns it."""
        self.reused["partial" if any(row is r for r in self._partial) else "old"] = True
        return row

    def known(self, old: dict[str, Any] | None) -> dict[str, Any]:
        """The rows a run may keep: anchor.json's (`old`), then this file's."""
        old = old or {}
        return {"grid_rows": [*old.get("grid_rows", ()), *self.rows["grid_rows"]],
                "test_rows": [*old.get("test_rows", ()), *self.rows["test_rows"]],
                "references": {**old.get("references", {}), **self.rows["references"]}}

    def add(self, kind: str, row: dict[str, Any], references: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record `row` (and its split's references) and rewrite the file; returns `row`."""
        self.rows[kind].append(row)
        self.rows["references"].update(references or {})
        block = provenance(self.seed, None, note="rows of a run not yet finished", earlier=earlier(self.found))
        self.path.write_text(json.dumps({"how": self.how, **self.rows, "provenance": block}, indent=1))
        return row

    def kept_from(self, old: dict[str, Any] | None) -> dict[str, Any] | None:
        """What the finished file's rows were kept from, for write_result: anchor.json's runs, then the
        interrupted runs this file holds rows of; only those a kept row came from (`reuse`)."""
        old = old if self.reused["old"] else None
        if self.found is None or not self.reused["partial"]:
            return old
        if old is None:
            return self.found
        return {"provenance": {**old["provenance"], "earlier": [*earlier(old)[1:], *earlier(self.found)]}}

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def _test_picks(picks: dict[str, Any], best: Any, tests: Sequence[str], ready: Callable[[str], Prepared],
                recipe: TofuRecipe, seed: int, old: dict[str, Any] | None, references: dict[str, Any],
                log: Callable[[str], None], checkpoint: _Checkpoint,
                reference: Any = None) -> tuple[list[dict[str, Any]], int]:
    """Each pick run on each test split (`ready` prepares one, only when a pick needs a run), or its row from
    `old` where that pick ran there before; fills `references`; each new row goes to `checkpoint`. Returns
    (rows, how many were kept)."""
    rows, kept = [], 0
    for split in tests:
        s = None
        for pick in picks.values():
            if pick is None:
                continue
            before = [r for r in (old or {}).get("test_rows", ())
                      if r["split"] == split and setting_of(r) == setting_of(pick)]
            if before:
                row = {k: v for k, v in checkpoint.reuse(before[0]).items() if k not in ("utility_share", "meets_anchor",
                                                                        "meets_stretch")}
                references[split] = old["references"][split]
                kept += 1
            else:
                if s is None:
                    s = ready(split)
                    references[split] = s.reference_rows(recipe)
                row = checkpoint.add("test_rows", {"split": split, **run_setting(s, setting_of(pick), seed, reference)},
                                     {split: references[split]})
            rows.append(row | {"overall_pick": pick is best})
            log(f"{split} {_name(row)}: fq {row['forget_quality']:.3g} utility {row['utility']:.3f}")
    return rows, kept


# what a results file written before `how` was recorded was measured with (the defaults of its one run)
_BEFORE = {"recipe": asdict(TofuRecipe()), "seed": 0, "utility_rows": None, "max_new_tokens": None}


def verdict(row: dict[str, Any], retain_utility: float) -> dict[str, Any]:
    """Where a test row stands against the anchor: its utility share and whether it reaches the anchor / stretch."""
    share = row["utility"] / retain_utility if retain_utility > 0 else None      # a retain model of no utility: none
    quality = row["forget_quality"] >= ANCHOR_QUALITY and share is not None
    return {"utility_share": share, "meets_anchor": quality and share >= ANCHOR_SHARE,
            "meets_stretch": quality and share >= STRETCH_SHARE}


def options_cell(row: dict[str, Any], lead: str = "") -> str:
    """A row's config fields beyond BASE for a table cell: `lead` + "retain weight 10", or "" for the defaults."""
    text = _options(row)[2:]
    return lead + text if text else ""


def steps_cell(row: dict[str, Any]) -> str:
    """The steps a row ran: "12 of 48" where a stop ended it before its cap."""
    run = row.get("steps_run", row["steps"])           # rows written before steps_run ran every step
    return f"{run} of {row['steps']}" if run < row["steps"] else str(row["steps"])


def share_cell(row: dict[str, Any]) -> str:
    """A test row's utility share of its retain model's, as a table cell ("-" where it has none)."""
    return "-" if row["utility_share"] is None else f"{row['utility_share']:.0%}"


def _name(r: dict[str, Any]) -> str:
    return f"{r['method']} {r['scope']} {r['epochs']} epochs lr {r['lr']:g}{_options(r)}"


def _options(r: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """A row's config fields beyond BASE (`keys`, else its "options"), as ", name value" ("" for the defaults)."""
    return "".join(f", {k.replace('_', ' ')} {r[k]:g}" for k in (r.get("options", ()) if keys is None else keys))


def to_markdown(r: dict[str, Any]) -> str:
    a = r["anchor"]
    ref = {split: rows[1] for split, rows in r["references"].items()}
    lines = ["# TOFU anchor: the setting chosen on forget01, tested on forget05", "",
             f"Anchor: forget quality >= {a['forget_quality']} at >= {a['utility_share']:.0%} of the retain model's "
             f"utility (stretch {a['stretch_share']:.0%}); open-unlearning's NPO on TOFU forget10, Llama-2-7b. "
             f"Settings ran on {r['tune_split']} only; each method's pick (highest forget quality keeping "
             f">= {a['utility_share']:.0%} of the retain model's utility) then ran once on "
             f"{', '.join(r['test_splits'])}. Batch {r['batch']}; steps = epochs x forget facts trained on / "
             "batch (\"12 of 48\": a stop on the forget answers' probability ended it at 12).", "",
             f"## Test: {', '.join(r['test_splits'])}", "",
             "| split | method | scope | epochs | lr | options | steps | forget quality | utility | share of retain "
             "model's | anchor | stretch | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["test_rows"]:
        lines.append(f"| {x['split']} | {x['method']}{' (pick)' if x['overall_pick'] else ''} | {x['scope']} | "
                     f"{x['epochs']} | {x['lr']:g} | {options_cell(x) or '-'} | {steps_cell(x)} | "
                     f"{quality_cell(x['forget_quality'])} | {x['utility']:.3f} | {share_cell(x)} | "
                     f"{'met' if x['meets_anchor'] else 'missed'} | {'met' if x['meets_stretch'] else 'missed'} | "
                     f"{x['seconds']:.0f} |")
    for split, rows in r["references"].items():
        orig, retain = rows
        lines.append(f"\n{split}: original forget quality {quality_cell(orig['forget_quality'])} at utility "
                     f"{orig['utility']:.3f}; {retain['method']}: utility {retain['utility']:.3f}.")
    lines += ["", f"## Tuning: {r['tune_split']}", "",
              "| method | scope | epochs | lr | options | steps | forget quality | utility | forget ROUGE-L | s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    bar = a["utility_share"] * ref[r["tune_split"]]["utility"]
    for x in sorted(r["grid_rows"], key=lambda x: (x["method"], x["scope"], _options(x), x["epochs"], x["lr"])):
        mark = " *" if x["utility"] < bar else ""
        lines.append(f"| {x['method']} | {x['scope']} | {x['epochs']} | {x['lr']:g} | {options_cell(x) or '-'} | "
                     f"{steps_cell(x)} | "
                     f"{quality_cell(x['forget_quality'])} | {x['utility']:.3f}{mark} | {x['forget_rouge_l']:.3f} | "
                     f"{x['seconds']:.0f} |")
    lines += ["", f"`*`: utility below {bar:.3f} ({a['utility_share']:.0%} of the retain model's), not eligible.",
              "Picks: " + "; ".join(f"{m}: " + ("none" if p is None else f"{p['scope']}, {p['epochs']} epochs, lr "
                                                 f"{p['lr']:g}{_options(p, [k for k in p if k not in BASE])}")
                                    for m, p in r["picks"].items()) + ".",
              f"Stand-ins (swap): {r['stand_ins']['note']}."]
    return "\n".join(lines) + "\n"
