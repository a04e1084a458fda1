"""`excise bench sequential`: 100 deletions one after another on the organism, AlphaEdit against plain
sequential MEMIT and ROME, and how much room the organism's 512-wide key space leaves the null space.

The requests, the retain set and the ROME row are `excise bench edit`'s `rome_sequential` (100 facts,
`world.sample(100, seed=11)`, retain `world.sample(300, seed=21)`, layer 0). Each method deletes one
fact per step; after every 10: efficacy (share of the facts deleted so far not recalled under the
request prompt), retain recall over the 300 (as `rome_sequential`), and its two parts: the retain facts
of subjects never edited, and those of the edited subjects (other relations; at layer 0 they share the
edited key). Rows:

- `rome_sequential`: as `excise.bench.edit.bench_sequential` (ROME's default deletion, the unedited C);
- `memit_sequential`: MEMIT at layer 0, one fact per step, lambda C prior with the unedited C;
- `alphaedit_*`: MEMIT at layer 0 through one `AlphaEditState` (P from the preserve facts' keys on the
  unedited model, the cache carried), at AlphaEdit's threshold and the listed ridges.

Key space (per AlphaEdit row, every 10): null dims of P (of d_mlp), the share of the last 10 edited
keys' energy in the null space |P k|^2 / |k|^2, the rank of the accumulated edited keys and of their
projections (what the cache constrains), and, before any edit, the spectrum of C_0 and the share of the
preserved keys' energy in the null space at several thresholds.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from excise import organism
from excise.bench.edit import LAYER, _rate
from excise.bench.results import write_result
from excise.edit import AlphaEditState, MemitConfig, RomeConfig, memit_sequence, rome, sequence
from excise.edit.covariance import second_moment
from excise.edit.memit import _keys_and_hidden, _preserved_moment, _token_keys
from excise.models import load
from excise.organism.train import corpus

FACT_SEED, RETAIN_SEED, PRESERVE_SEED = 11, 21, 4     # excise/bench/edit.py: bench_sequential, run, bench_memit
# lambda of the plain MEMIT row. One key per step, the write reaches s / (1 + s) of the change at its key,
# s = k^T C^-1 k / lambda (median k^T C^-1 k 370 on these facts): 0.97 at lambda 10, 0.79 at 100. Measured
# (100 steps): lambda 10 efficacy 0.85, retain 0.46; lambda 100 efficacy 0.88, retain 0.58.
MEMIT_WEIGHT = 100.0
ROME = RomeConfig(layer=LAYER, objective="erase_unlikelihood")     # the objective these runs were measured with
RIDGES = (10.0, 1.0)    # AlphaEdit's L2, and 1 (0.1 measured once: efficacy 0.85, retain 0.29 after 100)
GOAL = {"efficacy": 0.95, "retain_recall": 0.9}       # after 100 (the issue)


def key_space(model, world, facts, preserve, thresholds=(2e-2, 1e-1, 3e-1)) -> dict[str, Any]:
    """Before any edit: C_0's spectrum, and per threshold the null dims and the share of the preserved and of
    the to-be-edited keys' energy in the null space."""
    C0, described = _preserved_moment(model, LAYER, preserve, None)
    C0 = C0.double()
    S, U = torch.linalg.eigh(C0)
    S, U = S.flip(0), U.flip(1)
    K = _keys_and_hidden(model, facts, LAYER, LAYER, 5)[0].double()
    out: dict[str, Any] = {"C0": described, "d_mlp": int(C0.shape[0]),
                           "C0_singular_values_at": {str(i): float(S[i]) for i in (0, 10, 50, 100, 200, 300, 400, 511)},
                           "edited_keys_rank": int(torch.linalg.matrix_rank(K, rtol=1e-6)),
                           "edited_key_sq_norm": float((K ** 2).sum(0).mean()), "thresholds": {}}
    # where the edited keys' energy sits among C_0's principal directions (largest first)
    edited = (U.T @ K) ** 2 / (K ** 2).sum(0)                     # [d_mlp, n]: share per direction
    out["energy_in_top_directions"] = {
        str(r): {"preserved": float(S[:r].sum() / S.sum()), "edited": float(edited[:r].sum(0).mean())}
        for r in (10, 50, 100, 200, int((S >= thresholds[0]).sum()))}
    # the preserve set's size against the width: fewer preserved tokens than d_mlp leave an exact null space
    pool = world.filter(lambda f: f.subject not in {g.subject for g in facts})
    out["by_preserve_size"] = {}
    for size in (50, 100, 300, len(preserve)):
        K0 = _token_keys(model, list(pool.sample(size, seed=PRESERVE_SEED)), LAYER).double()
        s0, u0 = torch.linalg.eigh(K0 @ K0.T / K0.shape[1])
        exact, near = u0[:, s0 < 1e-9 * s0.max()], u0[:, s0 < thresholds[0]]
        out["by_preserve_size"][str(size)] = {
            "tokens": int(K0.shape[1]), "exact_null_dims": int(exact.shape[1]), "null_dims": int(near.shape[1]),
            "edited_energy_in_exact_null": float(((exact.T @ K).norm(dim=0) ** 2 / K.norm(dim=0) ** 2).mean()),
            "edited_energy_in_null": float(((near.T @ K).norm(dim=0) ** 2 / K.norm(dim=0) ** 2).mean())}
    for t in thresholds:
        null = S < t
        Un = U[:, null]
        out["thresholds"][f"{t:g}"] = {
            "null_dims": int(null.sum()),
            "preserved_energy_in_null": float(S[null].sum() / S.sum()),
            "edited_key_energy_in_null": float(((Un.T @ K).norm(dim=0) ** 2 / K.norm(dim=0) ** 2).mean()),
        }
    return out


