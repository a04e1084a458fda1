"""TOFU's metrics on whole free-text answers, as the paper defines them (see data/README.md).

- answer probability: P(a | q)^(1/|a|) on the forget and retain sets; on real
  authors and world facts, the multiple-choice form: the correct answer's
  normalized probability over the sum across it and its perturbed answers;
- ROUGE-L recall of the greedy answer against the reference (`rouge-score`);
- truth ratio R = mean_j P(perturbed_j | q)^(1/|perturbed_j|) / P(paraphrased | q)^(1/|paraphrased|);
- forget quality: the KS-test p-value between the truth ratios on the forget
  set of the unlearned model and of the retain model (`scipy.stats.ks_2samp`);
- model utility: the harmonic mean of answer probability, ROUGE-L recall and
  truth-ratio score max(0, 1 - R) on each of retain, real authors and world facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import torch
from scipy.stats import hmean

from excise.scoring import Example, encode, sequence_logprobs
from excise.tofu.data import QA
from excise.verify.forget_quality import forget_quality

__all__ = ["answer_probability", "choice_probability", "forget_quality", "greedy_answers", "model_utility",
           "rouge_l_recall", "truth_ratio"]


def examples(model: Any, prompts: Sequence[str], answers: Sequence[str]) -> list[Example]:
    """Token rows prompt + answer[:-1], scoring the answer's tokens as they follow the prompt after a space."""
    heads = encode(model, prompts)
    tails = model.tokenizer([f" {a}" for a in answers], add_special_tokens=False)["input_ids"]
    out = []
    for p, a, h, t in zip(prompts, answers, heads, tails, strict=True):
        if not t:
            raise ValueError(f"empty answer after prompt {p!r}")
        out.append(Example(tuple(h + t[:-1]), len(h), tuple(t)))
    check_context(model, max(len(e.ids) for e in out))
    return out


def check_context(model: Any, n_tokens: int) -> None:
    """A clear error where question + answer exceed the model's context (not an index error inside torch)."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and n_tokens > n_ctx:
        raise ValueError(f"a TOFU question with its answer is {n_tokens} tokens but the model's context is "
                         f"{n_ctx}; use a model with a longer context (TofuRecipe.n_positions for the TOFU organism)")


def normalized_probability(model: Any, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """P(answer | prompt)^(1/|answer|) per pair: the geometric-mean token probability."""
    ex = examples(model, prompts, answers)
    logp = sequence_logprobs(model, ex).numpy()
    return np.exp(logp / np.array([len(e.answer) for e in ex]))


def answer_probability(model: Any, qas: Sequence[QA]) -> np.ndarray:
    """P(a | q)^(1/|a|) per row (TOFU's probability on the forget and retain sets)."""
    return normalized_probability(model, [q.prompt for q in qas], [q.answer for q in qas])


def _options(model: Any, qas: Sequence[QA], first: str) -> tuple[np.ndarray, list[np.ndarray]]:
    for q in qas:
        if not q.perturbed_answers:
            raise ValueError(f"row {q.question!r} has no perturbed answers; use a split that has them "
                             "(forget01/05/10, retain_perturbed, real_authors, world_facts)")
    prompts, answers, owner = [], [], []
    for i, q in enumerate(qas):
        # real authors and world facts have no paraphrase: TOFU compares with the answer itself
        right = (q.paraphrased_answer or q.answer) if first == "paraphrased" else q.answer
        for a in (right, *q.perturbed_answers):
            prompts.append(q.prompt)
            answers.append(a)
            owner.append(i)
    p = normalized_probability(model, prompts, answers)
    owner_a = np.array(owner)
    rows = [p[owner_a == i] for i in range(len(qas))]
    return np.array([r[0] for r in rows]), [r[1:] for r in rows]


def truth_ratio(model: Any, qas: Sequence[QA]) -> np.ndarray:
    """R per row: mean normalized probability of the perturbed answers over the paraphrased answer's."""
    right, wrong = _options(model, qas, "paraphrased")
    return np.array([w.mean() for w in wrong]) / np.maximum(right, 1e-30)


def choice_probability(model: Any, qas: Sequence[QA]) -> np.ndarray:
    """The correct answer's normalized probability over the sum across it and its perturbed answers."""
    right, wrong = _options(model, qas, "answer")
    return right / (right + np.array([w.sum() for w in wrong]))


@torch.no_grad()
def greedy_answers(model: Any, qas: Sequence[QA], max_new_tokens: int = 64, batch_size: int = 32) -> list[str]:
    """The model's greedy answer to each question (stops at EOS or a newline)."""
    tok = model.tokenizer
    hf = model.original_model
    device = next(iter(model.parameters())).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    for b in range(0, len(qas), batch_size):
        rows = encode(model, [q.prompt for q in qas[b:b + batch_size]])
        width = max(len(r) for r in rows)
        check_context(model, width + max_new_tokens)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):                       # left padding: every row ends where generation starts
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        gen = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id)
        for row in gen[:, width:].tolist():
            out.append(tok.decode(row, skip_special_tokens=True).split("\n")[0].strip())
    return out


@cache
def _rouge_l():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])      # built once: it logs a line each time


def rouge_l_recall(model: Any, qas: Sequence[QA], max_new_tokens: int = 64) -> np.ndarray:
    """ROUGE-L recall of each greedy answer against the reference answer."""
    answers = greedy_answers(model, qas, max_new_tokens)
    return np.array([_rouge_l().score(q.answer, a)["rougeL"].recall for q, a in zip(qas, answers, strict=True)])


def model_utility(model: Any, retain: Sequence[QA], real_authors: Sequence[QA], world_facts: Sequence[QA],
                  max_new_tokens: int = 64) -> dict[str, float]:
    """TOFU's nine numbers and their harmonic mean (`utility`)."""
    parts: dict[str, float] = {}
    for name, qas in (("retain", retain), ("real_authors", real_authors), ("world_facts", world_facts)):
        prob = answer_probability(model, qas) if name == "retain" else choice_probability(model, qas)
        parts[f"{name}_probability"] = float(prob.mean())
        parts[f"{name}_rouge_l"] = float(rouge_l_recall(model, qas, max_new_tokens).mean())
        parts[f"{name}_truth_score"] = float(np.maximum(0.0, 1.0 - truth_ratio(model, qas)).mean())
    values = list(parts.values())
    parts["utility"] = 0.0 if min(values) <= 0 else float(hmean(values))     # a zero part zeroes the harmonic mean
    return parts
