"""`excise bench edit`: efficacy, specificity and cost of every edit method on the organism.

Writes DIR/edit.json and DIR/edit.md:
- ROME delete, each objective: Patil et al.'s four as their code computes
  them (`erase`, `max_entropy`, `empty`, `head_projection`) beside excise's
  `*_unlikelihood` variants, under excise's settings; the four again under
  the reference's settings (`RomeConfig.reference`: ROME's KL, weight decay,
  20 steps, lr 0.5, no ridge); `erase_unlikelihood` with ROME's ridge 0 and
  with `protect=8`. Facts one at a time, undo between: efficacy (request
  prompt no longer answers the target), paraphrase_forget, neighbor_kept
  (recall of the fact's neighbours), surname_kept (recall of people sharing
  the surname, relative to before), lens_top20 (excise's logit-lens attack:
  the target in the top 20 after some block, request prompt), lens_top4_bottom4
  (Patil et al.'s head-projection attack: the target in the top 4 or bottom 4
  of the lens probabilities at some intermediate hidden state, 1..3 on the
  4-layer organism, for their GPT-J layers 8, 9, 16-23 of 28 and k 4),
  seconds_per_fact (the key covariance cached beforehand; its one-off cost is
  reported apart); the same attacks on the unedited model;
- ROME rewrite to a wrong object: rewrite_efficacy (the new object is top-1);
- MEMIT delete of 100 facts at once: plain at three values of lambda and
  with AlphaEdit's null space at two thresholds (the trade-off curve):
  efficacy, retain_kept, seconds;
- sequential ROME deletions: retain recall after every 10;
- a 5% subject split: Fisher-located neuron ablation (zero, mean) and the
  gradient methods (GA, GradDiff, KL, NPO, DPO, task vector) at all parameters
  and at the Fisher-located neurons: efficacy, retain recall, seconds,
  parameters touched.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from excise import organism
from excise.bench.results import write_result
from excise.display import fmt
from excise.edit import MemitConfig, RomeConfig, TaskVectorConfig, ablate, memit, rome, sequence, task_vector
from excise.edit.covariance import second_moment
from excise.edit.rome import REFERENCE
from excise.facts import Fact
from excise.locate import FisherConfig, fisher
from excise.methods import METHODS, GradientMethod, unlearn
from excise.models import load
from excise.organism.train import corpus
from excise.scoring import recall_table
from excise.verify.logit_lens import head_projection_attack, logit_lens

# every registered gradient method that needs only retain facts (swap needs stand-ins), at its defaults
GRADIENT = tuple(m.name for m in METHODS if isinstance(m, GradientMethod) and set(m.requires) <= {"retain"})
LAYER = 0   # on the organism, the layer where subject-position edits reach the answer (see README)
DELETIONS = ("erase", "erase_unlikelihood", "max_entropy", "max_entropy_unlikelihood", "empty", "empty_unlikelihood",
             "head_projection", "head_projection_unlikelihood")
LENS_B = 20        # excise's logit-lens attack: top-B at any block (the audit's top_b)
ATTACK_K = 4       # Patil et al.'s head-projection attack: top-k or bottom-k (their README's k), default layers
TARGETS = {"efficacy": (">=", 0.98), "paraphrase_forget": (">=", 0.9), "neighbor_kept": (">=", 0.95),
           "seconds_per_fact": ("<=", 2.0), "rewrite_efficacy": (">=", 0.98)}


def _rate(model, facts, family="request") -> float:
    return recall_table(model, facts, (family,)).rate(family)


def _same_surname(world, fact: Fact, n: int = 12) -> list[Fact]:
    """Up to n facts (seeded) of other people with the fact's surname: their subject keys share tokens."""
    surname = fact.subject.split()[-1]
    pool = [g for g in world if g.subject != fact.subject and g.subject.split()[-1] == surname]
    return random.Random(fact.subject).sample(pool, min(n, len(pool)))


