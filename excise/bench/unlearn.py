"""`excise bench unlearn`: the unlearning method table on TOFU-style splits of the organism.

For each split (all facts of 1%, 5%, 10% of the people: TOFU's forget01/05/10
in miniature) and each method, a fresh copy of the organism is edited, then
audited with every attack (`excise.verify.audit`). The original organism and
the retrain oracle (the same recipe trained without the split) are audited
once per split; every row is scored against them:

- forget: efficacy (request prompt no longer answers), paraphrase, question
  and completion forget; logit-lens leakage (the target top-1 after some
  layer); relearning (top-1 recall after fine-tuning on the other half, next
  to the oracle's); membership inference AUC (Min-K%++, forget vs never-seen);
- keep: neighbour and retain recall kept, general-text loss change, model
  utility (relative to the original);
- TOFU's forget quality: the KS-test p-value between the row's truth ratios
  and the oracle's on the forget facts;
- cost: parameters touched (by weight diff), wall seconds of the edit.

Scopes: `located` (Fisher forget/retain neurons; attribution-located heads
for head ablation), `random` (as many neurons or heads drawn at random,
seeded), `all` (every parameter), `layer` (ROME/MEMIT/RMU at their layer),
`k5`/`k10` (SISA with 5 or 10 shards after deleting the split's people; its seconds
are the deletion's, measured when it was made and cached). `undo`'s scope is its
teacher's: swap at the located neurons, then UNDO on every parameter as bench
robust runs it (the registered `undo`: `excise.methods.undo`).

Writes DIR/unlearn.json, DIR/unlearn.md, DIR/unlearn.png and RESULTS.md
beside DIR (benchmarks/RESULTS.md for the default DIR). Each split is audited
against the organism context's never-seen baseline, sized to the split (10
people per forget person, at least 30: `excise.organism.context`); the split
records how many. `quick`: the 1% split with NPO, 10 never-seen people and no
relearning attack (for CI). The oracle row's seconds are its training time
(recorded when it was trained; later runs read it from the cache).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise import edit as E
from excise import organism
from excise.bench.results import read_result, rerun_rows, write_result, write_results
from excise.components import Component
from excise.context import KnowledgeContext
from excise.display import fmt
from excise.facts import Fact
from excise.locate import FisherConfig, Localization, attribution_patching, fisher
from excise.methods import METHODS
from excise.methods import get as get_method
from excise.models import load
from excise.verify import ATTACKS, AuditConfig, AuditReport, audit
from excise.verify.attacks import defaults, queries, two_sided
from excise.verify.results import ModelAudit
from excise.weights import copy_model

SPLITS = (0.01, 0.05, 0.10)
LAYER = 0                 # ROME/MEMIT layer on the organism (see the edit benchmark)


@dataclass(frozen=True)
class Budget:
    """How much of the model the located and random scopes may change."""
    neurons_per_fact: float = 8.0       # located neurons = this x forget facts, within [min, max]
    min_neurons: int = 128
    max_neurons: int = 1024
    heads: int = 2                      # attribution-located heads to ablate (of 16 on the organism)

    def neurons(self, n_facts: int) -> int:
        return int(min(self.max_neurons, max(self.min_neurons, round(self.neurons_per_fact * n_facts))))


@dataclass
class Split:
    fraction: float
    forget: list[Fact]
    retain_train: list[Fact]            # what the gradient methods keep (disjoint from the audit's retain facts)
    stand_ins: list[str]                # swap's never-seen names (disjoint from the audit's holdout)
    preserve: list[Fact]                # MEMIT's keys to keep
    neurons: list[Component]            # located neurons
    heads: list[Component]              # located heads
    locate_seconds: dict[str, float]


Run = Callable[[Any, Split, str, int], E.EditRecord]


def _scoped(model: Any, split: Split, scope: str, seed: int, kind: str = "neuron") -> list[Component] | None:
    located = split.neurons if kind == "neuron" else split.heads
    if scope == "located":
        return located
    if scope == "random":
        return E.random_like(model, located, seed=seed + 1)
    if scope in ("all", "layer"):
        return None
    raise ValueError(f"unknown scope {scope!r}")


def _registered(name: str, kind: str = "neuron", **settings: Any) -> Run:
    """The registered method `name` on the split: its context the split's (retain_train, stand-ins, the
    organism's corpus as sample; alphaedit keeps the split's preserve facts), `settings` over its defaults."""
    method = get_method(name)

    def run(model, split, scope, seed):
        retain = split.preserve if name == "alphaedit" else split.retain_train
        context = KnowledgeContext(retain=retain, stand_ins=split.stand_ins, sample=organism.corpus())
        config = method.configure_run(seed, False, **settings)
        return method.run(model, split.forget, context, config, _scoped(model, split, scope, seed, kind))
    return run


# How this table runs a method, where not at its defaults at the scopes its mask allows (SCOPES_OF): the rank-one
# methods at LAYER with the objective they were measured with (rome: the methods' default; memit at the
# fixed lambda 300 and alphaedit with erase_unlikelihood, as before the registry), rmu also at located scopes,
# undo at the located neurons only (its teacher's scope; the distillation changes every parameter).
SETTINGS: dict[str, dict[str, Any]] = {
    "rome": {"layer": LAYER},
    "memit": {"layer": LAYER, "mom2_weight": 300.0, "through_edit": False, "objective": "erase_unlikelihood"},
    "alphaedit": {"layer": LAYER, "objective": "erase_unlikelihood"},
}
SCOPES_OF = {"none": ("layer",), "optional": ("located", "random", "all"), "required": ("located", "random")}
SCOPES = {"rmu": ("layer", "located", "random"), "undo": ("located",)}
# the row names the committed results use for two registered methods
ROW_NAMES = {"alphaedit": "memit_null_space", "ablate": "ablate_neurons"}
LABELS = {"rome": "ROME delete (head_projection_unlikelihood)", "memit": "MEMIT delete",
          "alphaedit": "MEMIT + null space (AlphaEdit)", "ablate": "neuron ablation (Fisher)",
          "undo": "UNDO (swap, then noise and distil)"}


def table_rows() -> dict[str, tuple[str, tuple[str, ...], Run | None]]:
    """row name -> (label, scopes, run): every registered method, then the rows that are not one."""
    rows: dict[str, tuple[str, tuple[str, ...], Run | None]] = {}
    for m in (m for m in METHODS if m.in_place):       # sisa's model is an ensemble: its row is below
        rows[ROW_NAMES.get(m.name, m.name)] = (LABELS.get(m.name, m.label), SCOPES.get(m.name, SCOPES_OF[m.mask]),
                                               _registered(m.name, **SETTINGS.get(m.name, {})))
        if m.name == "ablate":
            rows["ablate_heads"] = ("head ablation (attribution)", ("located", "random"),
                                    _registered("ablate", kind="head"))
    # exact unlearning: not an edit of the organism but a sharded ensemble with the people's shards retrained
    # (excise.organism.sisa; the ensemble and each deletion are cached, training one is 20-26 min on one core)
    rows["sisa"] = ("SISA (exact, retrained shards)", ("k5", "k10"), None)
    return rows


QUICK_METHODS = ("npo",)        # the smoke run tests/test_bench.py runs in CI: one method, three scopes


def quick_attacks() -> tuple[str, ...]:
    """The default attacks that do not fine-tune (relearning is most of an audit's time; the attacks an audit
    runs only when named, such as gradnorm and quantization, are the rescore bench's): the quick run's."""
    return tuple(a for a in queries() if a in defaults())


def _locate(model: Any, world: Any, forget: list[Fact], retain: Any, budget: Budget, seed: int,
            with_heads: bool) -> tuple[list[Component], list[Component], dict[str, float]]:
    t0 = time.perf_counter()
    loc = fisher(model, forget, retain=retain.sample(300, seed=seed + 5), config=FisherConfig(progress=False))
    neurons = loc.to_components(budget.neurons(len(forget)), kind="neuron")
    t1 = time.perf_counter()
    heads: list[Component] = []
    if with_heads:
        subjects = [f.subject for f in forget]          # one noise unit for every fact (ROME's)
        per_fact = [attribution_patching(model, f, kinds=("head",), seed=seed, subjects=subjects) for f in forget]
        heads = Localization.mean(per_fact).to_components(budget.heads, kind="head")
    return neurons, heads, {"fisher": t1 - t0, "attribution": time.perf_counter() - t1}


def _sisa_row(base: AuditReport, forget: list[Fact], k: int, config: AuditConfig, context: Any, seed: int,
              progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """SISA with k shards after deleting the split's people: audited like an edit, its cost the deletion's."""
    from excise.organism.sisa import SisaConfig, cached_deletion

    sisa, deletion = cached_deletion(SisaConfig(shards=k, seed=seed), sorted({f.subject for f in forget}),
                                     progress=progress)
    edited = audit(sisa.aggregate(), forget, config=config, context=context, progress=False).models["edited"]
    row = {"method": "sisa", "label": table_rows()["sisa"][0], "scope": f"k{k}", "seconds": deletion.total_seconds,
           "parameters_touched": None, "sisa_steps": deletion.steps,
           "full_retrain_steps": deletion.full_retrain_steps, **row_metrics(_combined(base, edited))}
    log(f"  sisa              k{k:<7} eff {row['efficacy']:.2f} fq {row['forget_quality']:.2g} "
        f"util {row['utility']:.3f} ({row['seconds']:.0f}s, measured when the deletion was made)")
    return row


def _combined(base: AuditReport, edited: ModelAudit) -> AuditReport:
    """One report: this row's audit as `edited`, the original as `reference`, and the oracle."""
    return AuditReport(config=base.config, facts=base.facts, neighbours=base.neighbours,
                       models={"edited": edited, "reference": base.models["edited"], "oracle": base.models["oracle"]})


def row_metrics(report: AuditReport) -> dict[str, Any]:
    """The table's columns for the `edited` model of a combined report."""
    ed, ref = report.models["edited"], report.models["reference"]
    gl, gl0 = ed.general_loss, ref.general_loss
    return {
        "efficacy": 1 - report.recall("edited", "request"),
        "paraphrase_forget": 1 - report.recall("edited", "paraphrase"),
        "question_forget": 1 - report.recall("edited", "question"),
        "completion_forget": 1 - report.recall("edited", "completion"),
        "logit_lens_top1": report.success("edited", "logit_lens", 1),
        "relearn_recall": report.relearn_recall("edited"),
        "mia_auc": ed.membership.auc.get("min_k_pp") if ed.membership is not None else None,
        "neighbours_kept": report.kept("neighbours"),
        "retain_kept": report.kept("retain"),
        "general_loss_change": None if gl is None or gl0 is None else gl - gl0,
        "forget_quality": report.forget_quality("edited"),
        "utility": report.utility("edited"),
        "leakage": {a: {"verdict": v.verdict, "auc": v.auc, "p_value": v.p_value, "layer": v.layer}
                    for a, v in report.leakage("edited").items()},
    }


def compared(model: Any, original: Any, oracle: Any, forget: list[Fact], config: AuditConfig,
             context: Any) -> dict[str, Any]:
    """The attacks of `config` that compare models (`reference`, `depth`), on the edited `model` against the
    unedited `original` and the retrain `oracle`, which the edited row's own audit does not have: {"leakage":
    their two-sided verdicts, as row_metrics gives them, "depth": the mean Unlearning Depth Score and the share
    of facts below `depth`'s cut, or None}. Empty when `config` names none. Cost: one audit of the three models
    with those attacks only (no relearning)."""
    from excise.verify.attacks import to_run
    from excise.verify.attacks.depth import SHALLOW

    names = tuple(a.name for a in to_run(config.attacks) if a.compares_models)
    if not names:
        return {}
    report = audit(model, forget, reference=original, oracle=oracle, context=context, progress=False,
                   config=AuditConfig(seed=config.seed, attacks=names, relearn_draws=config.relearn_draws))
    rows = report.models["edited"].attacks.extra.get("depth_rows")
    uds = [u for u in rows["uds"] if u is not None] if rows else []
    return {"leakage": {a: {"verdict": v.verdict, "auc": v.auc, "p_value": v.p_value, "layer": v.layer}
                        for a, v in report.leakage("edited").items()},
            "depth": {"uds": rows["score"], "shallow_share": sum(u < SHALLOW for u in uds) / len(uds),
                      "facts": len(uds)} if uds else None}


def prepare_split(original: Any, world: Any, fraction: float, budget: Budget, seed: int, progress: bool,
                  holdout_people: int | None = None, with_heads: bool = True
                  ) -> tuple[Split, KnowledgeContext, Any, float | None]:
    """The split's forget facts, located scopes, retain and stand-in facts, audit context and retrain oracle
    (with its training seconds): what every row of the split is edited and audited with."""
    forget_set, retain = world.subjects_split(fraction, seed=seed)
    forget = list(forget_set)
    subjects = {f.subject for f in forget}
    neurons, heads, locate_seconds = _locate(original, world, forget, retain, budget, seed, with_heads=with_heads)
    context = organism.context(forget, n_holdout_people=holdout_people, n_retain=200, seed=seed)
    held = {f.key for f in context.retain}
    split = Split(fraction, forget, list(retain.filter(lambda f: f.key not in held).sample(600, seed=seed + 1)),
                  context.stand_ins,
                  list(world.filter(lambda f: f.subject not in subjects).sample(600, seed=seed + 4)),
                  neurons, heads, locate_seconds)
    oracle_dir = organism.retrain_dir(forget, progress=progress)
    oracle = load(str(oracle_dir), device="cpu")
    oracle_seconds = json.loads((oracle_dir / "excise_organism.json").read_text()).get("train_seconds")
    return split, context, oracle, oracle_seconds


def bench_split(original: Any, world: Any, fraction: float, methods: list[str], budget: Budget, seed: int,
                progress: bool, log: Callable[[str], None], holdout_people: int | None = None,
                attacks: tuple[str, ...] | None = None, relearn_draws: int = 1,
                table: dict[str, tuple[str, tuple[str, ...], Run | None]] | None = None,
                records: Path | None = None) -> dict[str, Any]:
    """One split's rows: the original, the oracle, then each of `methods` (names in `table`, by default
    `table_rows()`) at each of its scopes, all audited with `attacks` (relearning's baseline pooled over
    `relearn_draws` holdout samples). With `records`, each edit's record is saved there as
    `{method}-{scope}-seed{seed}.safetensors`, so a later attack audits the edited model without redoing it."""
    split, context, oracle, oracle_seconds = prepare_split(original, world, fraction, budget, seed, progress,
                                                           holdout_people, with_heads="ablate_heads" in methods)
    forget, neurons, heads, locate_seconds = split.forget, split.neurons, split.heads, split.locate_seconds
    subjects = {f.subject for f in forget}
    log(f"split {fraction:.0%}: {len(forget)} facts of {len(subjects)} people")
    config = AuditConfig(seed=seed, attacks=attacks or defaults(), relearn_draws=relearn_draws)
    base = audit(original, forget, oracle=oracle, config=config, context=context, progress=False)
    rows = [
        {"method": "original", "label": "original (no edit)", "scope": "-", "seconds": 0.0, "parameters_touched": 0,
         **row_metrics(_combined(base, base.models["edited"]))},
        {"method": "oracle", "label": "retrain oracle (gold)", "scope": "retrain", "seconds": oracle_seconds,
         "parameters_touched": None, **row_metrics(_combined(base, base.models["oracle"]))},
    ]
    table = table or table_rows()
    for name in methods:
        label, scopes, fn = table[name]
        for scope in scopes:
            if fn is None:
                rows.append(_sisa_row(base, forget, int(scope[1:]), config, context, seed, progress, log))
                continue
            model = copy_model(original)
            t = time.perf_counter()
            record = fn(model, split, scope, seed)
            seconds = time.perf_counter() - t
            if records is not None:
                Path(records).mkdir(parents=True, exist_ok=True)
                record.save(Path(records) / f"{name}-{scope}-seed{seed}.safetensors")
            edited = audit(model, forget, config=config, context=context, progress=False).models["edited"]
            row = {"method": name, "label": label, "scope": scope, "seconds": seconds,
                   "parameters_touched": record.n_changed, **row_metrics(_combined(base, edited)),
                   **({"undo_steps": record.meta["steps"]} if record.method == "undo" else {})}
            more = compared(model, original, oracle, forget, config, context)
            row["leakage"] |= more.get("leakage", {})
            if "depth" in more:
                row["depth"] = more["depth"]
            rows.append(row)
            log(f"  {name:<17} {scope:<8} eff {row['efficacy']:.2f} fq {row['forget_quality']:.2g} "
                f"util {row['utility']:.3f} ({seconds:.0f}s)")
            del model
    return {"fraction": fraction, "forget_facts": len(forget), "forget_people": len(subjects),
            "located_neurons": len(neurons), "located_heads": [c.to_dict() for c in heads],
            "locate_seconds": locate_seconds, "audit_holdout_facts": base.config["n_holdout"],
            "holdout_people": len({f.subject for f in context.holdout}), "rows": rows}


def run(out: str | Path, quick: bool = False, seed: int = 0, splits: tuple[float, ...] | None = None,
        methods: tuple[str, ...] | None = None, budget: Budget | None = None, progress: bool = True,
        log: Callable[[str], None] = lambda m: None, records: str | Path | None = None) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = splits or ((0.01,) if quick else SPLITS)
    every = list(table_rows())
    methods = list(methods or (QUICK_METHODS if quick else every))
    unknown = [m for m in methods if m not in every]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(every)}")
    budget = budget or Budget()
    start = time.perf_counter()
    original = load("organism", device="cpu")
    world = organism.world()
    holdout_people = 10 if quick else None          # None: the context's, sized to each split
    results = {"seed": seed, "quick": quick, "budget": budget.__dict__, "top_b": AuditConfig().top_b,
               "holdout_people": holdout_people, "splits": kept_splits(out, seed, quick, budget, splits)}
    old = _old_splits(out, seed, quick, budget) if methods != every else {}
    for s in splits:
        people = holdout_people or organism.holdout_size(world.subjects_split(s, seed=seed)[0])
        if s in old and old[s]["holdout_people"] != people:
            raise ValueError(f"the {s:.0%} split in {out / 'unlearn.json'} was audited against "
                             f"{old[s]['holdout_people']} never-seen people, this run would use {people}; "
                             f"re-run every method on it (omit --methods) so its rows share one baseline")
    results["reruns"] = _old_reruns(out, splits if methods == every else ())
    # read before the first write: the rows kept (other splits, or a split's other methods) came from its runs
    kept_from = read_result(out / "unlearn.json") if results["splits"] or any(s in old for s in splits) else None
    for s in splits:                  # the files are rewritten after every split: a long run keeps what it measured
        t0 = time.perf_counter()
        split = bench_split(original, world, s, methods, budget, seed, progress, log, holdout_people,
                            quick_attacks() if quick else defaults(),
                            records=Path(records) if records is not None else None)
        split["wall_seconds"] = time.perf_counter() - t0
        if s in old:                  # a subset of methods re-run: the split's other rows are kept
            split = merge_rows(old[s], split, methods)
            results["reruns"].append({"methods": methods, "fractions": [s], "date": time.strftime("%Y-%m-%d"),
                                      "why": "methods added or changed since the split was measured"})
        results["splits"].append(split)
        results["splits"].sort(key=lambda r: r["fraction"])
        results["total_seconds"] = sum(r.get("wall_seconds", 0.0) for r in results["splits"])
        write(results, out, seed, time.perf_counter() - start, kept_from)
    return results


