"""`excise bench batch`: batch deletions that see their own damage, before and after spreading them (issue 36).

On the two foreign test models (tests/foreign.py: a GPT-2 with two-word subjects and a Llama with one-token
place names, 3 layers each), 20 facts drawn at random (per seed) are deleted in one batch through
`excise.methods.delete`, as a user would: the site traced, the covariance from the model's general text, the
rest of the world as retain facts. Per method and setting:

- efficacy and paraphrase_forget: the request prompts and the paraphrases no longer answer (top-1), of those
  recalled before;
- others_kept: every other subject's fact recalled before and still recalled after (all of them, not the damage
  watch's sample), pooled over the seeds;
- watch: what the damage watch (`SiteConfig.keep`) measured on its sample, and whether it warned;
- layers: where the batch was written.

Settings: memit and alphaedit with `spread=None` (the traced layer alone, what they did before) and `spread=0.5`
(the layers the trace supports, `EditSite.supported`); rome over the same 20 facts one after another, for scale.

Writes DIR/batch.json and DIR/batch.md.
"""

from __future__ import annotations

import random
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from excise.bench.foreign import foreign_suite
from excise.bench.results import write_result
from excise.context import derive
from excise.facts import FactSet
from excise.models import load
from excise.scoring import recall_table, recalled

N_FACTS = 20
SETTINGS = (("memit", {"spread": None}), ("memit", {"spread": 0.5}),
            ("alphaedit", {"spread": None}), ("alphaedit", {"spread": 0.5}), ("rome", {}))


def _layers(record: Any) -> list[int]:
    """The blocks whose parameters the record changed (the first number in each parameter's name)."""
    return sorted({int(m.group(1)) for c in record.changes if (m := re.search(r"\.(\d+)\.", c.name))})


def one_run(directory: Path, method: str, options: dict[str, Any], seed: int) -> dict[str, Any]:
    from excise.methods import delete

    world = list(FactSet.load(directory / "world.json"))
    general = (directory / "general.txt").read_text().splitlines()
    facts = random.Random(seed).sample(world, N_FACTS)
    editing = {f.subject for f in facts}
    retain = [f for f in world if f.subject not in editing]
    model = load(directory, device="cpu")
    before = {fam: recall_table(model, facts, (fam,)).rows for fam in ("request", "paraphrase")}
    others = [f for f, r in zip(retain, recalled(model, retain), strict=True) if r]
    context = derive(model, facts, retain=retain, general=general, sample=general, seed=seed, generate=False)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = delete(model, facts, method, context=context, progress=False, **options)
    seconds = time.perf_counter() - start
    forgot = {}
    for fam, rows in before.items():
        after = recall_table(model, facts, (fam,)).rows
        known = [a for b, a in zip(rows, after, strict=True) if b["recalled"]]
        forgot[fam] = (sum(not a["recalled"] for a in known), len(known))
    damage = record.meta.get("damage", {})
    said = [str(w.message) for w in caught if "other subjects' facts kept" in str(w.message)]
    return {"seed": seed, "forgot": forgot, "others": (sum(recalled(model, others)), len(others)),
            "watch_kept": damage.get("others_kept"), "watched": damage.get("watched_facts"),
            "warned": said[0] if said else None, "seconds": seconds,
            "layers": _layers(record)}


def _pooled(runs: list[dict[str, Any]], key: str, family: str | None = None) -> float:
    pairs = [r[key][family] if family else r[key] for r in runs]
    total = sum(n for _, n in pairs)
    return float(sum(k for k, _ in pairs) / total) if total else float("nan")


def run(out: str | Path, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suite = foreign_suite()
    start = time.perf_counter()
    rows = []
    for arch in ("gpt2", "llama"):
        for method, options in SETTINGS:
            runs = [one_run(suite.SHIPPED / arch, method, options, s) for s in seeds]
            rows.append({"model": arch, "method": method, "options": options, "runs": runs,
                         "efficacy": _pooled(runs, "forgot", "request"),
                         "paraphrase_forget": _pooled(runs, "forgot", "paraphrase"),
                         "others_kept": _pooled(runs, "others"),
                         "others_recalled_before": sum(r["others"][1] for r in runs),
                         "watch_kept": [r["watch_kept"] for r in runs],
                         "warned": sum(r["warned"] is not None for r in runs),
                         "seconds": float(np.mean([r["seconds"] for r in runs]))})
    r = {"n_facts": N_FACTS, "seeds": list(seeds), "rows": rows}
    write_result(out, "batch", r, to_markdown(r), seed=list(seeds), wall_seconds=time.perf_counter() - start)
    return r


def _setting(row: dict[str, Any]) -> str:
    return row["method"] + "".join(f" {k}={v}" for k, v in row["options"].items())


def to_markdown(r: dict[str, Any]) -> str:
    lines = ["# Batch deletions on the foreign models: one layer or the layers the trace supports", "",
             f"{r['n_facts']} facts per seed (seeds {', '.join(map(str, r['seeds']))}) deleted in one batch through "
             "`excise.methods.delete` (rome: one after another). efficacy and paraphrase forget: of the prompts "
             "recalled before; others kept: every other subject's fact recalled before, pooled over the seeds; "
             "watch: the damage watch's own sample, per seed; warned: runs whose watch warned.", "",
             "| model | setting | layers | efficacy | paraphrase forget | others kept (of) | watch | warned | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        layers = sorted({tuple(run["layers"]) for run in row["runs"]})
        watch = ", ".join("-" if w is None else f"{w:.2f}" for w in row["watch_kept"])
        lines.append(f"| {row['model']} | {_setting(row)} | {'; '.join(map(str, map(list, layers)))} | "
                     f"{row['efficacy']:.2f} | {row['paraphrase_forget']:.2f} | {row['others_kept']:.2f} "
                     f"({row['others_recalled_before']}) | {watch} | {row['warned']} of {len(row['runs'])} | "
                     f"{row['seconds']:.1f} |")
    warned = next((run["warned"] for row in r["rows"] for run in row["runs"] if run["warned"]), None)
    if warned:
        lines += ["", f"The watch's warning, as printed: \"{warned}\""]
    return "\n".join(lines)
