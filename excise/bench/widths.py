"""`excise bench widths`: what a rank-one edit keeps, measured on the organism's world trained at several widths.

The claim under test: rank-one writes cannot keep other subjects' facts at small key widths. Each width is the
shipped recipe with only `n_embd` changed (d_mlp = 4 n_embd: the edit's key width) and, with it, the learning
rate (`recipe_at`: scaled as 1 / width, since at the shipped rate the 256-wide model recalled 0.68 of its
world); the same world, tokenizer, seed and epochs. The shipped checkpoint is the 128 rung; the others are
trained once and cached like the retrain oracles (`excise.organism.retrain_dir` with nothing removed: `excise
cache` lists them). Not in CI: on one thread the 256 rung trained in 13 minutes, the 512 rung in 38.

Per width, edits at layer 0 (`excise.bench.edit.LAYER`, where the organism's subject edits reach the answer):

- ROME deletion (`RomeConfig(layer=0)`, excise's default objective), 30 facts one at a time, undone between.
  Among the facts the unedited model recalls: efficacy (the request no longer answers), paraphrase_forget,
  and the share still recalled of the same subject's other facts (`same_subject_kept`), of people sharing the
  surname (`same_surname_kept`, the closest other keys), and of 60 facts of other people drawn per fact
  (`other_subjects_kept`).
- MEMIT deleting 100 facts at once (the facts, preserve set and settings of `excise bench edit`'s MEMIT rows,
  plain at lambda 30 and 300): efficacy and retain recall (300 facts) against the unedited model's.
- 100 sequential deletions with AlphaEdit (its L2 10; the sets of `excise bench sequential`): efficacy and
  retain recall (all, edited subjects, other subjects) every 10, the null space's size and the share of the
  last 10 edited keys' energy inside it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from excise import organism
from excise.bench.edit import LAYER, _rate, _same_surname, bench_memit
from excise.bench.results import read_result, write_result
from excise.bench.sequential import FACT_SEED, PRESERVE_SEED, RETAIN_SEED, progress_measurer, split
from excise.edit import AlphaEditState, MemitConfig, RomeConfig, memit_sequence, rome
from excise.edit.covariance import second_moment
from excise.models import load
from excise.organism.train import corpus
from excise.scoring import recall_table

WIDTHS = (128, 256, 512)
ROME_FACTS, ROME_SEED, OTHER_FACTS = 30, 0, 60
MEMIT_LAMBDAS = (30.0, 300.0)    # excise bench edit's trade-off at 128: efficacy 0.85 / retain 0.30 and 0.35 / 0.92
RIDGES = (10.0,)         # AlphaEdit's L2


def checkpoint(width: int, progress: bool = True) -> Path:
    """The organism's recipe at `width` (n_embd): the shipped checkpoint at its own width, else trained once
    (minutes to an hour on 2 cores) and cached like a retrain oracle."""
    base = organism.recipe()
    if width == base.n_embd:
        return organism.CHECKPOINT_DIR
    if width % base.n_head:
        raise ValueError(f"width {width} is not a multiple of the organism's {base.n_head} heads; pick one that is")
    return organism.retrain_dir([], recipe_at(width), progress=progress)


def recipe_at(width: int) -> organism.Recipe:
    """The shipped recipe at `width`, its learning rate scaled by shipped width / width (muP's rule for Adam on
    hidden weights): at the shipped 3e-3 the 256-wide model recalled only 0.68 of its world's facts."""
    base = organism.recipe()
    return dataclasses.replace(base, n_embd=width, lr=base.lr * base.n_embd / width)


def _recalled(model, facts) -> list[bool]:
    """Per fact: is its request prompt answered (top-1 first token)?"""
    return [row["recalled"] for row in recall_table(model, facts, ("request",)).rows]


def _others(world, fact, n: int) -> list:
    """n facts (seeded by the fact) of people other than its subject."""
    pool = [g for g in world if g.subject != fact.subject]
    return random.Random(f"others {fact.key}").sample(pool, n)


def _kept(model, facts, before: list[bool]) -> float | None:
    """Of the facts recalled before (`before`), the share still recalled; None when none was."""
    was = [f for f, b in zip(facts, before, strict=True) if b]
    return sum(_recalled(model, was)) / len(was) if was else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def rome_specificity(model, world, facts) -> dict[str, Any]:
    """ROME deletion one fact at a time (undone between): efficacy, paraphrase forgetting and what it keeps."""
    sample = corpus(world)
    checks = {f: {"same_subject": [g for g in world if g.subject == f.subject and g.key != f.key],
                  "same_surname": _same_surname(world, f), "other_subjects": _others(world, f, OTHER_FACTS)}
              for f in facts}
    before = {f: {k: _recalled(model, v) for k, v in c.items()} for f, c in checks.items()}
    known = [f for f in facts if _recalled(model, [f])[0]]
    rows, seconds = [], 0.0
    for f in tqdm(known, desc="rome", leave=False):
        start = time.perf_counter()
        record = rome(model, f, RomeConfig(layer=LAYER), sample=sample)
        seconds += time.perf_counter() - start
        rows.append({"efficacy": 1 - _rate(model, [f]), "paraphrase_forget": 1 - _rate(model, [f], "paraphrase"),
                     **{f"{k}_kept": _kept(model, v, before[f][k]) for k, v in checks[f].items()}})
        record.undo()
    return {"facts": len(facts), "recalled_before": len(known), "seconds_per_fact": seconds / max(1, len(known)),
            **{k: _mean(r[k] for r in rows) for k in rows[0]}}


