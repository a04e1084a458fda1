"""`logit_lens`: the residual stream after every block decoded through the unembedding (TransformerLens's
logit lens); its verdict compares every layer and the best over layers (Bonferroni)."""

from __future__ import annotations

import numpy as np

from excise.verify.attacks.base import Attack
from excise.verify.attacks.probes import best_ranks
from excise.verify.leakage import ALPHA, POWER, compare_layers
from excise.verify.logit_lens import logit_lens


class LogitLens(Attack):
    name = "logit_lens"
    succeeds = "the target is in the top-B when the residual stream after any block is read through the final " \
               "norm and unembedding (TransformerLens 4's `logit_readout`; Patil et al. 2023), request prompt"
    statistic = "-(logit-lens rank after each layer, and the best)"

    def run(self, model, facts, config, relearn_n=None):
        rows = logit_lens(model, facts, ("request",), config.top_b)
        return {self.name: best_ranks(rows, facts, lambda r: r.best_rank), "lens_rows": [r.to_dict() for r in rows],
                "lens_layers": _per_layer(rows, facts)}

    def verdict(self, result, alpha=ALPHA, power=POWER):
        facts, holdout = result.attacks.lens_layers, result.chance.lens_layers if result.chance else None
        if not facts or not holdout:
            return None
        return compare_layers(np.array(facts), np.array(holdout), self.name, self.statistic, alpha=alpha,
                              power=power)


def _per_layer(rows, facts) -> list[list[int]]:
    """Per fact, per layer: the best logit-lens rank over the fact's prompts."""
    best: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        k = (r.subject, r.relation)
        best[k] = list(r.ranks) if k not in best else [min(a, b) for a, b in zip(best[k], r.ranks, strict=True)]
    return [best[f.key] for f in facts if f.key in best]


ATTACK = LogitLens()
