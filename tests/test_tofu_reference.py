"""Golden numbers: excise's TOFU aggregation, fed TOFU's own eval logs, gives what TOFU's code gives.

`reference_eval/` (beside the repository, in ../shared/data/tofu/) holds the
per-question eval logs TOFU released for Llama-2-7b fine-tuned on the full set
and on retain90, and `expected.json`: forget quality and every part of model
utility, computed from those logs with `aggregate_eval_stat.py` of
locuslab/tofu. A user's checkout has no ../shared, so these tests skip there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from excise import tofu

REFERENCE = Path(__file__).parents[1].parent / "shared" / "data" / "tofu" / "reference_eval"
MODELS = ("llama2-7b_full_wd0.01", "llama2-7b_retain90_wd0.01")
LOGS = {"retain": "eval_log.json", "real_authors": "eval_real_author_wo_options.json",
        "world_facts": "eval_real_world_wo_options.json", "forget": "eval_log_forget.json"}
# excise's part names -> aggregate_eval_stat.py's
SPLIT_NAMES = {"retain": "Retain", "real_authors": "Real Authors", "world_facts": "Real World", "forget": "Forget"}
PART_NAMES = {"probability": "Prob.", "rouge_l": "ROUGE", "truth_score": "Truth Ratio"}
EPS64, EPS32 = float(np.finfo(np.float64).eps), float(np.finfo(np.float32).eps)

pytestmark = pytest.mark.skipif(not (REFERENCE / "expected.json").exists(),
                                reason=f"TOFU's reference eval logs are not at {REFERENCE} (they live in the "
                                       "project's ../shared/data/tofu/, absent from a user's checkout)")


def _log(model: str, split: str) -> dict:
    return json.loads((REFERENCE / model / LOGS[split]).read_text())


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((REFERENCE / "expected.json").read_text())


@pytest.fixture(scope="module")
def evals() -> dict[str, dict[str, tofu.SplitEval]]:
    return {m: {s: tofu.SplitEval.from_log(_log(m, s)) for s in LOGS} for m in MODELS}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _loss_max(e: tofu.SplitEval) -> float:
    return float(max(np.abs(e.answer_loss).max(), np.abs(e.paraphrased_loss).max(), np.abs(e.perturbed_loss).max()))


@pytest.fixture(scope="module")
def r_error(evals) -> float:
    """How far R = exp(mean of k losses - a loss) may be from aggregate_eval_stat.py's, both float64 from the same
    logged losses: ((k + 1) L_max + 2) eps64 relative per side (the k-term mean and the difference, then exp),
    L_max = max |L| in the logs (15.2): 4e-14 for the two."""
    every = [e for m in evals.values() for e in m.values()]
    k = max(e.perturbed_loss.shape[1] for e in every)
    return 2 * ((k + 1) * max(map(_loss_max, every)) + 2) * EPS64


def test_forget_quality_reproduces_tofus(evals, expected, r_error):
    fq = expected["forget_quality"]
    unlearned, retain = (evals[fq[m]]["forget"].truth_ratio for m in ("unlearned", "retain"))
    value = tofu.forget_quality(unlearned, retain)
    # the KS statistic turns on the order of the two samples, whose closest values are 2.9e-5 apart (relative), far
    # beyond r_error (so it is the reference's); from it, scipy's exact p-value is a recursion over n + m steps:
    # (n + m) eps64 per side
    closest = np.abs(unlearned[:, None] - retain[None]) / np.maximum(unlearned[:, None], retain[None])
    assert closest.min() > r_error
    assert _rel(value, fq["value"]) <= 2 * (len(unlearned) + len(retain)) * EPS64, (value, fq["value"])
    assert 1e-21 < value < 1e-20                 # 1.834e-21: the full model is far from the retain model


@pytest.mark.parametrize("model", MODELS)
def test_model_utility_and_every_part_reproduce_tofus(evals, expected, model, r_error):
    want = expected["model_utility"][model]
    e = evals[model]
    got = {f"{PART_NAMES[k]} {SPLIT_NAMES[s]}": v for s in LOGS for k, v in tofu.split_scores(e[s], s).items()}
    parts = tofu.utility_of(e["retain"], e["real_authors"], e["world_facts"])
    got["Model Utility"] = parts["utility"]
    assert set(got) == set(want) - {"Forget Quality"}
    # each part is a mean of n <= 300 terms in [0, 1] (n eps64 per side), each within 2 r_error: relative for Prob.
    # (exp(-L), or its share among the perturbed answers'), absolute for Truth Ratio (1 - 1/R or min(R, 1/R)), so over
    # the smallest part; the harmonic mean adds 11 eps64 per side: 3e-13 and 7e-13
    n = max(len(e[s].answer_loss) for s in LOGS)
    rtol = 2 * r_error / min(want.values()) + 2 * (n + 11) * EPS64
    errors = {k: _rel(got[k], want[k]) for k in got}
    assert max(errors.values()) <= rtol, errors
    # utility_of's nine parts are split_scores' values on the three utility sets
    for s in ("retain", "real_authors", "world_facts"):
        for k in PART_NAMES:
            assert parts[f"{s}_{k}"] == got[f"{PART_NAMES[k]} {SPLIT_NAMES[s]}"]


def test_truth_ratio_direction_is_tofus(evals):
    """evaluate_util.py logs exp(L(para) - mean L(pert)) as `truth_ratio`: the inverse of the R that is aggregated."""
    for model in MODELS:
        logged = np.array(list(_log(model, "forget")["truth_ratio"].values()))
        # TOFU computed it in float32 from the logged losses: ((k + 1) L_max + 2) eps32 (the mean of k, the
        # difference, exp; L_max = 7.0 on the forget logs: 5.2e-6); ours, in float64, adds 1e-14
        e = evals[model]["forget"]
        rtol = ((e.perturbed_loss.shape[1] + 1) * _loss_max(e) + 2) * EPS32
        np.testing.assert_allclose(1.0 / e.truth_ratio, logged, rtol=rtol, atol=0)
    full, retain = (float(np.median(evals[m]["forget"].truth_ratio)) for m in MODELS)
    assert full > retain > 1            # R grows with knowing: only the full model was trained on the forget set


@pytest.mark.parametrize("model", MODELS)
def test_rouge_l_recall_of_every_logged_generation_is_tofus(model):
    n = 0
    for split in LOGS:
        log = _log(model, split)
        keys = list(log["rougeL_recall"])
        generated = [log["generated_text"][k][1] for k in keys]       # [prompt, generation, ground truth]
        truth = [log["generated_text"][k][2] for k in keys]
        got = tofu.rouge_l(generated, truth)
        want = np.array([log["rougeL_recall"][k] for k in keys])
        assert np.array_equal(got, want), [(k, g, w) for k, g, w in zip(keys, got, want, strict=True) if g != w][:5]
        n += len(keys)
    assert n == 300 + 100 + 117 + 300


def test_the_stemmer_matters_on_the_logs():
    """Without rouge_score's stemmer (excise before the fix) some logged scores are not reproduced."""
    from rouge_score import rouge_scorer

    plain = rouge_scorer.RougeScorer(["rougeL"])
    log = _log(MODELS[1], "forget")
    differ = sum(plain.score(t, g)["rougeL"].recall != log["rougeL_recall"][k]
                 for k, (_, g, t) in log["generated_text"].items())
    assert differ > 0