def split(world, n: int, n_preserve: int) -> tuple[list, list, list, list, list]:
    """(requests, retain, preserve, retain of edited subjects, retain of other subjects not preserved): the
    seeded sets every sequential run uses."""
    facts = list(world.sample(n, seed=FACT_SEED))
    retain = list(world.sample(300, seed=RETAIN_SEED))
    subjects = {f.subject for f in facts}
    preserve = list(world.filter(lambda f: f.subject not in subjects).sample(n_preserve, seed=PRESERVE_SEED))
    kept = {f.key for f in preserve}
    same = [f for f in retain if f.subject in subjects]
    other = [f for f in retain if f.subject not in subjects and f.key not in kept]
    return facts, retain, preserve, same, other


def progress_measurer(model, facts: list, retain: list, same: list, other: list, every: int,
                      state: AlphaEditState | None):
    """`sequence`'s after_each: every `every` steps, efficacy on the facts deleted so far and retain recall
    (all, edited subjects, other subjects); with an AlphaEdit state, its key-space readings too."""
    def measure(i, record):
        if (i + 1) % every:
            return None
        m = {"efficacy": 1 - _rate(model, facts[: i + 1]), "retain_recall": _rate(model, retain),
             "retain_edited_subjects": _rate(model, same), "retain_other_subjects": _rate(model, other)}
        if state is not None:
            K = state.all_keys(LAYER).double()
            P = state.P[LAYER].double()
            m |= {"null_energy_last": float(state.null_energy(LAYER)[-every:].mean()),
                  "keys_rank": int(torch.linalg.matrix_rank(K, rtol=1e-6)),
                  "projected_keys_rank": int(torch.linalg.matrix_rank(P @ K, rtol=1e-6))}
        return m
    return measure


