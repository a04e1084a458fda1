"""open-unlearning's GradNorm, Reference and Min-K membership attacks and MUSE's PrivLeak against open-unlearning's
own code (locuslab/open-unlearning at d3d7cf9: src/evals/metrics/mia/{gradnorm,reference,min_k}.py and
privacy.py's `privleak`). Their attack classes were run in a scratch folder on the seeded model below (an HF-style
wrapper around it), each row once, as their configs' batch size 1 for GradNorm (p = 2, Min-K k = 0.4). Their
TOFU rows end in an end-of-sequence label: GradNorm and Min-K drop it (`tokenwise_logprobs`), their LOSS-style
average for Reference keeps it; excise's answers carry none, so Reference ran on the rows without it, the others
with it. These are the scores they printed."""

from __future__ import annotations

import pytest
import torch

from excise.verify.membership import gradient_norms, privleak, row_answer_scores

ROWS = [([6, 10, 5, 9, 4], 1), ([4, 2, 2, 10, 3, 9], 2), ([10, 7, 4, 4, 1, 3, 2], 3), ([3, 7, 1, 4, 7, 5, 4, 7], 4),
        ([5, 3, 10, 5, 9, 7, 8, 4, 8], 2)]
GRADNORM = [1.5480091571807861, 0.9123600125312805, 0.6396747827529907, 0.7062090635299683, 1.1284759044647217]
MIN_K = [3.822600841522217, 3.325430393218994, 3.099493980407715, 3.4726037979125977, 3.0663185119628906]
REFERENCE = [1.1120553016662598, 0.73445725440979, -0.78322434425354, -1.1173481941223145, 0.29875946044921875]
# (model's AUC, oracle's AUC) -> their privleak
PRIVLEAK = {(0.97, 0.5): -93.99999998119999, (0.5, 0.5): 0.0, (0.31, 0.48): 32.6923076860207,
            (1.0, 0.0): -99.99999998999999}


class Tiny(torch.nn.Module):
    """A seeded causal toy LM (each position sees its prefix through a cumulative sum): `model(ids)` -> logits."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.mix, self.out = torch.nn.Embedding(11, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 11)

    def forward(self, ids):
        h = self.emb(ids)
        return self.out(h + torch.tanh(self.mix(h.cumsum(1))))


# float32 forwards of a 6-wide toy: a sum of ~10 products per entry and log-softmax over 11 logits, values O(1),
# so each score is good to a few float32 ulps (~1e-7 relative); 1e-5 leaves room for another CPU's kernels
# (another summation order) without admitting a different formula (the p-norm, k or sign changes move them by >1%)
TOL = 1e-5


def test_gradient_norms_are_open_unlearnings_gradnorm():
    model = Tiny(0)
    assert gradient_norms(model, [r for r, _ in ROWS], [a for _, a in ROWS]) == pytest.approx(GRADNORM, rel=TOL)
    assert all(p.grad is None for p in model.parameters())                   # the model is left as it was


def test_gradient_norms_leave_a_frozen_model_frozen_and_refuse_an_unknown_norm():
    model = Tiny(0).requires_grad_(False)
    assert gradient_norms(model, [ROWS[0][0]], [1]) == pytest.approx(GRADNORM[:1], rel=TOL)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="p must be 1, 2 or inf"):
        gradient_norms(model, [ROWS[0][0]], [1], p=3)
    with pytest.raises(ValueError, match="cannot end in 5 answer tokens"):
        gradient_norms(model, [ROWS[0][0]], [5])


def test_answer_min_k_and_the_reference_score_are_open_unlearnings():
    rows, n = [r for r, _ in ROWS], [a for _, a in ROWS]
    mine, other = row_answer_scores(Tiny(0), rows, n), row_answer_scores(Tiny(2), rows, n)
    # their scores read as losses (higher = non-member); excise's as likelihoods: the same numbers, negated
    assert (-mine["answer_min_k"]).tolist() == pytest.approx(MIN_K, rel=TOL)
    assert (-(mine["answer_loss"] - other["answer_loss"])).tolist() == pytest.approx(REFERENCE, rel=TOL, abs=TOL)


def test_privleak_is_open_unlearnings():
    for (model_auc, oracle_auc), theirs in PRIVLEAK.items():
        # three float64 operations on Python floats (IEEE, no torch kernel: the same on every CPU and thread count),
        # theirs the same formula: rel 1e-12 is ~5000 ulps of room; abs 1e-9 for their 0.0 (the 1e-10 guard)
        assert privleak(model_auc, oracle_auc) == pytest.approx(theirs, rel=1e-12, abs=1e-9)
    with pytest.raises(ValueError, match="must be an AUC"):
        privleak(1.2, 0.5)
