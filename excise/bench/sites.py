"""`excise bench sites`: ROME deletions at the traced site vs the fixed subject position, on four models.

The models: the organism, stories260k (a real pretrained Llama) and the two
foreign models of tests/foreign.py (a GPT-2 with a word-level tokenizer and
two-word subjects, a Llama with a SentencePiece-style BPE and one-token
subjects; seed 0's weights ship in tests/data/foreign, another seed is
built into the cache, about 15 s each).
Per model, `excise.locate.edit_site` traces the facts and picks a (layer,
position); the default it replaces is the last subject token at the subject
curve's peak layer (ROME's site, what `edit_site` picked before issue 25).
At both sites, ROME deletes each fact in turn (undo between) with
`erase_unlikelihood` and `head_projection_unlikelihood` (the latter is what
`excise edit --method rome` runs), the key covariance from the sample a user
would get (the organism's corpus; elsewhere `generated_sample`, as
`excise edit` derives it), computed before the timing:

- efficacy: the request prompt no longer answers the target (top-1);
- paraphrase_forget, held_out_forget: the same over the paraphrases and the
  held-out templates (never trained, and never in a key), of the prompts
  recalled before;
- same_subject_kept: the fact's neighbours about the same subject still
  recalled, of those recalled before (stories260k: none, each fact has its
  own subject);
- other_subject_kept: the same for its neighbours about other subjects
  (same relation: the closest keys at the prompt's last token), or every
  other fact on stories260k;
- seconds_per_fact.

Writes DIR/sites.json and DIR/sites.md.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from excise import organism, stories
from excise.bench.results import write_result
from excise.edit import RomeConfig, generated_sample, rome
from excise.edit.covariance import second_moment
from excise.facts import Fact, FactSet
from excise.locate.site import EditSite, edit_site
from excise.models import load as load_model
from excise.scoring import recall_table

log = logging.getLogger(__name__)

MODELS = ("organism", "stories260k", "foreign_gpt2", "foreign_llama")
OBJECTIVES = ("erase_unlikelihood", "head_projection_unlikelihood")
GOAL = {"efficacy": 0.95, "paraphrase_forget": 0.85, "same_subject_kept": 0.9, "other_subject_kept": 0.98}
COLUMNS = ("efficacy", "paraphrase_forget", "held_out_forget", "same_subject_kept", "other_subject_kept",
           "seconds_per_fact")


def foreign_dir(arch: str, seed: int = 0) -> Path:
    """The foreign model of tests/foreign.py (needs the repository's tests/): seed 0 is the pair the tests load
    (shipped in tests/data/foreign); another seed is built into the cache on first use."""
    from excise.bench.foreign import foreign_suite
    from excise.cache import cache_dir

    F = foreign_suite()
    if seed == 0:
        return F.shipped_dir(arch)
    path = cache_dir() / "foreign" / f"{arch}-seed{seed}"
    if not (path / "foreign.json").exists():
        (F.build_gpt2 if arch == "gpt2" else F.build_llama)(path, seed=seed)
    return path


def load(name: str, n_facts: int, seed: int = 0) -> tuple[Any, list[Fact], list[str], str]:
    """The model, the facts to delete, the covariance sample and what the sample is."""
    if name == "organism":
        model = load_model("organism", device="cpu")
        return model, list(organism.world().sample(n_facts, seed=seed)), organism.corpus(), "corpus"
    if name == "stories260k":
        model = load_model("stories260k", device="cpu")
        facts = list(stories.facts(model)[0])[:n_facts]
    else:
        path = foreign_dir(name.removeprefix("foreign_"), seed)
        model = load_model(path, device="cpu")
        facts = list(FactSet.load(path / "world.json").sample(n_facts, seed=seed))
    return model, facts, generated_sample(model, seed=seed), "generated_sample"


def _rate(model, facts: list[Fact], family: str = "request") -> float:
    return recall_table(model, facts, (family,)).rate(family)


def _recalled(model, facts: list[Fact]) -> list[Fact]:
    """The facts whose request prompt the model answers (one recall table for all)."""
    if not facts:
        return []
    rows = recall_table(model, facts, ("request",)).rows
    hit = {(r["subject"], r["relation"]) for r in rows if r["recalled"]}
    return [f for f in facts if (f.subject, f.relation) in hit]


def _forget(model, fact: Fact, family: str, before: float) -> float:
    return float("nan") if before == 0 else (before - _rate(model, [fact], family)) / before


def score_site(model, facts: list[Fact], layer: int, position: str, objective: str, sample: list[str],
               world: list[Fact]) -> dict[str, float]:
    """ROME at (layer, position) on each fact in turn, undo between; the means of COLUMNS (NaN skipped)."""
    C = second_moment(model, layer, sample, progress=False)
    config = RomeConfig(layer=layer, objective=objective, position=position)
    rows = []
    for f in facts:
        same = _recalled(model, [g for g in f.neighbors if g.subject == f.subject])
        others = _recalled(model, [g for g in f.neighbors if g.subject != f.subject]
                           or [g for g in world if g.subject != f.subject])
        families = [fam for fam in ("paraphrase", "held_out") if f.templates(fam)]
        before = {fam: _rate(model, [f], fam) for fam in families}
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # "not recalled in the first place" is counted below
            record = rome(model, f, config, C=C)
        seconds = time.perf_counter() - start
        rows.append({"efficacy": 1 - _rate(model, [f]),
                     **{f"{fam}_forget": _forget(model, f, fam, before[fam]) for fam in families},
                     "same_subject_kept": _rate(model, same) if same else float("nan"),
                     "other_subject_kept": _rate(model, others) if others else float("nan"),
                     "seconds_per_fact": seconds})
        record.undo()
    out = {}
    for c in COLUMNS:
        values = [r[c] for r in rows if c in r and r[c] == r[c]]
        out[c] = float(np.mean(values)) if values else None
    return out


def bench_model(name: str, n_facts: int, seed: int = 0) -> dict[str, Any]:
    model, facts, sample, sample_note = load(name, n_facts, seed)
    world = facts if name == "stories260k" else None
    if world is None:
        world = list(organism.world()) if name == "organism" else list(
            FactSet.load(foreign_dir(name.removeprefix("foreign_"), seed) / "world.json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        site = edit_site(model, facts, seed=seed)
    subject = [s if s is not None else -1.0 for s in site.roles["subject_last"]]
    default = {"layer": int(np.argmax(subject)), "position": "subject_last"}
    traced = {"layer": site.layer, "position": site.position}
    start = time.perf_counter()
    for layer in {default["layer"], traced["layer"]}:
        second_moment(model, layer, sample, progress=False)
    result: dict[str, Any] = {
        "model": name, "n_layers": model.cfg.n_layers, "d_mlp": model.cfg.d_mlp, "facts": len(facts),
        "recalled_before": _rate(model, facts), "sample": f"{sample_note} ({len(sample)} texts)",
        "covariance_seconds": time.perf_counter() - start, "site": site.to_dict(),
        "site_warnings": [str(w.message) for w in caught], "traced": traced, "default": default, "rows": {}}
    for label, where in (("traced", traced), ("default", default)):
        for objective in OBJECTIVES:
            log.info("sites: %s %s L%d %s %s", name, label, where["layer"], where["position"], objective)
            result["rows"][f"{label} {objective}"] = {"site": label, **where, "objective": objective,
                                                       **score_site(model, facts, where["layer"], where["position"],
                                                                    objective, sample, world)}
    return result


def run(out: str | Path, n_facts: int = 20, seed: int = 0, models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {"n_facts": n_facts, "seed": seed, "goal": GOAL,
                               "models": {m: bench_model(m, n_facts, seed) for m in models}}
    results["total_seconds"] = time.perf_counter() - start
    write_result(out, "sites", results, to_markdown(results), seed=seed, wall_seconds=results["total_seconds"])
    return results


def _cell(row: dict[str, Any], c: str) -> str:
    v = row.get(c)
    if v is None:
        return "-"
    miss = " (miss)" if c in GOAL and v < GOAL[c] else ""
    return f"{v:.2f}{miss}"


def to_markdown(r: dict[str, Any]) -> str:
    goal = ", ".join(f"{k} >= {v}" for k, v in r["goal"].items())
    lines = ["# Edit sites: ROME deletions where the trace points vs at the last subject token", "",
             f"{r['n_facts']} facts per model (fewer where the model has fewer), one at a time with undo, seed "
             f"{r['seed']}; total {r['total_seconds']:.0f}s. Goal (issue 25): {goal}. `traced`: the (layer, position) "
             "`excise.locate.edit_site` picks; `default`: the last subject token at the subject curve's peak (ROME's "
             "site). held_out_forget is over templates never trained and never in a key (the prompt_last key "
             "averages the request and its paraphrases, so paraphrase_forget is in-sample there).", ""]
    for name, m in r["models"].items():
        site = EditSite.from_dict(m["site"])
        shares = ", ".join(f"{k} {v:.0%}" for k, v in site.shares.items())
        lines += [f"## {name}", "",
                  f"{m['n_layers']} layers, d_mlp {m['d_mlp']}; {m['facts']} facts (request recall before "
                  f"{m['recalled_before']:.2f}); covariance sample: {m['sample']}. Trace: restored share {shares}; "
                  f"picks layer {site.layer} at {site.position} (traced in {site.seconds:.1f}s)."
                  + (f" Warned: {m['site_warnings'][0]}" if m["site_warnings"] else ""), "",
                  "| site | layer | position | objective | " + " | ".join(COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 4) + "|"]
        for row in m["rows"].values():
            lines.append(f"| {row['site']} | {row['layer']} | {row['position']} | {row['objective']} | "
                         + " | ".join(_cell(row, c) for c in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)
