"""TOFU's metrics on whole free-text answers, as TOFU's code computes them.

The reference is the code behind TOFU's (and open-unlearning's) leaderboards
in locuslab/tofu: `evaluate_util.py` logs per-question values and
`aggregate_eval_stat.py` turns them into forget quality and model utility.
Where the paper's prose differs (it writes an arithmetic mean of the
perturbed answers' probabilities, and the inverse ratio), this follows the
code:

- answer loss L(a): the mean token NLL of answer a after the question, over
  a's tokens and the EOS that ends it (TOFU's labels end with EOS:
  `convert_raw_data_to_model_format` and `get_batch_loss` in `data_module.py`;
  the division by the token count in `evaluate_util.py`; the `avg_*_loss` keys);
- truth ratio R = exp(mean_j L(perturbed_j) - L(paraphrased)): the
  paraphrased answer's normalized probability P^(1/|a|) over the geometric
  mean of the perturbed answers'. R > 1 when the model prefers the true
  answer (`aggregate_eval_stat.py`; the `truth_ratio` key of
  `evaluate_util.py`'s logs holds 1/R). Real authors and world facts have no
  paraphrase; the answer itself stands in (`base_answer_key` in
  `config/eval_everything.yaml`);
- forget quality: scipy's two-sample KS p-value between the R values of the
  unlearned model and of the retain model on the forget set;
- per split, three numbers: Prob. (forget and retain: the mean of
  exp(-L(answer)); real authors and world facts: the mean of exp(-L(answer)) /
  (exp(-L(answer)) + sum_j exp(-L(perturbed_j)))), ROUGE (the mean ROUGE-L
  recall of the greedy answer against the answer, `rouge_score` with
  `use_stemmer=True`: `eval_rouge_recall` in `evaluate_util.py`) and Truth
  Ratio (the mean of max(0, 1 - 1/R); on the forget set, of min(R, 1/R));
- model utility: scipy's harmonic mean of the nine numbers on the retain
  set, real authors and world facts;
- generation: greedy, at most 200 tokens in all, the prompt included
  (`generation.max_length` in `config/eval_everything.yaml`, passed to
  `generate` with `max_new_tokens=None` in `run_generation`); the answer is
  every token after the prompt up to EOS, decoded without special tokens,
  not cut at a newline.

The maths are pure functions of per-question values (`SplitEval`, the numbers
TOFU's `eval_*.json` logs hold), so TOFU's released logs can be fed in:
`tests/test_tofu_reference.py` reproduces `aggregate_eval_stat.py`'s numbers
from them. The model-facing functions compute those values, then call the
pure ones.

Not replicated: TOFU truncates question + answer at 200 tokens (excise raises
where they exceed the model's context); for its phi/stablelm families TOFU
also scores the "Answer: " tag as part of the answer (its Llama-2 family,
whose answer tag is empty, scores the answer alone, as excise does); and its
generation budget counts the left padding of its batch of 30, where excise
counts each prompt's own tokens, so an answer does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from jaxtyping import Float
from scipy.stats import hmean

from excise import generation
from excise.scoring import Example, encode, mean_token_logprobs
from excise.tofu.data import QA
from excise.verify.forget_quality import forget_quality

__all__ = ["MAX_LENGTH", "SplitEval", "answer_losses", "answer_probability", "choice_probability",
           "choice_probability_of_losses", "evaluate", "forget_quality", "greedy_answers", "model_utility",
           "rouge_l", "rouge_l_recall", "split_scores", "truth_ratio", "truth_ratio_of_losses", "truth_score",
           "utility_of"]

MAX_LENGTH = 200          # TOFU's generation.max_length (config/eval_everything.yaml): prompt + answer tokens
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
SPLITS = ("forget", *UTILITY_SPLITS)


# -- the maths: pure functions of per-question values ------------------------------------------------------------


@dataclass(frozen=True)
class SplitEval:
    """Per-question values of one TOFU split, as TOFU's `eval_*.json` logs hold them (`evaluate_util.py`).

    answer_loss: L(answer) (`avg_gt_loss`); paraphrased_loss: L(paraphrased
    answer), the answer itself on real authors and world facts
    (`avg_paraphrased_loss`); perturbed_loss: L(perturbed answer j)
    (`average_perturb_loss`); rouge_l: ROUGE-L recall of the greedy answer
    (`rougeL_recall`). L is a mean token NLL in nats.
    """

    answer_loss: Float[np.ndarray, " n"]
    paraphrased_loss: Float[np.ndarray, " n"]
    perturbed_loss: Float[np.ndarray, "n k"]
    rouge_l: Float[np.ndarray, " n"]

    def __post_init__(self) -> None:
        n = len(self.answer_loss)
        sizes = {len(self.paraphrased_loss), len(self.perturbed_loss), len(self.rouge_l)}
        if self.perturbed_loss.ndim != 2 or sizes != {n}:
            raise ValueError(f"SplitEval needs n answer, paraphrased and ROUGE-L values and an (n, k) array of "
                             f"perturbed losses; got {n}, {len(self.paraphrased_loss)}, {len(self.rouge_l)} and "
                             f"shape {self.perturbed_loss.shape}")

    @classmethod
    def from_log(cls, log: Mapping[str, Mapping[str, Any]]) -> SplitEval:
        """From one of TOFU's eval logs ({key: {question index: value}}), in the log's question order."""
        missing = {"avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall"} - set(log)
        if missing:
            raise ValueError(f"the eval log lacks {sorted(missing)}; pass one of TOFU's eval_*.json files "
                             "(evaluate_util.py writes them)")

        def column(key: str) -> np.ndarray:
            return np.array(list(log[key].values()), dtype=float)

        return cls(column("avg_gt_loss"), column("avg_paraphrased_loss"), column("average_perturb_loss"),
                   column("rougeL_recall"))

    @property
    def truth_ratio(self) -> Float[np.ndarray, " n"]:
        """TOFU's R per question (`truth_ratio_of_losses`): what forget quality's KS test compares."""
        return truth_ratio_of_losses(self.paraphrased_loss, self.perturbed_loss)


def truth_ratio_of_losses(paraphrased_loss: Float[np.ndarray, " n"],
                          perturbed_loss: Float[np.ndarray, "n k"]) -> Float[np.ndarray, " n"]:
    """R = exp(mean_j L(perturbed_j) - L(paraphrased)) per question; R > 1 when the true answer is preferred."""
    return np.exp(perturbed_loss.mean(axis=-1) - paraphrased_loss)


def choice_probability_of_losses(answer_loss: Float[np.ndarray, " n"],
                                 perturbed_loss: Float[np.ndarray, "n k"]) -> Float[np.ndarray, " n"]:
    """exp(-L(answer)) / (exp(-L(answer)) + sum_j exp(-L(perturbed_j))) per question."""
    right = np.exp(-answer_loss)
    return right / (right + np.exp(-perturbed_loss).sum(axis=-1))


def truth_score(ratios: Float[np.ndarray, " n"], forget: bool = False) -> float:
    """TOFU's Truth Ratio number: the mean of max(0, 1 - 1/R), or of min(R, 1/R) on a forget set."""
    if forget:
        return float(np.minimum(ratios, 1.0 / ratios).mean())
    return float(np.maximum(0.0, 1.0 - 1.0 / ratios).mean())


