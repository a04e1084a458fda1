"""`excise bench robust`: does where an unlearning method edits decide whether the facts come back?

Guo et al. 2024 ("Mechanistic unlearning") report that unlearning restricted to the fact-lookup
MLPs (found at the subject's positions) resists relearning far better than the same method at
the components output tracing finds (about 20% relearned vs 47-63%); LACUNA (2026) reports that
with precise localization plain gradient unlearning erases robustly. The organism has the ground
truth to check both. On its 5% split (`world.subjects_split(0.05, seed)`, as `excise bench
unlearn`), each gradient method runs with the same loss and schedule
(its registered defaults, `excise.methods.unlearn`), masked to one of these scopes:

- `fact_lookup`: the `n_layers_masked` MLP layers (every weight of each) whose restoration at the
  subject's tokens restores p(target) most (`causal_trace`, subject noised, ROME's noise unit over
  all the split's subjects; per fact the best subject token, then the mean over facts);
- `output`: the `n_layers_masked` MLP layers whose restoration at the prompt's last token restores
  it most (output tracing);
- `random`: `n_layers_masked` MLP layers drawn with the seed from those neither trace picked (from
  all layers when too few are left);
- `fisher`: the neurons `excise bench unlearn` locates (diagonal Fisher, forget vs retain);
- `all`: every parameter.

Method `swap` is subject-swap distillation (`excise.methods.swap`, never-seen stand-in
names from the audit context); `undo` is swap at the scope, then UNDO (`excise.edit.undo`, Lee et al. 2025): the unlearned
model noised (alpha `UNDO.alpha`) and distilled from its pre-noise self on the training corpus,
stopped by excise's recall stop (retained facts' top-1 recall within 5% of the teacher's; the
reference's loss stop ends before single-token facts are back). A run of some methods or scopes keeps the
other (method, scope) rows of DIR/robust.json measured under the same settings.

Each row gives efficacy (1 - request recall), utility (the organism utility against the original's)
and two relearning curves (`excise.verify.relearn_curve`, top-1 recall after 0, 10, 30 and 100
full-batch Adam steps): on the other half of the forget facts (two folds), and on unrelated facts
(45 facts of retained people, Lucki et al. 2024), with the retrain oracle under the same attacks as
the floor. Writes DIR/robust.json, robust.md and robust.png.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from excise import organism
from excise.bench.results import read_result, write_result
from excise.components import Component
from excise.context import KnowledgeContext
from excise.display import fmt
from excise.facts import Fact
from excise.methods import GradientMethod
from excise.methods import get as get_method
from excise.models import load
from excise.scoring import recall_table
from excise.verify import RelearnConfig, relearn_curve
from excise.verify.forget_quality import organism_utility
from excise.weights import copy_model

# The study's methods (any gradient method of excise.methods, or undo, may be given): GradDiff and NPO as the
# papers it checks ran, swap, and undo distilling swap (the registered undo's defaults: its teacher, alpha 0.6,
# the recall stop, at most 1,500 steps).
METHODS = ("graddiff", "npo", "swap", "undo")
UNDO = get_method("undo").configure()
SCOPES = ("fact_lookup", "output", "random", "fisher", "all")
STEPS = (0, 10, 30, 100)
ATTACKS = ("other_half", "unrelated")
FRACTION = 0.05


def traced_layers(model: Any, facts: Sequence[Fact], seed: int = 0) -> dict[str, list[float]]:
    """Per role ("subject": the best subject token, "last": the prompt's last token), the mean over facts
    of the restored p(target) by MLP layer (`causal_trace`, kinds=("mlp",), one noise unit for all)."""
    from excise.locate import causal_trace

    subjects = [f.subject for f in facts]
    rows: dict[str, list[np.ndarray]] = {"subject": [], "last": []}
    for f in facts:
        loc = causal_trace(model, f, kinds=("mlp",), seed=seed, subjects=subjects)
        mlp = loc.scores["mlp"].float().cpu().numpy()                      # [layer, position]
        rows["subject"].append(mlp[:, loc.subject[0]:loc.subject[1]].max(1))
        rows["last"].append(mlp[:, -1])
    return {role: np.stack(r).mean(0).tolist() for role, r in rows.items()}


def scope_components(scope: str, curves: dict[str, list[float]], n_layers: int, k: int, seed: int,
                     fisher: list[Component]) -> list[Component] | None:
    """The mask of `scope` (None: every parameter); see the module docstring."""
    def top(curve: list[float]) -> list[int]:
        return sorted(int(i) for i in np.argsort(curve)[::-1][:k])

    if scope == "fact_lookup":
        layers = top(curves["subject"])
    elif scope == "output":
        layers = top(curves["last"])
    elif scope == "random":
        traced = set(top(curves["subject"])) | set(top(curves["last"]))
        pool = [layer for layer in range(n_layers) if layer not in traced]
        layers = sorted(random.Random(seed).sample(pool if len(pool) >= k else range(n_layers), k))
    elif scope == "fisher":
        return list(fisher)
    elif scope == "all":
        return None
    else:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    return [Component(layer, "mlp") for layer in layers]


def _efficacy(model: Any, facts: list[Fact]) -> float:
    return 1 - recall_table(model, facts, ("request",)).rate("request")


def _curves(model: Any, forget: list[Fact], unrelated: list[Fact], config: RelearnConfig) -> dict[str, list[float]]:
    return {on: list(relearn_curve(model, forget, STEPS, on=on, unrelated=unrelated, config=config).recall)
            for on in ATTACKS}


def run(out: str | Path, methods: Sequence[str] = METHODS, scopes: Sequence[str] = SCOPES, seed: int = 0,
        n_layers_masked: int = 1, fraction: float = FRACTION, log: Callable[[str], None] = lambda m: None,
        ) -> dict[str, Any]:
    from excise.bench.unlearn import Budget
    from excise.locate import FisherConfig, fisher
    from excise.methods import unlearn

    bad = [m for m in methods if m != "undo" and not isinstance(get_method(m), GradientMethod)]
    if bad:
        raise ValueError(f"bench robust compares gradient methods (and undo); {', '.join(bad)} is not one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = organism.world()
    original = load("organism", device="cpu")
    forget_set, retain = world.subjects_split(fraction, seed=seed)
    forget = list(forget_set)
    context = organism.context(forget, n_holdout_people=30, n_retain=200, seed=seed)
    held = {f.key for f in context.retain}
    retain_train = list(retain.filter(lambda f: f.key not in held).sample(600, seed=seed + 1))
    unrelated = list(retain.filter(lambda f: f.key not in held).sample(45, seed=seed + 6))
    curves = traced_layers(original, forget, seed)
    neurons = fisher(original, forget, retain=retain.sample(300, seed=seed + 5),
                     config=FisherConfig(progress=False)).to_components(Budget().neurons(len(forget)), kind="neuron")
    config = RelearnConfig(seed=seed)
    base_utility = organism_utility(original, context.retain, context.alternatives, context.general)["utility"]
    oracle = organism.retrain(without=forget, progress=False, device="cpu")
    rows = [{"method": "oracle", "scope": "retrain", "components": None, "parameters_touched": None, "seconds": None,
             "efficacy": _efficacy(oracle, forget),
             "utility": organism_utility(oracle, context.retain, context.alternatives, context.general)["utility"]
             / base_utility, "relearned": _curves(oracle, forget, unrelated, config)},
            {"method": "original", "scope": "-", "components": None, "parameters_touched": 0, "seconds": 0.0,
             "efficacy": _efficacy(original, forget), "utility": 1.0,
             "relearned": _curves(original, forget, unrelated, config)}]
    log(f"traced: subject {np.round(curves['subject'], 3).tolist()}, last {np.round(curves['last'], 3).tolist()}")
    previous = read_result(out / "robust.json")
    settings = {"fraction": fraction, "seed": seed, "forget_facts": len(forget),
                "forget_people": len({f.subject for f in forget}), "n_layers_masked": n_layers_masked,
                "steps": list(STEPS), "traced": curves, "fisher_neurons": len(neurons),
                "unrelated_facts": len(unrelated), "relearn_config": {"lr": config.lr, "families": list(config.families)}}
    for method in methods:
        for scope in scopes:
            mask = scope_components(scope, curves, original.cfg.n_layers, n_layers_masked, seed, neurons)
            model = copy_model(original)
            start = time.perf_counter()
            extra: dict[str, Any] = {}
            if method == "undo":          # the registered undo: its teacher at the scope, then UNDO on every parameter
                taught = KnowledgeContext(retain=retain_train, stand_ins=context.stand_ins, sample=organism.corpus())
                undo = get_method("undo")
                record = undo.run(model, forget, taught, undo.configure(seed=seed, progress=False), mask)
                extra = {"undo_steps": record.meta["steps"], "undo_alpha": record.hyper["alpha"]}
            else:
                record = unlearn(model, forget, retain_train, method, mask=mask, stand_ins=context.stand_ins,
                                 seed=seed, progress=False)
            seconds = time.perf_counter() - start
            row = {"method": method, "scope": scope, "seconds": seconds, "parameters_touched": record.n_changed, **extra,
                   "components": None if mask is None else sorted({f"{c.kind} L{c.layer}" for c in mask}),
                   "efficacy": _efficacy(model, forget),
                   "utility": organism_utility(model, context.retain, context.alternatives,
                                               context.general)["utility"] / base_utility,
                   "relearned": _curves(model, forget, unrelated, config)}
            rows.append(row)
            log(f"  {method:<9} {scope:<11} eff {row['efficacy']:.2f} util {row['utility']:.3f} relearned "
                + "; ".join(f"{on} {[round(x, 2) for x in row['relearned'][on]]}" for on in ATTACKS))
            del model
            run_only = {**settings, "rows": rows, "total_seconds": time.perf_counter() - t0}
            results = merged(run_only, previous, methods, scopes)
            # after every row: a long run keeps what it measured; kept rows keep their runs' provenance
            write_result(out, "robust", results, to_markdown(results), seed=seed,
                         wall_seconds=time.perf_counter() - t0, kept_from=None if results is run_only else previous)
            plot(results).savefig(out / "robust.png", dpi=110, bbox_inches="tight")
    return results


def merged(results: dict[str, Any], old: dict[str, Any] | None, methods: Sequence[str],
           scopes: Sequence[str] = SCOPES) -> dict[str, Any]:
    """`results` (a run of `methods` at `scopes`) with every other (method, scope) row of `old` (robust.json
    before the run), when it was measured under the same settings (fraction, seed, layers masked, steps);
    otherwise, or for a whole run, `results` alone. Rows in METHODS, then SCOPES, order."""
    if old is None or (set(methods) >= set(METHODS) and set(scopes) >= set(SCOPES)):
        return results
    if any(old.get(k) != results[k] for k in ("fraction", "seed", "n_layers_masked", "steps", "forget_facts")):
        return results
    anchors = ("oracle", "original")
    new = [x for x in results["rows"] if x["method"] not in anchors]
    measured = {(x["method"], x["scope"]) for x in new}
    kept = [x for x in old["rows"] if x["method"] in METHODS and x["scope"] in SCOPES
            and (x["method"], x["scope"]) not in measured]
    edits = sorted(kept + new, key=lambda x: (METHODS.index(x["method"]), SCOPES.index(x["scope"])))
    return {**results, "rows": results["rows"][:2] + edits,
            "total_seconds": old.get("total_seconds", 0.0) + results["total_seconds"]}


def _c(v: float | None) -> str:
    return fmt(v, 2, small=0, large=math.inf)


def to_markdown(r: dict[str, Any], figure: str = "robust.png") -> str:
    steps = r["steps"]
    head = ["method", "scope", "edits", "params", "efficacy", "utility"] + \
        [f"{'other half' if on == 'other_half' else 'unrelated'} @{s}" for on in ATTACKS for s in steps if s]
    lines = ["# Robust deletion: where the edit goes vs what relearning brings back", "",
             f"The organism's {r['fraction']:.0%} split ({r['forget_facts']} facts of {r['forget_people']} people), "
             f"seed {r['seed']}; total {r['total_seconds']:.0f}s. Each method masked to {r['n_layers_masked']} MLP "
             "layer(s) found at the subject's tokens (`fact_lookup`, Guo et al.'s fact-lookup MLPs) or at the "
             "prompt's last token (`output`), to as many random layers, to the Fisher-located neurons "
             f"({r['fisher_neurons']}), or to everything. Relearned: top-1 recall of the forget facts after n "
             f"full-batch Adam steps (lr {r['relearn_config']['lr']}) on the other half of the forget facts, or on "
             f"{r['unrelated_facts']} facts of retained people (unrelated). Utility: organism utility / the "
             "original's. Generated by `excise bench robust`.", "",
             "Restored p(target) by MLP layer (causal trace, mean over the facts): at the subject's best token "
             + ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(r["traced"]["subject"]))
             + "; at the prompt's last token " + ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(r["traced"]["last"]))
             + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
        cells = [row["method"], row["scope"], ", ".join(row["components"]) if row["components"] else
                 ("all" if row["scope"] == "all" else "-"),
                 "-" if row["parameters_touched"] is None else f"{row['parameters_touched']:,}",
                 _c(row["efficacy"]), _c(row["utility"])]
        cells += [_c(row["relearned"][on][steps.index(s)]) for on in ATTACKS for s in steps if s]
        lines.append("| " + " | ".join(cells) + " |")
    undone = [x for x in r["rows"] if x["method"] == "undo"]
    if undone:
        lines += ["", f"undo: {UNDO.teacher} at the scope, then UNDO (alpha {undone[0]['undo_alpha']}, recall stop; "
                  + ", ".join(f"{x['scope']} {x['undo_steps']} steps" for x in undone) + ")."]
    lines += ["", f"![relearning curves]({figure})", "", summary(r), ""]
    return "\n".join(lines)


def summary(r: dict[str, Any]) -> str:
    """What the table says: per method, which scope relearns least at 30 and 100 steps, against the oracle."""
    oracle = next(x for x in r["rows"] if x["method"] == "oracle")
    marks = [s for s in (30, 100) if s in r["steps"]] or r["steps"][-1:]
    at = [r["steps"].index(s) for s in marks]
    said = "/".join(str(s) for s in marks)

    def curve(row: dict[str, Any], on: str) -> str:
        return "/".join(f"{row['relearned'][on][i]:.2f}" for i in at)

    parts = [f"The oracle relearns {curve(oracle, 'other_half')} (other half, {said} steps) and "
             f"{curve(oracle, 'unrelated')} (unrelated)."]
    for method in dict.fromkeys(x["method"] for x in r["rows"] if x["method"] not in ("oracle", "original")):
        mine = [x for x in r["rows"] if x["method"] == method]
        best = min(mine, key=lambda x: x["relearned"]["other_half"][at[-1]])
        parts.append(f"{method}: " + ", ".join(f"{x['scope']} {curve(x, 'other_half')} (eff {x['efficacy']:.2f})"
                                               for x in mine)
                     + f" relearned after {said} steps on the other half; least: {best['scope']}.")
    return " ".join(parts)


def plot(r: dict[str, Any]):
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(x["method"] for x in r["rows"] if x["method"] not in ("oracle", "original")))
    fig = Figure(figsize=(4.2 * len(ATTACKS), 3.4 * max(1, len(methods))))
    axes = fig.subplots(max(1, len(methods)), len(ATTACKS), squeeze=False)
    oracle = next(x for x in r["rows"] if x["method"] == "oracle")
    original = next(x for x in r["rows"] if x["method"] == "original")
    for i, method in enumerate(methods):
        for j, on in enumerate(ATTACKS):
            ax = axes[i][j]
            for x in r["rows"]:
                if x["method"] == method:
                    ax.plot(r["steps"], x["relearned"][on], marker="o", label=x["scope"])
            ax.plot(r["steps"], oracle["relearned"][on], "k--", label="oracle (floor)")
            ax.plot(r["steps"], original["relearned"][on], ":", color="grey", label="original")
            ax.set_title(f"{method}: relearning on {'the other half' if on == 'other_half' else 'unrelated facts'}",
                         fontsize=9)
            ax.set_xlabel("fine-tuning steps")
            ax.set_ylabel("forget facts recalled (top-1)")
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
