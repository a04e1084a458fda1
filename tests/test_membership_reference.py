"""Min-K% and Min-K%++ against numbers from their reference code.

Expected values: zjysteven/mink-plus-plus @ 5596c65, run.py lines 95-113 (the per-token Min-K%++ values and
the floor(k * n) lowest-token mean), re-typed in a scratch folder and run in float64 on the stored logits and
token ids (tests/reference_inputs.py: seeded draws stored once, as torch.randn gives other bits on another CPU
kernel path); nothing of that code is in excise.

excise computes in float32 (`token_scores`), so the tolerance is float32's: log_softmax, mu and sigma^2 are
sums over V = 50 vocabulary terms, each off by at most V eps32 relative (the summation bound) on terms no
larger than max|log p| (<= 7.85 here); Min-K%++ divides by sigma (>= 0.674 here). That gives an absolute
tolerance of 3 V eps32 max|log p| / min sigma = 2e-4 on Min-K%++ and V eps32 max|log p| = 5e-5 on Min-K%:
far below the gaps the tests tell apart (floor vs round: 0.06; one token more or less: > 0.05).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from excise.verify.membership import lowest_mean, token_scores
from tests.reference_inputs import load

V, EPS32 = 50, float(torch.finfo(torch.float32).eps)
LOGP_MAX, SIGMA_MIN = 7.85, 0.674                   # over both inputs (T = 12 and T = 6)
TOL_MINK, TOL_MINK_PP = V * EPS32 * LOGP_MAX, 3 * V * EPS32 * LOGP_MAX / SIGMA_MIN

# (T, ratio) -> (Min-K%, Min-K%++) as the reference computes them
REFERENCE = {
    (12, 0.1): (-4.98453302646819, -1.49979969019242),
    (12, 0.2): (-4.82654255134281, -1.43785862516052),
    (12, 0.5): (-4.60093524040091, -1.1884813284007),     # floor(5.5) = 5 tokens; round() would take 6: -4.537, -1.132
    (6, 0.2): (-6.03911863049824, -2.27007371059604),
    (6, 0.5): (-5.10122054531762, -1.50078692240769),
}
MINK_PP_PER_TOKEN_T12 = [0.265824763279731, -0.0619281911378412, -0.269579132182462, -1.49979969019242, -0.7716780037023, 0.994008932448544, -1.37591756012863, -0.849799896979381, -0.88206724595397, -1.14559555208629, -1.03902659364219]


def _inputs(T: int):
    x = load()
    return x[f"mink_logits_{T}"], x[f"mink_tokens_{T}"]


def test_the_tolerance_holds_its_assumptions():
    for T in (12, 6):
        logp = _inputs(T)[0].double().log_softmax(-1)[0, :-1]
        sigma = ((logp.exp() * logp.square()).sum(-1) - (logp.exp() * logp).sum(-1).square()).sqrt()
        assert float(logp.abs().max()) <= LOGP_MAX and float(sigma.min()) >= SIGMA_MIN, T


@pytest.mark.parametrize(("T", "ratio"), list(REFERENCE))
def test_min_k_and_min_k_pp_equal_the_reference(T, ratio):
    logp, z = token_scores(*_inputs(T))
    assert logp.shape == (1, T - 1)
    want_mink, want_pp = REFERENCE[T, ratio]
    assert lowest_mean(logp[0].numpy(), ratio) == pytest.approx(want_mink, rel=0, abs=TOL_MINK)
    assert lowest_mean(z[0].numpy(), ratio) == pytest.approx(want_pp, rel=0, abs=TOL_MINK_PP)


def test_per_token_min_k_pp_equals_the_reference():
    _, z = token_scores(*_inputs(12))
    assert np.allclose(z[0].numpy(), MINK_PP_PER_TOKEN_T12, rtol=0, atol=TOL_MINK_PP)


def test_fewer_than_one_token_takes_the_lowest_one():
    """The reference's mean of zero tokens is NaN (T=6, ratio 0.1); excise takes the single lowest token."""
    logp, _ = token_scores(*_inputs(6))
    assert lowest_mean(logp[0].numpy(), 0.1) == pytest.approx(REFERENCE[6, 0.2][0], rel=0, abs=TOL_MINK)