@cache
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)     # built once: it logs a line each time


def rouge_l(generated: Sequence[str], references: Sequence[str]) -> Float[np.ndarray, " n"]:
    """ROUGE-L recall of each generation against its reference (`rouge_score`, Porter stemmer, as TOFU)."""
    scorer = _rouge_l_scorer()
    return np.array([scorer.score(ref, gen)["rougeL"].recall for gen, ref in zip(generated, references, strict=True)],
                    dtype=float)


def split_scores(e: SplitEval, split: str) -> dict[str, float]:
    """TOFU's three numbers on one split: `probability`, `rouge_l`, `truth_score` (see the module docstring).

    `split` is "forget", "retain" (both: Prob. = mean exp(-L(answer))),
    "real_authors" or "world_facts" (Prob. = the answer's share among its
    perturbed answers).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split in ("forget", "retain"):
        prob = np.exp(-e.answer_loss)
    else:
        prob = choice_probability_of_losses(e.answer_loss, e.perturbed_loss)
    return {"probability": float(prob.mean()), "rouge_l": float(e.rouge_l.mean()),
            "truth_score": truth_score(e.truth_ratio, forget=split == "forget")}


def utility_of(retain: SplitEval, real_authors: SplitEval, world_facts: SplitEval) -> dict[str, float]:
    """TOFU's nine numbers (`{split}_{probability,rouge_l,truth_score}`) and their harmonic mean (`utility`)."""
    parts = {f"{name}_{k}": v for name, e in zip(UTILITY_SPLITS, (retain, real_authors, world_facts), strict=True)
             for k, v in split_scores(e, name).items()}
    parts["utility"] = float(hmean(list(parts.values())))      # scipy: 0 if any part is 0, as in TOFU
    return parts