def alphaedit_sequence(model, world, n: int, ridge: float, n_preserve: int = 600, every: int = 10) -> dict[str, Any]:
    """n deletions one per step through one AlphaEdit state at L2 `ridge`; the curve every `every`."""
    facts, retain, preserve, same, other = split(world, n, n_preserve)
    config = MemitConfig(layers=(LAYER,), null_space=True, null_ridge=ridge, objective="erase_unlikelihood",
                         progress=False)
    start = time.perf_counter()
    state = AlphaEditState.build(model, config, preserve=preserve)
    seq = memit_sequence(model, facts, config, state=state,
                         after_each=progress_measurer(model, facts, retain, same, other, every, state))
    row = {"requests": n, "preserve_facts": n_preserve, "l2": ridge, "null_dims": state.source["null_dims"][LAYER],
           "seconds": time.perf_counter() - start, "curve": seq.measurements}
    seq.undo()
    row["unedited"] = {"retain_recall": _rate(model, retain), "retain_edited_subjects": _rate(model, same),
                       "retain_other_subjects": _rate(model, other)}
    return row


def one_width(width: int, n_rome: int = ROME_FACTS, n_memit: int = 100, n_sequential: int = 100,
              log=print) -> dict[str, Any]:
    """Every measurement at one width (the model trained or found first)."""
    path = checkpoint(width)
    meta = json.loads((path / "excise_organism.json").read_text())
    model = load(str(path), device="cpu")
    world = organism.world()
    start = time.perf_counter()
    second_moment(model, LAYER, corpus(world), progress=False)
    retain_eval = list(world.sample(300, seed=RETAIN_SEED))
    row: dict[str, Any] = {
        "width": width, "d_mlp": model.cfg.d_mlp, "n_layers": model.cfg.n_layers,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": meta.get("train_seconds"), "checkpoint": str(path),
        "recall": {"request": _rate(model, list(world)), "paraphrase": _rate(model, list(world), "paraphrase")},
        "retain_recall_unedited": _rate(model, retain_eval),
    }
    log(f"width {width}: rome")
    row["rome"] = rome_specificity(model, world, list(world.sample(n_rome, seed=ROME_SEED)))
    log(f"width {width}: memit {n_memit}")
    row["memit"] = bench_memit(model, world, n_memit, retain_eval, lambdas=MEMIT_LAMBDAS, thresholds=())
    log(f"width {width}: alphaedit x{n_sequential}")
    row["alphaedit_sequential"] = [alphaedit_sequence(model, world, n_sequential, r) for r in RIDGES]
    row |= {"seconds": time.perf_counter() - start, "torch_threads": torch.get_num_threads()}
    return row


