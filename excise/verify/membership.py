"""Membership inference: can an attacker tell the forget facts were in the training data?

Each fact becomes one text (its request prompt followed by the target), and
each text gets six scores, higher meaning "more likely a member". Four score
the whole text, as the papers do:

- LOSS (Yeom et al. 2018): the mean token log-likelihood.
- zlib (Carlini et al. 2021): the log-perplexity over the zlib-compressed
  length of the text, negated; calibrates for how predictable text is.
- Min-K% (Shi et al. 2024): the mean log-likelihood of the k% least likely tokens.
- Min-K%++ (Zhang et al. 2024): the same over tokens standardized by the
  model's own next-token distribution, (log p(x) - mu) / sigma with mu, sigma
  the mean and standard deviation of log p under p.

Two score only the answer tokens given the prompt, the part of the text that
carries the fact (`answer_loss`, `answer_min_k_pp`: the mean log-likelihood
and the mean Min-K%++ value of the target's tokens, k = 100%: answers are one
to three tokens). A whole-text score also measures the subject's name: a
model that forgot every fact of a person still knows how the name goes on,
which a never-seen name does not, so whole-text scores separate forget from
holdout facts even for the retrain oracle (0.37 whole-text Min-K%++ AUC on
the organism's 5% split). The audit's membership attack is `answer_loss`:
on a recalled answer the model is near one-hot, where Min-K%++'s
(log p - mu) / sigma divides two near-zero numbers and ranks recalled facts
no higher than never-seen ones (the original organism: answer Min-K%++ AUC
0.89, none of its facts above the holdout's 95th percentile; answer loss:
AUC 1.0).

Min-K% and Min-K%++ follow the reference code (zjysteven/mink-plus-plus,
run.py): the k% are floor(k * n) of the n predicted tokens. Two guards where
the reference yields NaN (no AUC can use it): at least one token when
k * n < 1, and a variance of at least 1e-12 (a one-hot next-token distribution).
`tests/test_membership_reference.py` holds the reference's numbers.

The AUC of each score separates forget facts (candidates) from holdout facts
the model never saw: 1.0 is perfect membership evidence, 0.5 is none (what
the retrain oracle should show). The per-fact verdict flags a forget fact
when its answer log-likelihood exceeds the holdout's (1 - fpr) quantile, so
chance is `fpr`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.stats import mannwhitneyu
from torch import Tensor

from excise.facts import Fact, tokenize_prompt
from excise.scoring import encode, pad_batch
from excise.weights import device_of

SCORES = ("loss", "zlib", "min_k", "min_k_pp")               # whole text
ANSWER_SCORES = ("answer_loss", "answer_min_k", "answer_min_k_pp")   # the answer tokens given the prompt
ATTACK_SCORE = "answer_loss"                                  # the audit's membership attack (see above)
ANSWER_K = 0.4          # answer_min_k's k: open-unlearning's mia_min_k (configs/eval/*_metrics/mia_min_k.yaml)
FPR = 0.05              # the score attacks' flag: above the never-seen facts' 1 - FPR quantile (their chance level)


def fact_text(fact: Fact) -> str:
    return f"{fact.fill(fact.prompt)} {fact.target}"


def token_scores(logits: Float[Tensor, "b pos vocab"], tokens: Int[Tensor, "b pos"]
                 ) -> tuple[Float[Tensor, "b pos_1"], Float[Tensor, "b pos_1"]]:
    """Each predicted token's log-likelihood and its Min-K%++ value, (log p(x) - mu) / sigma.

    Position t of the logits predicts token t + 1, so the first token gets no score.
    """
    logp = logits.float().log_softmax(-1)[:, :-1]
    tok_logp = logp.gather(-1, tokens[:, 1:, None])[..., 0]
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * logp.square()).sum(-1) - mu.square()
    return tok_logp, (tok_logp - mu) / var.clamp_min(1e-12).sqrt()


@torch.no_grad()
def token_statistics(model: Any, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, np.ndarray]]:
    """Per text: each token's log-likelihood and its Min-K%++ standardized value (first token excluded)."""
    rows = encode(model, texts)
    pad = model.tokenizer.pad_token_id or 0
    device = device_of(model)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        tokens, last = pad_batch(chunk, pad)
        tokens = tokens.to(device)
        tok_logp, z = token_scores(model(tokens), tokens)
        for i, n in enumerate(last.tolist()):        # row i has n + 1 tokens, n predicted
            out.append({"logp": tok_logp[i, :n].cpu().numpy(), "z": z[i, :n].cpu().numpy()})
    return out


