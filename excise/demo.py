"""`excise demo`: locate -> edit -> verify on the built-in organism, written up as a report folder.

    excise.demo.run("excise-report", subject=None, method="npo", seed=0)

1. pick a subject (seeded) and take all of its facts;
2. causal-trace one of them (where does the answer flow?);
3. Fisher scores of the subject's facts against a retain sample (which
   neurons are specific to them?);
4. delete the facts with `method` (default: NPO confined to the top Fisher
   neurons; see `excise.methods`);
5. audit the edited model next to the original with every attack (and the
   retrain oracle with `oracle=True`, minutes the first time);
6. write report.md, report.json, the figures and the EditRecord.

Every number in report.json is a function of the seed (timings are kept
apart under "seconds", and the machine, versions and commit under
"provenance").
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from excise import methods as M
from excise.display import fmt
from excise.provenance import provenance, provenance_line
from excise.verify.attacks import defaults, ordered

TRACE_RELATION = "birthplace"
WORLD = "a person of the organism's world"


def pick_subject(world: Any, subject: str | None, seed: int) -> str:
    if subject is None:
        return random.Random(seed).choice(world.subjects)
    return world.check_subject(subject, where=WORLD)


def _fmt(x: float | None) -> str:
    return fmt(x, none="n/a", large=math.inf)


def run(out: str | Path = "excise-report", subject: str | None = None, method: str = M.DEFAULT,
        neurons: int = M.DEFAULT_NEURONS, seed: int = 0, oracle: bool = False, device: str = "cpu",
        n_holdout_people: int = 20, progress: bool = True, log=print) -> dict[str, Any]:
    """Run the demo and write the report folder; returns what report.json holds."""
    from excise import locate, organism
    from excise.models import load
    from excise.scoring import rank_prompts, target_first_ids
    from excise.verify import AuditConfig, audit
    from excise.weights import copy_model

    M.METHODS.check(method)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t_start = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    log("loading the built-in model organism ...")
    model = load("organism", device=device)
    world = organism.world()
    subject = pick_subject(world, subject, seed)
    facts = list(world.of_subject(subject))
    retain = list(world.retain_set(facts, n=200, seed=seed))
    context = organism.context(facts, n_holdout_people=n_holdout_people, n_retain=100, seed=seed)
    prompts = [f.fill(f.prompt) for f in facts]
    target_ids = target_first_ids(model, prompts, [f.target for f in facts])

    def first_token() -> list[tuple[int, float]]:
        ranks, logps, _ = rank_prompts(model, prompts, target_ids)
        return [(int(r), float(lp.exp())) for r, lp in zip(ranks, logps, strict=True)]

    before = first_token()
    lap("load")
    log(f"subject: {subject} ({len(facts)} facts); e.g. {facts[0].fill(facts[0].prompt)!r} -> {facts[0].target!r}")

    traced = next((f for f in facts if f.relation == TRACE_RELATION), facts[0])
    log(f"causal trace of {traced.fill(traced.prompt)!r} -> {traced.target!r} ...")
    trace = locate.causal_trace(model, traced, seed=seed)
    trace.plot().savefig(out / "trace.png", dpi=110)
    trace.save(out / "trace.json")
    lap("trace")

    log(f"Fisher scores: {len(facts)} facts against {len(retain)} retain facts ...")
    fisher = locate.fisher(model, facts, retain=retain,
                                  config=locate.FisherConfig(progress=progress))
    fisher.plot(["mlp", "neuron", "head"]).savefig(out / "fisher.png", dpi=110)
    fisher.save(out / "fisher.json")
    lap("fisher")

    reference = copy_model(model)
    log(f"deleting with {method}" + (f" on the top {neurons} Fisher neurons" if M.needs_located(method, neurons)
                                     else "") + " ...")
    record = M.delete(model, facts, method, retain=retain, located=fisher, neurons=neurons, seed=seed,
                      progress=progress, context=context)
    record.meta.update({"subject": subject, "demo_seed": seed})
    record.save(out / "edit.safetensors")
    after = first_token()
    lap("edit")

    oracle_model = None
    if oracle:
        log("retraining the organism without the subject's facts (the oracle; cached after the first run) ...")
        oracle_model = organism.retrain(without=facts, progress=progress)
        lap("oracle")
    log("auditing: probes, logit lens, relearning, membership inference ...")
    report = audit(model, facts, reference=reference, oracle=oracle_model, context=context,
                   config=AuditConfig(seed=seed), progress=progress)
    report.save(out / "audit.json")
    report.plot().savefig(out / "audit.png", dpi=110, bbox_inches="tight")
    lap("audit")

    result = {
        "seed": seed, "subject": subject, "method": method,
        "neurons": neurons if M.METHODS.get(method).mask != "none" else None,
        "facts": [{"relation": f.relation, "prompt": f.fill(f.prompt), "target": f.target,
                   "p_before": b[1], "rank_before": b[0], "p_after": a[1], "rank_after": a[0]}
                  for f, b, a in zip(facts, before, after, strict=True)],
        "trace": _trace_part(trace, traced),
        "fisher": {"top_neurons": [{"layer": s.component.layer, "index": s.component.index,
                                    "ratio": s.score} for s in fisher.top(10, kind="neuron")],
                   "mlp_layer_ratio": [float(x) for x in fisher.scores["mlp"]]},
        "edit": {"parameters_changed": record.n_changed, "components_touched": _touched(record),
                 "parameters_total": sum(p.numel() for p in model.parameters()),
                 "record": "edit.safetensors"},
        "audit": _audit_part(report, with_oracle=oracle_model is not None),
    }
    seconds["total"] = round(time.perf_counter() - t_start, 2)
    full = {**result, "seconds": seconds, "provenance": provenance(seed, seconds["total"])}
    (out / "report.json").write_text(json.dumps(full, indent=1))
    (out / "report.md").write_text(_markdown(result, report, seconds) + "\n" + provenance_line(full["provenance"])
                                   + "\n")
    return full


def _trace_part(trace: Any, traced: Any) -> dict[str, Any]:
    """report.json's trace: the traced fact, its clean and noised p, the MLP's restoration at the last subject
    token per layer, and each kind's peak."""
    from excise.locate import TraceMeta

    meta, last_subject = TraceMeta.of(trace), trace.subject[1] - 1
    peaks = {kind: trace.peak(kind) for kind in trace.kinds}
    return {"fact": traced.relation, "prompt": meta.prompt, "p_clean": meta.p_clean, "p_corrupt": meta.p_corrupt,
            "last_subject_token": trace.tokens[last_subject],
            "mlp_at_last_subject_token": [round(float(x), 6) for x in trace.scores["mlp"][:, last_subject]],
            "peaks": {k: {"layer": c.layer, "position": c.position,
                          "token": trace.tokens[c.position] if c.position is not None else None,
                          "restored_p": float(trace.scores[k][c.layer, c.position])} for k, c in peaks.items()}}


