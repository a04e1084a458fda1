"""The `excise` command line.

    excise demo            locate -> edit -> verify one subject of the built-in organism; a report folder
    excise locate MODEL --facts F.json      where the facts live (trace, patching, attribution, fisher)
    excise edit MODEL --facts F.json        delete them; writes an EditRecord (.safetensors)
    excise verify MODEL --facts F.json [--record R]   audit (with the record applied); audit.md/.json/.png
    excise bench locate    speed and faithfulness of the locate methods (writes locate.json/.md)
    excise bench edit      efficacy, specificity and cost of every edit method (writes edit.json/.md)
    excise bench sequential   100 deletions one after another: AlphaEdit vs MEMIT vs ROME (sequential.json/.md)
    excise bench verify    the audit's calibration cases: original, oracle, guardrail, shallow suppression
    excise bench unlearn   the method table on 1/5/10% splits vs the retrain oracle (and benchmarks/RESULTS.md)
    excise bench stories   trace, ROME-delete and audit on stories260k, a real pretrained Llama (writes stories.json/.md)
    excise bench sites     ROME deletions at the traced (layer, position) vs the last subject token, on four models
    excise bench sisa      SISA (sharded exact unlearning): recall, deletion cost and audit vs the oracle (sisa.json/.md)
    excise bench calibration   derived never-seen baselines vs the organism's real ones, foreign oracles vs derived
    excise bench tofu --split forget01   unlearning on the TOFU organism by TOFU's metrics (tofu.json/.md, tofu-SPLIT.png)
    excise bench anchor    TOFU's anchor: a setting chosen on forget01 by TOFU's metrics, tested on forget05
    excise tofu build      train (or find cached) the TOFU organism and its retain models

MODEL: "organism", "stories260k" (a tiny Llama, shipped), a TransformerLens model name, or a local Hugging Face
directory. F.json: a list of facts (see the README); for the organism
{"subject": ...} or {"subject": ..., "relation": ...} are looked up in its world.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from excise.bench.suites import BENCH_SUITES
from excise.edit.rome import DELETION_OBJECTIVE, OBJECTIVES
from excise.methods import DEFAULT as METHOD_DEFAULT
from excise.methods import DEFAULT_NEURONS as NEURONS_DEFAULT
from excise.methods import METHODS
from excise.models import ModelLoadError, load
from excise.verify.attacks import audited, defaults


def _demo(args: argparse.Namespace) -> int:
    from excise.demo import run

    r = run(args.out, subject=args.subject, method=args.method, neurons=args.neurons, seed=args.seed,
            oracle=args.oracle, device=args.device, n_holdout_people=args.holdout_people, log=lambda m: print(m, flush=True))
    a = r["audit"]
    print(f"\n{r['subject']}: {len(r['facts'])} facts deleted with {r['method']}; "
          f"{r['edit']['parameters_changed']:,} parameters changed")
    print(f"  request recall after: {a['recall_after']:.2f}; neighbours kept {a['neighbours_kept']:.2f}, "
          f"retain kept {a['retain_kept']:.2f}, utility vs original {a['utility_vs_original']:.3f}")
    for name, v in a["attacks"].items():
        print(f"  {name:<11} success {v['success']:.2f} (original {v['original']:.2f}, chance {v['chance']:.2f})")
    print(f"wrote {Path(args.out) / 'report.md'} and its figures in {r['seconds']['total']:.0f}s")
    return 0


def _read_lines(path: str) -> list[str]:
    texts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path} has no text: give one text per line (like the model's training text)")
    return texts


def _load(args: argparse.Namespace):
    """The model, the facts, and their KnowledgeContext: the named model's own (the organism's world), or given
    files plus derivations."""
    from excise.context import derive
    from excise.facts import FactSet
    from excise.models import NAMED

    model = load(args.model, device=args.device)
    named = NAMED.get(args.model) if args.model in NAMED else None
    lookup = named.lookup() if named is not None and named.lookup is not None else None
    facts = list(FactSet.load(args.facts, lookup=lookup))
    sample = _read_lines(args.sample) if args.sample else None
    given = {
        "retain": list(FactSet.load(args.retain, lookup=lookup)) if args.retain else None,
        "holdout": list(FactSet.load(args.holdout)) if args.holdout else None,
        "sample": sample,
        "general": sample,          # --sample is the general text too (its help says so), as derived text is both
    }
    if named is not None and named.context is not None:
        context = named.context(facts, args.holdout_people, args.seed).override(**given)
    else:
        # text is sampled from the model (seconds) only for what reads it: the audit's general text, a method's
        # covariance or distillation sample (rome, memit, alphaedit, undo); the others read neither
        generate = args.command == "verify" or (args.command == "edit" and "sample" in _reads(args.method))
        context = derive(model, facts, seed=args.seed, n_holdout_subjects=args.holdout_people or 30,
                         generate=generate, **given)
        print("knowledge context (what excise was given or derived):\n" + context.describe())
    edit_needs = args.command == "edit" and "stand_ins" in _reads(args.method)
    needed = "holdout" if args.command == "verify" else "stand_ins" if edit_needs else None
    if needed and not getattr(context, needed):
        what = ("no never-seen subjects: the audit can give no two-sided verdict and no chance level"
                if needed == "holdout" else f"no never-seen stand-ins for {args.method}")
        fix = "pass --holdout H.json" if needed == "holdout" else "pass --stand-ins 'Name A,Name B'"
        message = f"{what} ({context.notes.get(needed, 'not derived')}); {fix}"
        if args.strict:
            raise ValueError(message + " (--strict)")
        print(f"warning: {message}", flush=True)
    return model, facts, context


def _reads(method: str) -> set[str]:
    m = METHODS.get(method)
    return set(m.requires) | set(m.reads)


def _locate(args: argparse.Namespace) -> int:
    from excise import locate as L

    model, facts, context = _load(args)
    retain = context.retain
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.method == "fisher":
        loc = L.fisher(model, facts, retain=retain)
        results = [("fisher", loc)]
    else:
        subjects = [f.subject for f in facts]        # one noise unit for all, over every subject (ROME's)
        fn = {"trace": lambda f: L.causal_trace(model, f, seed=args.seed, subjects=subjects),
              "patching": lambda f: L.activation_patching(model, f, seed=args.seed, subjects=subjects),
              "attribution": lambda f: L.attribution_patching(model, f, seed=args.seed, subjects=subjects)}[args.method]
        results = [(f"{args.method}-{i}", fn(f)) for i, f in enumerate(facts)]
    for name, loc in results:
        loc.save(out / f"{name}.json")
        loc.plot().savefig(out / f"{name}.png", dpi=110)
        peaks = ", ".join(f"{k} {loc.peak(k)}" for k in loc.kinds)
        print(f"{name}: peaks {peaks}")
    print(f"wrote {len(results)} localization(s) (.json and .png) to {out}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    from excise import methods as M
    from excise.locate import fisher

    model, facts, context = _load(args)
    retain = context.retain
    method = M.get(args.method)
    options = dict(M.parse_option(method, o) for o in args.option)
    located = None
    if M.needs_located(args.method, args.neurons):
        if not retain:
            raise ValueError(f"{args.method} on located neurons scores Fisher forget/retain: pass --retain R.json "
                             "(facts the model must keep)" + (", or --neurons 0" if method.mask == "optional" else ""))
        located = fisher(model, facts, retain=retain)
    site = {k: v for k, v in {"layer": args.layer, "position": args.position, "objective": args.objective}.items()
            if v is not None}
    record = M.delete(model, facts, args.method, retain=retain or [], located=located, neurons=args.neurons,
                      seed=args.seed, context=context, **site, **options,
                      stand_ins=[n.strip() for n in args.stand_ins.split(",")] if args.stand_ins else None)
    record.meta.update({"model": args.model, "facts_file": str(args.facts)})
    record.save(args.out)
    if "site" in record.meta:
        from excise.locate.site import EditSite

        print(EditSite.from_dict(record.meta["site"]).summary())
    print(record.summary())
    print(f"wrote {args.out} (excise verify {args.model} --facts {args.facts} --record {args.out} audits it)")
    return 0


def _methods_help() -> str:
    """The registered deletion methods, one line each (`excise edit --help`)."""
    width = max(len(m.name) for m in METHODS)
    return "deletion methods (--method; --option KEY=VALUE sets a field of its config):\n" + "\n".join(
        f"  {m.name:<{width}}  {m.summary}" + (f" [needs {', '.join(m.requires)}]" if m.requires else "")
        for m in METHODS)


def _verify(args: argparse.Namespace) -> int:
    from excise.edit import EditRecord
    from excise.verify import AuditConfig, audit
    from excise.weights import copy_model

    model, facts, context = _load(args)
    reference = None
    if args.record:
        reference = copy_model(model)
        EditRecord.load(args.record, model).apply()
    config = AuditConfig(top_b=args.top_b, seed=args.seed,
                         **({"attacks": tuple(a.strip() for a in args.attacks.split(","))} if args.attacks else {}))
    report = audit(model, facts, reference=reference, oracle=True if args.oracle else None, context=context,
                   config=config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "audit.json")
    (out / "audit.md").write_text(report.to_markdown() + "\n")
    report.plot().savefig(out / "audit.png", dpi=110, bbox_inches="tight")
    print(report.summary())
    print(f"wrote {out / 'audit.md'}, audit.json and audit.png")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    extra = BENCH_SUITES[args.suite](args)
    out = Path(args.out)
    print((out / f"{args.suite}.md").read_text())
    print(f"wrote {out / (args.suite + '.json')}, {args.suite}.md" + "".join(f", {f}" for f in extra))
    return 0


def _tofu(args: argparse.Namespace) -> int:
    from excise.tofu.organism import TofuRecipe, model_dir

    recipe = TofuRecipe(seed=args.seed)
    for variant in args.variants.split(","):
        path = model_dir(variant.strip(), recipe)
        meta = json.loads((path / "excise_tofu.json").read_text())
        print(f"{variant}: {path} ({meta['rows']} rows, trained in {meta['train_seconds']:.0f}s)")
    return 0


def _demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="run the main job on the built-in organism")
    demo.add_argument("--out", default="excise-report", help="report folder (default: ./excise-report)")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.add_argument("--subject", default=None, help="a person of the organism's world (default: seeded choice)")
    demo.add_argument("--method", default=METHOD_DEFAULT, choices=METHODS.names(),
                      help=f"deletion method (default {METHOD_DEFAULT}; `excise edit --help` lists them)")
    demo.add_argument("--neurons", type=int, default=NEURONS_DEFAULT,
                      help=f"confine gradient methods to the top-N Fisher neurons; 0: all parameters (default {NEURONS_DEFAULT})")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--holdout-people", type=int, default=20,
                      help="never-seen people whose facts set the chance levels (default 20; fewer: faster, noisier)")
    demo.add_argument("--oracle", action="store_true", help="also audit the retrain oracle (about 3 minutes the first time)")
    demo.set_defaults(func=_demo)


def _model_parsers(sub) -> None:
    """locate, edit and verify: a model and facts, and what each command adds."""
    def model_command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("model", help="'organism', a TransformerLens model name, or a local Hugging Face directory")
        p.add_argument("--facts", required=True, help="JSON list of facts (see the README)")
        p.add_argument("--retain", default=None, help="JSON list of facts to keep (organism: a world sample)")
        p.add_argument("--holdout", default=None,
                       help="JSON facts about subjects the model never saw (chance levels; organism: its own; "
                            "else derived: the subjects' names recombined, or new names spelled like them)")
        p.add_argument("--holdout-people", type=int, default=None,
                       help="never-seen subjects for chance levels (organism people: default 10 per forget person, "
                            "at least 30; or derived names: default 30)")
        p.add_argument("--sample", default=None,
                       help="text file, one text per line, like the model's training text: rome/memit key "
                            "covariance and general text (organism: its corpus; else sampled from the model)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--strict", action="store_true",
                       help="exit with an error (2) when no never-seen subjects could be made, instead of a warning")
        p.set_defaults(func=func)
        return p

    locate = model_command("locate", "where the facts live", _locate)
    locate.add_argument("--method", default="trace", choices=["trace", "patching", "attribution", "fisher"])
    locate.add_argument("--out", default="excise-locate", help="folder for .json and .png per localization")
    edit = model_command("edit", "delete the facts; write an EditRecord", _edit)
    edit.description, edit.formatter_class = _methods_help(), argparse.RawDescriptionHelpFormatter
    edit.add_argument("--method", default=METHOD_DEFAULT, choices=METHODS.names(), metavar="METHOD",
                      help=f"one of the methods above (default {METHOD_DEFAULT})")
    edit.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="set a field of the method's config, e.g. --option steps=50, --option teacher=npo (undo); "
                           "repeatable")
    edit.add_argument("--neurons", type=int, default=NEURONS_DEFAULT,
                      help="methods that take located neurons (gradient methods, ablate, task_vector, undo): the top-N "
                           "Fisher neurons; 0: all parameters")
    edit.add_argument("--layer", type=int, default=None,
                      help="rome/memit layer (default: organism 0; else the site the causal trace points to, one "
                           "MLP trace per fact: the layer and the position, printed and kept in the record)")
    edit.add_argument("--position", default=None, choices=["subject_last", "prompt_last"],
                      help="rome/memit edit position with --layer (default subject_last, ROME's); without --layer "
                           "the trace picks it")
    edit.add_argument("--objective", default=None, choices=OBJECTIVES,
                      help=f"rome/memit/alphaedit: the deletion objective (default {DELETION_OBJECTIVE})")
    edit.add_argument("--out", default="edit.safetensors", help="where the EditRecord goes")
    edit.add_argument("--stand-ins", default=None,
                      help="swap: comma-separated names the model never saw (the organism draws its own)")
    verify = model_command("verify", "audit the model (with --record applied)", _verify)
    verify.add_argument("--record", default=None, help="an EditRecord to apply first (the unedited model is the reference)")
    verify.add_argument("--oracle", action="store_true",
                        help="also audit the retrain oracle (organism: retrained without the facts, then cached)")
    verify.add_argument("--top-b", type=int, default=20, help="an attack succeeds when the target is in the top-B")
    verify.add_argument("--attacks", default=None,
                        help=f"comma-separated attacks to run (default: {', '.join(defaults())}; any of "
                             f"{', '.join(audited())})")
    verify.add_argument("--out", default="excise-audit")


def _bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="run a benchmark and write its tables")
    bench.add_argument("suite", choices=list(BENCH_SUITES), help="which benchmark")
    bench.add_argument("--out", default="benchmarks/results", help="output folder")
    bench.add_argument("--facts", type=int, default=50, help="facts to measure over (default 50)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default="cpu", help="scale: torch device (cuda also checks the smallest size "
                                                      "against the CPU)")
    bench.add_argument("--quick", action="store_true",
                       help="a smoke run for CI (locate/edit: 5 facts; unlearn: the 1%% split, npo, no relearning attack)")
    bench.add_argument("--methods", default=None, help="unlearn, tofu, robust, rescore: comma-separated methods (default: the suite's own)")
    bench.add_argument("--widths", default=None, help="widths: comma-separated widths to (re)run, the others kept "
                       "from the existing widths.json (default: all)")
    bench.add_argument("--seeds", default=None, help="heldout: comma-separated split seeds (default 3,4,5, fixed "
                       "before any tuning)")
    bench.add_argument("--attacks", default=None, help="heldout: comma-separated attacks, or all (every audited "
                       "attack: " + ", ".join(audited()) + "; default: the default audit's)")
    bench.add_argument("--records", default=None, help="heldout: a folder to save each edit's record in (audit it "
                       "again with excise verify --record)")
    bench.add_argument("--reaudit", action="store_true", help="heldout: add the attacks that compare models "
                       "(reference, depth) to DIR/heldout.json's rows from the records in --records (no edit redone)")
    bench.add_argument("--splits", default=None, help="unlearn: comma-separated fractions (default 0.01,0.05,0.1)")
    bench.add_argument("--shards", default="5", help="sisa: comma-separated shard counts k (default 5; 5,10 trains both)")
    bench.add_argument("--split", default="forget01", choices=["forget01", "forget05", "forget10"],
                       help="tofu: which TOFU forget split (default forget01)")
    bench.set_defaults(func=_bench)


def _tofu_parser(sub) -> None:
    tofu = sub.add_parser("tofu", help="TOFU organism: train (or find cached) the model and its retain models")
    tofu.add_argument("action", choices=["build"], help="build: train every variant not yet cached")
    tofu.add_argument("--variants", default="full,retain99,retain95,retain90",
                      help="comma-separated: full, retain99 (minus forget01), retain95, retain90")
    tofu.add_argument("--seed", type=int, default=0)
    tofu.set_defaults(func=_tofu)


def _cache(args: argparse.Namespace) -> int:
    from excise.cache import KINDS, cache_dir, clear, folders

    if args.clear is not None:
        kinds = [k.strip() for k in args.clear.split(",")] if args.clear else None
        removed = clear(kinds)
        print("removed " + (", ".join(removed) if removed else "nothing (already empty)"))
        return 0
    print(f"excise's cache: {cache_dir()} ($EXCISE_CACHE, else ~/.cache/excise); every folder is safe to delete "
          "(recomputed when needed)")
    for row in folders():
        print(f"{row['kind']:<11} {row['files']:>5} files {row['bytes'] / 2**20:>9.1f} MiB  {row['path']}  "
              f"{KINDS[row['kind']]}")
    return 0


def _cache_parser(sub) -> None:
    cache = sub.add_parser("cache", help="where excise keeps what it derives, and how big it is; --clear empties it")
    cache.add_argument("--clear", nargs="?", const="", default=None, metavar="KINDS",
                       help="delete every cache folder, or the comma-separated kinds named")
    cache.set_defaults(func=_cache)


def build_parser() -> argparse.ArgumentParser:
    """Returns the command line's parser, its method choices and help read from the registries at call time
    (a method registered after import is listed). Cost: none."""
    parser = argparse.ArgumentParser(prog="excise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_demo_parser, _model_parsers, _bench_parser, _tofu_parser, _cache_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModelLoadError) as e:
        print(f"excise {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