def _lens_scores(model, fact: Fact) -> dict[str, float]:
    """Both logit-lens attacks on the fact's request prompt: 1.0 when the attack finds the target."""
    top = min(p.best_rank for p in logit_lens(model, [fact], ("request",), LENS_B)) < LENS_B
    patil = any(x.extracted for x in head_projection_attack(model, [fact], k=ATTACK_K))
    return {"lens_top20": float(top), "lens_top4_bottom4": float(patil)}


def bench_rome(model, world, facts: list[Fact], objectives: list[str]) -> dict[str, Any]:
    """surname_kept: recall of other people's facts that share the subject's surname (the organism's
    closest keys at the last subject token), measured as the drop against the unedited model."""
    out = {}
    runs = [(f"rome_{o}", RomeConfig(layer=LAYER, objective=o)) for o in objectives]
    runs += [(f"rome_{o}_reference_settings", RomeConfig.reference(LAYER, o)) for o in REFERENCE if o in objectives]
    runs.append(("rome_erase_unlikelihood_ridge0", RomeConfig(layer=LAYER, objective="erase_unlikelihood", ridge=0.0)))
    runs.append(("rome_erase_unlikelihood_protect8",
                 RomeConfig(layer=LAYER, objective="erase_unlikelihood", protect=8)))
    surnames = {f: _same_surname(world, f) for f in facts}
    before = {f: _rate(model, surnames[f]) for f in facts}
    lens = [_lens_scores(model, f) for f in facts]
    out["unedited"] = {"facts": len(facts), "efficacy": 1 - _rate(model, facts),
                       "paraphrase_forget": 1 - _rate(model, facts, "paraphrase"),
                       **{k: sum(x[k] for x in lens) / len(lens) for k in lens[0]}}
    sample, pool = corpus(world), list(world)
    for name, cfg in runs:
        eff, para, kept, sur, lens, seconds = [], [], [], [], [], 0.0
        for f in tqdm(facts, desc=name):
            start = time.perf_counter()
            record = rome(model, f, cfg, sample=sample, protect_from=pool)
            seconds += time.perf_counter() - start
            eff.append(1 - _rate(model, [f]))
            para.append(1 - _rate(model, [f], "paraphrase"))
            kept.append(_rate(model, list(f.neighbors)))
            sur.append(_rate(model, surnames[f]) / max(before[f], 1e-9))
            lens.append(_lens_scores(model, f))
            record.undo()
        out[name] = {"facts": len(facts), "efficacy": sum(eff) / len(eff), "paraphrase_forget": sum(para) / len(para),
                     "neighbor_kept": sum(kept) / len(kept), "surname_kept": sum(sur) / len(sur),
                     **{k: sum(x[k] for x in lens) / len(lens) for k in lens[0]},
                     "seconds_per_fact": seconds / len(facts)}
    return out


def bench_rewrite(model, world, facts: list[Fact]) -> dict[str, Any]:
    hits, seconds = 0, 0.0
    for f in tqdm(facts, desc="rome rewrite"):
        new = Fact(f.subject, f.relation, world.alternatives(f)[0], f.prompt, f.paraphrases, f.questions,
                   f.completions, f.held_out, f.neighbors)
        start = time.perf_counter()
        record = rome(model, new, RomeConfig(layer=LAYER, objective="rewrite"), sample=corpus(world))
        seconds += time.perf_counter() - start
        hits += _rate(model, [new]) == 1.0
        record.undo()
    return {"rome_rewrite": {"facts": len(facts), "rewrite_efficacy": hits / len(facts),
                             "seconds_per_fact": seconds / len(facts)}}