def _touched(record: Any) -> dict[str, int]:
    """How many components of each kind, per layer, the edit changed ("L0 neurons": 64)."""
    touched: dict[str, int] = {}
    for c in record.touched():
        name = f"L{c.layer} {c.kind}s" if c.kind in ("neuron", "head") else f"L{c.layer} {c.kind}"
        touched[name] = touched.get(name, 0) + 1
    return touched


def _audit_part(report: Any, with_oracle: bool) -> dict[str, Any]:
    """report.json's audit: each audited attack's success, chance and p, the two-sided verdicts, what was kept."""
    attacks = {a: {"success": report.success("edited", a), "chance": report.chance("edited", a),
                   "p_above_chance": report.above_chance("edited", a),
                   "original": report.success("reference", a)} for a in defaults()}
    return {"attacks": attacks,
            "leakage": {a: {k: v.to_dict()[k] for k in ("verdict", "auc", "p_value", "detectable_effect")}
                        for a, v in report.leakage("edited").items()},
            "recall_after": report.recall("edited", "request"),
            "relearned_recall": report.relearn_recall("edited"),
            "relearned_recall_original": report.relearn_recall("reference"),
            "neighbours_kept": report.kept("neighbours"), "retain_kept": report.kept("retain"),
            "utility_vs_original": report.utility("edited"),
            "forget_quality": report.forget_quality("edited") if with_oracle else None,
            "n_holdout": report.config["n_holdout"], "top_b": report.top_b}


