"""Probes: ask the model each fact under every prompt family and record what it says.

One row per (fact, family, template): the target's first-token rank and
probability, the target's whole-sequence log-probability, and the top
candidates the model would say instead. Every black-box attack and every
recall number in an audit is read off these rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from excise.facts import FAMILIES, Fact, tokenize_prompt
from excise.scoring import Example, rank_prompts, sequence_logprobs, target_first_ids


@dataclass(frozen=True)
class Probe:
    """What the model does with one prompt of one fact."""

    subject: str
    relation: str
    family: str
    prompt: str
    target: str
    rank: int                 # of the target's first token among all tokens (0 = top-1)
    prob: float               # of the target's first token
    seq_logprob: float        # of the whole target, summed over its tokens
    n_tokens: int             # tokens in the target
    top: tuple[str, ...]      # the model's top candidates, best first

    @property
    def recalled(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe(model: Any, facts: Sequence[Fact], families: Sequence[str] = FAMILIES, top_k: int = 20,
          batch_size: int = 256) -> list[Probe]:
    """Probe every fact under every template of `families` (families a fact lacks are skipped).

    Returns one Probe per (fact, template): the target's rank, log-probability and top candidates.

    Cost: ceil(P / batch_size) forwards for ranks and candidates plus
    ceil(P / 64) for sequence log-probabilities, P = number of prompts.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown prompt families {sorted(unknown)}; choose from {FAMILIES}")
    jobs = [(f, fam, t) for f in facts for fam in families for t in f.templates(fam)]
    if not jobs:
        return []
    prompts = [f.fill(t) for f, _, t in jobs]
    tids = target_first_ids(model, prompts, [f.target for f, _, _ in jobs])
    ranks, logps, tops = rank_prompts(model, prompts, tids, top_k, batch_size)
    examples = []
    for f, _, t in jobs:
        pt = tokenize_prompt(model, f, t)
        ids = pt.tokens.tolist()
        examples.append(Example(tuple(ids + list(pt.target_ids[:-1])), len(ids), pt.target_ids))
    seq = sequence_logprobs(model, examples)
    decode = model.tokenizer.decode
    return [
        Probe(f.subject, f.relation, fam, prompt, f.target, int(rk), float(lp.exp()), float(sq),
              len(ex.answer), tuple(decode([int(i)]) for i in top))
        for (f, fam, _), prompt, rk, lp, top, sq, ex in zip(jobs, prompts, ranks, logps, tops, seq, examples,
                                                            strict=True)
    ]
