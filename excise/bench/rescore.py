"""`excise bench rescore`: the unlearning table's rows re-audited with the attacks added after it was measured.

`excise bench unlearn` takes hours; its rows' edits are seeded, so re-running one split's edits and auditing
them with only the newer attacks costs minutes. For each row of the stored split (DIR/unlearn.json), the edit
is made again on a fresh copy of the organism (its efficacy is compared with the stored one: the same edit),
then audited against the same never-seen people with every attack the stored row has no verdict for
(`reference` and `depth` with the unedited organism and the split's retrain oracle beside it). What it adds:
per new attack, the rows it calls leaking or over-suppressed where every one of the stored attacks found
nothing (indistinguishable or underpowered), and the reverse.

The `sisa` rows (a retrained ensemble, not an edit of this model) and `undo` (15 minutes per row) are left out
unless named. Writes DIR/rescore.json and DIR/rescore.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from excise import organism
from excise.bench.results import read_result, write_result
from excise.bench.unlearn import Budget, prepare_split, table_rows
from excise.context import KnowledgeContext
from excise.display import fmt
from excise.models import load
from excise.verify import ATTACKS, AuditConfig, audit, audited
from excise.weights import copy_model

SKIP = ("sisa", "undo")
CAUGHT = ("leaks", "over_suppressed")


def _verdicts(report: Any, role: str = "edited") -> dict[str, dict[str, Any]]:
    return {a: {"verdict": v.verdict, "auc": v.auc, "p_value": v.p_value}
            for a, v in report.leakage(role).items()}


def _stored(out: Path, fraction: float) -> tuple[dict[str, Any], dict[str, Any], list[str], tuple[str, ...]]:
    """The stored run, its split at `fraction`, the attacks its rows have verdicts for, and the ones they lack."""
    stored = read_result(out / "unlearn.json")
    [split_rows] = [s for s in stored["splits"] if s["fraction"] == fraction] or [None]
    if split_rows is None:
        raise ValueError(f"{out / 'unlearn.json'} has no {fraction:.0%} split; run `excise bench unlearn` first")
    old = sorted({a for r in split_rows["rows"] for a in r["leakage"]}, key=ATTACKS.names().index)
    new = tuple(a for a in audited() if a not in old)
    if not new:
        raise ValueError(f"every audited attack already has verdicts in {out / 'unlearn.json'}")
    return stored, split_rows, old, new


def _audit_new(model: Any, forget: list, original: Any, oracle: Any, holdout: KnowledgeContext,
               new: tuple[str, ...], seed: int, progress: bool) -> dict[str, Any]:
    """An edited model's verdicts on the new attacks (those that compare models with the unedited one and the
    oracle beside it), its UDS and its efficacy."""
    one_model = tuple(a for a in new if not ATTACKS.get(a).compares_models)
    beside = tuple(a for a in new if ATTACKS.get(a).compares_models)
    mine = audit(model, forget, config=AuditConfig(seed=seed, attacks=("probes", *one_model)), context=holdout,
                 progress=progress)
    both = audit(model, forget, reference=original, oracle=oracle, context=holdout, progress=progress,
                 config=AuditConfig(seed=seed, attacks=beside)) if beside else None
    found = {a: v for a, v in (_verdicts(mine) | (_verdicts(both) if both else {})).items() if a in new}
    recall = mine.recall("edited", "request")
    return {"leakage": found, "depth": both.depth("edited") if both else None,
            "efficacy": None if recall is None else 1 - recall}


def run(out: str | Path, fraction: float = 0.05, seed: int = 0, methods: tuple[str, ...] | None = None,
        progress: bool = False, log=lambda m: None) -> dict[str, Any]:
    out = Path(out)
    start = time.perf_counter()
    stored, split_rows, old, new = _stored(out, fraction)
    original = load("organism", device="cpu")
    split, context, oracle, _ = prepare_split(original, organism.world(), fraction, Budget(**stored["budget"]), seed,
                                              progress, with_heads=any(r["method"] == "ablate_heads"
                                                                       for r in split_rows["rows"]))
    forget = split.forget
    if len(forget) != split_rows["forget_facts"] or len(context.holdout) != split_rows["audit_holdout_facts"]:
        raise ValueError("this split's facts or never-seen people differ from the stored run's: re-run the bench")
    holdout = KnowledgeContext(holdout=context.holdout)          # the attacks here need only the never-seen facts
    table, wanted = table_rows(), set(methods) if methods else None
    base = audit(original, forget, oracle=oracle, config=AuditConfig(seed=seed, attacks=new), context=holdout,
                 progress=progress)
    rows: list[dict[str, Any]] = []
    result = _result(fraction, seed, old, new, rows, len(forget), len(context.holdout))
    for r in split_rows["rows"]:
        name, scope = r["method"], r["scope"]
        if name in ("original", "oracle"):
            found = {"leakage": {a: v for a, v in _verdicts(base, "edited" if name == "original" else "oracle").items()
                                 if a in new}, "depth": 0.0 if name == "original" else 1.0, "efficacy": None,
                     "seconds": 0.0}                                    # UDS 0 and 1 by construction
        elif (wanted is not None and name not in wanted) or (wanted is None and name in SKIP) or name not in table:
            continue
        else:
            model = copy_model(original)
            t = time.perf_counter()
            table[name][2](model, split, scope, seed)
            found = _audit_new(model, forget, original, oracle, holdout, new, seed, progress) | \
                {"seconds": time.perf_counter() - t}
            del model
        rows.append({"method": name, "scope": scope, "stored": {a: v["verdict"] for a, v in r["leakage"].items()},
                     "stored_efficacy": r["efficacy"], **found})
        log(f"  {name:<17} {scope:<8} " + " ".join(f"{a} {v['verdict']}" for a, v in found["leakage"].items()))
        result = _result(fraction, seed, old, new, rows, len(forget), len(context.holdout))
        # written after every row: a long run keeps what it measured
        write_result(out, "rescore", result, to_markdown(result), seed=seed, wall_seconds=time.perf_counter() - start)
    return result


def _result(fraction: float, seed: int, old: list[str], new: tuple[str, ...], rows: list[dict[str, Any]],
            n_forget: int, n_holdout: int) -> dict[str, Any]:
    return {"fraction": fraction, "seed": seed, "old_attacks": old, "new_attacks": list(new), "rows": rows,
            "forget_facts": n_forget, "holdout_facts": n_holdout,
            "only_new": {a: [f"{x['method']}/{x['scope']}" for x in rows if _only(x, a, old)] for a in new
                         if ATTACKS.get(a).two_sided},
            "only_old": {a: [f"{x['method']}/{x['scope']}" for x in rows if _missed(x, a, old)] for a in new
                         if ATTACKS.get(a).two_sided}}


def _only(row: dict[str, Any], attack: str, old: list[str]) -> bool:
    """The new attack catches the row and none of the stored ones did."""
    v = row["leakage"].get(attack)
    return v is not None and v["verdict"] in CAUGHT and not any(row["stored"].get(a) in CAUGHT for a in old)


def _missed(row: dict[str, Any], attack: str, old: list[str]) -> bool:
    """A stored attack catches the row and the new one reads it indistinguishable or underpowered."""
    v = row["leakage"].get(attack)
    return v is not None and v["verdict"] not in CAUGHT and any(row["stored"].get(a) in CAUGHT for a in old)


def _cell(v: dict[str, Any] | None) -> str:
    return "-" if v is None else f"{v['verdict']} {v['auc']:.2f}"


def to_markdown(r: dict[str, Any]) -> str:
    new = [a for a in r["new_attacks"] if ATTACKS.get(a).two_sided]     # depth: its score is the UDS column
    old = r["old_attacks"]
    lines = [f"# rescore: the {r['fraction']:.0%} unlearning table with the attacks added after it", "",
             f"{r['forget_facts']} forget facts against {r['holdout_facts']} never-seen people's facts; each row's "
             "edit made again (seeded) and audited with the new attacks. Cells: two-sided verdict and AUC; "
             "depth: UDS (1 = erased as in the oracle).", "",
             "| row | efficacy (stored / now) | stored: caught by | " + " | ".join(a.replace("_", " ") for a in new)
             + " | UDS |", "|---" * (len(new) + 4) + "|"]
    for x in r["rows"]:
        caught = [a for a in old if x["stored"].get(a) in CAUGHT]
        eff = f"{fmt(x['stored_efficacy'])} / {fmt(x['efficacy'])}" if x["efficacy"] is not None else "-"
        lines.append(f"| {x['method']}/{x['scope']} | {eff} | {', '.join(caught) or 'none'} | "
                     + " | ".join(_cell(x["leakage"].get(a)) for a in new) + f" | {fmt(x['depth'])} |")
    lines += ["", "## What the new attacks add", "",
              "Rows a new attack catches (leaks or over_suppressed) where none of the stored attacks ("
              + ", ".join(old) + ") did, and rows a stored attack caught that the new one does not:", "",
              "| attack | catches alone | misses |", "|---|---|---|"]
    for a in new:
        lines.append(f"| {a} | {', '.join(r['only_new'][a]) or 'none'} | {', '.join(r['only_old'][a]) or 'none'} |")
    return "\n".join(lines) + "\n"
