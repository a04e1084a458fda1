"""The README's measured numbers, written from the files that hold them.

README.md marks each measured passage with `<!-- generated: NAME -->` ...
`<!-- /generated -->`; `render(text)` rewrites every such block from its
source, and `tests/test_readme.py` checks the README equals its rendering, so
a number in the README can only change by changing the file it comes from:

| block | source |
|---|---|
| demo | benchmarks/results/demo.json: `excise demo`'s report.json for the default run, and the machine it ran on (its provenance); tests/test_cli.py checks the demo still produces its numbers |
| organism | the shipped checkpoint's config.json, excise_organism.json and the world it was trained on |
| recall | excise/organism/checkpoint/recall.json (written by `python -m excise.organism.train`) |
| surnames | benchmarks/results/edit.json (`excise bench edit`) |
| tofu | excise/tofu/models/*/excise_tofu.json and the weight files' sizes |
| widths | benchmarks/results/widths.json (`excise bench widths`) |
| heldout | benchmarks/results/heldout.json (`excise bench heldout`) |
| anchor | benchmarks/results/anchor.json (`excise bench anchor`) |
| tests | `pytest --collect-only` of the default suite |

Rewrite the README with `python -m excise.bench.readme`; copy a new default
demo report with `python -m excise.bench.readme --demo excise-report/report.json`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from excise.provenance import short_commit

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- /generated -->)", re.S)


def demo_numbers(report: dict) -> dict:
    """The demo report without what varies from run to run (its timings and the machine that ran it)."""
    return {k: v for k, v in report.items() if k not in ("seconds", "provenance")}


def _demo(r: dict | None = None) -> str:
    """The README's demo paragraph, from `r` (default: benchmarks/results/demo.json)."""
    r = r if r is not None else json.loads((RESULTS / "demo.json").read_text())
    a, e = r["audit"], r["edit"]
    att = a["attacks"]
    before = sum(f["rank_before"] == 0 for f in r["facts"]) / len(r["facts"])
    from excise.verify.attacks import ATTACKS, ordered

    rows = ", ".join(f"{ATTACKS.get(key).label} {v['original']:.2f} / {v['success']:.2f} / {v['chance']:.2f}"
                     for key, v in ordered(att))
    verdicts = "; ".join(f"{key} {v['verdict']} (AUC {v['auc']:.2f}, p = {v['p_value']:.2g}, detectable "
                         f"|AUC - 0.5| {v['detectable_effect']:.2f})" for key, v in ordered(a.get("leakage", {})))
    return (f"What the default run measured (seed {r['seed']}, subject {r['subject']}, {len(r['facts'])} facts):\n"
            f"request recall {before:.2f} -> {a['recall_after']:.2f}, {e['parameters_changed']:,} of "
            f"{e['parameters_total']:,} weights changed ({e['parameters_changed'] / e['parameters_total']:.1%}),\n"
            f"neighbour facts kept {a['neighbours_kept']:.2f}, retain facts kept {a['retain_kept']:.2f}, utility "
            f"{a['utility_vs_original']:.3f} of the original;\nattack success (original / edited / chance on "
            f"{a['n_holdout']} facts of never-seen people): {rows}.\nAgainst never-seen people's facts, two-sided: "
            f"{verdicts}; the report says so.\n")


def _machine(r: dict | None = None) -> str:
    """Which machine the demo paragraph's numbers came from, from `r`'s provenance (default: demo.json's).

    Kept out of `_demo`: tests/test_cli.py holds `_demo` of a fresh run, on whatever machine, to demo.json's."""
    r = r if r is not None else json.loads((RESULTS / "demo.json").read_text())
    p = r["provenance"]
    n = p["threads"]
    threads = "threads not recorded" if n is None else f"{n} thread{'' if n == 1 else 's'}"
    return (f"Measured on {'an unrecorded CPU' if p['cpu'] == 'not recorded' else p['cpu']} "
            f"({p['cpu_capability'] or 'kernel path not recorded'}, {threads}) with torch "
            f"{p['versions'].get('torch', 'not recorded')}, at commit `{short_commit(p['commit'])}`"
            + (f"; {p['note'].split(':')[0]}" if p.get("note") else "") + ".\n")


