"""Exact memorization and extraction strength against open-unlearning's own code (locuslab/open-unlearning at
d3d7cf9, src/evals/metrics/memorization.py). Its `exact_memorization` and `extraction_strength` were run in a
scratch folder on seeded logits (torch.manual_seed(0), 7 answers whose tokens are the argmax, or not, in the
patterns below, each followed by the end-of-sequence label their code drops). These are the per-answer scores
they printed; the tolerance is float32's (their EM is a float32 division)."""

from __future__ import annotations

import pytest

from excise.verify.memorization import exact_memorization, extraction_strength

# per answer: which tokens were predicted (their labels = the argmax, or argmax + 1)
MATCHES = [[1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1], [1], [1, 0, 1, 0, 1], [0]]
OPEN_UNLEARNING_ES = [1.0, 0.16666666666666663, 0.5, 0.33333333333333337, 1.0, 0.19999999999999996, 1.0]
OPEN_UNLEARNING_EM = [1.0, 0.0, 0.5, 0.3333333432674408, 1.0, 0.6000000238418579, 0.0]


def test_exact_memorization_and_extraction_strength_are_open_unlearnings():
    m = [[bool(x) for x in row] for row in MATCHES]
    # Python arithmetic on counts, no torch kernel: the same on every CPU. Their EM is a float32 division (one
    # rounding: rel <= 2^-24 = 6e-8 < 1e-7) against excise's float64; their ES and excise's are both float64
    # 1 - k / n (two roundings: ~2e-16, far below 1e-12)
    assert [exact_memorization(r) for r in m] == pytest.approx(OPEN_UNLEARNING_EM, rel=1e-7)
    assert [extraction_strength(r) for r in m] == pytest.approx(OPEN_UNLEARNING_ES, rel=1e-12)


def test_the_full_extraction_strength_scores_zero_when_nothing_is_predicted():
    """The formula as written (k may be n): where open-unlearning gives 1/n for an answer of which nothing is
    predicted (and 1 for a wrong one-token answer), it gives 0; elsewhere the two agree."""
    m = [[bool(x) for x in row] for row in MATCHES]
    full = [extraction_strength(r, reference=False) for r in m]
    assert full == pytest.approx([1.0, 0.0, 0.5, 1 / 3, 1.0, 0.2, 0.0], rel=1e-12)   # float64, as above
    with pytest.raises(ValueError, match="no tokens"):
        extraction_strength([])
