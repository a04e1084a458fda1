"""The benchmark suites `excise bench SUITE` runs: each reads the parsed command line and runs its bench.

BENCH_SUITES maps a suite's name to its runner, which returns the files it wrote beside SUITE.json and SUITE.md;
the CLI's choices and the README's list of suites are read from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _log(message: str) -> None:
    print(message, flush=True)


def _listed(text: str | None, cast=str) -> tuple | None:
    return tuple(cast(x) for x in text.split(",")) if text else None


def _attacks(text: str | None) -> tuple[str, ...] | None:
    """`--attacks`: None (the default audit), `all` (every audited attack) or the names given."""
    from excise.verify.attacks import audited

    return audited() if text == "all" else _listed(text)


def _bench_locate(a: argparse.Namespace) -> list[str]:
    from excise.bench.locate import run

    n, loop, planted = (5, 1, 2) if a.quick else (a.facts, 5, 10)
    run(a.out, n_facts=n, loop_facts=loop, planted_facts=planted, seed=a.seed)
    return []


def _bench_edit(a: argparse.Namespace) -> list[str]:
    from excise.bench.edit import run

    run(a.out, **(dict(n_facts=3, n_memit=5, n_sequential=10) if a.quick else dict(n_facts=a.facts)))
    return []


def _bench_sequential(a: argparse.Namespace) -> list[str]:
    from excise.bench.sequential import run

    run(a.out, **(dict(n=10, n_preserve=100, every=5, ridges=(10.0,)) if a.quick else {}))
    return []


def _bench_verify(a: argparse.Namespace) -> list[str]:
    from excise.bench.verify import run

    run(a.out, fraction=0.05, seed=a.seed)
    return []


def _bench_unlearn(a: argparse.Namespace) -> list[str]:
    from excise.bench.unlearn import run

    run(a.out, quick=a.quick, seed=a.seed, methods=_listed(a.methods), splits=_listed(a.splits, float), log=_log)
    return ["unlearn.png", str(Path(a.out).parent / "RESULTS.md")]


def _bench_tofu(a: argparse.Namespace) -> list[str]:
    from excise.bench.tofu import METHODS, run

    run(a.out, split=a.split, seed=a.seed, methods=_listed(a.methods) or METHODS, log=_log)
    return [f"tofu-{a.split}.png", str(Path(a.out).parent / "RESULTS.md")]


def _bench_sisa(a: argparse.Namespace) -> list[str]:
    from excise.bench.sisa import run

    run(a.out, shards=_listed(a.shards, int), seed=a.seed, log=_log)
    return []


def _bench_stories(a: argparse.Namespace) -> list[str]:
    from excise.bench.stories import run

    run(a.out, seed=a.seed)
    return []


def _bench_robust(a: argparse.Namespace) -> list[str]:
    from excise.bench.robust import METHODS, run

    run(a.out, methods=_listed(a.methods) or METHODS, seed=a.seed, log=_log)
    return ["robust.png"]


def _bench_heldout(a: argparse.Namespace) -> list[str]:
    from excise.bench.heldout import HELD_OUT_SEEDS, METHODS, audit_records, run

    if a.reaudit:
        if not a.records:
            raise SystemExit("--reaudit audits the records --records DIR holds: name the folder")
        audit_records(a.out, a.records, seeds=_listed(a.seeds, int) or HELD_OUT_SEEDS,
                      methods=_listed(a.methods) or METHODS, attacks=_attacks(a.attacks), log=_log)
        return []
    run(a.out, seeds=_listed(a.seeds, int) or HELD_OUT_SEEDS, methods=_listed(a.methods) or METHODS, log=_log,
        attacks=_attacks(a.attacks), records=a.records)
    return []


def _bench_anchor(a: argparse.Namespace) -> list[str]:
    from excise.bench.anchor import run

    run(a.out, seed=a.seed, log=_log)
    return []


def _bench_calibration(a: argparse.Namespace) -> list[str]:
    from excise.bench.calibration import run

    run(a.out, seed=a.seed)
    return []


def _bench_sites(a: argparse.Namespace) -> list[str]:
    from excise.bench.sites import run

    run(a.out, n_facts=5 if a.quick else min(a.facts, 20), seed=a.seed)
    return []


def _bench_batch(a: argparse.Namespace) -> list[str]:
    from excise.bench.batch import run

    run(a.out, seeds=(a.seed,) if a.quick else tuple(range(a.seed, a.seed + 5)))
    return []


def _bench_rescore(a: argparse.Namespace) -> list[str]:
    from excise.bench.rescore import run

    run(a.out, fraction=0.05, seed=a.seed, methods=_listed(a.methods), log=_log)
    return []


def _bench_scale(a: argparse.Namespace) -> list[str]:
    from excise.bench.scale import SIZES, run

    run(a.out, device=a.device, seed=a.seed, sizes=SIZES[:2] if a.quick else SIZES, log=_log)
    return []


def _bench_widths(a: argparse.Namespace) -> list[str]:
    from excise.bench.widths import WIDTHS, run

    quick = dict(widths=WIDTHS[:1], n_rome=3, n_memit=5, n_sequential=10) if a.quick else {}
    run(a.out, **quick, rerun=_listed(a.widths, int), log=_log)
    return []


BENCH_SUITES = {"locate": _bench_locate, "edit": _bench_edit, "sequential": _bench_sequential,
                "verify": _bench_verify, "unlearn": _bench_unlearn, "stories": _bench_stories, "tofu": _bench_tofu,
                "sisa": _bench_sisa, "sites": _bench_sites, "robust": _bench_robust,
                "calibration": _bench_calibration, "batch": _bench_batch, "rescore": _bench_rescore,
                "scale": _bench_scale, "widths": _bench_widths, "heldout": _bench_heldout, "anchor": _bench_anchor}
