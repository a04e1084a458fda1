"""Min-K% and Min-K%++ against numbers from their reference code.

Expected values: zjysteven/mink-plus-plus, run.py lines 95-113 (the per-token
Min-K%++ values and the floor(k * n) lowest-token mean), executed unchanged on
the seeded logits and token ids below in a scratch folder; nothing of that
code is in excise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from excise.verify.membership import lowest_mean, token_scores

# (T, ratio) -> (Min-K%, Min-K%++) as the reference computes them
REFERENCE = {
    (12, 0.1): (-4.984532833, -1.49980104),
    (12, 0.2): (-4.826542377, -1.437859178),
    (12, 0.5): (-4.600935459, -1.188481927),     # floor(5.5) = 5 tokens; round() would take 6: -4.537, -1.132
    (6, 0.2): (-6.039118767, -2.270074129),
    (6, 0.5): (-5.101220608, -1.50078702),
}
MINK_PP_PER_TOKEN_T12 = [0.2658243179, -0.06192844734, -0.2695790231, -1.49980104, -0.7716767788, 0.9940108657,
                         -1.375917315, -0.8497998714, -0.8820687532, -1.14559567, -1.039026856]


def _inputs(T: int):
    torch.manual_seed(0)
    logits = torch.randn(1, T, 50)
    return logits, torch.randint(0, 50, (1, T))


@pytest.mark.parametrize(("T", "ratio"), list(REFERENCE))
def test_min_k_and_min_k_pp_equal_the_reference(T, ratio):
    logp, z = token_scores(*_inputs(T))
    assert logp.shape == (1, T - 1)
    got = (lowest_mean(logp[0].numpy(), ratio), lowest_mean(z[0].numpy(), ratio))
    assert np.allclose(got, REFERENCE[T, ratio], rtol=1e-6, atol=0)


def test_per_token_min_k_pp_equals_the_reference():
    _, z = token_scores(*_inputs(12))
    assert np.allclose(z[0].numpy(), MINK_PP_PER_TOKEN_T12, rtol=1e-6, atol=1e-8)


def test_fewer_than_one_token_takes_the_lowest_one():
    """The reference's mean of zero tokens is NaN (T=6, ratio 0.1); excise takes the single lowest token."""
    logp, _ = token_scores(*_inputs(6))
    assert lowest_mean(logp[0].numpy(), 0.1) == pytest.approx(REFERENCE[6, 0.2][0])
