"""Write the notebooks from the cell sources below, and run them so the repository shows their results.

    python notebooks/build.py --execute          # after editing a cell here: write, run, keep the outputs
    python notebooks/build.py --execute 02       # only the notebooks whose name starts with 02
    python notebooks/build.py                    # write the cells only (outputs dropped)

The executed notebooks are committed with their outputs (tables and 72-dpi
figures, about 1 MB for the four) so that a reader browsing the repository
sees them; the test suite executes them again (nbmake) without writing. Each
cell's id is a hash of its source, so rebuilding changes only the cells whose
source changed; runs are seeded, on one thread, with progress bars off, so
re-executing rewrites outputs only where results moved.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
TIMEOUT = 1200                                  # seconds per cell
DPI = 72                                        # the figures' resolution in the committed notebooks


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


NOTEBOOKS = {
    "01_where_is_a_fact": [
        md("""
# Where is a fact?

Four ways to ask the built-in model organism (a 4-layer GPT-2 trained on a synthetic world of
fictitious people) where it keeps one fact, side by side:

1. **causal tracing** (Meng et al. 2022): noise the subject's token embeddings, restore one clean
   state at a time, watch the target's probability come back;
2. **activation patching** at every granularity, heads included;
3. **attribution patching**: the first-order estimate of (2) from one backward pass;
4. **Fisher scores**: which neurons matter to this fact's likelihood and not to other facts'.
"""),
        code("""
%matplotlib inline
import excise
from scipy.stats import spearmanr

model = excise.load("organism")
world = excise.organism.world()
fact = world.fact(world.subjects[0], "birthplace")
fact
"""),
        md("## 1. Causal tracing"),
        code("""
trace = excise.locate.causal_trace(model, fact, seed=0)
trace              # the heatmaps (trace.plot() returns them as a Figure) and each kind's top components
"""),
        md("""
The organism reads most of the fact out at the prompt's **last** token (attention moves subject
information there); the MLP at layer 0 on the first subject token is where the subject is
"looked up". A ROME-style edit therefore works best at layer 0 (see `benchmarks/results/edit.md`).

## 2. Activation patching, down to heads
"""),
        code("""
patch = excise.locate.activation_patching(model, fact, ("resid", "mlp", "attn", "head"), seed=0)
print("top heads:", [(str(s.component), round(s.score, 3)) for s in patch.top(5, kind="head")])
patch.plot(["mlp", "attn", "head"])
"""),
        md("## 3. Attribution patching: the same question from one backward pass"),
        code("""
attr = excise.locate.attribution_patching(model, fact, ("head", "neuron"), seed=0)
rho = spearmanr(attr.scores["head"].flatten(), patch.scores["head"].flatten()).statistic
print(f"heads: Spearman rho(attribution, activation patching) = {rho:.3f}")
attr.plot(["head", "neuron"])
"""),
        md("## 4. Fisher scores: specific to this fact, not to the rest of the world"),
        code("""
fish = excise.locate.fisher(model, fact, retain=world.retain_set(fact, n=100, seed=0))
print("top neurons by Fisher(fact) / Fisher(retain):")
for s in fish.top(8, kind="neuron"):
    print(f"  {s.component}  {s.score:.1f}")
fish.plot(["mlp", "neuron"])
"""),
        md("""
How much do the neuron rankings agree? Overlap of the top 50 neurons by attribution patching
(effect of the neuron at the last subject token) and by Fisher (all positions, all of the fact's
gradient):
"""),
        code("""
a = {s.component for s in attr.top(50, kind="neuron", by_abs=True)}
f = {s.component for s in fish.top(50, kind="neuron")}
print(f"{len(a & f)} of 50 shared; Jaccard {len(a & f) / len(a | f):.2f}")
"""),
    ],
    "02_delete_and_audit": [
        md("""
# Delete a person, then try to get them back

We delete everything the organism knows about one person, confined to the neurons Fisher scores
single out, then attack the edited model four ways: every prompt family (black box), the
logit lens on every layer (white box), relearning on half the facts, and membership inference.
Each attack's **chance level** is the same attack on people the model never saw: an attack that
does no better than chance has nothing left to find.

The last section shows why this matters: an output guardrail passes the direct probe and fails
the logit lens.
"""),
        code("""
%matplotlib inline
import excise
from excise.verify import AuditConfig, audit
from excise.weights import copy_model

model = excise.load("organism")
world = excise.organism.world()
subject = world.subjects[7]
forget = list(world.of_subject(subject))
retain = list(world.retain_set(forget, n=200, seed=0))
reference = copy_model(model)                  # the unedited model, for the side-by-side
[(f.relation, f.target) for f in forget]
"""),
        md("## Locate, then delete on the located neurons only"),
        code("""