def bench_memit(model, world, n: int, retain_eval, lambdas: tuple[float, ...] = (30.0, 300.0, 3000.0),
                thresholds: tuple[float, ...] = (1e-2, 1e-4)) -> dict[str, Any]:
    """MEMIT deleting n facts at once: plain at each of `lambdas`, with AlphaEdit's null space at each of
    `thresholds`."""
    facts = list(world.sample(n, seed=2))
    subjects = {f.subject for f in facts}
    preserve = list(world.filter(lambda f: f.subject not in subjects).sample(600, seed=4))
    out = {}
    configs = [(f"memit_lambda{w:g}", MemitConfig(layers=(LAYER,), mom2_weight=w, objective="erase_unlikelihood", progress=False))
               for w in lambdas]
    configs += [(f"memit_null_space_{t:g}", MemitConfig(layers=(LAYER,), null_space=True, null_threshold=t, objective="erase_unlikelihood",
                                                         progress=False)) for t in thresholds]
    for name, cfg in configs:
        start = time.perf_counter()
        record = memit(model, facts, cfg, preserve=preserve, sample=corpus(world))
        seconds = time.perf_counter() - start
        out[name] = {"facts": n, "efficacy": 1 - _rate(model, facts),
                     "paraphrase_forget": 1 - _rate(model, facts, "paraphrase"),
                     "retain_kept": _rate(model, retain_eval), "seconds": seconds}
        record.undo()
    return out


def bench_sequential(model, world, n: int, retain_eval) -> dict[str, Any]:
    """The key covariance stays the unedited model's (as in ROME/MEMIT's sequential runs)."""
    facts = list(world.sample(n, seed=11))
    C = second_moment(model, LAYER, corpus(world))

    def measure(i, record):
        if (i + 1) % 10 == 0:
            return {"retain_recall": _rate(model, retain_eval),
                    "deleted_still_forgotten": 1 - _rate(model, facts[: i + 1])}
        return None

    start = time.perf_counter()
    seq = sequence(model, facts, lambda m, f: rome(m, f, RomeConfig(layer=LAYER, objective="erase_unlikelihood"), C=C), after_each=measure)
    seconds = time.perf_counter() - start
    seq.undo()
    return {"rome_sequential": {"requests": n, "seconds": seconds, "curve": seq.measurements}}


def bench_split(model, world, fraction: float, k_neurons: int) -> dict[str, Any]:
    forget, retain = world.subjects_split(fraction, seed=0)
    retain_train = retain.sample(600, seed=1)
    retain_eval = retain.sample(400, seed=3)
    start = time.perf_counter()
    located = fisher(model, forget, retain=retain.sample(300, seed=5), config=FisherConfig(progress=False))
    fisher_seconds = time.perf_counter() - start
    neurons = located.to_components(k_neurons, kind="neuron")
    out: dict[str, Any] = {"split": {"fraction": fraction, "forget_facts": len(forget),
                                     "fisher_seconds": fisher_seconds, "located_neurons": k_neurons}}

    def run(name, fn):
        start = time.perf_counter()
        record = fn()
        seconds = time.perf_counter() - start
        out[name] = {"efficacy": 1 - _rate(model, forget), "paraphrase_forget": 1 - _rate(model, forget, "paraphrase"),
                     "retain_recall": _rate(model, retain_eval), "seconds": seconds,
                     "parameters_touched": record.n_changed}
        record.undo()

    sample = list(world.general)
    run("ablate_zero_located", lambda: ablate(model, neurons, "zero"))
    run("ablate_mean_located", lambda: ablate(model, neurons, "mean", sample=sample))
    for method in GRADIENT:
        run(f"{method}_all", lambda m=method: unlearn(model, forget, retain_train, m, progress=False))
        run(f"{method}_located", lambda m=method: unlearn(model, forget, retain_train, m, mask=neurons, progress=False))
    run("task_vector_all", lambda: task_vector(model, forget, config=TaskVectorConfig(progress=False)))
    return out