def run(out: str | Path, n: int = 100, n_preserve: int = 600, every: int = 10,
        ridges: tuple[float, ...] = RIDGES) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = load("organism", device="cpu")
    world = organism.world()
    facts, retain, preserve, same, other = split(world, n, n_preserve)
    kept = {f.key for f in preserve}
    results: dict[str, Any] = {
        "layer": LAYER, "requests": n, "preserve_facts": n_preserve, "goal_after_100": GOAL,
        "retain": {"all": len(retain), "edited_subjects": len(same), "other_subjects_not_preserved": len(other),
                   "in_preserve_set": sum(f.key in kept for f in retain)},
        "key_space": key_space(model, world, facts, preserve), "torch_threads": torch.get_num_threads(),
    }

    def measurer(state: AlphaEditState | None):
        return progress_measurer(model, facts, retain, same, other, every, state)

    t0 = time.perf_counter()
    C = second_moment(model, LAYER, corpus(world))           # the unedited C, as bench_sequential
    seq = sequence(model, facts, lambda m, f: rome(m, f, ROME, C=C), after_each=measurer(None))
    results["rome_sequential"] = {"config": {"rome": asdict(ROME)},
                                  "seconds": time.perf_counter() - t0, "curve": seq.measurements}
    seq.undo()
    runs = [("memit_sequential", MemitConfig(layers=(LAYER,), mom2_weight=MEMIT_WEIGHT, objective="erase_unlikelihood", progress=False))]
    runs += [(f"alphaedit_l2_{r:g}", MemitConfig(layers=(LAYER,), null_space=True, null_ridge=r, objective="erase_unlikelihood", progress=False))
             for r in ridges]
    for name, cfg in runs:
        t0 = time.perf_counter()
        state = AlphaEditState.build(model, cfg, preserve=preserve) if cfg.null_space else None
        seq = memit_sequence(model, facts, cfg, state=state, after_each=measurer(state))
        row = {"config": {"null_space": cfg.null_space, "null_threshold": cfg.null_threshold,
                          "null_threshold_mode": cfg.null_threshold_mode, "null_ridge": cfg.null_ridge,
                          "mom2_weight": cfg.mom2_weight},
               "seconds": time.perf_counter() - t0, "curve": seq.measurements}
        if state is not None:
            row["null_dims"] = state.source["null_dims"][LAYER]
        seq.undo()
        results[name] = row
    results["total_seconds"] = time.perf_counter() - start
    write_result(out, "sequential", results, to_markdown(results), seed=[FACT_SEED, RETAIN_SEED, PRESERVE_SEED],
                 wall_seconds=results["total_seconds"])
    return results


def to_markdown(r: dict[str, Any]) -> str:
    ks = r["key_space"]
    lines = ["# sequential deletions (organism)", "",
             f"{r['requests']} deletions one per step at layer {r['layer']}, the facts and retain set of "
             f"`rome_sequential` (excise bench edit); AlphaEdit's null space from {ks['C0']} "
             f"({r['preserve_facts']} facts of subjects never edited, {r['retain']['in_preserve_set']} of the "
             f"{r['retain']['all']} retain facts among them). Goal after 100: efficacy >= "
             f"{r['goal_after_100']['efficacy']}, retain recall >= {r['goal_after_100']['retain_recall']}. "
             f"Total {r['total_seconds']:.0f}s.", ""]
    lines += [f"Retain columns: all {r['retain']['all']}; `same` = the {r['retain']['edited_subjects']} facts of "
              f"edited subjects (other relations); `other` = the {r['retain']['other_subjects_not_preserved']} facts "
              "of subjects never edited and not in the preserve set.", ""]
    lines += ["| method | after | efficacy | retain | retain same | retain other | null energy (last 10) | "
              "rank K | rank PK |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in r.items():
        if not (isinstance(row, dict) and "config" in row):
            continue
        for m in row["curve"]:
            extra = (f"{m['null_energy_last']:.3f} | {m['keys_rank']} | {m['projected_keys_rank']}"
                     if "keys_rank" in m else " |  | ")
            lines.append(f"| {name} | {m['after']} | {m['efficacy']:.3f} | {m['retain_recall']:.3f} | "
                         f"{m['retain_edited_subjects']:.3f} | {m['retain_other_subjects']:.3f} | {extra} |")
    lines += ["", "Seconds: " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in r.items()
                                         if isinstance(v, dict) and "seconds" in v), ""]
    lines += [f"## Key space at layer {r['layer']} (before any edit)", "",
              f"d_mlp = {ks['d_mlp']}; C_0 singular values (largest first) at index " +
              ", ".join(f"{i}: {v:.3g}" for i, v in ks["C0_singular_values_at"].items()) +
              f"; the {r['requests']} edited facts' keys have rank {ks['edited_keys_rank']}.", "",
              "| threshold (absolute) | null dims | preserved energy in null | edited-key energy in null |",
              "|---|---|---|---|"]
    lines += [f"| {t} | {v['null_dims']} | {v['preserved_energy_in_null']:.4f} | {v['edited_key_energy_in_null']:.3f} |"
              for t, v in ks["thresholds"].items()]
    lines += ["", "Share of the energy in C_0's top r directions (largest singular values first):", "",
              "| r | preserved keys | edited keys |", "|---|---|---|"]
    lines += [f"| {k} | {v['preserved']:.3f} | {v['edited']:.3f} |" for k, v in ks["energy_in_top_directions"].items()]
    lines += ["", f"By preserve-set size (threshold {next(iter(ks['thresholds']))}; exact null: the directions no "
                  "preserved token uses):", "",
              "| preserve facts | tokens | exact null dims | edited energy in exact null | null dims | "
              "edited energy in null |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {v['tokens']} | {v['exact_null_dims']} | {v['edited_energy_in_exact_null']:.3f} | "
              f"{v['null_dims']} | {v['edited_energy_in_null']:.3f} |" for n, v in ks["by_preserve_size"].items()]
    lines += ["", _reading(r)]
    return "\n".join(lines) + "\n"


