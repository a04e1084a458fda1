"""The `excise` command line.

    excise demo            load the built-in organism and print how well it knows its world
    excise bench locate    speed and faithfulness of the locate methods (writes locate.json/.md)
    excise bench edit      efficacy, specificity and cost of every edit method (writes edit.json/.md)
    excise bench verify    the audit's calibration cases: original, oracle, guardrail, shallow suppression

The demo grows into the full locate -> edit -> verify run as those land.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import excise
    from excise.facts import FAMILIES

    start = time.perf_counter()
    print("excise demo: loading the built-in model organism ...", flush=True)
    model = excise.load("organism", device=args.device)
    world = excise.organism.world()
    cfg = model.cfg
    print(f"  {cfg.n_layers} layers, d_model={cfg.d_model}, d_mlp={cfg.d_mlp}, "
          f"{cfg.n_heads} heads, vocab={cfg.d_vocab}")
    print(f"  {world!r}")
    example = world[0]
    print(f"  e.g. {example.fill(example.prompt)!r} -> {example.target!r}")
    print("measuring recall of every fact under every prompt family ...", flush=True)
    table = excise.recall_table(model, world, FAMILIES)
    print()
    print("Top-1 first-token recall (held_out: templates never trained)")
    print(table.to_markdown())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "recall.json").write_text(json.dumps(table.to_dict(), indent=1))
        (out / "recall.md").write_text(table.to_markdown() + "\n")
        print(f"\nwrote {out / 'recall.md'} and {out / 'recall.json'}")
    print(f"\ndone in {time.perf_counter() - start:.1f}s")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.suite == "locate":
        from excise.bench.locate import run, to_markdown

        n, loop, planted = (5, 1, 2) if args.quick else (args.facts, 5, 10)
        results = run(args.out, n_facts=n, loop_facts=loop, planted_facts=planted, seed=args.seed)
        print(to_markdown(results))
        print(f"wrote {Path(args.out) / 'locate.json'} and {Path(args.out) / 'locate.md'}")
    elif args.suite == "edit":
        from excise.bench.edit import run, to_markdown

        sizes = dict(n_facts=3, n_memit=5, n_sequential=10) if args.quick else dict(n_facts=args.facts)
        results = run(args.out, **sizes)
        print(to_markdown(results))
        print(f"wrote {Path(args.out) / 'edit.json'} and {Path(args.out) / 'edit.md'}")
    elif args.suite == "verify":
        from excise.bench.verify import run

        run(args.out, fraction=0.05, seed=args.seed)
        print((Path(args.out) / "verify.md").read_text())
        print(f"wrote {Path(args.out) / 'verify.json'} and {Path(args.out) / 'verify.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="excise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the built-in organism")
    demo.add_argument("--out", default="excise-report", help="report folder (default: ./excise-report)")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="run a benchmark and write its tables")
    bench.add_argument("suite", choices=["locate", "edit", "verify"], help="which benchmark")
    bench.add_argument("--out", default="benchmarks/results", help="output folder")
    bench.add_argument("--facts", type=int, default=50, help="facts to measure over (default 50)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--quick", action="store_true", help="5 facts: a smoke run for CI")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