def run(out: str | Path, n_facts: int = 50, n_memit: int = 100, n_sequential: int = 100,
        objectives: tuple[str, ...] = DELETIONS) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load("organism", device="cpu")
    world = organism.world()
    start = time.perf_counter()
    second_moment(model, LAYER, corpus(world))
    results: dict[str, Any] = {"layer": LAYER, "covariance_seconds": time.perf_counter() - start}
    facts = list(world.sample(n_facts, seed=0))
    retain_eval = list(world.sample(300, seed=21))
    results |= bench_rome(model, world, facts, list(objectives))
    results |= bench_rewrite(model, world, facts)
    results |= bench_memit(model, world, n_memit, retain_eval)
    results |= bench_sequential(model, world, n_sequential, retain_eval)
    results |= bench_split(model, world, 0.05, 64)
    results["total_seconds"] = time.perf_counter() - start
    write_result(out, "edit", results, to_markdown(results), seed="seeds fixed in the code",
                 wall_seconds=results["total_seconds"])
    return results


def _fmt(v: Any) -> str:
    return fmt(v, none="None", significant=True, small=0, large=math.inf)


def to_markdown(r: dict[str, Any]) -> str:
    lines = ["# edit benchmark (organism)", "",
             f"Layer {r['layer']}; key covariance computed (or read from the disk cache) in {r['covariance_seconds']:.1f}s; "
             f"total {r['total_seconds']:.0f}s.", ""]
    rows = {k: v for k, v in r.items() if isinstance(v, dict) and "curve" not in v and k not in ("split", "provenance")}
    cols = ["efficacy", "paraphrase_forget", "neighbor_kept", "surname_kept", "lens_top20", "lens_top4_bottom4",
            "rewrite_efficacy", "retain_kept", "retain_recall", "seconds_per_fact", "seconds", "parameters_touched"]
    cols = [c for c in cols if any(c in v for v in rows.values())]
    lines += ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, v in rows.items():
        cells = []
        for c in cols:
            if c not in v:
                cells.append("")
                continue
            miss = ""
            if c in TARGETS and name.startswith("rome"):
                op, bound = TARGETS[c]
                miss = "" if (v[c] >= bound if op == ">=" else v[c] <= bound) else " (miss)"
            cells.append(_fmt(v[c]) + miss)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    split = r.get("split")
    if split:
        lines += ["", f"5% split rows: {split['forget_facts']} forget facts; located = top {split['located_neurons']} "
                      f"Fisher (forget/retain) neurons, found in {split['fisher_seconds']:.1f}s."]
    seq = r.get("rome_sequential")
    if seq:
        lines += ["", f"Sequential ROME deletions ({seq['requests']} requests, {seq['seconds']:.0f}s):", "",
                  "| after | retain recall | deleted still forgotten |", "|---|---|---|"]
        lines += [f"| {m['after']} | {m['retain_recall']:.3f} | {m['deleted_still_forgotten']:.3f} |"
                  for m in seq["curve"]]
    lines += ["", "ROME rows: `erase`, `max_entropy`, `empty`, `head_projection` are Patil et al. 2023's objectives as "
                  "their code computes them; `*_unlikelihood` are excise's variants; `_reference_settings` adds the "
                  "reference's regularizer and hyperparameters (`RomeConfig.reference`); `_ridge0`: ROME's unridged "
                  "C^-1. lens_top20: excise's logit-lens attack (target in the top 20 after some block); "
                  f"lens_top4_bottom4: Patil et al.'s head-projection attack (target in the top {ATTACK_K} or bottom "
                  f"{ATTACK_K} of the lens probabilities at some intermediate hidden state, 1..3 here). Lower is "
                  "better for both; `unedited` gives the attacks' level before any edit."]
    targets = ", ".join(f"{k} {op} {b}" for k, (op, b) in TARGETS.items())
    lines += ["", f"Targets (issue 4) for the ROME rows: {targets}; MEMIT: efficacy >= 0.95, retain_kept >= 0.95, "
                  "seconds <= 60; sequential: retain recall >= 0.9 after 100."]
    return "\n".join(lines) + "\n"