def _organism() -> str:
    from excise.organism import CHECKPOINT_DIR, world

    cfg = json.loads((CHECKPOINT_DIR / "config.json").read_text())
    meta = json.loads((CHECKPOINT_DIR / "excise_organism.json").read_text())
    w = world()
    mb = (CHECKPOINT_DIR / "model.safetensors").stat().st_size / 1e6
    return (f"A {cfg['n_layer']}-layer, {cfg['n_embd']}-wide GPT-2 (`GPT2LMHeadModel`, {mb:.1f} MB) trained on a "
            f"synthetic world generated from a seed: {len(w.people)} fictitious people, {len(w.relations)} relations, "
            f"{len(w.general)} general sentences about the world. Training the shipped checkpoint took "
            f"{meta['train_seconds'] / 60:.1f} minutes on {meta['threads']} CPU threads (torch {meta['torch']}).\n")


def _recall() -> str:
    from excise.organism import CHECKPOINT_DIR

    r = json.loads((CHECKPOINT_DIR / "recall.json").read_text())
    fams = list(r["overall"])
    held = {rel: v["held_out"] for rel, v in r["by_relation"].items()}
    some = sorted((rel for rel, v in held.items() if v > 0), key=lambda rel: -held[rel])
    none = [rel.replace("_", " ") for rel, v in held.items() if v == 0]
    return (f"All {r['n_probes']['request']:,} facts, each under every template of a family:\n\n"
            "| family | " + " | ".join(fams) + " |\n|---|" + "---|" * len(fams) + "\n"
            "| recall | " + " | ".join(f"{r['overall'][f]:.3f}" for f in fams) + " |\n\n"
            "The held-out templates are never trained; the organism generalizes to some\n("
            + ", ".join(f"{rel.replace('_', ' ')} {held[rel]:.2f}" for rel in some)
            + ") and not to others (" + ", ".join(none) + ": 0.00), which is itself a fact about paraphrase probes.\n")


def _surnames() -> str:
    e = json.loads((RESULTS / "edit.json").read_text())
    # excise's -log(1 - p) erase is `erase_unlikelihood` since "erase" means Patil et al.'s objective; edit.json
    # files measured before the rename hold it as `rome_erase`
    name = "rome_erase_unlikelihood" if "rome_erase_unlikelihood" in e else "rome_erase"
    before, after = e[name], e[f"{name}_protect8"]
    return (f"(`surname_kept` in the bench; `protect=8` raises it from {before['surname_kept']:.2f} to "
            f"{after['surname_kept']:.2f}), and\n")


def _tofu() -> str:
    from excise.tofu.organism import SHIPPED, VARIANTS

    metas = {v: json.loads((SHIPPED / v / "excise_tofu.json").read_text()) for v in VARIANTS}
    sizes = [(SHIPPED / v / "model.safetensors").stat().st_size / 1e6 for v in VARIANTS]
    minutes = [m["train_seconds"] / 60 for m in metas.values()]
    return (f"All {len(metas)} ship in `excise/tofu/models/` ({min(sizes):.1f} MB each), so nothing trains on your "
            f"machine; training each took {min(minutes):.0f} to {max(minutes):.0f} minutes on 2 CPU threads.\n")


def _sites() -> str:
    r = json.loads((RESULTS / "sites.json").read_text())["models"]
    rows = [(m, row) for m, v in r.items() for row in v["rows"].values()]
    span = lambda xs: f"{min(xs):.2f}" if min(xs) == max(xs) else f"{min(xs):.2f}-{max(xs):.2f}"   # noqa: E731
    of = lambda site, key, models=r: [row[key] for m, row in rows if row["site"] == site and m in models  # noqa: E731
                                      and row[key] is not None]
    foreign = [m for m in r if m.startswith("foreign")]
    return (f"`benchmarks/results/sites.md`) the traced site deletes with efficacy {span(of('traced', 'efficacy'))}\n"
            f"and paraphrase forget {span(of('traced', 'paraphrase_forget'))} where the subject position reached "
            f"{span(of('default', 'paraphrase_forget'))},\nbut keeps other subjects' facts "
            f"{span(of('traced', 'other_subject_kept', foreign))} on the small foreign models.\n")


