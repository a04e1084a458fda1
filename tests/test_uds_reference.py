"""The Unlearning Depth Score against its authors' code (gnueaj/unlearning-depth-score at fc31639,
compute_uds.py `_run_s1_s2_side_by_side_logprob_batch`: tau 0.05, patch scope "span", the whole reference as the
evaluated span, batch size 1). Their function ran in a scratch folder on tests/tiny_hooked.py's seeded toys (the
full model, a retain model drawn with another seed, and the full model with its last block redrawn as the
unlearned one) behind a Hugging Face-style wrapper, with a word-hash tokenizer; ROWS are the token ids it built
(prompt with BOS, then the reference). These are the per-example deltas and UDS it printed: a fact with no
knowledge-encoding layer (None), one erased (1), one intact (0) and one between."""

from __future__ import annotations

import pytest

from excise.verify.depth import fact_uds, unlearning_depth
from tests.tiny_hooked import models

ROWS = [[[1, 16, 16, 9, 2, 9, 9, 16, 16, 2], 3], [[1, 16, 9, 9, 9, 16, 9, 9, 2], 2], [[1, 16, 9, 2, 16, 9, 2, 2, 2], 3], [[1, 16, 16, 16, 16, 2, 9, 16, 16, 9], 3], [[1, 16, 9, 9, 9, 9, 9, 16, 2, 2], 3]]
THEIR_UDS = [0.07064034198290678, None, None, 0.0, 1.0]
THEIR_MEAN = 0.35688011399430225
THEIR_DELTA1 = [[-0.0072193145751953125, 0.6188468933105469, 0.8291373252868652], [-2.017878532409668, -1.683131217956543, -1.882200002670288], [-1.266977071762085, -0.7109136581420898, -0.7978510856628418], [0.15743613243103027, 0.6018142700195312, 0.6452126502990723], [-0.7146651744842529, -0.07401204109191895, 0.21937179565429688]]
THEIR_DELTA2 = [[0.0, 0.0, 0.10228610038757324], [0.0, 0.0, 0.6337847709655762], [0.0, 0.0, 0.561314582824707], [0.0, 0.0, -0.1200108528137207], [0.0, 0.0, 0.5838503837585449]]
# float32 forwards of an 8-wide, 3-block toy, answers of 2-3 tokens: a delta is a difference of two mean
# log-probabilities of size ~1-3, each good to a few float32 ulps; 1e-5 absolute leaves room for another CPU's
# summation order while a wrong position, layer or sign moves them by > 0.01
TOL = 1e-5


def test_unlearning_depth_is_the_authors_uds():
    full, retain, unlearned = models()
    found = unlearning_depth(full, unlearned, retain, [r for r, _ in ROWS], [a for _, a in ROWS])
    for mine, theirs in ((found.delta1, THEIR_DELTA1), (found.delta2, THEIR_DELTA2)):
        assert [x for row in mine for x in row] == pytest.approx([x for row in theirs for x in row], abs=TOL)
    assert [u is None for u in found.uds] == [u is None for u in THEIR_UDS]
    assert [u for u in found.uds if u is not None] == pytest.approx([u for u in THEIR_UDS if u is not None],
                                                                    abs=TOL)
    # their model score averages the facts that have one; so does excise's (theirs gives 0 when none has)
    assert found.score == pytest.approx(THEIR_MEAN, abs=TOL)


def test_batched_rows_give_what_one_row_at_a_time_gives():
    full, retain, unlearned = models()
    rows, n = [r for r, _ in ROWS], [a for _, a in ROWS]
    one = [unlearning_depth(full, unlearned, retain, [r], [a]).delta2[0] for r, a in zip(rows, n)]
    assert [x for row in unlearning_depth(full, unlearned, retain, rows, n, batch_size=5).delta2 for x in row] == \
        pytest.approx([x for row in one for x in row], abs=TOL)        # right padding reaches no earlier position


def test_fact_uds_weights_and_clips_as_the_paper_and_refuses_bad_rows():
    # approx's default rel 1e-6: a few float64 products and one division of exact inputs (~1e-16), no torch kernel
    assert fact_uds([1.0, 0.04, 3.0], [0.5, 9.0, 6.0]) == pytest.approx((1.0 * 0.5 + 3.0 * 1.0) / 4.0)
    assert fact_uds([0.01, -1.0], [0.5, 0.5]) is None
    assert fact_uds([2.0], [-1.0]) == 0.0
    full, retain, unlearned = models()
    with pytest.raises(ValueError, match="cannot end in 10 answer tokens"):
        unlearning_depth(full, unlearned, retain, [ROWS[0][0]], [10])
