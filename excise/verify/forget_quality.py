"""TOFU's forget quality, and an organism utility, on facts whose wrong answers are known.

Truth ratio of a fact, as TOFU's code computes it (`aggregate_eval_stat.py`
in locuslab/tofu; `excise.tofu.metrics` has the full-answer version): with
L(a) the mean token NLL of answer a after the fact's prompt,

    R = exp(mean_j L(wrong_j) - L(target))
      = P(target | q)^(1/|target|)  /  geomean_j P(wrong_j | q)^(1/|wrong_j|),

so R >> 1 when the model knows the fact and R ~ 1 when it cannot tell the
target from the alternatives (the wrong answers are averaged in log space,
not as probabilities). The one-word facts end inside a sentence, so no EOS
is scored. Forget quality is the p-value of a two-sample
Kolmogorov-Smirnov test between the truth ratios of the forget facts under
the edited model and under the retrain oracle (`scipy.stats.ks_2samp`, as
TOFU): high means the edited model is indistinguishable from one that never
saw the facts.

Organism utility (after TOFU's model utility, under its own name: TOFU's
nine-part utility is `excise.tofu.model_utility`): the harmonic mean of, on
the retain facts, the answer probability exp(-L(target)), recall (top-1,
standing in for ROUGE on one-word answers) and TOFU's truth-ratio score
max(0, 1 - 1/R), and, on general text, the mean token probability
exp(-loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import hmean, ks_2samp

from excise.facts import Fact, tokenize_prompt
from excise.scoring import Example, general_loss, recall_table, sequence_logprobs

Alternatives = Callable[[Fact], Sequence[str]]


def comparable(facts: Sequence[Fact], alternatives: Alternatives) -> list[Fact]:
    """The facts that have a wrong answer to compare with (the truth ratio is defined for these only: a world
    whose relations each have one fact, such as stories260k's, has none for some). Cost: none."""
    return [f for f in facts if len(alternatives(f)) > 0]


def truth_ratios(model: Any, facts: Sequence[Fact], alternatives: Alternatives,
                 family: str = "request") -> tuple[np.ndarray, np.ndarray]:
    """Returns (TOFU's R per fact, the target's exp(-L) per fact) under each fact's first `family` template.

    R = exp(mean_j L(wrong_j) - L(target)) (see the module docstring): > 1
    where the model prefers the target. Cost: ceil(A / 64) forwards,
    A = facts x (1 + alternatives per fact).
    """
    examples, owner, is_target = [], [], []
    for i, f in enumerate(facts):
        answers = [f.target, *alternatives(f)]
        if len(answers) < 2:
            raise ValueError(f"{f!r} has no wrong answers to compare with; the truth ratio needs alternatives")
        template = f.templates(family)[0]
        for j, a in enumerate(answers):
            g = Fact(f.subject, f.relation, a, f.prompt, f.paraphrases, f.questions, f.completions, f.held_out)
            pt = tokenize_prompt(model, g, template)
            ids = pt.tokens.tolist()
            examples.append(Example(tuple(ids + list(pt.target_ids[:-1])), len(ids), pt.target_ids))
            owner.append(i)
            is_target.append(j == 0)
    logp = sequence_logprobs(model, examples).double().numpy()
    loss = -logp / np.array([len(e.answer) for e in examples])          # L: mean token NLL
    owner_a, target_a = np.array(owner), np.array(is_target)
    right = np.zeros(len(facts))
    wrong = np.zeros(len(facts))
    for i in range(len(facts)):
        right[i] = loss[(owner_a == i) & target_a][0]
        wrong[i] = loss[(owner_a == i) & ~target_a].mean()
    return np.exp(wrong - right), np.exp(-right)


def forget_quality(edited_ratios: Sequence[float] | np.ndarray, oracle_ratios: Sequence[float] | np.ndarray) -> float:
    """Returns the KS-test p-value between two truth-ratio distributions (1.0 = indistinguishable).

    Cost: no model call; O((m + n) log(m + n)).
    """
    if len(edited_ratios) == 0 or len(oracle_ratios) == 0:
        raise ValueError("forget quality needs truth ratios from both models")
    return float(ks_2samp(np.asarray(edited_ratios), np.asarray(oracle_ratios)).pvalue)


def organism_utility(model: Any, retain: Sequence[Fact], alternatives: Alternatives,
                     general: Sequence[str]) -> dict[str, float]:
    """Returns the organism utility's four parts and their harmonic mean (`utility`); see the module docstring.

    The probability and truth score are over the retain facts that have wrong answers (`comparable`), the
    recall over all of them. Cost: `truth_ratios` on `retain` (ceil(A / 64) forwards), a request
    `recall_table` (ceil(len(retain) / 256) forwards) and ceil(len(general) / 64)
    forwards for the general loss.
    """
    scored = comparable(retain, alternatives)
    if not scored:
        raise ValueError("no retain fact has a wrong answer to compare with: the utility's truth ratio needs "
                         "alternatives for some of them (pass alternatives=)")
    ratios, right = truth_ratios(model, scored, alternatives)
    parts = {
        "retain_probability": float(right.mean()),
        "retain_recall": recall_table(model, retain, ("request",)).rate("request"),
        "retain_truth_score": float(np.maximum(0.0, 1.0 - 1.0 / ratios).mean()),
        "general_probability": math.exp(-general_loss(model, general)),
    }
    parts["utility"] = float(hmean([max(v, 1e-12) for v in parts.values()]))
    return parts