# -- the model: per-question values -------------------------------------------------------------------------------


def check_context(model: Any, n_tokens: int, what: str = "a TOFU question with its answer") -> None:
    """A clear error where question (+ answer) exceed the model's context (not an index error inside torch)."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and n_tokens > n_ctx:
        raise ValueError(f"{what} is {n_tokens} tokens but the model's context is "
                         f"{n_ctx}; use a model with a longer context (TofuRecipe.n_positions for the TOFU organism)")


def examples(model: Any, prompts: Sequence[str], answers: Sequence[str]) -> list[Example]:
    """Token rows prompt + answer (after a space), scoring the answer's tokens and then EOS, as TOFU's labels do."""
    heads = encode(model, prompts)
    tails = model.tokenizer([f" {a}" for a in answers], add_special_tokens=False)["input_ids"]
    eos = model.tokenizer.eos_token_id
    out = []
    for p, h, t in zip(prompts, heads, tails, strict=True):
        if not t:
            raise ValueError(f"empty answer after prompt {p!r}")
        scored = [*t, eos] if eos is not None else list(t)
        out.append(Example(tuple(h + scored[:-1]), len(h), tuple(scored)))
    check_context(model, max(len(e.ids) for e in out))
    return out


def answer_losses(model: Any, prompts: Sequence[str], answers: Sequence[str]) -> Float[np.ndarray, " n"]:
    """L = mean token NLL of each answer (and its EOS) after its prompt. Cost: ceil(n / 64) forwards."""
    if not prompts:
        return np.zeros(0)
    ex = examples(model, prompts, answers)
    return -mean_token_logprobs(model, ex).numpy()


def _option_losses(model: Any, qas: Sequence[QA]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L(answer), L(paraphrased answer, or the answer), L(perturbed answers) (n, k)); each text scored once."""
    if not qas:
        raise ValueError("no TOFU rows to score; pass at least one")
    counts = {len(q.perturbed_answers) for q in qas}
    if 0 in counts:
        q = next(q for q in qas if not q.perturbed_answers)
        raise ValueError(f"row {q.question!r} has no perturbed answers; use a split that has them "
                         "(forget01/05/10, retain_perturbed, real_authors, world_facts)")
    if len(counts) > 1:
        raise ValueError(f"the rows have {sorted(counts)} perturbed answers; TOFU averages a fixed number per "
                         "row, so score rows with different counts separately")
    index: dict[tuple[str, str], int] = {}

    def at(q: QA, answer: str) -> int:
        return index.setdefault((q.prompt, answer), len(index))

    rows = [(at(q, q.answer), at(q, q.paraphrased_answer or q.answer), [at(q, a) for a in q.perturbed_answers])
            for q in qas]
    loss = answer_losses(model, [p for p, _ in index], [a for _, a in index])
    return (np.array([loss[a] for a, _, _ in rows]), np.array([loss[p] for _, p, _ in rows]),
            np.array([[loss[j] for j in w] for _, _, w in rows]).reshape(len(rows), -1))


def answer_probability(model: Any, qas: Sequence[QA]) -> Float[np.ndarray, " n"]:
    """exp(-L(answer)) per row: TOFU's per-question Prob. on the forget and retain sets."""
    return np.exp(-answer_losses(model, [q.prompt for q in qas], [q.answer for q in qas]))


def truth_ratio(model: Any, qas: Sequence[QA]) -> Float[np.ndarray, " n"]:
    """TOFU's R per row: exp(mean_j L(perturbed_j) - L(paraphrased)); R > 1 when the true answer is preferred.

    The paraphrased answer's P^(1/|a|) over the geometric mean of the
    perturbed answers' (the answer itself where a row has no paraphrase).
    """
    _, para, pert = _option_losses(model, qas)
    return truth_ratio_of_losses(para, pert)