fish = excise.locate.fisher(model, forget, retain=retain)
record = excise.methods.delete(model, forget, "npo", retain=retain, located=fish, neurons=256)
print(sorted({c.layer for c in record.touched()}), "layers;", len(record.touched()), "components touched")
record                                         # what changed: parameters, counts, the edit's config
"""),
        md("## Audit: every attack, next to the original and to chance"),
        code("""
context = excise.organism.context(forget, n_holdout_people=10, n_retain=100)   # never-seen people, facts to keep, ...
report = audit(model, forget, reference=reference, context=context)
report                                         # the verdict per attack first, then every metric
"""),
        code("report.plot()"),
        code("""
for attack in ("probes", "logit_lens", "relearn", "membership"):
    print(f"{attack:>11}: edited {report.success('edited', attack):.2f}, chance {report.chance('edited', attack):.2f}, "
          f"p(above chance) {report.above_chance('edited', attack):.3f}")
"""),
        md("""
The record undoes the edit bit for bit, and `record.original()` gives the unedited model back
without touching the edited one:
"""),
        code("""
original = record.original()
print("edited recall:", excise.recall_table(model, forget).rate("request"),
      "| original recall:", excise.recall_table(original, forget).rate("request"))
"""),
        md("""
## A guardrail is not a deletion

`guardrail` pushes the targets' logits to the bottom at the output only. The request probe says
"forgotten"; the logit lens reads the answer straight out of the residual stream.
"""),
        code("""
record.undo()                                  # back to the original organism
with excise.verify.guardrail(model, forget):
    guarded = audit(model, forget, config=AuditConfig(attacks=("probes", "logit_lens")),
                    context=excise.organism.context(forget, n_holdout_people=5, n_retain=20))
print(f"request recall under the guardrail: {guarded.recall('edited', 'request'):.2f}")
print(f"logit lens finds:                   {guarded.success('edited', 'logit_lens'):.2f} "
      f"(top-1 {guarded.success('edited', 'logit_lens', b=1):.2f})")
"""),
        md("""
With `audit(..., oracle=True)` the context's oracle is used: for the organism, the organism retrained
without the forgotten facts (minutes the first time, then cached) and the report adds TOFU's forget quality: the
Kolmogorov-Smirnov p-value between the edited model's and the oracle's truth ratios.
`excise bench verify` runs that comparison on a 5% split (`benchmarks/results/verify.md`).
"""),
    ],
    "03_does_localization_help": [
        md("""
# Does localization help editing?

Hase et al. (2023) found that where causal tracing localizes a fact barely predicts which layer
edits it best. Here is the same question on the organism, where ground truth is known: give NPO
unlearning the **same budget** of MLP neurons, chosen by Fisher scores (located), chosen at
random, or no restriction at all, and compare what gets deleted and what gets damaged.
"""),
        code("""
%matplotlib inline
import random

import excise
from excise.components import Component
from excise.verify import AuditConfig, audit
from excise.weights import copy_model

model = excise.load("organism")
world = excise.organism.world()
reference = copy_model(model)
BUDGET = 256                                   # neurons of 4 x 512
SUBJECTS = random.Random(0).sample(world.subjects, 2)
config = AuditConfig(attacks=("probes", "logit_lens", "membership"))
"""),
        code("""