def answer_rows(model: Any, facts: Sequence[Fact]) -> tuple[list[list[int]], list[int]]:
    """Per fact: its request prompt's tokens followed by the target's (as the probes tokenize them), and how
    many of them are the target's."""
    rows, n_answer = [], []
    for f in facts:
        pt = tokenize_prompt(model, f, f.prompt)
        rows.append(pt.tokens.tolist() + list(pt.target_ids))
        n_answer.append(len(pt.target_ids))
    return rows, n_answer


@torch.no_grad()
def answer_scores(model: Any, facts: Sequence[Fact], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per fact: the mean log-likelihood, Min-K% (k = 0.4: open-unlearning's `mia_min_k` on the labelled
    answer tokens) and mean Min-K%++ value of the target's tokens after its request prompt.

    Tokens as the probes see them (`tokenize_prompt`, then the target).
    Cost: ceil(F / batch_size) forwards.
    """
    rows, n_answer = answer_rows(model, facts)
    return row_answer_scores(model, rows, n_answer, model.tokenizer.pad_token_id or 0, batch_size)


@torch.no_grad()
def row_answer_scores(model: Any, rows: Sequence[Sequence[int]], n_answer: Sequence[int], pad: int = 0,
                      batch_size: int = 64) -> dict[str, np.ndarray]:
    """`answer_scores` of token rows, each ending in `n_answer[i]` answer tokens (`model(ids)` gives logits)."""
    device = device_of(model)
    out: dict[str, list[float]] = {s: [] for s in ANSWER_SCORES}
    for start in range(0, len(rows), batch_size):
        tokens, last = pad_batch([list(r) for r in rows[start:start + batch_size]], pad)
        tok_logp, z = token_scores(model(tokens.to(device)), tokens.to(device))
        for i, (n, a) in enumerate(zip(last.tolist(), n_answer[start:start + batch_size], strict=True)):
            # predicted tokens 0..n-1 are tokens 1..n; the answer is the last a of them
            out["answer_loss"].append(float(tok_logp[i, n - a:n].mean()))
            out["answer_min_k"].append(lowest_mean(tok_logp[i, n - a:n].cpu().numpy(), ANSWER_K))
            out["answer_min_k_pp"].append(float(z[i, n - a:n].mean()))
    return {s: np.asarray(v) for s, v in out.items()}


def lowest_mean(values: np.ndarray, k: float) -> float:
    """The mean of the floor(k * n) smallest of n values (Min-K%'s reference rule; at least one)."""
    m = max(1, int(len(values) * k))
    return float(np.sort(values)[:m].mean())


def membership_scores(model: Any, texts: Sequence[str], k: float = 0.2) -> dict[str, np.ndarray]:
    """Returns the four scores of every text, {score: [len(texts)]} (higher = more likely a training member).

    Cost: ceil(len(texts) / 64) forwards.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k (the Min-K% fraction) must be in (0, 1], got {k}")
    stats = token_statistics(model, texts)
    scores: dict[str, list[float]] = {s: [] for s in SCORES}
    for text, st in zip(texts, stats, strict=True):
        mean_logp = float(st["logp"].mean())
        scores["loss"].append(mean_logp)
        scores["zlib"].append(mean_logp / len(zlib.compress(text.encode())))
        scores["min_k"].append(lowest_mean(st["logp"], k))
        scores["min_k_pp"].append(lowest_mean(st["z"], k))
    return {s: np.asarray(v) for s, v in scores.items()}


def auc(members: Sequence[float] | np.ndarray, non_members: Sequence[float] | np.ndarray) -> float:
    """Returns P(score of a member > score of a non-member), ties counting half (the ROC AUC).

    Cost: no model call; O((m + n) log(m + n)) for m members and n non-members.
    """
    members, non_members = np.asarray(members, float), np.asarray(non_members, float)
    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("AUC needs at least one member and one non-member score")
    u = mannwhitneyu(members, non_members, alternative="two-sided").statistic
    return float(u / (len(members) * len(non_members)))


@dataclass
class MembershipResult:
    auc: dict[str, float]                       # per score
    flagged: list[bool]                         # per forget fact: answer log-likelihood above the holdout threshold
    fpr: float                                  # the chance level of `flagged`
    scores: dict[str, list[float]] = field(repr=False)           # forget facts, per score
    holdout_scores: dict[str, list[float]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"auc": self.auc, "flagged": self.flagged, "fpr": self.fpr, "scores": self.scores,
                "holdout_scores": self.holdout_scores}


def membership_inference(model: Any, forget: Sequence[Fact], holdout: Sequence[Fact], fpr: float = 0.05,
                         k: float = 0.2) -> MembershipResult:
    """Score forget facts against never-trained holdout facts; returns a MembershipResult: the AUC per
    score (whole-text and answer-only) and a verdict per fact (answer log-likelihood above the holdout's
    1 - fpr quantile).

    Cost: about 2 N / 64 forwards, N = len(forget) + len(holdout) (whole texts, then answers, in batches of 64).
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    if not forget or not holdout:
        raise ValueError("membership inference needs forget facts and holdout facts the model never saw "
                         "(for the organism: world.holdout(n))")
    f = membership_scores(model, [fact_text(x) for x in forget], k) | answer_scores(model, forget)
    h = membership_scores(model, [fact_text(x) for x in holdout], k) | answer_scores(model, holdout)
    threshold = float(np.quantile(h[ATTACK_SCORE], 1 - fpr))
    names = SCORES + ANSWER_SCORES
    return MembershipResult(
        auc={s: auc(f[s], h[s]) for s in names},
        flagged=[bool(v > threshold) for v in f[ATTACK_SCORE]],
        fpr=fpr,
        scores={s: f[s].tolist() for s in names},
        holdout_scores={s: h[s].tolist() for s in names},
    )


def gradient_norms(model: Any, rows: Sequence[Sequence[int]], n_answer: Sequence[int], p: float = 2.0
                   ) -> list[float]:
    """Per row (token ids ending in `n_answer[i]` answer tokens): the mean over the model's parameter tensors of
    the p-norm of the gradient of the answer tokens' mean negative log-likelihood.

    open-unlearning's GradNorm attack (src/evals/metrics/mia/gradnorm.py; Wang et al. 2024), one row at a time
    as its batch size 1, with two differences: the model stays in eval mode (theirs switches to train mode, so
    dropout draws), and every parameter's `.grad` and `requires_grad` are restored afterwards (theirs leaves
    the last row's gradients).
    A smaller norm reads as a member: the model is at a minimum of its training data's loss.
    Cost: one forward and backward per row.
    """
    if p not in (1, 2, float("inf")):
        raise ValueError(f"p must be 1, 2 or inf (open-unlearning's choices), got {p}")
    params = list(model.parameters())
    saved = [(q.grad, q.requires_grad) for q in params]
    device = device_of(model)
    out = []
    try:
        for q in params:
            q.requires_grad_(True)                   # a frozen model is measured too, and left frozen
        with torch.enable_grad():
            for ids, a in zip(rows, n_answer, strict=True):
                if not 0 < a < len(ids):
                    raise ValueError(f"a row of {len(ids)} tokens cannot end in {a} answer tokens after a prompt")
                for q in params:
                    q.grad = None
                tokens = torch.tensor([list(ids)], device=device)
                logp = model(tokens).float().log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None])[:, 0]
                (-logp[-a:].mean()).backward()
                norms = [q.grad.detach().norm(p) for q in params if q.grad is not None]
                out.append(float(torch.stack(norms).mean()))
    finally:
        for q, (g, req) in zip(params, saved, strict=True):
            q.grad = g
            q.requires_grad_(req)
    return out


def privleak(auc_model: float, auc_oracle: float) -> float:
    """MUSE's PrivLeak in percent from two membership AUCs (forget vs never-seen facts, excise's convention:
    1 = forget facts look like members): (AUC'_model - AUC'_oracle) / AUC'_oracle * 100 with AUC' = 1 - AUC,
    as open-unlearning computes it (src/evals/metrics/privacy.py, its 1e-10 guard in the denominator).
    0: the oracle's level; negative: members still visible (under-unlearned); positive: over-unlearned."""
    for name, v in (("auc_model", auc_model), ("auc_oracle", auc_oracle)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be an AUC in [0, 1], got {v}")
    score, ref = 1 - auc_model, 1 - auc_oracle
    return (score - ref) / (ref + 1e-10) * 100
