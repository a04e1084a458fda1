"""`relearn`: fine-tune a copy on one half of the facts, probe the other half (two folds).

On the holdout (the never-seen baseline) it runs on samples of as many facts as the audit's, so both
fine-tunes see as much data. One sample (`AuditConfig.relearn_draws=1`, the default): a random sample of
facts, and the verdict is the per-fact Mann-Whitney test of every attack. Several: disjoint draws of whole
never-seen people (as a deletion request is whole people), each relearned apart, and the verdict reads its
spread from them (`excise.verify.leakage.compare_draws`): the audited facts are a few people, relearned in
two fine-tunes, so their AUC varies more than a test of independent facts assumes.

Measured on the organism's 5% split (15 people, 90 facts; the retrain oracle, split seeds 0-5; ten
draws of 15 never-seen people each; scratch runs): one draw's AUC against the other nine spread with SD
0.022-0.062 (Noether's per-fact SD: 0.032). The oracle against one random sample read 0.42-0.59, `leaks`
on seed 4 (0.59, p 0.047) and nearly over-suppressed on seed 2 (0.42, p 0.052); against the ten pooled
draws 0.40-0.54, where the per-fact test read seed 1 `over_suppressed` (0.40, p 0.003): its facts are 15
people whose relearning is slower than most, which that test takes for 90 independent facts. The
draw-based test (`compare_draws`, ten draws) reads every seed indistinguishable (p 0.057-0.90).
"""

from __future__ import annotations

import random

from excise.verify.attacks.base import Attack
from excise.verify.attacks.probes import best_ranks
from excise.verify.leakage import ALPHA, POWER, compare_draws
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
        ranks, rows = [], []
        samples = draws(facts, relearn_n, config.relearn_draws, config.seed)
        for sample in samples:
            result = relearn(model, sample, config.relearn, config.top_b)
            ranks += best_ranks(result.probes, sample, lambda r: r.rank)
            rows += [r.to_dict() for r in result.probes]
        return {self.name: ranks, "relearn_rows": rows} | \
            ({"relearn_draws": [len(s) for s in samples]} if len(samples) > 1 else {})

    def verdict(self, result, alpha=ALPHA, power=POWER):
        sizes = result.chance.extra.get("relearn_draws") if result.chance is not None else None
        facts, holdout = self.ranks(result.attacks), self.ranks(result.chance)
        if not sizes or len(sizes) < MIN_DRAWS or not facts:
            return super().verdict(result, alpha, power)
        return compare_draws(self.name, facts, holdout, sizes, statistic=self.statistic, negate=True, alpha=alpha,
                             power=power)


MIN_DRAWS = 3          # fewer draws give no spread to read: the per-fact test


def draws(facts: list, n: int | None, k: int, seed: int) -> list[list]:
    """The samples the relearning attack runs on: all `facts` when `n` is None (the audit's own) or covers
    them; one draw (k = 1): `random.Random(seed).sample` of `n` facts (at least 2); several: up to `k` disjoint
    draws of whole subjects (in a seeded order), each of the first subjects whose facts reach `n`."""
    if n is None or n >= len(facts):
        return [list(facts)]
    n = max(2, n)
    if k == 1:
        return [random.Random(seed).sample(facts, n)]
    by_subject: dict[str, list] = {}
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
    subjects = sorted(by_subject)
    random.Random(seed).shuffle(subjects)
    out, current = [], []
    for s in subjects:
        current += by_subject[s]
        if len(current) >= n:
            out.append(current)
            current = []
            if len(out) == k:
                break
    return out or [list(facts)]


ATTACK = Relearn()
