"""`excise bench scale`: what it counts, how it fits and extrapolates, and the committed table (issue "scale")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from excise.bench.results import with_provenance
from excise.bench.scale import LLAMA_8B, OPS, measure, on_paper, to_markdown

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_measure_counts_every_token_through_the_blocks_and_those_with_gradients(tiny):
    tokens = torch.randint(0, 100, (3, 7))
    with torch.no_grad():
        plain = measure(tiny, lambda: tiny(tokens), "cpu")
    assert (plain.tokens, plain.grad_tokens) == (21, 0)

    def step():
        with torch.enable_grad():
            tiny(tokens).sum().backward()
        tiny.zero_grad(set_to_none=True)
    graded = measure(tiny, step, "cpu")
    assert (graded.tokens, graded.grad_tokens) == (21, 21) and graded.seconds > 0
    with torch.no_grad():
        assert measure(tiny, lambda: tiny(tokens, stop_at_layer=1), "cpu").tokens == 21 // 2   # one block of two


def _rows(b: float) -> list[dict]:
    """Synthetic ladder: seconds = 1e-9 N^b, memory = N bytes, tokens 100 (20 with gradients) at every depth."""
    rows = []
    for n, layers in ((1e7, 2), (4e7, 4), (1.6e8, 8)):
        ops = {op: {"seconds": 1e-9 * n ** b, "peak_bytes": int(n), "tokens": 100, "grad_tokens": 20} for op in OPS}
        rows.append({"arch": "llama", "params": n, "n_layers": layers, "ops": ops})
    return rows


def test_the_fit_recovers_the_growth_law_and_the_8b_arithmetic_is_on_paper():
    # Tolerances: pytest.approx's default (rel 1e-6) and rel 1e-6. The points lie exactly on the law, so the
    # float64 least squares (numpy's polyfit; no torch kernel, so no ATen path) recovers b and log a to ~1e-14;
    # N^b at 8e9 amplifies an error in b by ln(8e9) ~ 23, still ~1e-12: eight orders of magnitude of room on
    # any CPU and thread count. The FLOPs and bytes are float64 products of exact integers.
    fit = on_paper(_rows(1.5), "llama")
    for op in OPS:
        assert fit[op]["seconds_exponent"] == pytest.approx(1.5) and fit[op]["memory_exponent"] == pytest.approx(1.0)
        assert fit[op]["seconds_8b"] == pytest.approx(1e-9 * 8.03e9 ** 1.5, rel=1e-6)
        assert fit[op]["flops_8b"] == pytest.approx(2 * LLAMA_8B["params"] * 100 + 4 * LLAMA_8B["params"] * 20)
    # bf16 weights are 16 GB; NPO adds a reference copy, gradients and Adam's two float32 moments: 128 GB
    assert fit["npo"]["bytes_8b"] == pytest.approx(16 * LLAMA_8B["params"]) and not fit["npo"]["fits_one_gpu"]
    assert fit["rome"]["fits_one_gpu"] and fit["rome"]["bytes_8b"] == 2 * LLAMA_8B["params"] + 4 * 14336 ** 2


def test_the_committed_scale_table_spans_both_architectures_up_to_gpt2_small():
    r = json.loads((RESULTS / "scale.json").read_text())
    assert (RESULTS / "scale.md").read_text() == with_provenance(to_markdown(r), r)
    for arch in ("gpt2", "llama"):
        rows = [x for x in r["rows"] if x["arch"] == arch]
        assert len(rows) >= 4 and max(x["params"] for x in rows) >= 1.2e8
        assert all(set(x["ops"]) == set(OPS) and x["ops"][op]["seconds"] > 0 for x in rows for op in OPS)
        assert all(math.isfinite(f["seconds_exponent"]) for f in r["fit"][arch].values())
        assert r["fit"][arch] == json.loads(json.dumps(on_paper(r["rows"], arch)))    # the fit is the rows'
    assert r["provenance"]["wall_seconds"] > 0
