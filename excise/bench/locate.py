"""`excise bench locate`: speed and faithfulness of the locate methods on the organism.

Writes DIR/locate.json and DIR/locate.md with
- trace_speedup: the same full causal trace (resid, mlp, attn; 10 noise
  samples) done as one `run_with_hooks` forward per restored state (its noise
  samples in that forward's batch, as ROME's code does), divided by the
  batched trace; trace_max_abs_diff between the two. Also the speedup over a
  loop of one forward per (state, noise sample), on fewer facts.
- attribution_spearman: Spearman correlation between attribution patching
  and exact activation patching of every MLP neuron at the last subject
  token, averaged over facts; attribution_top10_overlap; attribution_speedup
  (exact neuron patching time / attribution time).
- planted_layer_recovery: counterfactuals planted by a whitened rank-one
  write at a known MLP layer (see `bench_planted`); the share whose layer
  ranks first in the causal trace (MLP restorations, max over positions) and
  in the Fisher forget/retain ratio (MLP layer totals).

Timings are wall-clock totals over all facts on this machine; every number is
measured when the benchmark runs.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from excise import organism
from excise.bench.results import write_result
from excise.edit.rank_one import key_second_moment, planted
from excise.facts import Fact
from excise.locate import (
    FisherConfig,
    TraceConfig,
    activation_patching,
    attribution_patching,
    causal_trace,
    fisher,
    trace_one_at_a_time,
)
from excise.models import load

log = logging.getLogger(__name__)


def _facts(world, n: int, seed: int) -> list[Fact]:
    return list(world.sample(n, seed=seed))


def bench_trace(model, facts: list[Fact], loop_facts: int) -> dict[str, Any]:
    cfg = TraceConfig()
    batched_s = loop_s = 0.0
    max_diff = 0.0
    for f in tqdm(facts, desc="trace: batched vs loop"):
        t = time.perf_counter()
        fast = causal_trace(model, f, config=cfg)
        batched_s += time.perf_counter() - t
        t = time.perf_counter()
        slow = trace_one_at_a_time(model, f, config=cfg)
        loop_s += time.perf_counter() - t
        max_diff = max(max_diff, max(float((fast.scores[k] - slow[k]).abs().max()) for k in slow))
    single = TraceConfig(n_samples=1)
    per_sample_s = batched_sub_s = 0.0
    for f in tqdm(facts[:loop_facts], desc="trace: one forward per state and sample"):
        t = time.perf_counter()
        causal_trace(model, f, config=cfg)
        batched_sub_s += time.perf_counter() - t
        t = time.perf_counter()
        for seed in range(cfg.n_samples):   # each noise sample its own loop of forwards
            trace_one_at_a_time(model, f, config=TraceConfig(**{**single.__dict__, "seed": seed}))
        per_sample_s += time.perf_counter() - t
    return {"trace_facts": len(facts), "trace_batched_seconds": batched_s, "trace_loop_seconds": loop_s,
            "trace_speedup": loop_s / batched_s, "trace_max_abs_diff": max_diff,
            "trace_speedup_vs_per_sample_loop": per_sample_s / batched_sub_s,
            "trace_per_sample_facts": min(loop_facts, len(facts))}


def bench_attribution(model, facts: list[Fact]) -> dict[str, Any]:
    rhos, overlaps = [], []
    exact_s = attr_s = 0.0
    for f in tqdm(facts, desc="attribution vs exact neuron patching"):
        t = time.perf_counter()
        exact = activation_patching(model, f, ("neuron",))
        exact_s += time.perf_counter() - t
        t = time.perf_counter()
        approx = attribution_patching(model, f, ("neuron",))
        attr_s += time.perf_counter() - t
        e, a = exact.scores["neuron"].flatten(), approx.scores["neuron"].flatten()
        rhos.append(float(spearmanr(e.numpy(), a.numpy()).statistic))
        top_e = {s.component for s in exact.top(10, "neuron", by_abs=True)}
        top_a = {s.component for s in approx.top(10, "neuron", by_abs=True)}
        overlaps.append(len(top_e & top_a) / 10)
    return {"attribution_facts": len(facts), "attribution_spearman": sum(rhos) / len(rhos),
            "attribution_spearman_min": min(rhos), "attribution_top10_overlap": sum(overlaps) / len(overlaps),
            "attribution_seconds": attr_s, "exact_neuron_patching_seconds": exact_s,
            "attribution_speedup": exact_s / attr_s}


def bench_planted(model, world, facts: list[Fact], layers: list[int]) -> dict[str, Any]:
    """Plant a counterfactual by a whitened rank-one write at MLP `layer`, then locate it.

    The write is ROME's: key = the MLP hidden state, C = the second moment of
    that key over 150 prompts of the same relation, value optimized until the
    new target has p >= 0.9. Its site is the prompt's last token, where this
    organism reads facts out (at the last subject token a write of norm 150
    reaches only p ~ 0.6 and tracing cannot see it: the subject noise stays in
    the residual stream). Fisher's retain set is 30 facts of other subjects.
    """
    rows = []
    for base in tqdm(facts, desc="planted facts"):
        fact = Fact(base.subject, base.relation, world.alternatives(base)[0], base.prompt)
        same_relation = [f for f in world if f.relation == base.relation and f.subject != base.subject][:150]
        retain = world.retain_set(world.of_subject(base.subject), n=30, seed=1)
        for layer in layers:
            C = key_second_moment(model, layer, same_relation, position="last")
            with planted(model, fact, layer, position="last", C=C) as info:
                if info["p_target"] < 0.5:
                    rows.append({"layer": layer, "planted": False, "p_target": info["p_target"]})
                    continue
                trace = causal_trace(model, fact, kinds=("mlp",))
                ratio = fisher(model, fact, retain=retain, config=FisherConfig(progress=False))
                rows.append({"layer": layer, "planted": True, "p_target": info["p_target"],
                             "trace_layer": int(trace.layer_scores("mlp").argmax()),
                             "fisher_layer": int(ratio.layer_scores("mlp").argmax())})
    ok = [r for r in rows if r["planted"]]
    return {"planted_attempts": len(rows), "planted_succeeded": len(ok),
            "planted_layer_recovery": sum(r["trace_layer"] == r["layer"] for r in ok) / max(1, len(ok)),
            "planted_layer_recovery_fisher": sum(r["fisher_layer"] == r["layer"] for r in ok) / max(1, len(ok)),
            "planted_rows": rows}


TARGETS = {"trace_speedup": (">=", 10), "trace_max_abs_diff": ("<=", 1e-4),
           "attribution_spearman": (">=", 0.8), "attribution_speedup": (">=", 50),
           "planted_layer_recovery": (">=", 0.9), "planted_layer_recovery_fisher": (">=", 0.9)}


def run(out: str | Path, n_facts: int = 50, loop_facts: int = 5, planted_facts: int = 10, seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load("organism", device="cpu")
    world = organism.world()
    facts = _facts(world, n_facts, seed)
    start = time.perf_counter()
    results: dict[str, Any] = {"n_facts": n_facts, "seed": seed, "torch_threads": torch.get_num_threads(),
                               "machine": platform.machine(), "python": platform.python_version()}
    results |= bench_trace(model, facts, loop_facts)
    results |= bench_attribution(model, facts)
    results |= bench_planted(model, world, facts[:planted_facts], layers=list(range(model.cfg.n_layers)))
    results["total_seconds"] = time.perf_counter() - start
    write_result(out, "locate", results, to_markdown(results), seed=seed, wall_seconds=results["total_seconds"])
    return results


def to_markdown(r: dict[str, Any]) -> str:
    lines = ["# locate benchmark (organism)", "",
             f"{r['n_facts']} facts, seed {r['seed']}, {r['torch_threads']} torch threads, "
             f"total {r['total_seconds']:.0f}s.", "", "| metric | measured | target | met |", "|---|---|---|---|"]
    for key, value in r.items():
        if key == "planted_rows" or not isinstance(value, (int, float)):
            continue
        target = TARGETS.get(key)
        met = ""
        if target:
            op, bound = target
            met = "yes" if (value >= bound if op == ">=" else value <= bound) else "**no**"
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} | {' '.join(map(str, target)) if target else ''} | {met} |")
    return "\n".join(lines) + "\n"
