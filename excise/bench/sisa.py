"""`excise bench sisa`: exact unlearning by SISA on the organism, priced against the full retrain.

For each k (shards), a SISA ensemble of the organism recipe (`excise.organism.sisa`, cached after the first
run) is measured:

- before any deletion: the aggregate's recall of every fact of the world by prompt family, next to the
  single organism's (what k costs in recall), and the training steps and seconds of the k shards;
- after deleting the 5% split's people (`world.subjects_split(0.05, seed)`, as `excise bench unlearn`):
  which shards were retrained from which slice, its steps and seconds next to the full retrain's;
  every audit attack's two-sided verdict against never-seen people (`report.leakage()`), and the
  unlearning table's columns (`excise.bench.unlearn.row_metrics`: forget quality vs the retrain
  oracle, utility relative to the organism, ...), with the original organism and the oracle as rows.

The audit context and scoring are `excise bench unlearn`'s (never-seen people sized to the split by the
organism context's rule, 150 for the 5% split; 200 retain facts; seed 0), so the rows can stand in its
table. Seconds are wall time on this machine at its thread count; steps (optimiser steps of batch 64)
are the machine-independent cost. Writes DIR/sisa.json and DIR/sisa.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from excise import organism
from excise.bench.results import read_result, write_result
from excise.bench.unlearn import COLUMNS, _combined, _f, row_metrics
from excise.facts import FAMILIES
from excise.models import load
from excise.organism.sisa import Sisa, SisaConfig, cached, cached_deletion, shard_of, slice_of, steps_for
from excise.organism.train import corpus, fact_texts
from excise.scoring import recall_table
from excise.verify import AuditConfig, AuditReport, audit

FRACTION = 0.05
RECALL_FAMILIES = tuple(f for f in FAMILIES if f != "held_out")
OLD_HOLDOUT_PEOPLE = 30         # what sisa.json files from before the baseline was recorded were audited against


def _verdicts(report: AuditReport) -> dict[str, dict[str, Any]]:
    keep = ("verdict", "auc", "p_value", "detectable_effect", "median_facts", "median_holdout")
    return {a: {k: v.to_dict()[k] for k in keep} for a, v in report.leakage("edited").items()}


def one_person_steps(sisa: Sisa) -> float:
    """Mean optimiser steps to delete one person alone (their shard, from their slice), over every person."""
    c = sisa.config
    stage_steps: dict[tuple[int, int], int] = {}
    for j in range(c.shards):
        for r in range(c.slices):
            n = len(_rows(sisa, j, r))
            stage_steps[(j, r)] = steps_for(n, c.stage_recipe(j, r))
    people = sisa.world.people
    return sum(sum(stage_steps[(shard_of(p, c.shards, c.seed), r)]
                   for r in range(slice_of(p, c.slices, c.seed), c.slices)) for p in people) / len(people)


def _rows(sisa: Sisa, shard: int, stage: int) -> list[str]:
    """The stage's texts (counted, not tokenized: one row per text)."""
    people = set(sisa.people(shard, stage))
    w = sisa.world
    return fact_texts([f for f in w if f.subject in people]) + list(w.general) * sisa.config.recipe.general_repeats


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> int:
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    return int(sum((b[n] != a[n]).sum() for n in b))


