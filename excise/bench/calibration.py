"""`excise bench calibration`: is a derived never-seen baseline a true null? (issue 36)

The audit's two-sided verdicts compare the facts' statistic with the same statistic on subjects the model never
saw. On the organism those are real never-seen people of its world. For any other model excise derives them
(`excise.context.never_seen_subjects`): recombined first and last names, or names spelled like the subjects. Here
the derived baselines are checked where ground truth exists:

- organism, 5% split: `excise bench verify`'s cases (original, oracle, guardrail, last_layer,
  over_suppressed_npo), each judged against the world's real never-seen people, against recombined names
  (`derive`) and against names spelled like the subjects (`generated_subjects`, which one-token names get). The
  attacks that query the model (`queries()`); relearning is left out for cost, as in bench verify's holdout draws;
- the foreign test models (`tests/foreign.py`, so this needs the repository's tests/): each retrained, with its
  own tokenizer and recipe, without 18 facts of 6 subjects (the oracle); original and oracle judged against the
  derived baseline on every attack.

Writes DIR/calibration.json and DIR/calibration.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from excise import organism
from excise.bench.foreign import foreign_suite
from excise.bench.results import write_result
from excise.context import KnowledgeContext, derive, facts_about, generated_subjects
from excise.facts import Fact, FactSet
from excise.models import load
from excise.verify import AuditConfig, audit, guardrail, suppress_last_layer
from excise.verify.attacks import ordered, queries
from excise.verify.calibration import over_suppress
from excise.weights import copy_model

BASELINES = ("real", "recombined", "spelled")
FOREIGN_SUBJECTS = 6


def _baselines(model: Any, forget: list[Fact], real: KnowledgeContext, seed: int) -> dict[str, KnowledgeContext]:
    """The organism's real never-seen people, and the two derived baselines, with everything else the same."""
    same = {"retain": real.retain, "general": real.general, "alternatives": real.alternatives, "sample": real.sample}
    recombined = derive(model, forget, **same, seed=seed, generate=False)
    known = [*forget, *real.retain]
    names, note = generated_subjects(model, sorted({f.subject for f in known}), 30, seed,
                                     exclude=sorted({f.target for f in known}))
    spelled = recombined.override(holdout=facts_about(names, forget, seed, answers=real.retain))
    spelled.notes["holdout"] = note
    return {"real": real, "recombined": recombined, "spelled": spelled}


def _verdicts(report: Any) -> dict[str, dict[str, Any]]:
    return {a: {"verdict": v.verdict, "auc": v.auc, "p_value": v.p_value} for a, v in report.leakage().items()}


def organism_cases(seed: int = 0, fraction: float = 0.05, progress: bool = False) -> dict[str, Any]:
    """Every bench verify case against every baseline: {case: {baseline: {attack: verdict, auc, p}}}."""
    world = organism.world()
    forget, _ = world.subjects_split(fraction, seed=seed)
    forget = list(forget)
    original = load("organism", device="cpu")
    oracle = organism.retrain(without=forget, progress=progress, device="cpu")
    keep = list(world.retain_set(forget, n=400, seed=seed + 7))
    npo, shallow = copy_model(original), copy_model(original)
    over_suppress(npo, forget, keep, seed=seed, progress=progress)
    suppress_last_layer(shallow, forget, keep, seed=seed)
    models = {"original": original, "oracle": oracle, "last_layer": shallow, "over_suppressed_npo": npo}
    contexts = _baselines(original, forget, organism.context(forget, seed=seed), seed)
    config = AuditConfig(attacks=queries(), seed=seed)
    out: dict[str, Any] = {}
    for case in ("original", "oracle", "guardrail", "last_layer", "over_suppressed_npo"):
        out[case] = {}
        for name, context in contexts.items():
            if case == "guardrail":
                with guardrail(original, forget):
                    report = audit(original, forget, config=config, context=context, progress=progress)
            else:
                report = audit(models[case], forget, config=config, context=context, progress=progress)
            out[case][name] = _verdicts(report)
    return {"forget_facts": len(forget), "holdout_facts": {n: len(c.holdout) for n, c in contexts.items()},
            "holdout_notes": {n: c.notes.get("holdout", "the organism's world") for n, c in contexts.items()},
            "cases": out}