def _markdown(r: dict[str, Any], report: Any, seconds: dict[str, float]) -> str:
    t, a, e = r["trace"], r["audit"], r["edit"]
    lines = [f"# Deleting what the organism knows about {r['subject']}", "",
             f"`excise demo --subject {r['subject']!r} --method {r['method']} --seed {r['seed']}`"
             f" ({seconds['total']:.0f} s).", "",
             "## What was asked", "",
             f"Delete every fact the model knows about {r['subject']}, a fictitious person of the organism's "
             "world, and keep everything else.", "",
             "| relation | prompt | target | p before | p after | rank after |", "|---|---|---|---|---|---|"]
    for f in r["facts"]:
        lines.append(f"| {f['relation']} | {f['prompt']} | {f['target']} | {_fmt(f['p_before'])} | "
                     f"{_fmt(f['p_after'])} | {f['rank_after']} |")
    peak_mlp, peak_attn = t["peaks"].get("mlp", {}), t["peaks"].get("attn", {})
    lines += ["", "## Where it lived", "",
              f"Causal trace of {t['prompt']!r} (the subject's token embeddings noised, one clean state restored "
              f"at a time): p(target) is {_fmt(t['p_clean'])} clean and {_fmt(t['p_corrupt'])} noised. "
              f"Restoring the MLP output at layer {peak_mlp.get('layer')} on {peak_mlp.get('token')!r} brings it "
              f"back to {_fmt(peak_mlp.get('restored_p'))}; the attention output peaks at layer "
              f"{peak_attn.get('layer')} on {peak_attn.get('token')!r} ({_fmt(peak_attn.get('restored_p'))}). "
              "At the last subject token the MLPs restore "
              + ", ".join(f"L{i}: {_fmt(x)}" for i, x in enumerate(t["mlp_at_last_subject_token"])) + ".", "",
              "![causal trace](trace.png)", "",
              "Fisher information of the subject's facts divided by that of 200 retain facts (selective synaptic "
              "dampening's specificity score), per MLP layer: "
              + ", ".join(f"L{i}: {_fmt(x)}" for i, x in enumerate(r["fisher"]["mlp_layer_ratio"]))
              + ". Top neurons: "
              + ", ".join(f"L{n['layer']}.{n['index']} ({_fmt(n['ratio'])})" for n in r["fisher"]["top_neurons"][:5])
              + ".", "", "![Fisher scores](fisher.png)", "",
              "## What was changed", "",
              f"Method `{r['method']}`" + (f", confined to the top {r['neurons']} Fisher neurons"
                                           if r.get("neurons") else "") +
              f": {e['parameters_changed']:,} of {e['parameters_total']:,} parameters changed "
              f"({100 * e['parameters_changed'] / e['parameters_total']:.2f}%), in "
              + ", ".join(f"{k} ({v})" if k.endswith("s") else k for k, v in e["components_touched"].items())
              + ". "
              "The edit is saved in `edit.safetensors` (`excise.edit.EditRecord.load(path, model).undo()` "
              "reverts it bit for bit).", "",
              "## Is it gone?", "",
              "Each attack's per-fact statistic against the same statistic on facts of people the model never "
              "saw (two-sided Mann-Whitney; AUC = P(a forget fact beats a never-seen one); detectable: the "
              "smallest |AUC - 0.5| this many facts could show at p < 0.05 with power 0.8):", "",
              "| attack | verdict | AUC | p | detectable |", "|---|---|---|---|---|",
              *[f"| {n} | **{v['verdict']}** | {v['auc']:.2f} | {_fmt(v['p_value'])} | {v['detectable_effect']:.2f} |"
                for n, v in ordered(a["leakage"])], "",
              f"Beside it, Patil et al.'s top-B success: each attack succeeds on a fact when the target is among the top {a['top_b']} candidates. Chance: "
              f"the same attack on {a['n_holdout']} facts of people the model never saw.", "",
              "| attack | original | edited | chance | p(edited above chance) |", "|---|---|---|---|---|"]
    for name, v in ordered(a["attacks"]):
        lines.append(f"| {name} | {_fmt(v['original'])} | {_fmt(v['success'])} | {_fmt(v['chance'])} | "
                     f"{_fmt(v['p_above_chance'])} |")
    verdicts = ordered(a["leakage"])
    caught = [f"{n} {v['verdict']}" for n, v in verdicts if v["verdict"] in ("leaks", "over_suppressed")]
    weak = [n for n, v in verdicts if v["verdict"] == "underpowered"]
    same = [n for n, v in verdicts if v["verdict"] == "indistinguishable"]
    lines += ["", "Verdict: " + " ".join(part for part in (
                  f"distinguishable from never-seen facts: {', '.join(caught)}." if caught else "",
                  f"indistinguishable: {', '.join(same)}." if same else "",
                  f"{len(r['facts'])} facts are too few to tell on: {', '.join(weak)}." if weak else "") if part),
              "", f"Request recall after the edit: {_fmt(a['recall_after'])}; after relearning on half the facts, "
              f"the other half comes back at {_fmt(a['relearned_recall'])} top-1 (the original: "
              f"{_fmt(a['relearned_recall_original'])}). Neighbour facts kept: {_fmt(a['neighbours_kept'])}; "
              f"retain facts kept: {_fmt(a['retain_kept'])}; model utility vs the original: "
              f"{_fmt(a['utility_vs_original'])}."
              + (f" Forget quality (KS p-value of truth ratios vs the retrain oracle): {_fmt(a['forget_quality'])}."
                 if a["forget_quality"] is not None else
                 " Run with `--oracle` to compare against a model retrained without these facts."), "",
              "![audit](audit.png)", "", "## Full audit table", "", report.to_markdown(), "",
              "Seconds per step: " + ", ".join(f"{k} {v}" for k, v in seconds.items()) + ".", ""]
    return "\n".join(lines)