def _reading(r: dict[str, Any]) -> str:
    """What the numbers say about the goal and the key space (sentences filled from the results)."""
    goal = r["goal_after_100"]
    rows = {k: v["curve"][-1] for k, v in r.items() if isinstance(v, dict) and "curve" in v and v["curve"]}
    met = [k for k, m in rows.items()
           if m["efficacy"] >= goal["efficacy"] and m["retain_recall"] >= goal["retain_recall"]]
    ae = {k: m for k, m in rows.items() if "keys_rank" in m}
    ks = r["key_space"]
    t0 = next(iter(ks["thresholds"]))
    null = ks["thresholds"][t0]
    out = [f"**Goal after {r['requests']}**: " + (f"met by {', '.join(met)}." if met else "met by no row.")]
    if ae:
        m = next(iter(ae.values()))
        pe = null["edited_key_energy_in_null"] * ks["edited_key_sq_norm"]           # mean |P k|^2
        reach = ", ".join(f"{pe / (pe + r[k]['config']['null_ridge']):.2f} at L2 {r[k]['config']['null_ridge']:g}"
                          for k in ae)
        spans = [(n, v) for n, v in ks["by_preserve_size"].items() if v["exact_null_dims"] == 0]
        exact = [(n, v) for n, v in ks["by_preserve_size"].items() if v["exact_null_dims"] > 0]
        text = (f"**Key space**: at threshold {t0} the null space has {null['null_dims']} of {ks['d_mlp']} directions; "
                f"after {r['requests']} edits the edited keys have rank {m['keys_rank']} and their projections "
                f"{m['projected_keys_rank']}, so the edits do not run out of directions. ")
        if spans:
            n, v = spans[0]
            text += (f"But from {n} preserve facts ({v['tokens']} tokens) on, the preserved keys span all "
                     f"{ks['d_mlp']} directions (no exact null space), so the null space is only their weakest "
                     f"directions, holding {null['edited_key_energy_in_null']:.3f} of the edited keys' energy "
                     f"(of the preserved keys': {null['preserved_energy_in_null']:.4f}); a write reaches "
                     f"|Pk|^2 / (|Pk|^2 + L2) of its change at its key, about {reach}. ")
        if exact:
            n, v = exact[0]
            text += (f"Where an exact null space exists ({n} preserve facts, {v['tokens']} tokens: "
                     f"{v['exact_null_dims']} directions) it holds {v['edited_energy_in_exact_null']:.3f} of the "
                     "edited keys' energy: the keys to delete are made of the same features as the keys to keep. ")
        text += ("At layer 0 the edited subjects' other facts share the edited key itself (`retain same`), "
                 "which no projection can keep.")
        out.append(text)
    return "\n\n".join(out)
