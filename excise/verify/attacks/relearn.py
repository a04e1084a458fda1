"""`relearn`: fine-tune a copy on one half of the facts, probe the other half (two folds)."""

from __future__ import annotations

import random

from excise.verify.attacks.base import Attack
from excise.verify.attacks.probes import best_ranks
from excise.verify.relearn import relearn


class Relearn(Attack):
    name = "relearn"
    label = "relearning"
    fine_tunes = True
    succeeds = "the target is in the top-B after fine-tuning a copy (RelearnConfig's steps) on the other half " \
               "of the facts (two folds; the top-1 recall is reported next to the oracle's)"
    statistic = "-(rank after relearning the other half)"

    def run(self, model, facts, config, relearn_n=None):
        if len(facts) < 2:
            return {}
        # the holdout's chance level relearns on as many facts as the audit's, so both fine-tunes see as much data
        sample = facts if relearn_n is None or relearn_n >= len(facts) else \
            random.Random(config.seed).sample(facts, max(2, relearn_n))
        result = relearn(model, sample, config.relearn, config.top_b)
        return {self.name: best_ranks(result.probes, sample, lambda r: r.rank),
                "relearn_rows": [r.to_dict() for r in result.probes]}


ATTACK = Relearn()
