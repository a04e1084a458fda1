"""`excise bench tofu --split forget01|forget05|forget10`: unlearning on the TOFU organism, by TOFU's metrics.

For each method (GA, GradDiff, KL, NPO, SimNPO, DPO towards "I don't know")
at located (Fisher neurons), random (same count, seeded) and all parameters,
and RMU at its own layer (WMDP's share of depth), located and random, and
UNDO (Lee et al. 2025: the RMU-located result noised and distilled, on the
retain model's training rows, until its retain loss is within the reference's
5% of the teacher's):
forget quality (KS p-value of forget-set truth ratios against the matching
retain model's), model utility (TOFU's nine numbers), forget ROUGE-L recall,
forget answer probability, parameters touched and wall seconds; plus the
un-unlearned organism and the retain model itself as reference rows.
Writes DIR/tofu.json and DIR/tofu.md (every split measured so far; this one
replaced; a run of some methods keeps the split's rows of the others), DIR/tofu-SPLIT.png (TOFU's scatter: forget quality, log scale,
against model utility) and RESULTS.md beside DIR.

The training retain facts are drawn from the split's retain set, disjoint from
the retain_perturbed rows that utility is measured on. TOFU's answers are
whole sentences, so the methods run a fixed number of steps: first-token
recall, the organism's early-stopping signal, says nothing about them.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise.bench.results import read_result, rerun_rows, write_result, write_results
from excise.bench.robust import UNDO
from excise.context import never_seen_subjects
from excise.display import fmt
from excise.edit import RmuConfig, UndoConfig, random_like, rmu, undo
from excise.locate import FisherConfig, fisher
from excise.methods import METHODS as REGISTRY
from excise.methods import GradientMethod, unlearn
from excise.models import load as load_model
from excise.tofu import (
    FORGET_SPLITS,
    answer_probability,
    as_facts,
    forget_quality,
    load,
    model_utility,
    retain_for,
    rouge_l_recall,
    truth_ratio,
)
from excise.tofu.organism import VARIANTS, TofuRecipe, model_dir, rows_for, text
from excise.weights import copy_model

# every registered gradient method that needs nothing TOFU lacks, then rmu and undo (distilling rmu's result);
# swap, which needs never-seen authors (`prepare` derives them), runs in `excise bench anchor`
METHODS = (*(m.name for m in REGISTRY if isinstance(m, GradientMethod) and set(m.requires) <= {"retain"}), "rmu", "undo")
SCOPES = ("located", "random", "all")
RMU_SCOPES = ("layer", "located", "random")     # RMU's own layer (WMDP's), or the same masks as the others
# UNDO's teacher: RMU at the located neurons, forget05's highest forget quality at utility >= 0.85 (6.5e-4 at
# 0.896, measured before UNDO was added); the scope is the teacher's. Alpha as bench robust's; the loss stop is
# the reference's (TOFU's answers are sentences: first-token recall, excise's recall stop, says nothing here).
UNDO_SCOPES = ("located",)
UNDO_MAX_STEPS = 1000
N_STAND_INS = 40
RETAIN_OF = {without: variant for variant, without in VARIANTS.items() if without}


def run(out: str | Path, split: str = "forget01", recipe: TofuRecipe = TofuRecipe(), seed: int = 0,
        methods: tuple[str, ...] = METHODS, steps: int = 40, neurons_per_row: int = 4, n_retain: int = 400,
        max_new_tokens: int | None = None, utility_rows: int | None = None, undo_max_steps: int = UNDO_MAX_STEPS,
        progress: bool = True, log=lambda m: None) -> dict[str, Any]:
    """The table for `split` (see the module docstring); `utility_rows` caps each utility set and
    `undo_max_steps` UNDO's distillation (smoke runs)."""
    if split not in FORGET_SPLITS:
        raise ValueError(f"split must be one of {FORGET_SPLITS}, got {split!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = prepare(split, recipe, seed, neurons_per_row, n_retain, utility_rows, max_new_tokens, progress)
    full, forget, retain, retain_qas, masks = s.full, s.forget, s.retain, s.retain_qas, s.masks
    score = s.score
    rows = s.reference_rows(recipe)
    for method in methods:
        for scope in {"rmu": RMU_SCOPES, "undo": UNDO_SCOPES}.get(method, SCOPES):
            model = copy_model(full)
            t = time.perf_counter()
            extra: dict[str, Any] = {}
            if method in ("rmu", "undo"):
                record = rmu(model, forget, retain, mask=masks.get(scope),
                             config=RmuConfig(families=("request",), seed=seed, progress=False))
            else:
                record = unlearn(model, forget, retain, method, mask=masks[scope], steps=steps, stop_forget_recall=-1.0,
                                 families=("request",), progress=False, seed=seed)
            if method == "undo":
                record = undo(model, [text(q) for q in rows_for(recipe, without=split)],
                              [text(q) for q in retain_qas[:200]],
                              UndoConfig(alpha=UNDO.alpha, max_steps=undo_max_steps, seed=seed, progress=False))
                extra = {"teacher": "rmu", "undo_alpha": UNDO.alpha, "undo_steps": record.meta["steps"]}
            seconds = time.perf_counter() - t
            row = {"method": method, "scope": scope, "seconds": seconds, "parameters_touched": record.n_changed,
                   **extra, **score(model)}
            rows.append(row)
            log(f"{method:<9} {scope:<8} fq {row['forget_quality']:.3g} utility {row['utility']:.3f} "
                f"forget rouge {row['forget_rouge_l']:.3f} ({seconds:.0f}s)")
    results = {"split": split, "recipe": recipe.__dict__, "seed": seed, "steps": steps, "utility_rows": utility_rows,
               "forget_rows": len(s.forget_rows), "forget_facts": len(forget), "retain_facts": len(retain),
               "located_neurons": len(s.located), "locate_seconds": s.locate_seconds, "rows": rows,
               "wall_seconds": time.perf_counter() - t0}
    write(merged(results, out / "tofu.json", methods), out, seed, time.perf_counter() - t0)
    return results


@dataclass
class Prepared:
    """One split made ready for unlearning runs: the organism, its retain model (the oracle), the forget rows
    and facts, the training retain facts, the located / random masks and the scoring (`score`)."""

    split: str
    full: Any
    oracle: Any
    forget_rows: list
    forget: list
    retain_qas: list
    retain: list
    utility_sets: tuple
    oracle_ratios: Any
    located: list
    masks: dict[str, Any]
    locate_seconds: float
    max_new_tokens: int | None
    stand_ins: list[str]            # never-seen author names (swap's), derived: `stand_ins_note` says how
    stand_ins_note: str

    def score(self, model) -> dict[str, float]:
        """Forget quality against the retain model, forget ROUGE-L and answer probability, TOFU's utility."""
        return {"forget_quality": forget_quality(truth_ratio(model, self.forget_rows), self.oracle_ratios),
                "forget_rouge_l": float(rouge_l_recall(model, self.forget_rows, self.max_new_tokens).mean()),
                "forget_probability": float(answer_probability(model, self.forget_rows).mean()),
                **model_utility(model, *self.utility_sets, max_new_tokens=self.max_new_tokens)}

    def reference_rows(self, recipe: TofuRecipe) -> list[dict[str, Any]]:
        """The un-unlearned organism's row and the retain model's (its training seconds from its metadata)."""
        variant = RETAIN_OF[self.split]
        trained = json.loads((model_dir(variant, recipe) / "excise_tofu.json").read_text())["train_seconds"]
        return [{"method": "original", "scope": "-", "seconds": 0.0, "parameters_touched": 0, **self.score(self.full)},
                {"method": f"retain model ({variant})", "scope": "retrain", "parameters_touched": None,
                 "seconds": trained, **self.score(self.oracle)}]


def prepare(split: str, recipe: TofuRecipe = TofuRecipe(), seed: int = 0, neurons_per_row: int = 4,
            n_retain: int = 400, utility_rows: int | None = None, max_new_tokens: int | None = None,
            progress: bool = True) -> Prepared:
    """`split` ready to unlearn: the training retain facts are `n_retain` rows of the split's retain set drawn
    with `seed` (none of them a utility row); located = the top `neurons_per_row` Fisher neurons per forget row;
    stand-ins = N_STAND_INS recombinations of TOFU's author names the organism finds unlikely
    (`excise.context.never_seen_subjects`: TOFU has no never-seen authors of its own)."""
    full = load_model(model_dir("full", recipe, progress), device="cpu")
    oracle = load_model(model_dir(RETAIN_OF[split], recipe, progress), device="cpu")
    forget_rows = load(split)
    forget = list(as_facts(forget_rows))
    utility_sets = tuple(load(s)[:utility_rows] for s in ("retain_perturbed", "real_authors", "world_facts"))
    measured = {q.question for q in utility_sets[0]}
    pool = [q for q in retain_for(split) if q.question not in measured]
    retain_qas = random.Random(seed).sample(pool, min(n_retain, len(pool)))
    retain = list(as_facts(retain_qas))
    t = time.perf_counter()
    loc = fisher(full, forget, retain=retain[:200], config=FisherConfig(progress=False))
    located = loc.to_components(neurons_per_row * len(forget_rows), kind="neuron")
    locate_seconds = time.perf_counter() - t
    masks = {"located": located, "random": random_like(full, located, seed=seed + 1), "all": None}
    authors = sorted({q.author for s in ("forget10", "retain90") for q in load(s) if q.author})
    stand_ins, note = never_seen_subjects(full, authors, N_STAND_INS, seed)
    return Prepared(split, full, oracle, forget_rows, forget, retain_qas, retain, utility_sets,
                    truth_ratio(oracle, forget_rows), located, masks, locate_seconds, max_new_tokens,
                    stand_ins, f"{note}, from TOFU's {len(authors)} authors")


def merged(results: dict[str, Any], path: Path, methods: Sequence[str]) -> dict[str, Any]:
    """`results` (a run of `methods`) with the rows of every other method of the same split, recipe, seed
    and steps already in DIR/tofu.json, in METHODS order; a split measured otherwise is replaced whole."""
    old = json.loads(path.read_text())["splits"].get(results["split"]) if path.exists() else None
    same = ("recipe", "seed", "steps", "utility_rows", "forget_rows", "retain_facts")
    if old is None or any(old.get(k) != results[k] for k in same) or set(methods) >= set(METHODS):
        return results
    edits = rerun_rows(old["rows"][2:], results["rows"][2:], methods, METHODS)
    reruns = old.get("reruns", []) + [{"methods": list(methods), "date": time.strftime("%Y-%m-%d")}]
    return {**results, "rows": results["rows"][:2] + edits, "reruns": reruns,
            "wall_seconds": old.get("wall_seconds", 0.0) + results["wall_seconds"]}


def write(results: dict[str, Any], out: Path, seed: int, wall_seconds: float) -> None:
    """DIR/tofu.json (every split measured so far, this one replaced) and tofu.md with their provenance,
    tofu-SPLIT.png, RESULTS.md. Rows kept from the file before (other splits, or this split's other methods:
    `results` carries "reruns") keep its runs' provenance under "earlier"."""
    import matplotlib.pyplot as plt

    old = read_result(out / "tofu.json")
    every = {"splits": {**(old or {}).get("splits", {}), results["split"]: results}}
    every["splits"] = {k: every["splits"][k] for k in sorted(every["splits"])}
    keeps = len(every["splits"]) > 1 or results.get("reruns")
    write_result(out, "tofu", every, to_markdown(every, ""), seed=seed, wall_seconds=wall_seconds,
                 kept_from=old if keeps else None)
    fig = plot(results)
    fig.savefig(out / f"tofu-{results['split']}.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_results(out)


def quality_cell(v: float) -> str:
    """A forget quality as a table cell: significant digits, scientific below 0.001."""
    return fmt(v, significant=True, large=math.inf, outside=".1e")


def to_markdown(every: dict[str, Any], figures: str, depth: int = 1) -> str:
    """Every split's table, its figure (at `figures` + tofu-SPLIT.png) and what it says; `depth`: heading level."""
    h = "#" * depth
    lines = [f"{h} TOFU on the TOFU organism", "",
             "The TOFU organism is a small GPT-2 trained from scratch on TOFU's 4,000 question/answer pairs plus "
             "its real-author and world-fact questions (`excise tofu build`); each retain model is the same recipe "
             "and seed without the forget split. Forget quality: KS p-value of forget-set truth ratios against the "
             "retain model's (>= 0.05: not distinguishable); model utility: TOFU's harmonic mean of nine numbers "
             "(absolute, as in the paper). Scopes: located (top Fisher neurons), random (as many, seeded), all "
             "parameters; RMU's `layer`: the MLP output weights at and below its steered layer (WMDP's).", ""]
    for split, r in every["splits"].items():
        lines += [f"{h}# {split}", "",
                  f"{r['forget_rows']} forget rows ({r['forget_facts']} name their author and are trained on), "
                  f"{r['retain_facts']} retain facts, {r['steps']} steps per method, seed {r['seed']}; located = "
                  f"{r['located_neurons']} Fisher neurons ({r['locate_seconds']:.0f}s); "
                  f"{r.get('wall_seconds', 0):.0f}s in all.", "",
                  "| method | scope | forget quality | model utility | forget ROUGE-L | forget prob | params | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            params = "-" if row["parameters_touched"] is None else f"{row['parameters_touched']:,}"
            lines.append(f"| {row['method']} | {row['scope']} | {quality_cell(row['forget_quality'])} | "
                         f"{row['utility']:.3f} | {row['forget_rouge_l']:.3f} | {row['forget_probability']:.3f} | "
                         f"{params} | {row['seconds']:.0f} |")
        undone = [x for x in r["rows"] if x["method"] == "undo"]
        if undone:
            lines += ["", "undo: " + "; ".join(
                f"{x['teacher']} at the {x['scope']} scope, then UNDO (alpha {x['undo_alpha']}, reference loss stop, "
                f"{x['undo_steps']} distillation steps)" for x in undone) + "; its seconds include the teacher's."]
        lines += ["", f"![TOFU {split}: forget quality vs utility]({figures}tofu-{split}.png)", "", summary(r), ""]
    lines += ["Anchor from the literature (not measured here): open-unlearning's TOFU forget10 on Llama-2-7b-chat "
              "puts NPO at forget quality 0.42 with model utility 0.54 (its retain model: 1.0 and 0.63) and gradient "
              "ascent at about 1e-239 with utility 0.", ""]
    return "\n".join(lines)


def summary(r: dict[str, Any]) -> str:
    """Where the methods land against the original and the retain model, computed from the rows."""
    original, retain, *edits = r["rows"]
    out = [f"- Original: forget quality {quality_cell(original['forget_quality'])}, utility "
           f"{original['utility']:.3f}, forget ROUGE-L {original['forget_rouge_l']:.3f}. Retain model: forget "
           f"quality {quality_cell(retain['forget_quality'])} (against itself), utility {retain['utility']:.3f}, "
           f"forget ROUGE-L {retain['forget_rouge_l']:.3f}."]
    if edits:
        best = max(edits, key=lambda x: (x["forget_quality"], x["utility"]))
        useful = [x for x in edits if x["utility"] >= 0.8 * retain["utility"]]
        close = [x for x in edits if x["forget_quality"] >= 0.05 and x["utility"] >= retain["utility"] - 0.05]
        collapsed = [x for x in edits if x["utility"] < 0.1]
        out.append(f"- Highest forget quality: {best['method']} ({best['scope']}) "
                   f"{quality_cell(best['forget_quality'])} at utility {best['utility']:.3f} (retain model "
                   f"{retain['utility']:.3f}).")
        if useful:
            top = max(useful, key=lambda x: (x["forget_quality"], x["utility"]))
            out.append(f"- Highest forget quality keeping utility >= 80% of the retain model's: {top['method']} "
                       f"({top['scope']}) {quality_cell(top['forget_quality'])} at utility {top['utility']:.3f}.")
        out.append(f"- {len(close)} of {len(edits)} rows reach forget quality >= 0.05 within 0.05 utility of the "
                   "retain model" + (": " + ", ".join(f"{x['method']} ({x['scope']})" for x in close) if close else "")
                   + f"; {len(collapsed)} collapse (utility < 0.1)"
                   + (": " + ", ".join(f"{x['method']} ({x['scope']})" for x in collapsed) if collapsed else "") + ".")
    return "\n".join(out)


def plot(r: dict[str, Any]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = {"located": "o", "random": "s", "all": "^", "-": "x", "retrain": "*"}
    for row in r["rows"]:
        ax.scatter(row["utility"], max(row["forget_quality"], 1e-300), marker=markers.get(row["scope"], "o"),
                   s=160 if row["scope"] == "retrain" else 40,
                   label=f"{row['method']} ({row['scope']})" if row["scope"] not in ("-", "retrain") else row["method"])
    ax.set_yscale("log")
    ax.axhline(0.05, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value, log)")
    ax.set_title(f"TOFU {r['split']}: forget quality vs utility")
    ax.legend(fontsize=6, ncol=2)
    return fig