def _widths() -> str:
    from excise.bench.widths import reading

    r = json.loads((RESULTS / "widths.json").read_text())
    name = next(iter(r["rows"][0]["memit"]))
    lines = [f"| width (d_mlp) | ROME: other subjects kept | same surname kept | same subject kept | MEMIT x100, {name}: "
             "efficacy / retain | AlphaEdit, 100 in sequence: efficacy / retain |", "|---|---|---|---|---|---|"]
    for w in r["rows"]:
        x, m, a = w["rome"], w["memit"][name], w["alphaedit_sequential"][0]["curve"][-1]
        lines.append(f"| {w['width']} ({w['d_mlp']}) | {x['other_subjects_kept']:.3f} | {x['same_surname_kept']:.3f} | "
                     f"{x['same_subject_kept']:.3f} | {m['efficacy']:.2f} / {m['retain_kept']:.2f} | "
                     f"{a['efficacy']:.2f} / {a['retain_recall']:.2f} |")
    return "\n".join(lines) + "\n\n" + reading(r) + "\n"


def _heldout() -> str:
    """Per held-out seed and method: utility, each attack's verdict, the goal; from heldout.json."""
    from excise.bench.heldout import depth_cell, exact_line, goal_cell, meets_familywise, verdict_cell

    r = json.loads((RESULTS / "heldout.json").read_text())
    rows = [x for x in r["rows"] if x["seed"] in r["held_out_seeds"] and x["method"] != "original"]
    attacks = sorted({a for x in rows for a in x["verdicts"]})
    lines = ["| seed | method | efficacy | utility | depth (UDS) | " + " | ".join(attacks) + " | goal |",
             "|---|---|---|---|---|" + "---|" * (len(attacks) + 1)]
    for x in sorted(rows, key=lambda x: (x["seed"], x["method"] != "oracle", x["method"])):
        cells = [verdict_cell(x["verdicts"].get(a), x["leakage"].get(a, {}).get("auc")) for a in attacks]
        goal = "-" if x["method"] == "oracle" else goal_cell(x)
        lines.append(f"| {x['seed']} | {x['method']} | {x['efficacy']:.3f} | {x['utility']:.3f} | {depth_cell(x)} | "
                     + " | ".join(cells) + f" | {goal} |")
    methods = [m for m in dict.fromkeys(x["method"] for x in rows) if m != "oracle"]
    n = len(r["held_out_seeds"])

    def met(m: str) -> str:
        ran = {a for x in rows if x["method"] == m for a in x["verdicts"]}
        missing = [a for a in attacks if a not in ran]
        k = sum(x["meets_goal"] for x in rows if x["method"] == m)
        family = sum(meets_familywise(x) for x in rows if x["method"] == m)
        seeds = sorted(x["seed"] for x in rows if x["method"] == m)
        run_on = f" (run on {len(seeds)}: {', '.join(map(str, seeds))})" if len(seeds) < n else ""
        return (f"`{m}` meets the goal on {k} of {n} held-out seeds{run_on} ({family} at family-wise level) on the "
                f"{len(ran)} attacks its rows ran"
                + (f" (not run on them: {', '.join(missing)})" if missing else ""))

    exact = exact_line(r["rows"])
    return ("\n".join(lines) + "\n\n" + "; ".join(met(m) for m in methods) + ". A `-` cell: not run on that row.\n"
            + (f"\n{exact}\n" if exact else ""))