def foreign_oracles(seed: int = 0) -> dict[str, Any]:
    """Each foreign model and its retrain oracle (without FOREIGN_SUBJECTS subjects' facts) against the derived
    never-seen baseline, every attack."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    F = foreign_suite()

    out: dict[str, Any] = {}
    for arch, recipe in (("gpt2", F.GPT2), ("llama", F.LLAMA)):
        directory = F.SHIPPED / arch
        world = list(FactSet.load(directory / "world.json"))
        subjects = sorted({f.subject for f in world})[:FOREIGN_SUBJECTS]
        forget = [f for f in world if f.subject in subjects]
        retain = [f for f in world if f.subject not in subjects]
        general = (directory / "general.txt").read_text().splitlines()
        gone = {f.key for f in forget}
        texts = [f"{f.fill(t)} {f.target}." for f in world if f.key not in gone
                 for fam in F.TRAINED for t in f.templates(fam)] + general * 2
        tok = AutoTokenizer.from_pretrained(directory)
        rows = [[tok.bos_token_id, *F._ids(tok, t), tok.eos_token_id] for t in texts] if arch == "gpt2" else \
            [[*tok(t)["input_ids"], tok.eos_token_id] for t in texts]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)                  # as the foreign models themselves were trained
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(recipe.seed)
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
                F.train(model, rows, recipe, tok.pad_token_id)
        finally:
            torch.set_num_threads(threads)
        original = load(directory, device="cpu")
        oracle = load(model, tokenizer=tok, device="cpu")
        context = derive(original, forget, retain=retain, general=general, sample=general, seed=seed, generate=False)
        config = AuditConfig(seed=seed)
        out[arch] = {"forget_facts": len(forget), "holdout_note": context.notes["holdout"],
                     **{name: {"recall": (rep := audit(m, forget, config=config, context=context,
                                                       progress=False)).recall("edited"), "leakage": _verdicts(rep)}
                        for name, m in (("original", original), ("oracle", oracle))}}
    return out


def run(out: str | Path, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    r = {"organism": organism_cases(seed, progress=progress), "foreign": foreign_oracles(seed)}
    write_result(out, "calibration", r, to_markdown(r), seed=seed, wall_seconds=time.perf_counter() - start)
    return r


def _cell(v: dict[str, Any] | None) -> str:
    return "-" if v is None else f"{v['verdict']} ({v['auc']:.2f})"


def to_markdown(r: dict[str, Any]) -> str:
    o = r["organism"]
    lines = ["# Calibration of the derived never-seen baselines", "",
             f"Organism, 5% split ({o['forget_facts']} facts): each case against the world's real never-seen people "
             f"and the two derived baselines ({', '.join(f'{n}: {k} holdout facts' for n, k in o['holdout_facts'].items())}). "
             "Cells: verdict (AUC). Attacks that query the model (relearning left out for cost).", "",
             "| case | attack | " + " | ".join(BASELINES) + " | same |", "|---|---|" + "---|" * (len(BASELINES) + 1)]
    agree = total = 0
    for case, per in o["cases"].items():
        for attack, real in ordered(per["real"]):
            cells = [per[b].get(attack) for b in BASELINES]
            same = len({c["verdict"] for c in cells if c is not None}) == 1
            agree, total = agree + same, total + 1
            lines.append(f"| {case} | {attack} | " + " | ".join(_cell(c) for c in cells) + f" | {'yes' if same else 'no'} |")
    lines += ["", f"Same verdict against all three baselines: {agree} of {total} (case, attack) cells.", ""]
    for n, note in o["holdout_notes"].items():
        lines.append(f"- {n}: {note}")
    lines += ["", "Foreign test models and their retrain oracles against the derived baseline (every attack):", "",
              "| model | recall of the facts | " + " | ".join(a for a, _ in ordered(
                  r["foreign"]["llama"]["original"]["leakage"])) + " |",
              "|---|---|" + "---|" * len(r["foreign"]["llama"]["original"]["leakage"])]
    for arch, f in r["foreign"].items():
        for name in ("original", "oracle"):
            lines.append(f"| {arch} {name} | {f[name]['recall']:.2f} | "
                         + " | ".join(_cell(v) for _, v in ordered(f[name]["leakage"])) + " |")
    lines += [""] + [f"- {arch}: {f['holdout_note']}" for arch, f in r["foreign"].items()]
    return "\n".join(lines)
