"""`truth_ratio`: TOFU's truth ratio (wrong answers against the true one) of each fact, against never-seen
facts'; read from what the audit measures whenever the context has wrong alternatives."""

from __future__ import annotations

import numpy as np

from excise.verify.attacks.base import Attack
from excise.verify.leakage import ALPHA, POWER, compare


class TruthRatio(Attack):
    name = "truth_ratio"
    succeeds = "(no top-B success: a two-sided verdict only) the true answer is preferred over wrong ones more " \
               "than on never-seen facts"
    statistic = "log truth ratio"
    leaks = "forget facts' truth ratios differ from never-seen ones"
    needs = ("holdout", "alternatives")
    audited = False

    def ran(self, result):
        return bool(result.truth_ratios)

    def per_fact(self, result, b):
        return []

    def chance(self, result, b):
        return None

    def above_chance(self, result, b):
        return None

    def verdict(self, result, alpha=ALPHA, power=POWER):
        mine, never = result.truth_ratios, result.chance.truth_ratios if result.chance else None
        if not mine or not never:
            return None
        return compare(self.name, np.log(mine), np.log(never), statistic=self.statistic, alpha=alpha, power=power)


ATTACK = TruthRatio()