def _old_splits(out: Path, seed: int, quick: bool, budget: Budget) -> dict[float, Any]:
    """The splits in DIR/unlearn.json measured under the same settings, by fraction."""
    return {s["fraction"]: s for s in kept_splits(out, seed, quick, budget, ())}


def _old_reruns(out: Path, remeasured: tuple[float, ...]) -> list[dict[str, Any]]:
    """DIR/unlearn.json's notes of rows re-measured later, minus the splits now measured whole again."""
    path = out / "unlearn.json"
    notes = json.loads(path.read_text()).get("reruns", []) if path.exists() else []
    kept = [{**n, "fractions": [f for f in n.get("fractions", SPLITS) if f not in remeasured]} for n in notes]
    return [n for n in kept if n["fractions"]]


def merge_rows(old: dict[str, Any], new: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """`new` (a run of `methods` only) with `old`'s rows of every other method, in METHODS order.

    The anchors (original, oracle) come from `new`; the audit is seeded, so they equal `old`'s."""
    anchors = ("original", "oracle")
    rows = [r for r in new["rows"] if r["method"] in anchors]
    rows += rerun_rows([r for r in old["rows"] if r["method"] not in anchors],
                       [r for r in new["rows"] if r["method"] in methods], methods, list(table_rows()))
    return {**new, "rows": rows, "wall_seconds": old.get("wall_seconds", 0.0) + new.get("wall_seconds", 0.0),
            "located_heads": new["located_heads"] or old.get("located_heads", []),
            "locate_seconds": {**old.get("locate_seconds", {}), **new["locate_seconds"]}}


def kept_splits(out: Path, seed: int, quick: bool, budget: Budget, splits: tuple[float, ...]) -> list[dict[str, Any]]:
    """Splits already in DIR/unlearn.json measured under the same settings and not being re-run now.

    One table can then be built split by split (`--splits 0.01`, later `--splits 0.1`) without re-running
    the others; a file written under other settings (seed, budget, quick) is replaced, not mixed in. Each
    split keeps the never-seen baseline it was audited against (files from before splits recorded it
    name it once, at the top)."""
    path = out / "unlearn.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    same = (old.get("seed"), old.get("quick"), old.get("budget")) == (seed, quick, budget.__dict__)
    return [{**s, "holdout_people": s.get("holdout_people", old.get("holdout_people"))}
            for s in old.get("splits", []) if same and s["fraction"] not in splits]


def write(results: dict[str, Any], out: Path, seed: int, wall_seconds: float,
          kept_from: dict[str, Any] | None = None) -> None:
    """DIR/unlearn.json and .md (with their provenance; `kept_from`: the file before the run, when rows of it
    are kept), .png and RESULTS.md beside DIR."""
    import matplotlib.pyplot as plt

    write_result(out, "unlearn", results, to_markdown(results, "unlearn.png"), seed=seed, wall_seconds=wall_seconds,
                 kept_from=kept_from)
    fig = plot(results)
    fig.savefig(out / "unlearn.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_results(out)


COLUMNS = [("efficacy", "efficacy"), ("paraphrase_forget", "para."), ("question_forget", "question"),
           ("completion_forget", "compl."), ("logit_lens_top1", "lens@1"), ("relearn_recall", "relearn"),
           ("mia_auc", "MIA AUC"), ("neighbours_kept", "neigh. kept"), ("retain_kept", "retain kept"),
           ("general_loss_change", "Δ gen. loss"), ("forget_quality", "forget quality"),
           ("utility", "utility"), ("parameters_touched", "params"), ("seconds", "seconds")]


def _f(v: Any) -> str:
    return fmt(v, commas=True, large=1e4, whole=10, outside=".1e")


def _good(row: dict[str, Any]) -> bool:
    return (row["forget_quality"] or 0) >= 0.05 and (row["utility"] or 0) >= 0.95


def to_markdown(r: dict[str, Any], figure: str, depth: int = 1) -> str:
    """The table as markdown; `depth` is the level of its top heading (2 inside RESULTS.md)."""
    h = "#" * depth
    lines = [f"{h} The unlearning method table (organism, TOFU-style splits)", ""]
    lines += [
        f"Each row edits a fresh copy of the organism to forget all facts of the split's people, then audits it "
        f"(seed {r['seed']}). Forget columns: share of forget facts no longer answered top-1 (efficacy = request "
        "prompt); lens@1: share whose target is top-1 in the logit lens after some layer; relearn: top-1 recall "
        "after fine-tuning on the other half (compare the oracle row); MIA AUC: Min-K%++ forget vs never-seen "
        "people (0.5 = indistinguishable). Keep columns relative to the original. Forget quality: TOFU's KS-test "
        "p-value of truth ratios vs the retrain oracle (higher is better; >= 0.05: not distinguishable). Utility: "
        "TOFU-style harmonic mean relative to the original. Scopes: located (top Fisher neurons, or "
        "attribution-located heads), random (as many, seeded), all parameters, or ROME/MEMIT's layer "
        f"{LAYER}. **Bold**: forget quality >= 0.05 with utility >= 0.95.", "",
    ]
    for rerun in r.get("reruns", []):
        on = ", ".join(f"{f:.0%}" for f in rerun.get("fractions", SPLITS))
        lines += [f"Rows of {', '.join(rerun['methods'])} on the {on} split(s) re-measured on {rerun['date']} "
                  f"(same seed and settings): {rerun.get('why', 'not given')}.", ""]
    for s in r["splits"]:
        lines += [f"{h}# {s['fraction']:.0%} split: {s['forget_facts']} facts of {s['forget_people']} people", "",
                  f"Located: {s['located_neurons']} Fisher neurons ({s['locate_seconds']['fisher']:.1f}s)"
                  + (f", heads {', '.join('L%dH%d' % (h['layer'], h['index']) for h in s['located_heads'])} "
                     f"({s['locate_seconds']['attribution']:.1f}s)" if s["located_heads"] else "") + ".", "",
                  "| method | scope | " + " | ".join(c for _, c in COLUMNS) + " |",
                  "|---|---|" + "---|" * len(COLUMNS)]
        for row in s["rows"]:
            name = f"**{row['label']}**" if _good(row) and row["method"] not in ("oracle", "original") else row["label"]
            lines.append(f"| {name} | {row['scope']} | " + " | ".join(_f(row.get(k)) for k, _ in COLUMNS) + " |")
        lines += ["", *_verdict_table(s), ""]
    lines += [f"![forget quality vs model utility]({figure})", "", summary(r, depth + 1), "",
              "Anchors from the literature (not measured here; a 7B chat model on real TOFU, absolute utility): "
              "open-unlearning's TOFU forget10 on Llama-2-7b-chat puts NPO at forget quality 0.42 with model utility "
              "0.54 (its retain model: 1.0 and 0.63) and gradient ascent at about 1e-239 with utility 0. The "
              "organism's utility column is relative to the original, so 1.0 there means no loss.", ""]
    return "\n".join(lines)


VERDICT_MARK = {"leaks": "LEAKS", "over_suppressed": "over-suppressed", "indistinguishable": "ok",
                "underpowered": "underpowered"}


def _verdict_table(s: dict[str, Any]) -> list[str]:
    """Per row and attack, the audit's two-sided verdict against never-seen facts (AUC in brackets)."""
    rows = [r for r in s["rows"] if r.get("leakage")]
    if not rows:
        return ["(no two-sided verdicts: this split was measured before they existed)"]
    attacks = [a for a in ATTACKS.names() if any(a in r["leakage"] for r in rows)]
    people, rule = s.get("holdout_people"), _rule_size(s["forget_people"])
    stale = f" (measured before the baseline was sized to the split: {rule} people now)" \
        if people is not None and people < rule else ""
    out = [f"Two-sided verdicts against {s.get('audit_holdout_facts', '?')} never-seen facts of "
           f"{people if people is not None else '?'} people{stale} "
           "(ok = indistinguishable; AUC: P(forget fact beats a never-seen one), 0.5 = none):", "",
           "| method | scope | " + " | ".join(a.replace("_", " ") for a in attacks) + " | ok on all |",
           "|---|---|" + "---|" * (len(attacks) + 1)]
    for r in rows:
        cells = [f"{VERDICT_MARK[v['verdict']]} ({v['auc']:.2f})" if (v := r["leakage"].get(a)) else "-"
                 for a in attacks]
        ok = all(r["leakage"].get(a, {}).get("verdict") == "indistinguishable" for a in attacks)
        out.append(f"| {r['label']} | {r['scope']} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    return out


def _rule_size(forget_people: int) -> int:
    """The never-seen people the organism context draws for a split of that many people."""
    return max(organism.MIN_HOLDOUT_PEOPLE, organism.HOLDOUT_PER_PERSON * forget_people)


def summary(r: dict[str, Any], depth: int = 2) -> str:
    """The findings, computed from the table (not typed)."""
    out = [f"{'#' * depth} What the table says", ""]
    for s in r["splits"]:
        edits = [x for x in s["rows"] if x["method"] not in ("original", "oracle")]
        if not edits:
            continue
        best = max(edits, key=lambda x: (_good(x), x["forget_quality"] or 0, x["utility"] or 0))
        good = [x for x in edits if _good(x)]
        out.append(f"- {s['fraction']:.0%} split: highest forget quality {_f(best['forget_quality'])} "
                   f"({best['label']}, {best['scope']}, utility {_f(best['utility'])}); "
                   f"{len(good)} of {len(edits)} rows reach forget quality >= 0.05 with utility >= 0.95"
                   + (": " + ", ".join(f"{x['label']} ({x['scope']})" for x in good) if good else "") + ".")
        clean = [x for x in edits if x.get("leakage")
                 and all(v["verdict"] == "indistinguishable" for v in x["leakage"].values())]
        if any(x.get("leakage") for x in edits):
            out.append(f"  Indistinguishable from never-seen facts on every attack: {len(clean)} of {len(edits)} rows"
                       + (": " + ", ".join(f"{x['label']} ({x['scope']}, utility {_f(x['utility'])})"
                                           for x in clean) if clean else "") + ".")
            rejected = {a: sum(x.get("leakage", {}).get(a, {}).get("verdict") not in (None, "indistinguishable")
                               for x in edits) for a in two_sided() if any(a in x.get("leakage", {}) for x in edits)}
            out.append("  Rows each attack tells apart from never-seen facts: "
                       + ", ".join(f"{a.replace('_', ' ')} {n}" for a, n in rejected.items()) + ".")
        oracle = next((x for x in s["rows"] if x["method"] == "oracle" and x.get("leakage")), None)
        if oracle is not None:
            off = {a: v["verdict"] for a, v in oracle["leakage"].items() if v["verdict"] != "indistinguishable"}
            out.append("  The retrain oracle (the baseline's check): " + (
                "indistinguishable on every attack." if not off else
                "; ".join(f"{a.replace('_', ' ')} {v.replace('_', '-')}" for a, v in off.items())
                + f" against {s.get('holdout_people', '?')} never-seen people."))
        by = {(x["method"], x["scope"]): x for x in edits}
        pairs = [(m, by[(m, "located")], by[(m, "random")]) for m, _ in {k: 0 for k, _ in by}.items()
                 if (m, "located") in by and (m, "random") in by]
        if pairs:
            wins = sum(loc["efficacy"] > rnd["efficacy"] + 0.05 or
                       (abs(loc["efficacy"] - rnd["efficacy"]) <= 0.05 and (loc["utility"] or 0) > (rnd["utility"] or 0) + 0.01)
                       for _, loc, rnd in pairs)
            out.append(f"  Located vs random (same count): located better (efficacy +0.05, or equal efficacy and "
                       f"utility +0.01) for {wins} of {len(pairs)} methods: "
                       + "; ".join(f"{m} eff {_f(loc['efficacy'])}/{_f(rnd['efficacy'])}, util "
                                   f"{_f(loc['utility'])}/{_f(rnd['utility'])}" for m, loc, rnd in pairs) + ".")
    return "\n".join(out)


def plot(r: dict[str, Any]):
    """TOFU's figure: forget quality (log) vs model utility, one point per method and split."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    markers = {"located": "o", "random": "x", "all": "s", "layer": "^", "-": "D", "retrain": "*", "k5": "P",
               "k10": "P"}
    names = list(table_rows()) + ["original"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]           # tab20's strong colours first
    colours = {m: plt.cm.tab20(order[i % 20]) for i, m in enumerate(names)}
    colours["oracle"] = "gold"
    split_size = {f: 40 + 60 * i for i, f in enumerate(sorted({s["fraction"] for s in r["splits"]}))}
    for s in r["splits"]:
        for row in s["rows"]:
            fq, u = row["forget_quality"], row["utility"]
            if fq is None or u is None:
                continue
            ax.scatter(u, max(fq, 1e-300), marker=markers.get(row["scope"], "o"),
                       s=split_size[s["fraction"]] * (3 if row["method"] == "oracle" else 1),
                       color=colours[row["method"]], edgecolors="black" if row["method"] == "oracle" else None,
                       zorder=3 if row["method"] == "oracle" else 2)
    ax.set_yscale("log")
    ax.axhline(0.05, color="grey", linestyle="--", linewidth=1, label="forget quality 0.05")
    ax.axvline(0.95, color="grey", linestyle=":", linewidth=1, label="utility 0.95")
    ax.set_xlabel("model utility (relative to the original organism)")
    ax.set_ylabel("forget quality (KS p-value vs retrain oracle, log)")
    ax.set_title("Forget quality vs model utility (larger marker = larger split; star = retrain oracle)")
    from matplotlib.lines import Line2D

    present = {row["method"] for s in r["splits"] for row in s["rows"]}
    handles = [Line2D([], [], linestyle="", marker="o", color=colours[m], label=m) for m in names + ["oracle"]
               if m in present]
    handles += [Line2D([], [], linestyle="", marker=mk, color="black", label=f"scope: {sc}")
                for sc, mk in markers.items() if sc not in ("-", "retrain")]
    handles += [Line2D([], [], color="grey", linestyle="--", label="forget quality 0.05"),
                Line2D([], [], color="grey", linestyle=":", label="utility 0.95")]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    lo = min((row["forget_quality"] for s in r["splits"] for row in s["rows"] if row["forget_quality"]), default=1e-3)
    ax.set_ylim(max(lo / 10, 1e-300), 2.0)
    fig.tight_layout()
    return fig