def run(out: str | Path, widths: tuple[int, ...] = WIDTHS, n_rome: int = ROME_FACTS, n_memit: int = 100,
        n_sequential: int = 100, rerun: tuple[int, ...] | None = None, log=print) -> dict[str, Any]:
    """Measure every width, or only those in `rerun`, keeping the other widths' rows from the existing
    OUT/widths.json (each row records its own seconds and threads). Writes OUT/widths.json and .md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    kept = {r["width"]: r for r in (read_result(out / "widths.json") or {"rows": []})["rows"]}
    todo = set(widths) if rerun is None else set(rerun)
    missing = [w for w in widths if w not in todo and w not in kept]
    if missing:
        raise ValueError(f"widths {missing} are neither rerun nor in {out / 'widths.json'}; rerun them too")
    rows = [one_width(w, n_rome, n_memit, n_sequential, log=log) if w in todo else kept[w] for w in widths]
    results = {"layer": LAYER, "seeds": {"rome_facts": ROME_SEED, "sequential": [FACT_SEED, RETAIN_SEED, PRESERVE_SEED]},
               "rows": rows, "total_seconds": sum(r["seconds"] for r in rows)}
    write_result(out, "widths", results, to_markdown(results), seed=ROME_SEED,
                 wall_seconds=time.perf_counter() - start)
    return results


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def to_markdown(r: dict[str, Any]) -> str:
    rows = r["rows"]
    lines = ["# width ladder (organism's world)", "",
             f"The shipped recipe at each width (n_embd; d_mlp = the edit's key width), edits at layer {r['layer']}. "
             f"Measuring took {r['total_seconds']:.0f}s (threads per width: "
             f"{', '.join(str(w['torch_threads']) for w in rows)}; training apart).", "",
             "| width | d_mlp | params | train s | recall (request / paraphrase) |", "|---|---|---|---|---|"]
    lines += [f"| {w['width']} | {w['d_mlp']} | {w['params'] / 1e6:.2f}M | {_f(w['train_seconds'] and round(w['train_seconds']))} | "
              f"{w['recall']['request']:.3f} / {w['recall']['paraphrase']:.3f} |" for w in rows]
    lines += ["", f"## ROME deletion, one fact at a time ({rows[0]['rome']['facts']} facts; kept = share of the facts "
                  "recalled before still recalled)", "",
              "| width | efficacy | paraphrase forgotten | same subject kept | same surname kept | other subjects kept | s/fact |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {w['width']} | {_f(x['efficacy'])} | {_f(x['paraphrase_forget'])} | {_f(x['same_subject_kept'])} | "
              f"{_f(x['same_surname_kept'])} | {_f(x['other_subjects_kept'])} | {x['seconds_per_fact']:.2f} |"
              for w in rows for x in [w["rome"]]]
    lines += ["", f"## MEMIT, {next(iter(rows[0]['memit'].values()))['facts']} facts at once (retain: 300 facts, unedited recall in brackets)", "",
              "| width | setting | efficacy | paraphrase forgotten | retain | s |", "|---|---|---|---|---|---|"]
    lines += [f"| {w['width']} | {name} | {x['efficacy']:.3f} | {x['paraphrase_forget']:.3f} | {x['retain_kept']:.3f} "
              f"({w['retain_recall_unedited']:.3f}) | {x['seconds']:.1f} |" for w in rows for name, x in w["memit"].items()]
    seq = rows[0]["alphaedit_sequential"][0]
    lines += ["", f"## AlphaEdit, {seq['requests']} deletions one after another", "",
              "| width | L2 | null dims / d_mlp | after | efficacy | retain | retain same subjects | retain other subjects | "
              "null energy (last 10) |", "|---|---|---|---|---|---|---|---|---|"]
    for w in rows:
        for a in w["alphaedit_sequential"]:
            u = a["unedited"]
            lines.append(f"| {w['width']} | {a['l2']:g} | {a['null_dims']} / {w['d_mlp']} | 0 | - | {u['retain_recall']:.3f} | "
                         f"{u['retain_edited_subjects']:.3f} | {u['retain_other_subjects']:.3f} | - |")
            lines += [f"| {w['width']} | {a['l2']:g} |  | {m['after']} | {m['efficacy']:.3f} | {m['retain_recall']:.3f} | "
                      f"{m['retain_edited_subjects']:.3f} | {m['retain_other_subjects']:.3f} | {m['null_energy_last']:.3f} |"
                      for m in a["curve"] if m["after"] in (10, 50, a["requests"])]
    lines += ["", reading(r)]
    return "\n".join(lines) + "\n"


def reading(r: dict[str, Any]) -> str:
    """Whether specificity rises with width, read from the rows (sentences filled from the numbers)."""
    rows = r["rows"]
    if len(rows) < 2:
        return "One width: no trend to read."

    def trend(values: list[float | None]) -> str:
        vals = [v for v in values if v is not None]
        if len(vals) < 2:
            return "not measured"
        if max(vals) == min(vals):
            return "stays"
        steps = list(zip(vals, vals[1:]))
        if all(b > a for a, b in steps):
            return "rises"
        if all(b < a for a, b in steps):
            return "falls"
        if all(b >= a for a, b in steps):
            return "does not fall"
        if all(b <= a for a, b in steps):
            return "does not rise"
        return "does not move one way"

    widths = ", ".join(str(w["width"]) for w in rows)
    other = [w["rome"]["other_subjects_kept"] for w in rows]
    surname = [w["rome"]["same_surname_kept"] for w in rows]
    same = [w["rome"]["same_subject_kept"] for w in rows]
    name = next(iter(rows[0]["memit"]))
    m_eff = [w["memit"][name]["efficacy"] for w in rows]
    m_kept = [w["memit"][name]["retain_kept"] for w in rows]
    last = [w["alphaedit_sequential"][0]["curve"][-1] for w in rows]
    ae_eff = [m["efficacy"] for m in last]
    ae_other = [m["retain_other_subjects"] for m in last]
    ae_null = [m["null_energy_last"] for m in last]
    return (f"**Reading** (widths {widths}): ROME's other-subjects kept {trend(other)} "
            f"({', '.join(_f(v) for v in other)}); same-surname kept {trend(surname)} ({', '.join(_f(v) for v in surname)}); "
            f"same-subject kept {trend(same)} ({', '.join(_f(v) for v in same)}). MEMIT deleting "
            f"{rows[0]['memit'][name]['facts']} at once ({name}): efficacy {trend(m_eff)} "
            f"({', '.join(_f(v) for v in m_eff)}), retain {trend(m_kept)} ({', '.join(_f(v) for v in m_kept)}). After "
            f"{rows[0]['alphaedit_sequential'][0]['requests']} AlphaEdit deletions (L2 "
            f"{rows[0]['alphaedit_sequential'][0]['l2']:g}): efficacy {trend(ae_eff)} ({', '.join(_f(v) for v in ae_eff)}), "
            f"other subjects' retain recall {trend(ae_other)} ({', '.join(_f(v) for v in ae_other)}), the edited keys' "
            f"energy in the null space {trend(ae_null)} ({', '.join(_f(v) for v in ae_null)}).")
