"""TOFU (Maini et al. 2024): its splits, and its metrics on whole free-text answers.

    qas = excise.tofu.load("forget05")                 # QA rows, each with its author
    facts = excise.tofu.as_facts(qas)                  # the rows whose question names the author
    R = excise.tofu.truth_ratio(model, qas)
    fq = excise.tofu.forget_quality(R, truth_ratio(retain_model, qas))
    mu = excise.tofu.model_utility(model, load("retain_perturbed"), load("real_authors"), load("world_facts"))

The data ships in `excise/tofu/data/` (MIT licence; see its README).
"""

from excise.tofu.data import FILES, FORGET_SPLITS, QA, as_facts, load, retain_for
from excise.tofu.metrics import (
    answer_probability, choice_probability, forget_quality, greedy_answers, model_utility, rouge_l_recall,
    truth_ratio,
)

__all__ = ["FILES", "FORGET_SPLITS", "QA", "answer_probability", "as_facts", "choice_probability", "forget_quality",
           "greedy_answers", "load", "model_utility", "retain_for", "rouge_l_recall", "truth_ratio"]