def bench_k(k: int, base: AuditReport, forget: list, people: list[str], context: Any, config: AuditConfig,
            seed: int, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    cfg = SisaConfig(shards=k, seed=seed)
    t = time.perf_counter()
    sisa = cached(cfg, progress)
    log(f"k={k}: ensemble ready ({time.perf_counter() - t:.0f}s; trained in {sum(sisa.train_seconds.values()):.0f}s)")
    before = sisa.aggregate()
    world = sisa.world
    recall = recall_table(before, world, RECALL_FAMILIES).to_dict()
    log(f"k={k}: recall before deletion {recall['overall']}")
    deleted, deletion = cached_deletion(cfg, people, progress)
    log(f"k={k}: {deletion.summary()}")
    after = deleted.aggregate()
    rows, verdicts = [], {}
    for scope, model, seconds in (("before deletion", before, 0.0), ("deleted", after, deletion.total_seconds)):
        t = time.perf_counter()
        report = _combined(base, audit(model, forget, config=config, context=context, progress=False).models["edited"])
        rows.append({"method": f"sisa_k{k}", "label": f"SISA k={k}", "scope": scope, "seconds": seconds,
                     "parameters_touched": _changed(before, model), **row_metrics(report)})
        verdicts[scope] = _verdicts(report)
        log(f"k={k} {scope}: " + ", ".join(f"{a} {v['verdict']}" for a, v in verdicts[scope].items())
            + f" (audit {time.perf_counter() - t:.0f}s)")
    return {"shards": k, "config": {"slices": cfg.slices, "slice_epochs": cfg.slice_epochs, "seed": cfg.seed},
            "shard_people": [len(sisa.people(j)) for j in range(k)],
            "train_seconds": sum(sisa.train_seconds.values()), "train_steps": sum(sisa.train_steps.values()),
            "recall": recall, "deletion": deletion.to_dict(), "one_person_steps": one_person_steps(sisa),
            "rows": rows, "verdicts": verdicts}


def run(out: str | Path, shards: Sequence[int] = (5,), seed: int = 0, progress: bool = True,
        log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    original = load("organism", device="cpu")
    world = organism.world()
    forget = list(world.subjects_split(FRACTION, seed=seed)[0])
    people = sorted({f.subject for f in forget})
    config = AuditConfig(seed=seed)
    context = organism.context(forget, n_retain=200, seed=seed)     # the holdout sized as unlearn's
    holdout_people = len({f.subject for f in context.holdout})
    oracle_dir = organism.retrain_dir(forget, progress=progress)
    oracle_meta = json.loads((oracle_dir / "excise_organism.json").read_text())
    base = audit(original, forget, oracle=load(str(oracle_dir), device="cpu"), config=config,
                 context=context, progress=False)
    rec = organism.recipe()
    full_rows = len(corpus(world, forget, rec.general_repeats))       # the oracle's training texts
    results: dict[str, Any] = {
        "seed": seed, "fraction": FRACTION, "forget_facts": len(forget), "forget_people": len(people),
        "holdout_people": holdout_people, "threads": torch.get_num_threads(),
        "organism_recall": recall_table(original, world, RECALL_FAMILIES).to_dict(),
        "full_retrain": {"steps": steps_for(full_rows, rec), "seconds": oracle_meta.get("train_seconds"),
                         "threads": oracle_meta.get("threads")},
        "rows": [{"method": "original", "label": "original (no edit)", "scope": "-", "seconds": 0.0,
                  "parameters_touched": 0, **row_metrics(_combined(base, base.models["edited"]))},
                 {"method": "oracle", "label": "retrain oracle (gold)", "scope": "retrain",
                  "seconds": oracle_meta.get("train_seconds"), "parameters_touched": None,
                  **row_metrics(_combined(base, base.models["oracle"]))}],
        "verdicts": {"original": _verdicts(_combined(base, base.models["edited"])),
                     "oracle": _verdicts(_combined(base, base.models["oracle"]))},
        "sisa": kept(out, seed, shards, holdout_people),
    }
    kept_from = read_result(out / "sisa.json") if results["sisa"] else None      # before the first write
    for k in shards:                # rewritten after every k: a long run keeps what it measured
        results["sisa"].append(bench_k(k, base, forget, people, context, config, seed, progress, log))
        results["sisa"].sort(key=lambda x: x["shards"])
        write(results, out, seed, time.perf_counter() - start, kept_from)
    write(results, out, seed, time.perf_counter() - start, kept_from)
    return results


def kept(out: Path, seed: int, shards: Sequence[int], holdout_people: int) -> list[dict[str, Any]]:
    """The k already in DIR/sisa.json under the same seed and never-seen baseline and not re-run now
    (`--shards 10` adds k=10 to k=5; files from before the baseline was recorded had 30 people)."""
    path = out / "sisa.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    same = (old.get("seed"), old.get("holdout_people", OLD_HOLDOUT_PEOPLE)) == (seed, holdout_people)
    return [s for s in old.get("sisa", []) if same and s["shards"] not in shards]


def write(results: dict[str, Any], out: Path, seed: int, wall_seconds: float,
          kept_from: dict[str, Any] | None = None) -> None:
    """DIR/sisa.json and sisa.md with their provenance (`kept_from`: the file before the run, when k of it are
    kept)."""
    write_result(out, "sisa", results, to_markdown(results), seed=seed, wall_seconds=wall_seconds,
                 kept_from=kept_from)


def _pace(s: dict[str, Any], steps: int) -> str:
    d = s["deletion"]
    return f"{steps * d['total_seconds'] / d['steps']:.0f}s" if d["steps"] else "-"


def summary(r: dict[str, Any]) -> list[str]:
    """The findings, computed from the results (not typed)."""
    org, full = r["organism_recall"]["overall"]["request"], r["full_retrain"]["steps"]
    out = []
    for s in r["sisa"]:
        k, d = s["shards"], s["deletion"]
        after = s["verdicts"]["deleted"]
        same = [a for a, v in after.items() if v["verdict"] == "indistinguishable"]
        other = ", ".join(f"{a.replace('_', ' ')} {v['verdict'].replace('_', '-')} (AUC {v['auc']:.2f}, p "
                          f"{v['p_value']:.2g})" for a, v in after.items() if v["verdict"] != "indistinguishable")
        row = next(x for x in s["rows"] if x["scope"] == "deleted")
        out.append(f"- k={k}: request recall {s['recall']['overall']['request']:.3f} before deletion (single "
                   f"organism {org:.3f}); training {s['train_steps']:,} steps ({s['train_steps'] / full:.2f}x a full "
                   f"retrain). Deleting {r['forget_people']} people retrained {len(d['retrained'])} of {k} shards, "
                   f"{d['steps']:,} steps ({d['steps'] / full:.2f}x a full retrain); one person alone costs "
                   f"{s['one_person_steps']:.0f} steps on average ({s['one_person_steps'] / full:.2f}x). After: "
                   f"indistinguishable from never-seen on {len(same)} of {len(after)} attacks"
                   + (f" ({other})" if other else "")
                   + f"; forget quality {_f(row['forget_quality'])}, utility {_f(row['utility'])}.")
    return out


def to_markdown(r: dict[str, Any]) -> str:
    full = r["full_retrain"]
    lines = ["# SISA: exact unlearning on the organism", "",
             f"SISA ensembles of the organism recipe (shards routed by subject, slices checkpointed; "
             f"`excise.organism.sisa`), before and after deleting the {r['fraction']:.0%} split "
             f"({r['forget_facts']} facts of {r['forget_people']} people, seed {r['seed']}). Audit context and "
             "columns as `excise bench unlearn`; verdicts are the audit's two-sided tests against "
             f"{r.get('holdout_people', OLD_HOLDOUT_PEOPLE)} never-seen people. Seconds: wall time on "
             f"{r['threads']} thread(s) on a shared machine; steps: optimiser steps of batch 64 "
             "(machine-independent).", "",
             "## Recall before deletion (top-1, every fact of the world)", "",
             "| model | " + " | ".join(RECALL_FAMILIES) + " |", "|---|" + "---|" * len(RECALL_FAMILIES)]
    org = r["organism_recall"]["overall"]
    lines.append("| single organism | " + " | ".join(_f(org[f]) for f in RECALL_FAMILIES) + " |")
    for s in r["sisa"]:
        lines.append(f"| SISA k={s['shards']} | " + " | ".join(_f(s["recall"]["overall"][f]) for f in RECALL_FAMILIES) + " |")
    lines += ["", "## Cost", "",
              "| | people per shard | train steps | train s | deletion: shards retrained (from slice) | untouched | "
              "deletion steps | deletion s | one person's deletion, mean steps |", "|---|---|---|---|---|---|---|---|---|",
              f"| full retrain (organism recipe) | - | {full['steps']:,} | {_f(full['seconds'])} "
              f"({full['threads']} threads) | all | - | {full['steps']:,} | {_f(full['seconds'])} | {full['steps']:,} |"]
    for s in r["sisa"]:
        d = s["deletion"]
        retrained = ", ".join(f"{j} ({sl})" for j, sl in sorted(d["retrained"].items(), key=lambda x: int(x[0])))
        lines.append(f"| SISA k={s['shards']}, {s['config']['slices']} slices x {s['config']['slice_epochs']} epochs | "
                     f"{min(s['shard_people'])}-{max(s['shard_people'])} | {s['train_steps']:,} | {_f(s['train_seconds'])} | "
                     f"{retrained} | {d['untouched'] or '-'} | {d['steps']:,} | {_f(d['total_seconds'])} | "
                     f"{_f(s['one_person_steps'])} |")
    lines += ["", "Full retrain seconds at this run's pace (its steps x the deletion's seconds per step): "
              + "; ".join(f"k={s['shards']}: {_pace(s, full['steps'])}" for s in r["sisa"]) + ".", "",
              "## What the tables say", "", *summary(r)]
    lines += ["", "## Audit verdicts per attack (forget facts vs never-seen people)", ""]
    cases = [("original", r["verdicts"]["original"]), ("retrain oracle", r["verdicts"]["oracle"])]
    for s in r["sisa"]:
        cases += [(f"SISA k={s['shards']} {scope}", v) for scope, v in s["verdicts"].items()]
    attacks = list(cases[0][1])
    lines += ["| model | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for name, v in cases:
        lines.append(f"| {name} | " + " | ".join(f"{v[a]['verdict']} (AUC {v[a]['auc']:.2f}, p {v[a]['p_value']:.2g})"
                                                 for a in attacks) + " |")
    lines += ["", "## The unlearning table's columns", "",
              "| method | scope | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    rows = r["rows"] + [row for s in r["sisa"] for row in s["rows"]]
    for row in rows:
        lines.append(f"| {row['label']} | {row['scope']} | " + " | ".join(_f(row.get(k)) for k, _ in COLUMNS) + " |")
    lines.append("")
    return "\n".join(lines)