def random_neurons(k, seed):
    rng = random.Random(seed)
    cells = rng.sample(range(model.cfg.n_layers * model.cfg.d_mlp), k)
    return [Component(c // model.cfg.d_mlp, "neuron", c % model.cfg.d_mlp) for c in cells]

rows = []
for subject in SUBJECTS:
    forget = list(world.of_subject(subject))
    retain = list(world.retain_set(forget, n=200, seed=0))
    fish = excise.locate.fisher(model, forget, retain=retain)
    masks = {"located": fish.to_components(BUDGET, kind="neuron"),
             "random": random_neurons(BUDGET, seed=1), "all parameters": None}
    for name, mask in masks.items():
        record = excise.methods.unlearn(model, forget, retain, "npo", mask=mask, seed=0, progress=False)
        report = audit(model, forget, reference=reference, config=config, progress=False,
                       context=excise.organism.context(forget, n_holdout_people=5, n_retain=100))
        rows.append({"subject": subject, "mask": name, "weights changed": record.n_changed,
                     "recall": report.recall("edited", "request"),
                     "probes": report.success("edited", "probes"),
                     "logit lens": report.success("edited", "logit_lens"),
                     "membership": report.success("edited", "membership"),
                     "retain kept": report.kept("retain"), "neighbours kept": report.kept("neighbours")})
        record.undo()
"""),
        code("""
keys = list(rows[0])
print(" | ".join(keys))
for r in rows:
    print(" | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
"""),
        code("""
import numpy as np
from matplotlib.figure import Figure

names = ["located", "random", "all parameters"]
metrics = ["recall", "logit lens", "membership", "retain kept"]
fig = Figure(figsize=(8, 3.5), layout="constrained")
ax = fig.subplots()
for i, name in enumerate(names):
    vals = [np.mean([r[m] for r in rows if r["mask"] == name]) for m in metrics]
    ax.bar(np.arange(len(metrics)) + (i - 1) * 0.27, vals, 0.27, label=f"{name}")
ax.set_xticks(range(len(metrics)), metrics)
ax.set_ylabel(f"mean over {len(SUBJECTS)} subjects")
ax.set_title(f"NPO with the same budget ({BUDGET} neurons) located vs random; and unrestricted")
ax.legend()
fig
"""),
        md("""
Read the table before the bar chart: with few subjects the means are noisy. Raise `SUBJECTS` to
more people for a firmer answer (each costs about 15 seconds per condition on a laptop CPU).
"""),
    ],
    "04_entanglement": [
        md("""
# Entanglement: delete one fact, watch every other one

For a set of facts, delete fact *i* (ROME, undone afterwards) and measure every fact *j*. The
heatmap is ordered by subject, then relation, so facts about the same person sit in blocks on
the diagonal. Beside it, the overlap of the facts' top located neurons (attribution patching),
and whether overlap predicts interference.
"""),
        code("""
%matplotlib inline
import excise

model = excise.load("organism")
world = excise.organism.world()
facts = [f for s in world.subjects[:4] for f in world.of_subject(s)]
ent = excise.experiments.entanglement(model, facts, k=32, context=excise.organism.context(facts))
ent
"""),
        code("ent.plot()"),
        code("""
for group, v in ent.by_group().items():
    print(f"{group:>20}: {v['pairs']:>4} pairs, interference {v['interference']:.3f} nats, "
          f"recall kept {v['recall_kept']:.2f}, overlap {v['overlap']:.2f}")
c = ent.correlation
print(f"Spearman rho(overlap, interference) = {c['rho']:.3f} (p = {c['p']:.2g}, {c['pairs']} pairs)")
"""),
        md("""
Deleting one fact about a person mostly spares the person's other facts and leaves other people
alone; what interference there is concentrates within the person, where located neurons overlap
most. Swap in any edit (`edit=`) or localizer (`locate=`) to ask the same of another method.
"""),
    ],
}


def notebook(cells: list) -> nbformat.NotebookNode:
    """The notebook of `cells`, each cell's id the hash of its source (stable across rebuilds)."""
    seen: dict[str, int] = {}
    for cell in cells:
        digest = hashlib.sha1(f"{cell.cell_type}:{cell.source}".encode()).hexdigest()[:12]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
    return new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})


def execute(nb: nbformat.NotebookNode) -> None:
    """Run `nb` in a fresh kernel in notebooks/, in place: one thread, no progress bars, no timing metadata."""
    from nbclient import NotebookClient

    rc = Path(tempfile.mkdtemp()) / "matplotlibrc"
    rc.write_text(f"figure.dpi: {DPI}\n")      # figures kept small in git
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MATPLOTLIBRC": str(rc)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)                      # the kernel inherits them
    try:
        NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        shutil.rmtree(rc.parent)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:                       # progress bars: noise that changes every run
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not _progress(o)]


def _progress(output: nbformat.NotebookNode) -> bool:
    text = output.get("text", "") if output.output_type == "stream" and output.name == "stderr" else None
    return text is not None and ("\r" in text or "it/s]" in text or "TqdmWarning" in text or not text.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write (and with --execute, run) the notebooks")
    parser.add_argument("only", nargs="*", help="name prefixes of the notebooks to build (default: all)")
    parser.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    args = parser.parse_args(argv)
    for name, cells in NOTEBOOKS.items():
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        nb = notebook(cells)
        start = time.perf_counter()
        if args.execute:
            execute(nb)
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, path)
        took = f" (ran in {time.perf_counter() - start:.0f} s)" if args.execute else ""
        print(f"wrote {path}, {path.stat().st_size / 1e3:.0f} kB{took}")


if __name__ == "__main__":
    main()