def choice_probability(model: Any, qas: Sequence[QA]) -> Float[np.ndarray, " n"]:
    """The answer's exp(-L) over the sum across it and its perturbed answers (TOFU's Prob. on general sets)."""
    right, _, pert = _option_losses(model, qas)
    return choice_probability_of_losses(right, pert)


def new_token_budgets(prompt_lengths: Sequence[int], max_length: int, max_new_tokens: int | None,
                      n_ctx: int | None) -> list[int]:
    """New tokens each prompt may take: max_length in all, at most max_new_tokens, within the context n_ctx."""
    total = max_length if n_ctx is None else min(max_length, n_ctx)
    return [max(0, min(total - n, max_new_tokens if max_new_tokens is not None else total)) for n in prompt_lengths]


def greedy_answers(model: Any, qas: Sequence[QA], max_new_tokens: int | None = None, batch_size: int = 32, *,
                   max_length: int = MAX_LENGTH) -> list[str]:
    """The model's greedy answer to each question, as TOFU generates it, via `excise.generation.greedy`.

    Each prompt gets up to `max_length` tokens in all, itself included
    (TOFU's 200), and at most `max_new_tokens` new ones if given; where the
    prompt plus that budget exceeds the model's context n_ctx, the budget is
    cut to n_ctx - len(prompt) (the TOFU organism's context is 256). A prompt
    with no budget left answers "". Decoding stops at EOS, never at a newline;
    the answer is decoded without special tokens and stripped of surrounding
    whitespace (which ROUGE ignores). Prompts are decoded in order of length,
    in groups whose longest prompt plus the group's largest budget fits in the
    context. Cost: `generation.greedy` per group, up to the largest budget.
    """
    if max_length < 1 or (max_new_tokens is not None and max_new_tokens < 1):
        raise ValueError(f"max_length and max_new_tokens must be >= 1, got {max_length} and {max_new_tokens}")
    prompts = [q.prompt for q in qas]
    lengths = [len(r) for r in encode(model, prompts)]
    if not lengths:
        return []
    check_context(model, max(lengths), "a TOFU question's prompt")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    budgets = new_token_budgets(lengths, max_length, max_new_tokens, n_ctx)
    order = sorted((i for i in range(len(prompts)) if budgets[i] > 0), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:                      # the group's first prompt is its shortest: it has the largest budget
        if groups and (n_ctx is None or lengths[i] + budgets[groups[-1][0]] <= n_ctx):
            groups[-1].append(i)
        else:
            groups.append([i])
    out = [""] * len(prompts)
    for g in groups:
        rows = generation.greedy(model, [prompts[i] for i in g], budgets[g[0]], batch_size=batch_size)
        for i, r in zip(g, rows, strict=True):
            out[i] = model.tokenizer.decode(r[: budgets[i]], skip_special_tokens=True).strip()
    return out


def rouge_l_recall(model: Any, qas: Sequence[QA], max_new_tokens: int | None = None, batch_size: int = 32, *,
                   max_length: int = MAX_LENGTH) -> Float[np.ndarray, " n"]:
    """ROUGE-L recall of each greedy answer (`greedy_answers`) against the reference answer."""
    said = greedy_answers(model, qas, max_new_tokens, batch_size, max_length=max_length)
    return rouge_l(said, [q.answer for q in qas])


def evaluate(model: Any, qas: Sequence[QA], max_new_tokens: int | None = None, batch_size: int = 32, *,
             max_length: int = MAX_LENGTH) -> SplitEval:
    """Every per-question value TOFU logs for a split (see `SplitEval`): the losses, then greedy answers' ROUGE-L."""
    answer, para, pert = _option_losses(model, qas)
    return SplitEval(answer, para, pert, rouge_l_recall(model, qas, max_new_tokens, batch_size, max_length=max_length))


def model_utility(model: Any, retain: Sequence[QA], real_authors: Sequence[QA], world_facts: Sequence[QA],
                  max_new_tokens: int | None = None, batch_size: int = 32, *,
                  max_length: int = MAX_LENGTH) -> dict[str, float]:
    """TOFU's nine numbers and their harmonic mean (`utility`) on the three utility sets; see `utility_of`."""
    evals = (evaluate(model, qas, max_new_tokens, batch_size, max_length=max_length)
             for qas in (retain, real_authors, world_facts))
    return utility_of(*evals)