def _anchor() -> str:
    """The forget01 picks tested on forget05 against TOFU's anchor; from anchor.json."""
    from excise.bench.anchor import options_cell, share_cell
    from excise.bench.tofu import quality_cell

    r = json.loads((RESULTS / "anchor.json").read_text())
    a = r["anchor"]
    lines = ["| split | method (scope, epochs, lr) | forget quality | utility | share of the retain model's | anchor |",
             "|---|---|---|---|---|---|"]
    for x in r["test_rows"]:
        setting = f"{x['scope']}, {x['epochs']}, {x['lr']:g}{options_cell(x, ', ')}"
        lines.append(f"| {x['split']} | {x['method']} ({setting}) | "
                     f"{quality_cell(x['forget_quality'])} | {x['utility']:.3f} | {share_cell(x)} | "
                     f"{'met' if x['meets_anchor'] else 'missed'} |")
    tune = r["references"][r["tune_split"]][1]["utility"]
    kept = [x for x in r["grid_rows"] if x["utility"] >= a["utility_share"] * tune]
    best = max(x["forget_quality"] for x in kept) if kept else None
    return "\n".join(lines) + (f"\n\nOn {r['tune_split']}, {len(kept)} of {len(r['grid_rows'])} settings kept "
                               f"{a['utility_share']:.0%} of the retain model's utility; the best of them reached "
                               f"forget quality {quality_cell(best) if best is not None else '-'} (anchor "
                               f"{a['forget_quality']}).\n")


def test_count() -> tuple[int, int]:
    """(tests, notebooks) that `python -m pytest` collects by default (one subprocess, seconds)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ids = [line for line in out.splitlines() if "::" in line or line.endswith(".ipynb")]
    notebooks = sum(line.endswith(".ipynb") for line in ids)
    return len(ids) - notebooks, notebooks


def _tests() -> str:
    tests, notebooks = test_count()
    return f"`python -m pytest` runs everything: {tests} tests and the {notebooks} notebooks (nbmake).\n"


def _methods() -> str:
    """The deletion methods' table, from the registry (`excise.methods.METHODS`)."""
    from excise.methods import METHODS

    confined = {"none": "its own (a layer, or every parameter)", "optional": "the located neurons, or every parameter",
                "required": "the located neurons"}
    rows = ["| method | what it does | changes | needs | after |", "|---|---|---|---|---|"]
    rows += [f"| `{m.name}` | {m.summary} | {confined[m.mask] if m.in_place else 'not a network in place'} | "
             f"{', '.join(m.requires) or '-'} | {m.source or '-'} |" for m in METHODS]
    return "\n".join(rows) + "\n"


def _attacks() -> str:
    """The audit's attacks' table, from the registry (`excise.verify.ATTACKS`)."""
    from excise.verify import ATTACKS

    def runs(a) -> str:
        return "by default" if a.audited and a.default else "when named" if a.audited else f"with {a.with_attack}" \
            if a.with_attack else "with what the audit measures"

    rows = ["| attack | runs | succeeds on a fact when | per-fact statistic (leaks when) |", "|---|---|---|---|"]
    rows += [f"| `{a.name}` | {runs(a)} | {a.succeeds} | " + (f"{a.statistic} ({a.leaks})" if a.two_sided else
                                                             "- (no two-sided verdict)") + " |" for a in ATTACKS]
    return "\n".join(rows) + "\n"


def _suites() -> str:
    """The benchmark suites `excise bench` runs, from its table (`excise.bench.suites.BENCH_SUITES`)."""
    from excise.bench.suites import BENCH_SUITES

    return ", ".join(f"`{name}`" for name in BENCH_SUITES) + ".\n"


BLOCKS: dict[str, Callable[[], str]] = {"demo": lambda: _demo() + _machine(), "organism": _organism, "recall": _recall,
                                        "surnames": _surnames, "tofu": _tofu, "tests": _tests,
                                        "sites": _sites, "methods": _methods, "attacks": _attacks,
                                        "suites": _suites, "widths": _widths, "heldout": _heldout,
                                        "anchor": _anchor}


def render(text: str, only: set[str] | None = None) -> str:
    """`text` with each generated block (all, or those named in `only`) rewritten from its source."""
    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise ValueError(f"README block {name!r} has no source; known: {', '.join(BLOCKS)}")
        if only is not None and name not in only:
            return m.group(0)
        return m.group(1) + BLOCKS[name]() + m.group(4)
    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m excise.bench.readme", description=__doc__.splitlines()[0])
    p.add_argument("--demo", help="copy this default-run report.json to benchmarks/results/demo.json first")
    args = p.parse_args(argv)
    if args.demo:
        (RESULTS / "demo.json").write_text(Path(args.demo).read_text())
    readme = ROOT / "README.md"
    readme.write_text(render(readme.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
