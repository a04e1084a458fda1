"""TOFU (Maini et al. 2024): its splits, and its metrics on whole free-text answers as TOFU's code computes them.

    qas = excise.tofu.load("forget05")                 # QA rows, each with its author
    facts = excise.tofu.as_facts(qas)                  # the rows whose question names the author
    R = excise.tofu.truth_ratio(model, qas)            # TOFU's R: > 1 where the true answer is preferred
    fq = excise.tofu.forget_quality(R, excise.tofu.truth_ratio(retain_model, qas))
    mu = excise.tofu.model_utility(model, load("retain_perturbed"), load("real_authors"), load("world_facts"))

The metrics follow `aggregate_eval_stat.py` and `evaluate_util.py` of
locuslab/tofu (see `excise.tofu.metrics`); `SplitEval.from_log` and
`utility_of` aggregate TOFU's own per-question eval logs the same way.
The data ships in `excise/tofu/data/` (MIT licence; see its README).
"""

from excise.tofu import organism  # registers the TOFU organisms as named models (excise.load('tofu-full'))
from excise.tofu.data import FILES, FORGET_SPLITS, QA, as_facts, load, retain_for
from excise.tofu.metrics import (
    MAX_LENGTH,
    SplitEval,
    answer_losses,
    answer_probability,
    choice_probability,
    choice_probability_of_losses,
    evaluate,
    forget_quality,
    greedy_answers,
    model_utility,
    rouge_l,
    rouge_l_recall,
    split_scores,
    truth_ratio,
    truth_ratio_of_losses,
    truth_score,
    utility_of,
)

__all__ = ["organism", "FILES", "FORGET_SPLITS", "MAX_LENGTH", "QA", "SplitEval", "answer_losses", "answer_probability",
           "as_facts", "choice_probability", "choice_probability_of_losses", "evaluate", "forget_quality",
           "greedy_answers", "load", "model_utility", "retain_for", "rouge_l", "rouge_l_recall", "split_scores",
           "truth_ratio", "truth_ratio_of_losses", "truth_score", "utility_of"]
